"""``vlmrl bench async``: env steps/s of preference PPO while a slow VLM labels its pairs, with
``preference.labeling: sync`` (every round waits inside the env step), ``async`` (a background
worker; the agent never waits) and the scripted teacher (instant labels: the ceiling).

The VLM is ``tests/openai_test_server.py`` (a real OpenAI-protocol server whose "VLM" judges
brightness), started as a subprocess once per latency, with ``--latency-ms`` per request. Every
mode trains the same PPO on ``vlmrl/CartPoleFixedLength-v1`` with small frames, the same cnn
reward ensemble, query schedule and budget; only where labels come from differs. Reported per
mode: env steps/s of ``learn`` (wall clock), pairs answered / dropped / still in flight at the
end, the label lag (env steps from submit to answer) and the seconds ``step_wait`` spent in
labelling. Two-stage prompts: 2 requests per pair, ``--max-concurrency`` pairs at a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HELP = "env steps/s of preference PPO with a slow VLM: sync vs async labelling vs the scripted teacher"
TEST_SERVER = Path(__file__).resolve().parents[1] / "tests" / "openai_test_server.py"
GOAL = "to balance the brown pole on the black cart to be upright"
MODES = ("sync", "async", "teacher")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``vlmrl bench async`` (``--json`` and ``func`` come from ``vlmrl bench``)."""
    parser.add_argument("--latency-ms", default="1000,2000", help="comma-separated server latencies per request (default: 1000,2000)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: sync, async, teacher (default: all)")
    parser.add_argument("--steps", type=int, default=12000, help="env steps per run (default: 12000)")
    parser.add_argument("--n-envs", type=int, default=4, help="envs per vector env (default: 4)")
    parser.add_argument("--frame-size", type=int, default=64, help="render size in pixels, square (default: 64)")
    parser.add_argument("--pairs-per-round", type=int, default=50, help="pairs per query round (default: 50, RL-VLM-F)")
    parser.add_argument("--round-every", type=int, default=1000, help="env steps between rounds (default: 1000)")
    parser.add_argument("--queue-size", type=int, default=16,
                        help="async: pairs that may wait for the worker (default: 16, two waves of 8: fresh labels, the rest dropped)")
    parser.add_argument("--max-concurrency", type=int, default=8, help="pairs asked at once (default: 8)")


