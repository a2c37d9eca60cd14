"""The pure core of ``vlmrl relabel``: frame numbering, chunk planning and the labelling step.

Both engines use it: the local one (:func:`label_chunks_locally`, here) and Ray
(``vlmrl.relabel_ray.label_chunks_on_ray``); both have the signature
``label_chunks(spec, plan, index) -> Iterator[ChunkResult]`` and run the same
:func:`relabel_batch` on the same chunks, so they produce the same rewards. Nothing here writes
files: the driver (``vlmrl.relabel``) is the only writer.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vlmrl.errors import UserError
from vlmrl.reward_labelers.registry import LabelerConfig

CORE_VERSION = 1  # bump when relabel output for the same inputs changes

Inputs = Literal["frames", "observations", "none"]


# -- what to label with ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelerSpec:
    """How to build the per-frame labeler in any process: its config (picklable) and, for a
    reward model, the bytes of its files, never a loaded model, so a Ray worker loads its own
    copy (on its own GPU).

    Attributes:
        labeler: a per-frame labeler config (``family == "frame"``).
        inputs: what each item is: ``frames``, ``observations`` or ``none`` (true rewards only).
        seed: seeds stochastic labelers, per chunk (see :func:`relabel_batch`).
        files: ``{file name: bytes}`` written to a temporary folder before ``create`` (a reward
            model's ``model.json`` and ``model.safetensors``; the config's path names them).
    """

    labeler: LabelerConfig
    inputs: Inputs
    seed: int = 0
    files: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def for_reward_model(cls, path: Path | str, inputs: Inputs, device: str) -> LabelerSpec:
        """A spec that ships the saved reward model at ``path`` (no suffix) by value."""
        from vlmrl.reward_model_labeler import RewardModelConfig
        from vlmrl.reward_nets import model_files

        files = []
        for name, file in zip(("model.json", "model.safetensors"), model_files(path)):
            try:
                files.append((name, file.read_bytes()))
            except OSError as error:
                raise UserError(f"labeler.path: cannot read reward model file {file} ({error.strerror}); a saved "
                                f"model is a pair {path}.json + {path}.safetensors") from error
        return cls(RewardModelConfig(path="model", device=device), inputs, files=tuple(files))


@dataclass(frozen=True)
class LabelerState:
    """A :class:`LabelerSpec` with its labeler built in this process (see :func:`build_labeler_state`)."""

    spec: LabelerSpec
    labeler: Any


def build_labeler_state(spec: LabelerSpec) -> LabelerState:
    """Load the labeler a spec describes (CLIP weights, a reward model) in this process.

    Raises:
        UserError: (e.g. :class:`~vlmrl.errors.MissingWeightsError`) weights missing or corrupt;
            the driver calls this before any work, so a bad config costs seconds.
    """
    if not spec.files:
        return LabelerState(spec, spec.labeler.create(seed=spec.seed))
    with tempfile.TemporaryDirectory(prefix="vlmrl-labeler-") as folder:
        for name, data in spec.files:
            Path(folder, name).write_bytes(data)
        config = replace(spec.labeler, path=str(Path(folder) / spec.labeler.path))
        return LabelerState(spec, config.create(seed=spec.seed))


def check_labeler_loads(spec: LabelerSpec) -> None:
    """Check, without keeping it, that the labeler of ``spec`` can be built: for engines that
    load it elsewhere (Ray actors). Reward models are small: loaded here on the CPU. CLIP
    checkpoints are large: only looked up (a file path exists, a tag is in the cache)."""
    labeler = spec.labeler
    if spec.files:
        build_labeler_state(replace(spec, labeler=replace(labeler, device="cpu")))
        return
    if labeler.kind != "clip":
        return
    from vlmrl.reward_labelers import clip_backends

    if labeler.backend == "open_clip":
        name = clip_backends._resolve_open_clip_name(labeler.model)
        clip_backends._check_open_clip_pretrained(name, labeler.pretrained)
    elif clip_backends._looks_like_path(labeler.model) and not Path(labeler.model).expanduser().exists():
        raise UserError(f"labeler.model: CLIP model folder {labeler.model} not found")


def relabel_batch(
    state: LabelerState,
    frames: np.ndarray | None,
    true_rewards: np.ndarray | None = None,
    observations: np.ndarray | None = None,
    chunk_index: int = 0,
) -> np.ndarray:
    """Rewards of one batch: a pure function of its arguments.

    A labeler that reads no frames (the oracle) costs nothing to build, so it is rebuilt for
    every chunk with seed ``spec.seed + chunk_index``: its noise then depends only on the seed and
    the chunk, whichever worker labels it and in whatever order.

    Args:
        state: the labeler (see :func:`build_labeler_state`).
        frames: uint8 ``[N, H, W, 3]`` (None when ``spec.inputs`` is not ``frames``).
        true_rewards: float ``[N]`` true reward associated with each frame.
        observations: float ``[N, obs_dim]`` states (state-based reward nets only).
        chunk_index: seeds stochastic labelers per batch.

    Returns:
        float32 ``[N]`` rewards, all finite.
    """
    spec = state.spec
    labeler = state.labeler
    if spec.inputs == "none":
        labeler = spec.labeler.create(seed=spec.seed + chunk_index)
    items = {"frames": frames, "observations": observations, "none": None}[spec.inputs]
    rewards = np.asarray(labeler.label(items, true_rewards=true_rewards), dtype=np.float32).reshape(-1)
    expected = len(true_rewards if items is None else items)
    if rewards.shape != (expected,) or not np.all(np.isfinite(rewards)):
        raise RuntimeError(f"labeler {spec.labeler.kind!r} returned {rewards.shape} rewards (finite: "
                           f"{bool(np.all(np.isfinite(rewards)))}) for {expected} inputs")
    return rewards


# -- frames, transitions and chunks ---------------------------------------------------------------


@dataclass
class FrameIndex:
    """Global frame numbering (episodes concatenated) and how frames map onto transitions."""

    counts: list[int]
    starts: np.ndarray
    transitions: list[int]
    offset: int
    true_rewards: np.ndarray  # float32 [total frames]: true reward of the transition each frame rewards
    observations: np.ndarray | None  # float32 [total frames, obs_dim] for state-based nets
    usable: np.ndarray  # int64 global indices of frames that reward a transition

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    def split(self, per_frame: np.ndarray) -> list[np.ndarray]:
        """Per-frame rewards -> per-episode transition rewards."""
        return [
            per_frame[start + self.offset : start + self.offset + n]
            for start, n in zip(self.starts[:-1].tolist(), self.transitions)
        ]


def build_frame_index(dataset: Any, frames_key: str | None, reward_frame: str, need_frames: bool,
                      need_observations: bool) -> FrameIndex:
    """Number every frame of ``dataset`` and find the transition each one rewards.

    ``reward_frame``: ``current`` (the frame the action was taken in) or ``next`` (the frame
    reached; needs the frame after each episode's last step)."""
    counts, transitions, rewards, observations = [], [], [], []
    offset = 1 if reward_frame == "next" else 0
    for episode in dataset.episodes():
        n = episode.num_transitions
        n_frames = int(dataset.frames(episode.index, frames_key).shape[0]) if need_frames else len(
            episode.observations if not isinstance(episode.observations, dict) else next(iter(episode.observations.values())))
        if offset and n_frames != n + 1:
            raise UserError(
                f"dataset {dataset.name!r}, episode {episode.index}, field 'frames': reward_frame 'next' needs "
                f"the frame after the last step ({n + 1} frames), found {n_frames}; use reward_frame: current"
            )
        per_frame = np.zeros(n_frames, dtype=np.float32)
        per_frame[offset : offset + n] = dataset.true_rewards(episode)
        counts.append(n_frames)
        transitions.append(n)
        rewards.append(per_frame)
        if need_observations:
            obs = episode.observations
            if isinstance(obs, dict):
                raise UserError(f"dataset {dataset.name!r}: a state-based reward net needs vector observations, not a dict")
            observations.append(np.asarray(obs, dtype=np.float32).reshape(n_frames, -1))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    usable = np.concatenate([np.arange(s + offset, s + offset + n) for s, n in zip(starts[:-1], transitions)])
    return FrameIndex(counts, starts, transitions, offset, np.concatenate(rewards),
                      np.concatenate(observations) if need_observations else None, usable.astype(np.int64))


def sample_pairs(usable: np.ndarray, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_pairs, 2]`` global frame indices, two different frames per pair."""
    first = rng.integers(0, len(usable), size=n_pairs)
    shift = rng.integers(1, len(usable), size=n_pairs)  # never pair a frame with itself
    return np.stack([usable[first], usable[(first + shift) % len(usable)]], axis=1)


@dataclass(frozen=True)
class ChunkPlan:
    """The chunks a relabel still has to label: global frame ranges ``[first, stop)`` and what a
    worker needs to read them (dataset, frame counts per episode)."""

    source: str
    datasets_root: str
    frames_key: str | None
    counts: tuple[int, ...]
    chunks: tuple[tuple[int, int, int], ...]  # (chunk index, first, stop)

    def read_inputs(self, dataset: Any, first: int, stop: int, inputs: str) -> np.ndarray | None:
        from vlmrl.datasets import read_frames

        if inputs != "frames":
            return None
        starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        return read_frames(dataset, self.frames_key, list(self.counts), starts, first, stop)


def plan_chunks(total: int, chunk_size: int, done: Any) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """``(number of chunks, the chunks not yet done)``; ``done(k)`` says whether chunk ``k`` is saved."""
    n_chunks = (total + chunk_size - 1) // chunk_size
    bounds = [(k, k * chunk_size, min((k + 1) * chunk_size, total)) for k in range(n_chunks)]
    return n_chunks, tuple(b for b in bounds if not done(b[0]))


@dataclass
class ChunkResult:
    """Rewards of one chunk and what they cost: ``rewards`` float32 ``[n]``; seconds reading
    its inputs and labelling them (in whichever process did it)."""

    chunk: int
    rewards: np.ndarray
    read_s: float
    label_s: float


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` so a reader (or a resumed relabel) sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def reopenable_source(dataset: Any) -> str:
    """What ``open_dataset`` needs to open ``dataset`` again from any working directory."""
    path = getattr(dataset, "path", None)  # .npz datasets
    return str(Path(path).resolve()) if path is not None else dataset.name


def label_chunks_locally(spec: LabelerSpec, plan: ChunkPlan, index: FrameIndex,
                         state: LabelerState | None = None) -> Iterator[ChunkResult]:
    """The local engine: label the planned chunks one after the other in this process.

    ``state``: the labeler already built from ``spec`` (the driver builds it up front to fail
    early on missing weights); None builds it here."""
    from vlmrl.datasets import open_dataset

    state = state if state is not None else build_labeler_state(spec)
    dataset = open_dataset(plan.source)
    for chunk, first, stop in plan.chunks:
        start = time.perf_counter()
        frames = plan.read_inputs(dataset, first, stop, spec.inputs)
        observations = index.observations[first:stop] if index.observations is not None else None
        read = time.perf_counter()
        rewards = relabel_batch(state, frames, index.true_rewards[first:stop], observations, chunk)
        yield ChunkResult(chunk, rewards, read - start, time.perf_counter() - read)
