"""``vlmrl relabel ... --engine ray``: label on a Ray cluster, write in one process.

Per-frame rewards (every labeler kind) run as a Ray Data pipeline::

    chunk descriptors -> read tasks (frames from the dataset files, CPU)
                      -> labeler actors (one model load each; ``num_gpus`` per actor)
                      -> this process: the single writer of chunk checkpoints and the dataset

A chunk is the unit everywhere (``chunk_size`` frames, the same boundaries as the local
engine), so each chunk's rewards are computed by the same pure :func:`relabel_batch` call on the
same inputs as in a local run: the output is the same dataset. Ray restarts a killed actor and
retries its chunk; the writer keeps the first result per chunk and drops repeats, so no frame is
lost or counted twice, and a killed driver resumes from the saved chunks like a local relabel.

VLM preference pairs (``labeler.kind: openai`` or ``hf``) go the same
way: this process looks every pair up in the label store first, actors ask only about the
missing ones and return the answers, and this process commits them: the label store has one
writer. An ``openai`` actor keeps ``labeler.max_concurrency`` requests in flight; an ``hf``
actor loads the VLM once (on its GPU with ``--gpus-per-worker 1``) and generates
``labeler.batch_size`` pairs per batch.

Workers read the dataset from its files: on a multi-machine cluster, ``MINARI_DATASETS_PATH``
must be a filesystem every node mounts at the same path, and vlmrl must be installed on every node.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from vlmrl.errors import UserError
from vlmrl.relabel_core import (
    ChunkPlan,
    ChunkResult,
    FrameIndex,
    LabelerSpec,
    build_labeler_state,
    relabel_batch,
    reopenable_source,
)
from vlmrl.reward_labelers.registry import LabelerConfig

READ_TASK_CPUS = 0.25
"""CPUs one read task reserves: reading a chunk is a memory-mapped copy, mostly I/O."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run.

    Attributes:
        address: ``None`` starts a local Ray instance; ``"auto"`` joins the cluster this machine
            belongs to (``ray start``); ``"ray://host:10001"`` connects a Ray client.
        workers: labeler actors (each loads the model once).
        cpus_per_worker: CPUs each actor reserves (Ray also sets its thread count from it);
            None shares the cluster: ``min(1, (CPUs - READ_TASK_CPUS) / workers)``.
        gpus_per_worker: GPUs each actor reserves (fractions share a GPU); 0 runs on CPU.
    """

    address: str | None = None
    workers: int = 1
    cpus_per_worker: float | None = None
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise UserError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise UserError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")


def connect(options: RayOptions) -> RayOptions:
    """Start or join Ray (unless this process already did) and check the cluster can hold the
    actors plus a read task: otherwise the pipeline would wait forever for resources.

    Returns ``options`` with ``cpus_per_worker`` resolved.
    """
    try:
        import ray
    except ImportError as error:
        raise UserError("--engine ray needs Ray: pip install 'vlmrl[ray]'") from error
    if not ray.is_initialized():
        _check_reachable(options.address)
        try:
            ray.init(address=options.address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise UserError(
                f"--address {options.address!r}: cannot reach a Ray cluster ({error}); start one with "
                "`ray start --head`, or leave --address out to run a local one"
            ) from error
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if options.cpus_per_worker is None:
        share = math.floor(100 * max(cpus - READ_TASK_CPUS, 0.0) / options.workers) / 100  # never round up
        options = dataclasses.replace(options, cpus_per_worker=min(1.0, share) or 0.01)
    need_cpus = options.workers * options.cpus_per_worker + READ_TASK_CPUS
    if need_cpus > cpus:
        raise UserError(
            f"the Ray cluster has {cpus:g} CPUs; --workers {options.workers} x --cpus-per-worker "
            f"{options.cpus_per_worker:g} plus {READ_TASK_CPUS:g} for reading need {need_cpus:g}: "
            "lower --workers or --cpus-per-worker"
        )
    if options.workers * options.gpus_per_worker > gpus:
        raise UserError(
            f"the Ray cluster has {gpus:g} GPUs; --workers {options.workers} x --gpus-per-worker "
            f"{options.gpus_per_worker:g} need {options.workers * options.gpus_per_worker:g}"
        )
    _quiet_ray_data()
    return options


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody listens on: Ray itself retries for minutes."""
    if address is None or address == "auto" or ":" not in address:
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as error:
        raise UserError(
            f"--address {address!r}: nothing answers at {host}:{port} ({error}); start the cluster with "
            "`ray start --head` (port 6379; Ray client: 10001), or leave --address out to run a local one"
        ) from error


