"""``vlmrl relabel DATASET_ID --labeler CONFIG --out NEW_DATASET_ID``: give an offline dataset new rewards.

The labeler config (YAML) has the ``labeler:`` section of training configs, any registered kind:

- a per-frame labeler rewards every frame: ``oracle`` (the true reward, optionally scaled /
  noisy: validates the pipeline), ``clip`` (CLIP goal-baseline reward, VLM-RM), ``reward_model``
  (an already trained reward model's ensemble-mean reward);
- a pairwise labeler (``teacher``, ``openai``, ``hf``) runs Offline RL-VLM-F with the
  ``preference:`` section: sample ``budget`` random frame pairs (in rounds of
  ``pairs_per_round``), label them through the label store, fit a Bradley-Terry ensemble
  (``preference.net``, ``preference.fit``), and give every transition its ensemble-mean reward.

Example (``configs/pendulum_relabel_oracle_pref.yaml``)::

    labeler: {kind: teacher}
    preference:
      goal: to swing the pendulum up and balance it upright
      budget: 1000
      pairs_per_round: 100
      net: {kind: mlp, hidden_size: 64, ensemble_size: 3}
    reward_frame: current

Which frame rewards a transition: ``reward_frame: current`` uses the frame of the observation the
action was taken in (matches rewards that depend on the state, like Pendulum's);
``next`` uses the frame of the state reached (VLM-RM's convention; Minari datasets only).

The output is a NEW Minari dataset (datasets are immutable); its metadata (``vlmrl`` entry)
records the source dataset, the labeler config, the label store path and the label counts.

Resuming: work happens in ``<root>/.relabel-<id>/`` beside the output: chunk rewards are
checkpointed there (``chunks/chunk_<k>.npy``, each written atomically), the fitted reward model
too, and labels live in the label store. A killed relabel started again with the same arguments
continues where it stopped and produces a byte-identical dataset; the output directory appears
only at the end, by an atomic rename.

On Ray (``pip install 'vlmrl[ray]'``): add ``--engine ray --workers N`` (``--gpus-per-worker 1``
for one GPU per labeler actor, ``--address auto`` to join a ``ray start`` cluster). Same chunks,
same output; this process stays the only writer (chunk files, label store, dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vlmrl.config import RelabelConfig, load_relabel_config
from vlmrl.config_loading import to_plain
from vlmrl.errors import UserError
from vlmrl.relabel_core import (
    CORE_VERSION,
    ChunkPlan,
    FrameIndex,
    LabelerSpec,
    build_frame_index,
    label_chunks_locally,
    plan_chunks,
    reopenable_source,
)


@dataclass
class RelabelTimings:
    """Where a relabel's time went, in seconds. ``read_s``/``label_s`` are summed over workers
    (so with N workers they can exceed the wall time); ``write_s`` is the single writer saving
    chunk checkpoints; ``publish_s`` writes the new dataset. ``duplicates``: chunk results that
    arrived twice (a retried worker) and were dropped."""

    total_s: float = 0.0
    labels_s: float = 0.0
    read_s: float = 0.0
    label_s: float = 0.0
    write_s: float = 0.0
    publish_s: float = 0.0
    chunks: int = 0
    duplicates: int = 0


# -- the dataset-level driver --------------------------------------------------------------------


class WorkDir:
    """Checkpoints of one relabel, beside the output: ``<root>/.relabel-<id with / as __>/``."""

    def __init__(self, out_id: str, fingerprint: str) -> None:
        from vlmrl.datasets import datasets_root

        self.path = datasets_root() / f".relabel-{out_id.replace('/', '__')}"
        stamp = self.path / "fingerprint.txt"
        if self.path.exists() and (not stamp.is_file() or stamp.read_text() != fingerprint):
            shutil.rmtree(self.path)  # left by a different relabel under the same output id
        (self.path / "chunks").mkdir(parents=True, exist_ok=True)
        if not stamp.is_file():
            _atomic_write_bytes(stamp, fingerprint.encode())

    def chunk_path(self, index: int) -> Path:
        return self.path / "chunks" / f"chunk_{index:06d}.npy"

    def load_chunk(self, index: int) -> np.ndarray | None:
        path = self.chunk_path(index)
        return np.load(path) if path.is_file() else None

    def save_chunk(self, index: int, rewards: np.ndarray) -> None:
        tmp = path = self.chunk_path(index)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, rewards)
        os.replace(tmp, path)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def relabel(source_id: str, config: RelabelConfig, out_id: str, show_progress: bool = True,
            engine: Literal["local", "ray"] = "local", ray_options: Any = None,
            timings: RelabelTimings | None = None) -> Path:
    """Relabel ``source_id`` (Minari id or ``.npz`` path) into the new Minari dataset ``out_id``.

    ``engine``: ``local`` labels chunk after chunk in this process; ``ray`` labels them on a Ray
    cluster (``ray_options``: a :class:`vlmrl.relabel_ray.RayOptions`), with the same result.
    Either way this process is the only writer (chunk checkpoints, label store, dataset).
    Validates everything first: bad input raises :class:`UserError` with nothing written.
    ``timings``, when given, is filled in. Returns the published dataset directory.
    """
    from tqdm import tqdm

    from vlmrl.datasets import (
        MinariOfflineDataset,
        MinariWriter,
        check_dataset_id,
        dataset_dir,
        datasets_root,
        open_dataset,
        validate_dataset,
    )

    started = time.perf_counter()
    timings = timings if timings is not None else RelabelTimings()
    check_dataset_id(out_id)
    if dataset_dir(out_id).exists():
        raise UserError(f"dataset {out_id!r} already exists at {dataset_dir(out_id)}; datasets are immutable, pick a new --out")
    dataset = open_dataset(source_id)
    labeler = config.labeler
    if labeler.family == "pair":
        inputs = "observations" if config.preference.net.kind == "mlp" else "frames"
        need_frames = labeler.needs_frames or inputs == "frames"
    else:
        inputs = labeler.inputs
        need_frames = inputs == "frames"
    validate_dataset(dataset, config.frames_key, need_frames=need_frames)
    index = build_frame_index(dataset, config.frames_key, config.reward_frame, need_frames, inputs == "observations")
    label_chunks = label_chunks_locally
    if engine == "ray":
        from vlmrl.relabel_ray import connect, label_chunks_on_ray

        ray_options = connect(ray_options)  # fail on a bad --address or too few CPUs before any work
        label_chunks = partial(label_chunks_on_ray, options=ray_options)

    fingerprint = json.dumps({"core": CORE_VERSION, "source": str(source_id), "out": out_id,
                              "config": to_plain(config)}, sort_keys=True)
    work = WorkDir(out_id, fingerprint)
    label_info: dict[str, Any] = {}
    if labeler.family == "pair":
        from vlmrl.relabel_preferences import fit_preference_model

        labels_started = time.perf_counter()
        spec, label_info = fit_preference_model(dataset, config, index, work.path, show_progress, engine, ray_options)
        timings.labels_s = time.perf_counter() - labels_started
    elif labeler.kind == "reward_model":  # shipped by value: Ray workers need not see this path
        spec = LabelerSpec.for_reward_model(labeler.path, inputs, labeler.device)
        label_info = {"reward_model": labeler.path}
    else:
        spec = LabelerSpec(labeler, inputs, seed=config.seed)

    # Per-frame rewards, chunk by chunk; finished chunks are loaded back, never recomputed.
    n_chunks, pending = plan_chunks(index.total, config.chunk_size, lambda k: work.chunk_path(k).is_file())
    plan = ChunkPlan(reopenable_source(dataset), str(datasets_root().resolve()), config.frames_key, tuple(index.counts), pending)
    bar = tqdm(total=index.total, desc=f"relabel {out_id}", unit="frame", disable=not show_progress,
               initial=index.total - sum(stop - first for _, first, stop in pending))
    results = label_chunks(spec, plan, index)
    missing = {chunk for chunk, _, _ in pending}
    for result in results:
        if result.chunk not in missing:  # a retried worker's second answer: already saved
            timings.duplicates += 1
            continue
        write_started = time.perf_counter()
        work.save_chunk(result.chunk, result.rewards)
        timings.write_s += time.perf_counter() - write_started
        timings.read_s += result.read_s
        timings.label_s += result.label_s
        timings.chunks += 1
        missing.discard(result.chunk)
        bar.update(len(result.rewards))
    bar.close()
    if missing:
        raise RuntimeError(f"relabel engine {engine!r} returned no rewards for {len(missing)} chunk(s), e.g. "
                           f"{sorted(missing)[:5]}; run the same command again to finish them")
    per_frame = np.concatenate([work.load_chunk(chunk) for chunk in range(n_chunks)]) if n_chunks else np.empty(0, np.float32)

    # Publish: a new dataset written in the work dir, then renamed into place.
    publish_started = time.perf_counter()
    episode_rewards = index.split(per_frame)
    writer = MinariWriter(out_id, dataset.observation_space, dataset.action_space,
                          env_spec=_env_spec(dataset), staging=work.path / "staging")
    try:
        for episode, rewards in zip(dataset.episodes(), episode_rewards):
            frames, frames_from = None, None
            if isinstance(dataset, MinariOfflineDataset):
                if dataset.has_stored_frames():
                    frames_from = dataset.root / "frames" / f"episode_{episode.index}.npy"
            else:
                episode, frames = _pad_final_step(dataset, episode)
            writer.add_episode(episode, rewards=rewards, frames=frames, frames_from=frames_from)
        metadata = _output_metadata(dataset, source_id, config, label_info, index)
        target = writer.publish(metadata)
    except BaseException:
        writer.discard()
        raise
    work.remove()
    timings.publish_s = time.perf_counter() - publish_started
    timings.total_s = time.perf_counter() - started
    return target


def _pad_final_step(dataset: Any, episode: Any) -> tuple[Any, np.ndarray | None]:
    """An .npz episode lacks its final observation (and frame), which Minari stores: repeat the
    last one (it is never used as a transition's state)."""
    observations = np.concatenate([episode.observations, episode.observations[-1:]])
    frames = None
    if "frames" in dataset.array_keys:
        stored = np.asarray(dataset.frames(episode.index, "frames"))
        frames = np.concatenate([stored, stored[-1:]])
    return dataclasses.replace(episode, observations=observations), frames


def _output_metadata(dataset: Any, source_id: str, config: RelabelConfig, label_info: dict[str, Any],
                     index: FrameIndex) -> dict[str, Any]:
    parent = dataset.metadata
    inherited = {key: parent[key] for key in ("eval_env_spec", "ref_min_score", "ref_max_score") if key in parent}
    vlmrl_meta = {
        "source_dataset": str(source_id),
        "labeler": to_plain(config),
        "reward_frame": config.reward_frame,
        "frames_key": config.frames_key,
        "counts": {"episodes": len(index.counts), "transitions": int(sum(index.transitions)),
                   "frames_labelled": index.total, **label_info.pop("counts", {})},
        **label_info,
    }
    task = parent.get("vlmrl", {}).get("task")
    if task:
        vlmrl_meta["task"] = task
    if "frames" in parent.get("vlmrl", {}):
        vlmrl_meta["frames"] = parent["vlmrl"]["frames"]
    return {**inherited, "algorithm_name": f"vlmrl relabel ({config.labeler.kind})", "vlmrl": vlmrl_meta}


def _env_spec(dataset: Any) -> Any:
    spec = dataset.metadata.get("env_spec")
    if not spec:
        return None
    from gymnasium.envs.registration import EnvSpec

    try:
        return EnvSpec.from_json(spec)
    except Exception:  # a spec from another Gymnasium version: keep the spaces, drop the spec
        return None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- CLI -----------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "relabel",
        help="give an offline dataset new rewards (CLIP, VLM preferences, oracle) as a new dataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", help="source Minari dataset id (local) or an .npz file")
    parser.add_argument("--labeler", required=True,
                        help="labeler config YAML (labeler.kind: oracle|clip|reward_model per frame; teacher|openai|hf pairwise)")
    parser.add_argument("--out", required=True, help="id of the NEW dataset, e.g. pendulum/random-clip-v0")
    parser.add_argument("--frames-key", default=None,
                        help="where frames come from: 'frames' (stored), 'observations' (image obs) or a dict-obs key")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a labeler config key")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    scale = parser.add_argument_group(
        "Ray (pip install 'vlmrl[ray]')",
        "--engine ray labels chunks (and VLM preference pairs) on a Ray cluster; this process stays the only "
        "writer, and the output is the same dataset as --engine local. Workers read the dataset from its files: "
        "on several machines, MINARI_DATASETS_PATH must be a shared filesystem mounted at the same path.",
    )
    scale.add_argument("--engine", choices=("local", "ray"), default="local", help="where labelling runs (default: local)")
    scale.add_argument("--address", default=None,
                       help="Ray cluster: 'auto' (joins `ray start` on this machine), 'ray://HOST:10001' "
                            "(Ray client); default: start a local Ray instance")
    scale.add_argument("--workers", type=int, default=1, help="labeler actors, each loading the model once (default: 1)")
    scale.add_argument("--cpus-per-worker", type=float, default=None,
                       help="CPUs per actor (default: share the cluster's CPUs, at most 1 each)")
    scale.add_argument("--gpus-per-worker", type=float, default=0.0,
                       help="GPUs per actor, e.g. 1 (or 0.5 to share one); default: 0 (CPU)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    if args.frames_key is not None:
        overrides.append(f"frames_key={args.frames_key}")
    config = load_relabel_config(args.labeler, overrides)
    ray_options = None
    if args.engine == "ray":
        from vlmrl.relabel_ray import RayOptions

        ray_options = RayOptions(args.address, args.workers, args.cpus_per_worker, args.gpus_per_worker)
    path = relabel(args.dataset, config, args.out, show_progress=not args.no_progress, engine=args.engine,
                   ray_options=ray_options)
    print(f"wrote dataset {args.out} to {path}")
    return 0
