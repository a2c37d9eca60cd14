"""``vlmrl bench pebble``: success rate against the number of preference pairs (RL-VLM-F's
Meta-World curves), one online run per budget and seed.

Each run is ``vlmrl train CONFIG --set preference.budget=B --set run.seed=S`` with the config's
schedule (e.g. ``configs/metaworld_drawer_open_oracle_pref.yaml`` for the scripted teacher or
``..._vlm_pref.yaml`` for a VLM), in this process, one after the other. Reported per run: pairs
asked and labelled, the success rate of the training episodes (``info["success"]`` at episode
end; empty for envs that do not report success), the final policy's true return, env steps/s.

Made for a GPU machine: at the configs' settings (1M SAC steps, 300x300 frames) one run takes
hours. ``--steps`` and ``--set`` shrink it for a look on a CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

HELP = "success rate against the number of preference pairs (one online run per budget and seed)"
DEFAULT_CONFIG = "configs/metaworld_drawer_open_oracle_pref.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vlmrl bench pebble`` (``--json`` and ``func`` come from ``vlmrl bench``)."""
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"online preference config (default: {DEFAULT_CONFIG})")
    parser.add_argument("--budgets", default="1000,5000,20000", help="comma-separated preference budgets (pairs)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--steps", type=int, default=None, help="env steps per run (default: the config's)")
    parser.add_argument("--root", default=None, help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every run; repeatable")


def run(args: argparse.Namespace) -> int:
    rows = run_pebble_bench(args.config, [int(b) for b in args.budgets.split(",") if b],
                            [int(s) for s in args.seeds.split(",") if s], args.steps, args.overrides, args.root)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print("  ".join(f"{key}={value}" for key, value in row.items()))
    return 0


def run_pebble_bench(config_path: str, budgets: list[int], seeds: list[int], steps: int | None = None,
                     overrides: list[str] | tuple[str, ...] = (), root: str | None = None) -> list[dict[str, Any]]:
    """One row per (budget, seed): pairs, success rate, true return of the final policy, env steps/s."""
    from vlmrl.config import load_config
    from vlmrl.runs import create_run_dir
    from vlmrl.train import train_online

    rows = []
    with tempfile.TemporaryDirectory(prefix="vlmrl-bench-pebble-") as scratch:
        for budget in budgets:
            for seed in seeds:
                settings = [*overrides, f"preference.budget={budget}", f"run.seed={seed}",
                            f"run.root={root or scratch}", "run.video_episodes=0"]
                if steps is not None:
                    settings.append(f"agent.total_timesteps={steps}")
                config = load_config(config_path, settings)
                started = time.perf_counter()
                summary = train_online(config, create_run_dir(config), resume=False, progress_bar=False, video=False)
                rows.append({
                    "budget": budget,
                    "seed": seed,
                    "pairs_asked": summary.get("pairs_asked"),
                    "pairs_labelled": summary.get("pairs_labelled"),
                    "success_rate": summary.get("success_rate"),
                    "true_return": summary.get("eval", {}).get("true_return_mean"),
                    "env_steps_per_s": round(summary["env_steps"] / max(time.perf_counter() - started, 1e-9), 1),
                })
    return rows
