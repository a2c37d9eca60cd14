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
only at the end, by an atomic rename. A relabel stopped by an error or Ctrl-C keeps that folder
and says how to resume or discard it; one that fails on bad input leaves nothing behind.

Checked before the first frame is labelled: the output id is new and its location writable,
the dataset is readable (a truncated HDF5 file or a corrupt metadata.json is named) with
episodes of at least one step, and the labeler's weights load. One writer per output: the work
folder holds a lock file (pid, host, start time); a second relabel of the same ``--out`` stops
at once naming the first one's pid, and a lock left by a killed relabel is taken over.

On Ray (``pip install 'vlmrl[ray]'``): add ``--engine ray --workers N`` (``--gpus-per-worker 1``
for one GPU per labeler actor, ``--address auto`` to join a ``ray start`` cluster). Same chunks,
same output; this process stays the only writer (chunk files, label store, dataset).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vlmrl.config import RelabelConfig, load_relabel_config
from vlmrl.config_loading import to_plain
from vlmrl.errors import UserError, first_line
from vlmrl.relabel_core import (
    CORE_VERSION,
    ChunkPlan,
    FrameIndex,
    LabelerSpec,
    atomic_write_bytes,
    build_frame_index,
    build_labeler_state,
    check_labeler_loads,
    label_chunks_locally,
    plan_chunks,
    reopenable_source,
)
from vlmrl.stopping import StopRequest


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

WORK_PROGRESS = ("chunks/chunk_*.npy", "reward_model.json", "labels.json")
"""What a killed relabel leaves worth resuming from (anything else in a work folder is cheap)."""


class WorkDir:
    """Checkpoints of one relabel, beside the output: ``<root>/.relabel-<id with / as __>/``.

    It also holds the lock (``lock``) that makes this process the only writer of the output:
    :meth:`claim` takes it before anything else is written; a second relabel of the same ``--out``
    stops at once with the owner's pid, and a lock left by a killed relabel is taken over.
    """

    LOCK = "lock"
    STAMP = "fingerprint.txt"

    def __init__(self, out_id: str) -> None:
        from vlmrl.datasets import datasets_root
        from vlmrl.locks import OutputLock

        self.out_id = out_id
        self.path = datasets_root() / f".relabel-{out_id.replace('/', '__')}"
        self.lock = OutputLock(self.path / self.LOCK, "relabel", out_id,
                               hint="once it has stopped, the same command resumes its work")

    def resume_hint(self) -> str:
        return (f"the work done so far is kept in {self.path}: run the same command again to resume, "
                f"or delete that folder to discard it")

    def claim(self) -> None:
        """Create the folder if needed and take the lock (a :class:`UserError` if another relabel holds it)."""
        self.lock.acquire()
        if self.lock.took_over:
            print(f"vlmrl relabel: taking over {self.path} from relabel pid {self.lock.took_over.get('pid')}, "
                  "which is no longer running", file=sys.stderr)

    def prepare(self, fingerprint: str) -> int:
        """Make the folder this relabel's: work of a different relabel under the same output id
        is cleared. Returns the number of chunks already saved (resumed)."""
        stamp = self.path / self.STAMP
        foreign = stamp.read_text() != fingerprint if stamp.is_file() else self.has_progress()
        if foreign:
            print(f"vlmrl relabel: discarding {self.path}: it holds the work of a different relabel "
                  "(another source or labeler config) to the same output", file=sys.stderr)
            self._clear()
        try:
            (self.path / "chunks").mkdir(parents=True, exist_ok=True)
            if not stamp.is_file():
                atomic_write_bytes(stamp, fingerprint.encode())
        except OSError as error:
            raise UserError(f"cannot write the relabel work folder {self.path} ({error.strerror})") from error
        return len(list((self.path / "chunks").glob("chunk_*.npy")))

    def has_progress(self) -> bool:
        """Whether the folder holds labelling work that a rerun would resume from."""
        return any(next(self.path.glob(pattern), None) is not None for pattern in WORK_PROGRESS)

    def chunk_path(self, index: int) -> Path:
        return self.path / "chunks" / f"chunk_{index:06d}.npy"

    def load_chunk(self, index: int) -> np.ndarray | None:
        path = self.chunk_path(index)
        return np.load(path) if path.is_file() else None

    def save_chunk(self, index: int, rewards: np.ndarray) -> None:
        path = self.chunk_path(index)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        try:
            np.save(tmp, rewards)
            os.replace(tmp, path)
        except OSError as error:  # a full disk, the folder made read-only mid-run
            tmp.unlink(missing_ok=True)
            raise UserError(f"cannot save chunk {index} to {path} ({error.strerror})") from error

    def remove(self) -> None:
        """Delete the work (the lock last, so no other relabel starts on a half-deleted folder)."""
        self._clear()
        self.release()

    def release(self) -> None:
        """Give up the lock; the folder goes too if nothing else is left in it."""
        self.lock.release()
        try:
            self.path.rmdir()
        except OSError:
            pass  # work kept for a resume, or another relabel's lock appeared meanwhile

    def _clear(self) -> None:
        for entry in self.path.iterdir() if self.path.is_dir() else ():
            if entry.name.startswith(self.LOCK):
                continue  # our lock (and a takeover guard) stay until release
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def relabel(source_id: str, config: RelabelConfig, out_id: str, show_progress: bool = True,
            engine: Literal["local", "ray"] = "local", ray_options: Any = None,
            timings: RelabelTimings | None = None) -> Path:
    """Relabel ``source_id`` (Minari id or ``.npz`` path) into the new Minari dataset ``out_id``.

    ``engine``: ``local`` labels chunk after chunk in this process; ``ray`` labels them on a Ray
    cluster (``ray_options``: a :class:`vlmrl.relabel_ray.RayOptions`), with the same result.
    Either way this process is the only writer (chunk checkpoints, label store, dataset).

    Validates everything before the first frame is labelled (output id and location writable,
    no other relabel writing it, dataset readable with episodes of >= 1 step, labeler weights
    loadable): bad input raises :class:`UserError` and leaves nothing behind. A run that fails
    or is stopped after labelling started keeps its work folder for a resume, and says so.
    ``timings``, when given, is filled in. Returns the published dataset directory.
    """
    from vlmrl.datasets import check_output_dataset

    started = time.perf_counter()
    timings = timings if timings is not None else RelabelTimings()
    check_output_dataset(out_id)
    store = _label_store_path(config)
    if store is not None:
        from vlmrl.relabel_preferences import check_label_store

        check_label_store(store)
        if engine == "local":  # on Ray the actors ask, maybe from machines that see another network
            config.labeler.preflight()  # one cheap request: a dead or refusing endpoint stops us in seconds
    # A store (and its folder) this run creates goes again if the run fails before any label.
    new_store = [path for path in (store.parent, store) if not path.exists()] if store is not None else []
    work = WorkDir(out_id)
    work.claim()
    try:
        with StopRequest() as stop:  # SIGTERM / SIGINT: stop after the chunk being saved
            target = _relabel_claimed(source_id, config, out_id, work, show_progress, engine, ray_options, timings,
                                      stop)
    except BaseException as error:
        _after_failure(work, error, new_store)
        raise
    work.remove()
    timings.total_s = time.perf_counter() - started
    return target


