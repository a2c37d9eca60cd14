"""``vlmrl bench relabel``: offline relabelling throughput, memory, and where the time goes.

A synthetic Minari dataset of random frames is written once (streamed to disk, never all in
memory), then relabelled end to end by each engine setting; rows report frames/s, the driver's
peak RSS and the seconds spent per stage (read = decode frames from disk, label = model
forward, write = chunk checkpoints, publish = the new dataset).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SOURCE_ID = "bench/source-v0"


def write_random_dataset(dataset_id: str, frames: int, size: int, episode_length: int = 1000, seed: int = 0) -> None:
    """A Minari dataset (in ``MINARI_DATASETS_PATH``) of ``frames`` random uint8 ``size`` x
    ``size`` frames in episodes of ``episode_length`` steps, with zero rewards and random
    3-d observations; frames are generated and written 256 at a time."""
    import gymnasium as gym

    from vlmrl.datasets import EpisodeData, MinariWriter

    obs_space = gym.spaces.Box(-1, 1, shape=(3,), dtype=np.float32)
    act_space = gym.spaces.Box(-1, 1, shape=(1,), dtype=np.float32)
    writer = MinariWriter(dataset_id, obs_space, act_space)
    rng = np.random.default_rng(seed)
    remaining, episode = frames, 0
    while remaining > 0:
        n_frames = min(episode_length + 1, remaining) if remaining > 1 else 2
        steps = n_frames - 1
        out = writer.open_frames(n_frames, size, size)
        for start in range(0, n_frames, 256):
            stop = min(start + 256, n_frames)
            out[start:stop] = rng.integers(0, 256, size=(stop - start, size, size, 3), dtype=np.uint8)
        out.flush()
        del out
        truncated = np.eye(1, steps, steps - 1, dtype=bool)[0]
        writer.add_episode(EpisodeData(episode, rng.standard_normal((steps + 1, 3)).astype(np.float32),
                                       rng.standard_normal((steps, 1)).astype(np.float32),
                                       np.zeros(steps), np.zeros(steps, bool), truncated), frames_from=None)
        remaining -= n_frames
        episode += 1
    writer.publish({})


@contextmanager
def temporary_datasets_root(root: str | Path | None) -> Iterator[Path]:
    """A temporary datasets root (under ``root`` if given), set as ``MINARI_DATASETS_PATH``."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    with tempfile.TemporaryDirectory(dir=root) as folder:
        os.environ["MINARI_DATASETS_PATH"] = folder
        try:
            yield Path(folder)
        finally:
            if previous is None:
                os.environ.pop("MINARI_DATASETS_PATH", None)
            else:
                os.environ["MINARI_DATASETS_PATH"] = previous


def bench_config(kind: str, bench_root: Path, chunk_size: int, clip_model: str, device: str) -> Any:
    """The relabel config of a bench kind: ``reward_net`` (an untrained RL-VLM-F CNN ensemble of
    3, input 64 px) or ``clip`` (randomly initialised open_clip ``clip_model``: the compute of
    real weights)."""
    from vlmrl.config import ClipConfig, RelabelConfig, RewardModelConfig

    if kind == "clip":
        return RelabelConfig(chunk_size=chunk_size, labeler=ClipConfig(
            goal_prompts=("a pole upright",), baseline_prompts=("a pole",), model=clip_model, pretrained=None,
            device=device))
    if kind != "reward_net":
        raise ValueError(f"bench kind must be reward_net or clip, got {kind!r}")
    from vlmrl.reward_nets import RewardModel, RewardNetConfig

    model_path = bench_root / "bench_reward_model"
    RewardModel(RewardNetConfig(kind="cnn", input_size=64), ensemble_size=3, device=device).save(model_path)
    return RelabelConfig(chunk_size=chunk_size, labeler=RewardModelConfig(path=str(model_path), device=device))


def run_relabel_bench(frames: int, kind: str = "reward_net", size: int = 224, chunk_size: int = 256,
                      episode_length: int = 1000, root: str | Path | None = None, clip_model: str = "ViT-S-32",
                      device: str = "cpu", engine: str = "local", workers: tuple[int, ...] = (1,),
                      gpus_per_worker: float = 0.0, address: str | None = None) -> list[dict[str, float]]:
    """Relabel one synthetic dataset once per setting: ``engine: local`` (one row) or ``ray``
    (one row per entry of ``workers``). Returns rows with frames/s (end to end; with Ray, the
    actors' start-up and model loads are included, the cluster's start-up is not), the driver's
    peak RSS (MB) and per-stage seconds."""
    from vlmrl.relabel import RelabelTimings, relabel

    settings = [(engine, 1)] if engine == "local" else [(engine, n) for n in workers]
    rows = []
    with temporary_datasets_root(root) as bench_root:
        write_random_dataset(SOURCE_ID, frames, size, episode_length)
        config = bench_config(kind, bench_root, chunk_size, clip_model, device)
        for i, (engine_name, n_workers) in enumerate(settings):
            options = None
            if engine_name == "ray":
                from vlmrl.relabel_ray import RayOptions, connect

                options = RayOptions(address=address, workers=n_workers, gpus_per_worker=gpus_per_worker)
                connect(options)  # the cluster's own start-up is not the relabel's; actor start-up is
            timings = RelabelTimings()
            start = time.perf_counter()
            relabel(SOURCE_ID, config, f"bench/relabelled-{i}-v0", show_progress=False, engine=engine_name,
                    ray_options=options, timings=timings)
            seconds = time.perf_counter() - start
            rows.append({
                "engine": engine_name,
                "workers": n_workers,
                "frames": frames,
                "seconds": seconds,
                "frames_per_s": frames / seconds,
                "read_s": timings.read_s,
                "label_s": timings.label_s,
                "write_s": timings.write_s,
                "publish_s": timings.publish_s,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            })
    return rows
