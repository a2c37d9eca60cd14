"""``vlmrl bench``: throughput and memory measurements (never timed tests).

- ``bench clip``: rendering, CLIP image encoder alone, full CLIP labelling (preprocess + encode
  + reward) and the distilled reward net, in frames/s per batch size, with peak memory.
- ``bench train``: env steps/s of online training when every step is labelled versus
  label-every-k with a distilled reward net.
- ``bench labels``: preference pairs/s against an OpenAI-compatible endpoint per concurrency.
- ``bench render``: rendered frames/s of a vector env, one process vs one worker per env.
- ``bench relabel``: offline relabelling frames/s, peak RSS and seconds per stage (local or Ray).
- ``bench main``: the README's main job (``vlmrl train`` on its config) end to end, per seed:
  wall seconds, env steps/s and the evaluated true return.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Callable

import numpy as np

CLIP_HELP = """\
Measures, per batch size: rendering frames/s (the env's rgb_array renderer), image-encoder-only
frames/s (model forward on preprocessed tensors), full labelling frames/s (uint8 frames ->
preprocess -> encode -> goal-baseline reward), reward-net frames/s (distilled CNN), and peak
memory. Throughput does not depend on the weights' values, so --pretrained defaults to random
weights of the named architecture (no download needed); pass a tag or checkpoint to load real ones.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from vlmrl import bench_async, bench_pebble

    parser = subparsers.add_parser("bench", help="measure throughput and memory (CLIP, training, labels, relabel)", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)

    def bench(name: str, func: Callable[[argparse.Namespace], int], help: str, description: str) -> argparse.ArgumentParser:
        """``vlmrl bench NAME``, running ``func``, with the ``--json`` flag every bench has."""
        sub = benches.add_parser(name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
        sub.set_defaults(func=func)
        return sub

    clip = bench("clip", run_clip_bench, "CLIP labelling vs encoder vs reward net vs rendering", CLIP_HELP)
    clip.add_argument("--model", default="ViT-B-32", help="open_clip model name or transformers id/dir (default: ViT-B-32)")
    clip.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint path (default: random weights)")
    clip.add_argument("--backend", choices=("open_clip", "transformers"), default="open_clip", help="CLIP implementation (default: open_clip)")
    clip.add_argument("--batch-sizes", default="1,16,64", help="comma-separated batch sizes (default: 1,16,64)")
    clip.add_argument("--env", default="vlmrl/CartPoleFixedLength-v1", help="env whose frames are rendered and labelled")
    clip.add_argument("--size", type=int, default=224, help="render size in pixels, square (default: 224)")
    clip.add_argument("--repeats", type=int, default=3, help="timed repetitions per measurement; the best is kept")
    clip.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")

    train = bench("train", run_train_bench, "env steps/s: label every step vs label-every-k + distillation",
                  "Runs the config twice for --steps env steps (no eval, no video): labelling every step, then "
                  "labelling every --label-every-th vector step with a distilled reward net; prints env steps/s.")
    train.add_argument("--config", default="configs/cartpole_clip.yaml", help="online config to benchmark")
    train.add_argument("--pretrained", default=None, help="CLIP weights (default: random weights of the config's model)")
    train.add_argument("--steps", type=int, default=2048, help="env steps per measured run")
    train.add_argument("--label-every", type=int, default=8, help="label one vector step in this many once the net is fitted (default: 8)")

    labels = bench("labels", run_labels_bench, "preference pairs/s against an OpenAI-compatible endpoint",
                   "Labels random frame pairs at each concurrency level with a fresh label store, then asks again "
                   "to show that stored pairs cost no request. Reference setting: "
                   "python tests/openai_test_server.py --port 18777 --latency-ms 200")
    labels.add_argument("--endpoint", required=True, help="base URL, e.g. http://127.0.0.1:8000/v1")
    labels.add_argument("--model", default="test-vlm", help="model name sent with each request (default: test-vlm)")
    labels.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels")
    labels.add_argument("--pairs", type=int, default=32, help="pairs per level")
    labels.add_argument("--frame-size", type=int, default=64, help="frame side in pixels")

    render = bench("render", run_render_bench,
                   "rendered frames/s of a vector env: one process (dummy) vs one worker per env (subproc)",
                   "Steps --n-envs envs with random actions, rendering every step (as online labelling does), "
                   "once per --vec-envs entry, and reports frames/s (steps x envs per second).")
    render.add_argument("--envs", default="vlmrl/HumanoidTextured-v0,vlmrl/CartPoleFixedLength-v1",
                        help="comma-separated env ids")
    render.add_argument("--n-envs", type=int, default=4, help="envs per vector env (default: 4)")
    render.add_argument("--vec-envs", default="dummy,subproc", help="comma-separated: dummy, subproc")
    render.add_argument("--size", type=int, default=224, help="render size in pixels, square (default: 224)")
    render.add_argument("--steps", type=int, default=50, help="timed vector steps (default: 50)")

    relabel = bench("relabel", run_relabel_bench_command, "offline relabelling frames/s and peak RSS",
                    "Writes a synthetic Minari dataset of random frames (streamed, never all in memory), relabels "
                    "it end to end and reports frames/s, the peak RSS of this process and seconds per stage "
                    "(read: frames from disk; label: the model; write: chunk checkpoints; publish: the new "
                    "dataset). With --engine ray, one row per --workers entry, e.g. --engine ray --workers 1,2.")
    relabel.add_argument("--frames", type=int, default=100_000, help="frames in the synthetic dataset (default: 100000, ~15 GB at 224x224 on disk)")
    relabel.add_argument("--kinds", default="reward_net", help="comma-separated: reward_net, clip (random ViT-S-32 weights)")
    relabel.add_argument("--size", type=int, default=224, help="frame side in pixels (default: 224)")
    relabel.add_argument("--root", default=None, help="folder for the temporary datasets (default: system temp)")
    relabel.add_argument("--engine", choices=("local", "ray"), default="local",
                         help="relabel in this process, or on Ray (a local instance unless --address)")
    relabel.add_argument("--workers", default="1,2", help="ray: comma-separated actor counts, one row each (default: 1,2)")
    relabel.add_argument("--gpus-per-worker", type=float, default=0.0, help="ray: GPUs per actor (default: 0)")
    relabel.add_argument("--address", default=None, help="ray: cluster address (default: start a local one)")
    relabel.add_argument("--device", default="cpu", help="torch device of the labeler (default: cpu; auto on GPUs)")

    bench_async.add_arguments(bench("async", bench_async.run, bench_async.HELP, bench_async.__doc__))
    bench_pebble.add_arguments(bench("pebble", bench_pebble.run, bench_pebble.HELP, bench_pebble.__doc__))

    main = bench("main", run_main_bench, "the main job end to end: wall seconds, env steps/s and true return per seed",
                 "Runs `vlmrl train CONFIG --set run.seed=S` in a fresh Python process for each seed (one after "
                 "the other, each with the whole machine), as a user would, and reports its wall-clock seconds "
                 "from process start to exit (imports, training, evaluation, video and report included), its "
                 "CPU seconds (user + system; wall >> cpu / cores means other processes shared the machine), "
                 "the training's env steps/s and the evaluation's true return.")
    main.add_argument("--config", default=MAIN_JOB_CONFIG, help=f"online config (default: {MAIN_JOB_CONFIG})")
    main.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run each (default: 0,1,2)")
    main.add_argument("--root", default=None, help="keep the run directories here (default: a temporary folder, deleted)")
    main.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="extra config override passed to every run; repeatable")


MAIN_JOB_CONFIG = "configs/cartpole_pixels_pref.yaml"


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def best_rate(work: Callable[[], int], repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` runs of ``work`` (which returns its item count).

    One untimed run goes first: a first call pays one-time costs (lazy initialisation, kernel
    selection, allocator growth) that would otherwise make a single repeat meaningless.
    """
    work()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        items = work()
        best = max(best, items / (time.perf_counter() - start))
    return best


def peak_memory_mb(device) -> float:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def render_frames(env_id: str, size: int, count: int) -> tuple[np.ndarray, float]:
    """``count`` frames of a random rollout and the rendering rate in frames/s."""
    import gymnasium as gym

    import vlmrl.envs  # noqa: F401

    env = gym.make(env_id, render_mode="rgb_array", render_width=size, render_height=size)
    env.reset(seed=0)
    env.action_space.seed(0)
    frames = []
    start = time.perf_counter()
    for _ in range(count):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        frames.append(env.render())
        if terminated or truncated:
            env.reset()
    rate = count / (time.perf_counter() - start)
    env.close()
    return np.stack(frames), rate


def run_clip_bench(args: argparse.Namespace) -> int:
    import torch

    from vlmrl.reward_labelers import ClipRewardLabeler
    from vlmrl.reward_nets import RewardModel, RewardNetConfig

    batch_sizes = parse_ints(args.batch_sizes)
    frames, render_rate = render_frames(args.env, args.size, max(batch_sizes) * 2)
    labeler = ClipRewardLabeler(
        model=args.model,
        pretrained=args.pretrained,
        goal_prompts=["pole vertically upright on top of the cart"],
        baseline_prompts=["pole and cart"],
        alpha=0.5,
        device=args.device,
        backend=args.backend,
        batch_size=max(batch_sizes),
    )
    net = RewardModel(RewardNetConfig(kind="cnn", input_size=64), device=args.device)
    rows = []
    for batch_size in batch_sizes:
        batch = frames[:batch_size]
        pixels = labeler.preprocess(batch)

        encoder_rate = best_rate(lambda: len(labeler.encode_pixels(pixels)), args.repeats)
        label_rate = best_rate(lambda: len(labeler.label(batch)), args.repeats)
        net_rate = best_rate(lambda: len(net.predict(batch)), args.repeats)
        rows.append(
            {
                "batch_size": batch_size,
                "render_fps": round(render_rate, 1),
                "encoder_fps": round(encoder_rate, 1),
                "label_fps": round(label_rate, 1),
                "label_vs_encoder": round(label_rate / encoder_rate, 3),
                "reward_net_fps": round(net_rate, 1),
                "net_vs_clip": float(f"{net_rate / label_rate:.4g}"),  # tiny test models can make it < 0.05
                "peak_mem_mb": round(peak_memory_mb(labeler.device), 1),
            }
        )
    print_rows(rows, args.json, f"model={args.model} pretrained={args.pretrained or 'random'} device={labeler.device} frames={args.size}x{args.size} torch_threads={torch.get_num_threads()}")
    return 0


def run_train_bench(args: argparse.Namespace) -> int:
    import tempfile

    from vlmrl.config import load_config
    from vlmrl.runs import create_run_dir
    from vlmrl.train import train_online

    rows = []
    with tempfile.TemporaryDirectory() as root:
        common = [f"agent.total_timesteps={args.steps}", f"run.root={root}", "run.eval_episodes=0", "run.video_episodes=0", f"run.checkpoint_every={10 * args.steps}"]
        if args.pretrained is not None:
            common.append(f"labeler.pretrained={args.pretrained}")
        else:
            common.append("labeler.pretrained=null")
        settings = {
            "label every step": ["reward.distill=false", "reward.label_every=1"],
            f"label every {args.label_every} + distil": ["reward.distill=true", f"reward.label_every={args.label_every}", f"reward.warmup_labels={args.steps // 8}", f"reward.retrain_every={args.steps // 2}"],
        }
        for name, overrides in settings.items():
            config = load_config(args.config, common + overrides)
            summary = train_online(config, create_run_dir(config), resume=False, progress_bar=False, video=False)
            rows.append(
                {
                    "setting": name,
                    "env_steps": summary["env_steps"],
                    "seconds": summary["train_seconds"],
                    "env_steps_per_s": round(summary["env_steps"] / summary["train_seconds"], 1),
                    "labelled_frames": summary["labelled_frames"],
                }
            )
    rows[1]["speedup"] = round(rows[1]["env_steps_per_s"] / rows[0]["env_steps_per_s"], 2)
    print_rows(rows, args.json, f"config={args.config} steps={args.steps}")
    return 0


def run_render_bench(args: argparse.Namespace) -> int:
    from vlmrl.config import EnvConfig
    from vlmrl.factory import make_vec_env

    rows = []
    for env_id in [e for e in args.envs.split(",") if e]:
        for vec_env in [v for v in args.vec_envs.split(",") if v]:
            config = EnvConfig(id=env_id, n_envs=args.n_envs, render_width=args.size, render_height=args.size,
                               vec_env=vec_env)
            venv = make_vec_env(config, seed=0)
            try:
                venv.reset()
                actions = lambda: np.stack([venv.action_space.sample() for _ in range(args.n_envs)])  # noqa: E731
                for _ in range(5):  # warm-up: worker start, first render contexts
                    venv.step(actions())
                start = time.perf_counter()
                for _ in range(args.steps):
                    venv.step(actions())
                seconds = time.perf_counter() - start
            finally:
                venv.close()
            rows.append({"env": env_id, "vec_env": vec_env, "n_envs": args.n_envs,
                         "frames_per_s": round(args.steps * args.n_envs / seconds, 1)})
    print_rows(rows, args.json, f"size={args.size}x{args.size} steps={args.steps} (random actions, a frame per env per step)")
    return 0


def time_main_job(config: str, seed: int, root: str, overrides: list[str] = ()) -> dict:
    """One ``vlmrl train`` of ``config`` in a child process; its wall seconds and summary figures.

    A child process, so the figure includes what a user waits for: interpreter start, imports,
    training, evaluation, the video and the report.
    """
    import os
    import subprocess
    from pathlib import Path

    from vlmrl.errors import UserError

    before = set(Path(root).glob("*")) if Path(root).is_dir() else set()
    load = os.getloadavg()[0]  # runnable processes before the start: > 0.5 means a shared machine
    command = [sys.executable, "-m", "vlmrl.cli", "train", config, "--no-progress",
               "--set", f"run.seed={seed}", "--set", f"run.root={root}", *(f"--set={o}" for o in overrides)]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds (user + system) of the child: unlike wall time, barely inflated when other
    # processes share the cores, so a busy machine shows as wall >> cpu / cores.
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if finished.returncode != 0:
        raise UserError(f"seed {seed}: `{' '.join(command)}` failed (exit {finished.returncode}):\n{finished.stderr[-3000:]}")
    run_dirs = sorted(set(Path(root).glob("*")) - before)
    summary = json.loads((run_dirs[-1] / "summary.json").read_text())
    evaluation = summary.get("eval", {})
    return {
        "seed": seed,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "train_s": summary["train_seconds"],
        "env_steps": summary["env_steps"],
        "env_steps_per_s": round(summary["env_steps"] / summary["train_seconds"], 1),
        "pairs": summary.get("pairs_asked", ""),
        "true_return": round(evaluation.get("true_return_mean", float("nan")), 1),
        "true_return_std": round(evaluation.get("true_return_std", float("nan")), 1),
        "load_before": round(load, 2),
        "run_dir": str(run_dirs[-1]),
    }


def run_main_bench(args: argparse.Namespace) -> int:
    import os
    import tempfile

    seeds = parse_ints(args.seeds)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or scratch
        os.makedirs(root, exist_ok=True)
        rows = []
        for seed in seeds:
            rows.append(time_main_job(args.config, seed, root, args.overrides))
            if not args.root:
                rows[-1].pop("run_dir")  # deleted with the temporary folder
            if not args.json:
                print(f"seed {seed}: {rows[-1]['wall_s']} s, true return {rows[-1]['true_return']}", file=sys.stderr)
    walls = [row["wall_s"] for row in rows]
    returns = [row["true_return"] for row in rows]
    header = (f"config={args.config} seeds={args.seeds} cpus={os.cpu_count()}: wall {min(walls)}-{max(walls)} s, "
              f"true return {min(returns)}-{max(returns)}")
    print_rows(rows, args.json, header)
    return 0


def run_labels_bench(args: argparse.Namespace) -> int:
    from vlmrl.bench_labels import format_label_bench, run_label_bench

    rows = run_label_bench(args.endpoint, args.model, parse_ints(args.concurrency), n_pairs=args.pairs, frame_size=(args.frame_size, args.frame_size))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_label_bench(rows))
    return 0


def run_relabel_bench_command(args: argparse.Namespace) -> int:
    from vlmrl.errors import UserError

    try:
        from vlmrl.bench_relabel import run_relabel_bench
    except ImportError as error:
        raise UserError("bench relabel needs the offline extra: pip install 'vlmrl[offline]'") from error
    rows = []
    for kind in [k for k in args.kinds.split(",") if k]:
        for row in run_relabel_bench(frames=args.frames, kind=kind, size=args.size, root=args.root,
                                     engine=args.engine, workers=tuple(parse_ints(args.workers)),
                                     gpus_per_worker=args.gpus_per_worker, address=args.address, device=args.device):
            rows.append({"kind": kind, **{k: _tidy(v) for k, v in row.items()}})
    print_rows(rows, args.json, f"frames={args.frames} size={args.size}x{args.size} (read/label s summed over workers)")
    return 0


def _tidy(value):
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, 1) if abs(value) >= 10 else round(value, 2)
    return value


def print_rows(rows: list[dict], as_json: bool, header: str) -> None:
    if as_json:
        print(json.dumps({"setup": header, "rows": rows}, indent=2))
        return
    print(header)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = [max(len(c), *(len(str(row.get(c, ""))) for row in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row.get(c, "")).rjust(w) for c, w in zip(columns, widths)))
    sys.stdout.flush()