def _quiet_ray_data() -> None:
    import ray
    from ray.util.debug import log_once

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows one tqdm bar, as the local engine does
    context.print_on_execution_start = False
    context.execution_options.preserve_order = False  # results are keyed by chunk: any order will do
    log_once("ray_data_progress_manager_disabled")  # spends Ray's one-time "bars disabled" warning
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-run INFO lines; full logs stay in /tmp/ray


def _actor_args(options: RayOptions, n_batches: int) -> dict[str, Any]:
    """Ray Data arguments of a pool of ``options.workers`` actors (fewer when there are only
    ``n_batches`` batches: an actor without work would load its model for nothing)."""
    import ray

    return {
        "compute": ray.data.ActorPoolStrategy(size=max(1, min(options.workers, n_batches))),
        "num_cpus": options.cpus_per_worker,
        "num_gpus": options.gpus_per_worker,
        # Nothing about retries: Ray Data's actor pools already restart a killed actor and retry
        # its batch without limit (max_restarts=-1, max_task_retries=-1); tests kill one to check.
    }


@lru_cache(maxsize=4)
def _open_dataset(datasets_root: str, source: str) -> Any:
    from vlmrl.datasets import open_dataset

    # A worker process may not share the driver's environment: point it at the driver's root.
    os.environ["MINARI_DATASETS_PATH"] = datasets_root
    return open_dataset(source)


# -- per-frame rewards ---------------------------------------------------------------------------


def _read_chunk_inputs(batch: dict[str, np.ndarray], plan: ChunkPlan, inputs: str) -> dict[str, np.ndarray]:
    """Read task: one chunk descriptor in, the chunk's frames (uint8 ``[1, n, H, W, 3]``) out."""
    started = time.perf_counter()
    dataset = _open_dataset(plan.datasets_root, plan.source)
    first, stop = int(batch["first"][0]), int(batch["stop"][0])
    out = dict(batch)
    frames = plan.read_inputs(dataset, first, stop, inputs)
    if frames is not None:
        out["frames"] = frames[None]
    out["read_s"] = np.array([time.perf_counter() - started])
    return out


class _ChunkLabeler:
    """Ray Data actor: builds the labeler once, then labels one chunk per call."""

    def __init__(self, spec: LabelerSpec) -> None:
        self.state = build_labeler_state(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        chunk = int(batch["chunk"][0])
        rewards = relabel_batch(
            self.state,
            batch["frames"][0] if "frames" in batch else None,
            np.asarray(batch["true_rewards"][0], dtype=np.float32),
            np.asarray(batch["observations"][0], dtype=np.float32) if "observations" in batch else None,
            chunk,
        )
        return {"chunk": np.array([chunk]), "rewards": rewards[None], "read_s": batch["read_s"],
                "label_s": np.array([time.perf_counter() - started])}


def label_chunks_on_ray(spec: LabelerSpec, plan: ChunkPlan, index: FrameIndex,
                        options: RayOptions) -> Iterator[ChunkResult]:
    """Rewards of every chunk in ``plan``, in the order they finish (see the module docstring)."""
    import ray

    if not plan.chunks:
        return
    options = connect(options)
    rows = []
    for chunk, first, stop in plan.chunks:
        row = {"chunk": chunk, "first": first, "stop": stop, "true_rewards": index.true_rewards[first:stop]}
        if index.observations is not None and spec.inputs == "observations":
            row["observations"] = index.observations[first:stop]
        rows.append(row)
    # One chunk per block: chunks never merge or split, whatever Ray's block sizing would do.
    data = ray.data.from_items(rows, override_num_blocks=len(rows))
    data = data.map_batches(_read_chunk_inputs, fn_kwargs={"plan": plan, "inputs": spec.inputs},
                            batch_size=1, batch_format="numpy", num_cpus=READ_TASK_CPUS)
    data = data.map_batches(_ChunkLabeler, fn_constructor_kwargs={"spec": spec}, batch_size=1,
                            batch_format="numpy", **_actor_args(options, len(rows)))
    for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["chunk"])):
            yield ChunkResult(int(batch["chunk"][i]), np.asarray(batch["rewards"][i], dtype=np.float32),
                              float(batch["read_s"][i]), float(batch["label_s"][i]))


# -- VLM preference pairs ------------------------------------------------------------------------