def run(args: argparse.Namespace) -> int:
    rows = run_async_bench(
        latencies_ms=[float(x) for x in args.latency_ms.split(",") if x],
        modes=[m for m in args.modes.split(",") if m],
        steps=args.steps,
        n_envs=args.n_envs,
        frame_size=args.frame_size,
        pairs_per_round=args.pairs_per_round,
        round_every=args.round_every,
        queue_size=args.queue_size,
        max_concurrency=args.max_concurrency,
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0


def run_async_bench(
    latencies_ms: Sequence[float] = (1000.0, 2000.0),
    modes: Sequence[str] = MODES,
    steps: int = 12000,
    n_envs: int = 4,
    frame_size: int = 64,
    pairs_per_round: int = 50,
    round_every: int = 1000,
    queue_size: int = 16,
    max_concurrency: int = 8,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per (mode, latency); the teacher, which asks no server, once (latency None).

    Each row: ``mode``, ``latency_ms``, ``env_steps``, ``seconds`` (wall clock of ``learn``),
    ``env_steps_per_s``, ``pairs_answered``, ``pairs_dropped``, ``pairs_in_flight`` (at the end),
    ``label_lag_steps_mean`` / ``_max``, ``label_wait_seconds``, ``reward_fits``, and
    ``vs_sync`` / ``vs_teacher``: env steps/s relative to the sync run at the same latency and to
    the teacher (when those ran).
    """
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    settings = dict(steps=steps, n_envs=n_envs, frame_size=frame_size, pairs_per_round=pairs_per_round,
                    round_every=round_every, queue_size=queue_size, max_concurrency=max_concurrency, seed=seed)
    rows: list[dict[str, Any]] = []
    if "teacher" in modes:
        rows.append(_train_once("teacher", None, None, **settings))
    for latency in latencies_ms:
        with _TestServer(latency) as base_url:
            for mode in modes:
                if mode != "teacher":
                    rows.append(_train_once(mode, latency, base_url, **settings))
    teacher = next((row for row in rows if row["mode"] == "teacher"), None)
    for row in rows:
        sync = next((r for r in rows if r["mode"] == "sync" and r["latency_ms"] == row["latency_ms"]), None)
        row["vs_sync"] = round(row["env_steps_per_s"] / sync["env_steps_per_s"], 2) if sync and row["latency_ms"] is not None else None
        row["vs_teacher"] = round(row["env_steps_per_s"] / teacher["env_steps_per_s"], 2) if teacher else None
    return rows


class _TestServer:
    """``tests/openai_test_server.py`` in a subprocess (its threads then take none of this
    process's GIL); the context value is its base URL."""

    def __init__(self, latency_ms: float) -> None:
        self.latency_ms = latency_ms
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        if not TEST_SERVER.is_file():
            raise FileNotFoundError(f"{TEST_SERVER} is missing: the async bench needs the repository's tests folder")
        self.process = subprocess.Popen(
            [sys.executable, str(TEST_SERVER), "--port", "0", "--latency-ms", str(self.latency_ms), "--model", "bench-vlm"],
            stdout=subprocess.PIPE, text=True,
        )
        line = self.process.stdout.readline()  # "serving http://127.0.0.1:PORT/v1/chat/completions ..."
        if not line.startswith("serving "):
            self.__exit__()
            raise RuntimeError(f"the test server did not start: {line!r}")
        return line.split()[1].removesuffix("/chat/completions")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


def _train_once(
    mode: str, latency_ms: float | None, base_url: str | None, *, steps: int, n_envs: int, frame_size: int,
    pairs_per_round: int, round_every: int, queue_size: int, max_concurrency: int, seed: int,
) -> dict[str, Any]:
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    import vlmrl.envs  # noqa: F401
    from vlmrl.agents.frame_capture import FrameInInfo
    from vlmrl.agents.preference_config import OnlinePreferenceConfig
    from vlmrl.agents.preference_reward import build_preference_env
    from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler
    from vlmrl.reward_labelers.oracle_teacher import OracleTeacher
    from vlmrl.reward_learning_config import FitConfig
    from vlmrl.reward_net_config import RewardEnsembleConfig

    torch.set_num_threads(1)  # small nets: intra-op threads only add contention on a shared machine

    def build() -> gym.Env:
        env = gym.make("vlmrl/CartPoleFixedLength-v1", render_mode="rgb_array", render_width=frame_size,
                       render_height=frame_size, episode_length=200)
        return FrameInInfo(Monitor(env), capture_frames=True)

    venv = DummyVecEnv([build] * n_envs)
    venv.seed(seed)
    schedule = OnlinePreferenceConfig(
        goal=GOAL, pairs_per_round=pairs_per_round, round_every=round_every, first_round_at=round_every // 2,
        budget=100_000, frame_buffer=5000, labeling="async" if mode == "async" else "sync", queue_size=queue_size,
        net=RewardEnsembleConfig(kind="cnn", input_size=64, ensemble_size=1), fit=FitConfig(epochs=3, batch_size=128),
    )
    with tempfile.TemporaryDirectory(prefix="vlmrl-bench-async-") as store_dir:
        if mode == "teacher":
            labeler: Any = OracleTeacher(seed=seed)
        else:
            labeler = OpenAIPreferenceLabeler(base_url, model="bench-vlm", store=Path(store_dir) / "labels.sqlite",
                                              max_concurrency=max_concurrency, timeout_s=60, max_retries=2)
        env, callbacks = build_preference_env(venv, labeler, GOAL, schedule, "ppo", seed=seed, device="cpu")
        model = PPO("MlpPolicy", env, n_steps=128, batch_size=256, n_epochs=2, seed=seed, device="cpu")
        start = time.perf_counter()
        model.learn(steps, callback=callbacks)
        seconds = time.perf_counter() - start
        summary = env.summary()
        env.close()
    return {
        "mode": mode,
        "latency_ms": latency_ms,
        "env_steps": int(model.num_timesteps),
        "seconds": round(seconds, 1),
        "env_steps_per_s": round(model.num_timesteps / seconds, 1),
        "pairs_answered": summary["pairs_asked"],
        "pairs_dropped": summary["pairs_dropped"],
        "pairs_in_flight": summary["pairs_in_flight"],
        "label_lag_steps_mean": None if summary["label_lag_steps_mean"] is None else round(summary["label_lag_steps_mean"]),
        "label_lag_steps_max": summary["label_lag_steps_max"],
        "label_wait_seconds": round(summary["label_wait_seconds"], 1),
        "reward_fits": summary["reward_fits"],
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = ("mode", "latency_ms", "env_steps_per_s", "vs_sync", "vs_teacher", "pairs_answered", "pairs_dropped",
               "pairs_in_flight", "label_lag_steps_mean", "label_lag_steps_max", "label_wait_seconds", "reward_fits")
    table = [columns] + [tuple("-" if row.get(c) is None else str(row[c]) for c in columns) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in table)


__all__ = ["HELP", "add_arguments", "format_table", "run", "run_async_bench"]