def _relabel_claimed(source_id: str, config: RelabelConfig, out_id: str, work: WorkDir, show_progress: bool,
                     engine: str, ray_options: Any, timings: RelabelTimings, stop: StopRequest) -> Path:
    """:func:`relabel` once this process holds the output's work folder."""
    from vlmrl.datasets import dataset_dir, open_dataset, validate_dataset

    if dataset_dir(out_id).exists():  # published by another relabel while we started
        raise UserError(f"dataset {out_id!r} already exists at {dataset_dir(out_id)}; datasets are immutable, pick a new --out")
    dataset = open_dataset(source_id)
    inputs, need_frames = _labeler_inputs(config)
    validate_dataset(dataset, config.frames_key, need_frames=need_frames)
    index = build_frame_index(dataset, config.frames_key, config.reward_frame, need_frames, inputs == "observations")
    label_chunks, ray_options = _chunk_engine(config, inputs, engine, ray_options)

    fingerprint = json.dumps({"core": CORE_VERSION, "source": str(source_id), "out": out_id,
                              "config": to_plain(config)}, sort_keys=True)
    resumed = work.prepare(fingerprint)
    if resumed:
        print(f"vlmrl relabel: resuming from {work.path} ({resumed} chunk(s) already labelled)", file=sys.stderr)
    label_info: dict[str, Any] = {}
    if config.labeler.family == "pair":
        from vlmrl.relabel_preferences import fit_preference_model

        labels_started = time.perf_counter()
        spec, label_info = fit_preference_model(dataset, config, index, work.path, show_progress, engine, ray_options)
        timings.labels_s = time.perf_counter() - labels_started
        label_chunks = _engine_for_spec(spec, engine, ray_options)
    elif config.labeler.kind == "reward_model":
        label_info = {"reward_model": config.labeler.path}

    per_frame = _label_all_frames(label_chunks, dataset, config, index, work, out_id, show_progress, engine, timings,
                                  stop)
    publish_started = time.perf_counter()
    target = _publish(dataset, source_id, config, label_info, index, per_frame, out_id, work)
    timings.publish_s = time.perf_counter() - publish_started
    return target


def _labeler_inputs(config: RelabelConfig) -> tuple[str, bool]:
    """What each labelled item is (``frames``, ``observations``, ``none``) and whether frames are read."""
    labeler = config.labeler
    if labeler.family == "pair":
        inputs = "observations" if config.preference.net.kind == "mlp" else "frames"
        return inputs, labeler.needs_frames or inputs == "frames"
    return labeler.inputs, labeler.inputs == "frames"