class _PairAsker:
    """Ray Data actor: one endpoint client (no label store), asks about a batch of pairs."""

    def __init__(self, labeler: LabelerConfig, goal: str, datasets_root: str, source: str,
                 frames_key: str | None, counts: list[int]) -> None:
        self.labeler = labeler.create(store=None)  # an HF VLM loads here, once
        self.goal = goal
        self.dataset = _open_dataset(datasets_root, source)
        self.frames_key = frames_key
        self.counts = counts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vlmrl.datasets import gather_frames

        first = gather_frames(self.dataset, self.frames_key, batch["first_index"], self.counts)
        second = gather_frames(self.dataset, self.frames_key, batch["second_index"], self.counts)
        outcomes = self.labeler.ask_many(first, second, self.goal)
        column = lambda name: np.array([getattr(o, name) for o in outcomes], dtype=object)  # noqa: E731
        return {
            "key": batch["key"],
            "status": column("status"),
            "label": np.array([o.label for o in outcomes], dtype=np.float64),
            "analysis": column("analysis"),
            "answer": column("answer"),
            "error": column("error"),
            "requests": np.array([o.requests for o in outcomes], dtype=np.int64),
            "p_first": np.array([np.nan if o.p_first is None else o.p_first for o in outcomes], dtype=np.float64),
            "p_second": np.array([np.nan if o.p_second is None else o.p_second for o in outcomes], dtype=np.float64),
        }


def label_pairs_on_ray(labeler: Any, labeler_config: LabelerConfig, goal: str, dataset: Any, frames_key: str | None,
                       pairs: list[np.ndarray], true_rewards: np.ndarray, options: RayOptions,
                       show_progress: bool = True) -> list[np.ndarray]:
    """Preference labels of every round of ``pairs`` (int ``[n, 2]`` global frame indices each):
    ``(labels, p_first, p_second)``, float32 ``[n]`` each per round, exactly as
    ``labeler.compare_with_confidence`` would give them round by round.

    ``labeler`` (with the label store) plans and records in this process; Ray actors each build
    ``labeler_config``'s labeler (without a store) and ask.
    """
    import ray
    from tqdm import tqdm

    from vlmrl.datasets import datasets_root, frame_counts, gather_frames
    from vlmrl.reward_labelers.preference import PairOutcome

    options = connect(options)
    counts = frame_counts(dataset, frames_key)
    plans, first_seen = [], {}
    for round_index, batch in enumerate(pairs):
        first = gather_frames(dataset, frames_key, batch[:, 0], counts)
        second = gather_frames(dataset, frames_key, batch[:, 1], counts)
        plan = labeler.plan(first, second, goal, (true_rewards[batch[:, 0]], true_rewards[batch[:, 1]]))
        plans.append(plan)
        for key, indices in plan.to_ask.items():
            first_seen.setdefault(key, (round_index, indices[0]))
    if not first_seen:
        return [(plan.labels, plan.p_first, plan.p_second) for plan in plans]

    rows = [{"key": key, "first_index": int(pairs[r][i, 0]), "second_index": int(pairs[r][i, 1])}
            for key, (r, i) in first_seen.items()]
    per_actor = labeler_config.pairs_in_flight
    n_batches = -(-len(rows) // per_actor)
    data = ray.data.from_items(rows, override_num_blocks=n_batches)
    data = data.map_batches(
        _PairAsker,
        fn_constructor_kwargs={"labeler": labeler_config, "goal": goal, "datasets_root": str(datasets_root().resolve()),
                               "source": reopenable_source(dataset), "frames_key": frames_key, "counts": counts},
        batch_size=per_actor, batch_format="numpy", **_actor_args(options, n_batches),
    )
    bar = tqdm(total=len(rows), desc="preference labels", unit="pair", disable=not show_progress)
    recorded: set[str] = set()
    for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["key"])):
            key = str(batch["key"][i])
            if key in recorded:  # a retried actor's second answer: the first one is in the store
                continue
            outcome = PairOutcome(str(batch["status"][i]), float(batch["label"][i]), _text(batch["analysis"][i]),
                                  _text(batch["answer"][i]), _text(batch["error"][i]), int(batch["requests"][i]),
                                  _probability(batch["p_first"][i]), _probability(batch["p_second"][i]))
            round_index, pair = first_seen[key]
            # Read again for the thumbnails rather than kept since planning: a whole budget of
            # frames need not fit in memory.
            frames = gather_frames(dataset, frames_key, pairs[round_index][pair], counts)
            labeler.record(plans[round_index], key, outcome, frames[0], frames[1])
            # The same pair sampled again in a later round gets the same answer (the local engine
            # would find it in the store by then).
            for later in plans[round_index + 1:]:
                if key in later.to_ask:
                    later.labels[later.to_ask[key]] = outcome.label
                    later.p_first[later.to_ask[key]] = np.nan if outcome.p_first is None else outcome.p_first
                    later.p_second[later.to_ask[key]] = np.nan if outcome.p_second is None else outcome.p_second
            recorded.add(key)
            bar.update(1)
    bar.close()
    if len(recorded) != len(rows):
        raise RuntimeError(f"Ray returned answers for {len(recorded)} of {len(rows)} pairs; run the same command "
                           "again: the answers already stored are not asked for again")
    return [(plan.labels, plan.p_first, plan.p_second) for plan in plans]


def _probability(value: Any) -> float | None:
    return None if np.isnan(value) else float(value)


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