def _chunk_engine(config: RelabelConfig, inputs: str, engine: str, ray_options: Any) -> tuple[Any, Any]:
    """The ``label_chunks`` function for a per-frame labeler, its weights loaded (or, on Ray,
    looked up) now, before any work; for a pairwise labeler None (its reward model comes from the
    fit). Also connects to Ray, failing on a bad ``--address`` or too few CPUs."""
    if engine == "ray":
        from vlmrl.relabel_ray import connect

        ray_options = connect(ray_options)
    labeler = config.labeler
    if labeler.family == "pair":
        return None, ray_options
    if labeler.kind == "reward_model":  # shipped by value: Ray workers need not see this path
        spec = LabelerSpec.for_reward_model(labeler.path, inputs, labeler.device)
    else:
        spec = LabelerSpec(labeler, inputs, seed=config.seed)
    return _engine_for_spec(spec, engine, ray_options, preflight=True), ray_options


def _engine_for_spec(spec: LabelerSpec, engine: str, ray_options: Any, preflight: bool = False) -> Any:
    """``label_chunks(plan, index)`` for ``spec``; with ``preflight`` its labeler is checked first."""
    if engine == "ray":
        from vlmrl.relabel_ray import label_chunks_on_ray

        if preflight:
            check_labeler_loads(spec)
        return partial(label_chunks_on_ray, spec, options=ray_options)
    return partial(label_chunks_locally, spec, state=build_labeler_state(spec))


def _label_all_frames(label_chunks: Any, dataset: Any, config: RelabelConfig, index: FrameIndex, work: WorkDir,
                      out_id: str, show_progress: bool, engine: str, timings: RelabelTimings,
                      stop: StopRequest) -> np.ndarray:
    """Per-frame rewards, chunk by chunk; finished chunks are loaded back, never recomputed."""
    from tqdm import tqdm

    from vlmrl.datasets import datasets_root

    n_chunks, pending = plan_chunks(index.total, config.chunk_size, lambda k: work.chunk_path(k).is_file())
    plan = ChunkPlan(reopenable_source(dataset), str(datasets_root().resolve()), config.frames_key, tuple(index.counts), pending)
    bar = tqdm(total=index.total, desc=f"relabel {out_id}", unit="frame", disable=not show_progress,
               initial=index.total - sum(stop - first for _, first, stop in pending))
    missing = {chunk for chunk, _, _ in pending}
    for result in label_chunks(plan, index):
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
        if stop.requested:
            bar.close()
            raise stop.stopped(f"stopped by {stop.name} after saving chunk {result.chunk}")
    bar.close()
    if missing:
        raise RuntimeError(f"relabel engine {engine!r} returned no rewards for {len(missing)} chunk(s), e.g. "
                           f"{sorted(missing)[:5]}; run the same command again to finish them")
    if not n_chunks:
        return np.empty(0, np.float32)
    return np.concatenate([work.load_chunk(chunk) for chunk in range(n_chunks)])


def _publish(dataset: Any, source_id: str, config: RelabelConfig, label_info: dict[str, Any], index: FrameIndex,
             per_frame: np.ndarray, out_id: str, work: WorkDir) -> Path:
    """Write the new dataset in the work folder, then rename it into place."""
    from vlmrl.datasets import MinariOfflineDataset, MinariWriter

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
        return writer.publish(metadata)
    except OSError as error:  # h5py / numpy writes: a full disk, a folder made read-only mid-run
        writer.discard()
        raise UserError(f"cannot write dataset {out_id!r} in {writer.staging} ({first_line(error)})") from error
    except BaseException:
        writer.discard()
        raise


def _after_failure(work: WorkDir, error: BaseException, new_store: list[Path]) -> None:
    """Clean up after a relabel that stopped. Labelling work is kept for a resume, and the error
    says so; a run that stopped before saving any (bad input, typically) leaves nothing behind:
    no work folder, no lock, no label store it created that holds no label.

    ``new_store``: the label store and/or its folder, where they did not exist before the run."""
    if new_store:
        _remove_if_empty_store(new_store)
    if not work.has_progress():
        work.remove()
        return
    work.release()
    if isinstance(error, UserError):
        raise UserError(f"{error}; {work.resume_hint()}") from error
    print(f"vlmrl relabel: stopped; {work.resume_hint()}", file=sys.stderr)


def _label_store_path(config: RelabelConfig) -> Path | None:
    """The label store a pairwise relabel writes (None for per-frame labelers)."""
    if config.labeler.family != "pair":
        return None
    from vlmrl.relabel_preferences import label_store_path

    return label_store_path(config.preference)


def _remove_if_empty_store(created: list[Path]) -> None:
    """Delete the label store (last of ``created``) if it holds no label, with SQLite's side
    files, and its folder where this run created it (first of ``created``) and it is empty."""
    import sqlite3

    store = created[-1]
    if store.is_file():
        try:
            with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as connection:
                rows = connection.execute("SELECT count(*) FROM labels").fetchone()[0]
        except sqlite3.Error:
            rows = 0  # created but never initialised: nothing in it
        if rows:
            return
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{store}{suffix}").unlink(missing_ok=True)
    if len(created) == 2:
        try:
            created[0].rmdir()
        except OSError:
            pass  # not empty


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
