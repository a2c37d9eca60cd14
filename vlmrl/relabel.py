"""``vlmrl relabel DATASET_ID --labeler CONFIG --out NEW_DATASET_ID``: give an offline dataset new rewards.

The labeler config (YAML) picks one of:

- ``kind: oracle``: the true reward (optionally scaled / noisy): validates the pipeline.
- ``kind: clip``: CLIP goal-baseline reward of each frame (VLM-RM), computed in batches.
- ``kind: preference``: Offline RL-VLM-F. Sample random frame pairs (``budget`` pairs, in rounds
  of ``pairs_per_round``), label them with a preference labeler through the label store, fit a
  Bradley-Terry reward ensemble, and give every transition the ensemble-mean reward.
- ``kind: reward_model``: the ensemble-mean reward of an already trained reward model.

Example (``configs/relabel_pendulum_pref.yaml``)::

    kind: preference
    reward_frame: current
    preference:
      goal: the pendulum pointing straight up
      teacher: {kind: oracle}
      budget: 1000
      pairs_per_round: 50
      net: cnn

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
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vlmrl.config import ClipConfig, OracleConfig
from vlmrl.errors import UserError

CORE_VERSION = 1  # bump when relabel output for the same inputs changes


# -- config --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherConfig:
    """The preference labeler. ``oracle``: B-Pref scripted teacher on the true rewards (no frames
    needed); ``openai``: a VLM behind an OpenAI-compatible endpoint (RL-VLM-F two-stage prompt);
    ``hf``: a local transformers VLM (``model``: hub id or folder), ``batch_size`` pairs per
    generate call, on the relabel's ``device`` (on Ray: each actor's own GPU)."""

    kind: Literal["oracle", "openai", "hf"] = "oracle"
    beta: float | None = None
    eps_mistake: float = 0.0
    eps_equal: float = 0.0
    eps_skip: float = 0.0
    seed: int = 0
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    two_stage: bool = True
    max_concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 5
    batch_size: int = 8
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if self.kind == "openai" and (not self.base_url or not self.model):
            raise ValueError("teacher.kind 'openai' needs base_url and model")
        if self.kind == "hf" and not self.model:
            raise ValueError("teacher.kind 'hf' needs model (a hub id or a local folder)")
        for name in ("max_concurrency", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def pairs_in_flight(self) -> int:
        """Pairs one labeler works on at once (HTTP requests, or one generate batch)."""
        return self.batch_size if self.kind == "hf" else self.max_concurrency


@dataclass(frozen=True)
class PreferenceRelabelConfig:
    """Offline RL-VLM-F: pairs -> preference labels -> Bradley-Terry ensemble -> rewards.

    ``net``: ``cnn`` (RL-VLM-F image CNN on frames resized to ``input_size``) or ``mlp`` (on the
    state observations). ``label_store``: SQLite file; default ``<root>/.label_stores/labels.sqlite``
    (shared: keys include frame hashes, goal and labeler config, so sharing never mixes labels).
    """

    goal: str
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    label_store: str | None = None
    budget: int = 500
    pairs_per_round: int = 50
    net: Literal["cnn", "mlp"] = "cnn"
    input_size: int = 64
    hidden_size: int = 256
    ensemble_size: int = 3
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("budget", "pairs_per_round", "ensemble_size", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class RewardModelRelabelConfig:
    """An already trained reward model (``RewardModel.save`` path, without suffix)."""

    path: str


@dataclass(frozen=True)
class RelabelConfig:
    """What ``vlmrl relabel --labeler CONFIG`` reads. ``chunk_size``: frames labelled per
    checkpointed chunk (bounds memory: chunk_size x H x W x 3 bytes)."""

    kind: Literal["oracle", "clip", "preference", "reward_model"]
    reward_frame: Literal["current", "next"] = "current"
    frames_key: str | None = None
    chunk_size: int = 256
    seed: int = 0
    device: str = "auto"
    oracle: OracleConfig = field(default_factory=OracleConfig)
    clip: ClipConfig | None = None
    preference: PreferenceRelabelConfig | None = None
    reward_model: RewardModelRelabelConfig | None = None

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {self.chunk_size}")
        if self.kind in ("clip", "preference", "reward_model") and getattr(self, self.kind) is None:
            raise ValueError(f"kind is {self.kind!r} but the {self.kind!r} section is missing")


def load_relabel_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RelabelConfig:
    """Load and validate a labeler YAML; ConfigError names the file and key."""
    from vlmrl.config_loading import apply_overrides, build_dataclass, load_yaml

    data = load_yaml(path)
    apply_overrides(data, list(overrides), str(path))
    return build_dataclass(RelabelConfig, data, str(path))


def config_dict(config: RelabelConfig) -> dict[str, Any]:
    from vlmrl.config_loading import to_plain

    return to_plain(config)


# -- the pure core -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelerState:
    """Everything :func:`relabel_batch` needs; picklable, so batches can run on remote workers.

    ``labeler``: a FrameRewardLabeler (clip), an OracleConfig (oracle: rebuilt per chunk so
    its noise depends only on ``seed`` and the chunk index) or a RewardModel (preference,
    reward_model). ``inputs``: ``frames`` or ``observations`` (state-based reward nets).
    """

    kind: str
    labeler: Any
    inputs: Literal["frames", "observations", "none"] = "frames"
    seed: int = 0


def relabel_batch(
    state: LabelerState,
    frames: np.ndarray | None,
    true_rewards: np.ndarray | None = None,
    observations: np.ndarray | None = None,
    chunk_index: int = 0,
) -> np.ndarray:
    """Rewards of one batch of frames: a pure function of its arguments.

    Args:
        state: the labeler (see :class:`LabelerState`).
        frames: uint8 ``[N, H, W, 3]`` (None when ``state.inputs`` is not ``frames``).
        true_rewards: float ``[N]`` true reward associated with each frame (oracle only).
        observations: float ``[N, obs_dim]`` states (state-based reward nets only).
        chunk_index: seeds stochastic labelers (oracle noise) per batch.

    Returns:
        float32 ``[N]`` rewards, all finite.
    """
    if state.kind == "oracle":
        from vlmrl.reward_labelers.oracle import OracleRewardLabeler

        oracle = state.labeler
        labeler = OracleRewardLabeler(scale=oracle.scale, noise_std=oracle.noise_std, seed=state.seed + chunk_index)
        rewards = labeler.label(None, true_rewards=true_rewards)
    elif state.kind == "clip":
        rewards = state.labeler.label(frames)
    else:
        rewards = state.labeler.predict(observations if state.inputs == "observations" else frames)
    rewards = np.asarray(rewards, dtype=np.float32).reshape(-1)
    expected = len(true_rewards if state.inputs == "none" else observations if state.inputs == "observations" else frames)
    if rewards.shape != (expected,) or not np.all(np.isfinite(rewards)):
        raise RuntimeError(f"labeler {state.kind!r} returned {rewards.shape} rewards (finite: "
                           f"{bool(np.all(np.isfinite(rewards)))}) for {expected} inputs")
    return rewards


@dataclass(frozen=True)
class LabelerSpec:
    """How to build a :class:`LabelerState` in any process: configs and the reward model's file
    contents, never a loaded model, so a Ray worker loads its own copy (on its own GPU).

    ``reward_model_files``: the bytes of ``<model>.json`` and ``<model>.safetensors``.
    """

    kind: str
    inputs: Literal["frames", "observations", "none"]
    seed: int = 0
    device: str = "auto"
    oracle: OracleConfig = field(default_factory=OracleConfig)
    clip: ClipConfig | None = None
    reward_model_files: tuple[bytes, bytes] | None = None

    @classmethod
    def for_reward_model(cls, kind: str, inputs: Literal["frames", "observations"], path: Path | str,
                         device: str) -> LabelerSpec:
        from vlmrl.reward_nets import model_files

        json_file, weights_file = model_files(path)
        return cls(kind, inputs, device=device, reward_model_files=(json_file.read_bytes(), weights_file.read_bytes()))


def build_labeler_state(spec: LabelerSpec) -> LabelerState:
    """Load the labeler a spec describes (CLIP weights, reward model) in this process."""
    if spec.kind == "oracle":
        return LabelerState("oracle", spec.oracle, "none", seed=spec.seed)
    if spec.kind == "clip":
        from vlmrl.config import LabelerConfig
        from vlmrl.factory import make_frame_labeler

        return LabelerState("clip", make_frame_labeler(LabelerConfig(kind="clip", device=spec.device, clip=spec.clip)))
    import tempfile

    from vlmrl.reward_nets import RewardModel

    with tempfile.TemporaryDirectory(prefix="vlmrl-reward-model-") as folder:
        base = Path(folder) / "model"
        Path(folder, "model.json").write_bytes(spec.reward_model_files[0])
        Path(folder, "model.safetensors").write_bytes(spec.reward_model_files[1])
        return LabelerState(spec.kind, RewardModel.load(base, device=spec.device), spec.inputs, seed=spec.seed)


@dataclass
class ChunkResult:
    """Rewards of one chunk and what they cost: ``rewards`` float32 ``[n]``; seconds reading
    its inputs and labelling them (in whichever process did it)."""

    chunk: int
    rewards: np.ndarray
    read_s: float
    label_s: float


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


@dataclass(frozen=True)
class ChunkPlan:
    """The chunks a relabel still has to label: global frame ranges ``[first, stop)`` and what a
    worker needs to read them (dataset, frame counts per episode, per-frame true rewards and
    observations)."""

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


def reopenable_source(dataset: Any) -> str:
    """What ``open_dataset`` needs to open ``dataset`` again from any working directory."""
    path = getattr(dataset, "path", None)  # .npz datasets
    return str(Path(path).resolve()) if path is not None else dataset.name


def label_chunks_locally(spec: LabelerSpec, plan: ChunkPlan, index: FrameIndex) -> Iterator[ChunkResult]:
    """Label the planned chunks one after the other in this process."""
    from vlmrl.datasets import open_dataset

    state = build_labeler_state(spec)
    dataset = open_dataset(plan.source)
    for chunk, first, stop in plan.chunks:
        start = time.perf_counter()
        frames = plan.read_inputs(dataset, first, stop, spec.inputs)
        observations = index.observations[first:stop] if index.observations is not None else None
        read = time.perf_counter()
        rewards = relabel_batch(state, frames, index.true_rewards[first:stop], observations, chunk)
        yield ChunkResult(chunk, rewards, read - start, time.perf_counter() - read)


# -- the dataset-level driver --------------------------------------------------------------------


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
    need_observations = config.kind == "preference" and config.preference.net == "mlp"
    labeller_needs_frames = config.kind == "preference" and config.preference.teacher.kind != "oracle"
    net_needs_frames = config.kind == "clip" or (config.kind == "preference" and config.preference.net == "cnn")
    if config.kind == "reward_model":
        net_needs_frames = _load_reward_model(config).config.kind == "cnn"
        need_observations = not net_needs_frames
    need_frames = labeller_needs_frames or net_needs_frames
    validate_dataset(dataset, config.frames_key, need_frames=need_frames)
    index = build_frame_index(dataset, config.frames_key, config.reward_frame, need_frames, need_observations)
    if engine == "ray":
        from vlmrl.relabel_ray import connect

        ray_options = connect(ray_options)  # fail on a bad --address or too few CPUs before any work

    fingerprint = json.dumps({"core": CORE_VERSION, "source": str(source_id), "out": out_id,
                              "config": config_dict(config)}, sort_keys=True)
    work = WorkDir(out_id, fingerprint)
    label_info: dict[str, Any] = {}
    if config.kind == "preference":
        labels_started = time.perf_counter()
        spec, label_info = _fit_preference_model(dataset, config, index, work, show_progress, engine, ray_options)
        timings.labels_s = time.perf_counter() - labels_started
    elif config.kind == "reward_model":
        spec = LabelerSpec.for_reward_model("reward_model", "frames" if net_needs_frames else "observations",
                                            config.reward_model.path, config.device)
        label_info = {"reward_model": config.reward_model.path}
    elif config.kind == "clip":
        spec = LabelerSpec("clip", "frames", device=config.device, clip=config.clip)
    else:
        spec = LabelerSpec("oracle", "none", seed=config.seed, oracle=config.oracle)

    # Per-frame rewards, chunk by chunk; finished chunks are loaded back, never recomputed.
    chunk_size = config.chunk_size
    n_chunks = (index.total + chunk_size - 1) // chunk_size
    bounds = [(k, k * chunk_size, min((k + 1) * chunk_size, index.total)) for k in range(n_chunks)]
    pending = tuple(b for b in bounds if not work.chunk_path(b[0]).is_file())
    plan = ChunkPlan(reopenable_source(dataset), str(datasets_root().resolve()), config.frames_key, tuple(index.counts), pending)
    bar = tqdm(total=index.total, desc=f"relabel {out_id}", unit="frame", disable=not show_progress,
               initial=index.total - sum(stop - first for _, first, stop in pending))
    if engine == "ray":
        from vlmrl.relabel_ray import label_chunks_on_ray

        results = label_chunks_on_ray(spec, plan, index, ray_options)
    else:
        results = label_chunks_locally(spec, plan, index)
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
        "labeler": config_dict(config),
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
    return {**inherited, "algorithm_name": f"vlmrl relabel ({config.kind})", "vlmrl": vlmrl_meta}


def _env_spec(dataset: Any) -> Any:
    spec = dataset.metadata.get("env_spec")
    if not spec:
        return None
    from gymnasium.envs.registration import EnvSpec

    try:
        return EnvSpec.from_json(spec)
    except Exception:  # a spec from another Gymnasium version: keep the spaces, drop the spec
        return None


def _load_reward_model(config: RelabelConfig) -> Any:
    from vlmrl.reward_nets import RewardModel

    return RewardModel.load(config.reward_model.path, device=config.device)


def make_preference_labeler(teacher: TeacherConfig, store_path: Path | None, device: str = "auto") -> Any:
    """The preference labeler a teacher config names (``compare(first, second, goal, true_rewards)``)."""
    if teacher.kind == "hf":
        from vlmrl.reward_labelers.hf_preference import HFPreferenceLabeler

        return HFPreferenceLabeler(model=teacher.model, store=store_path, two_stage=teacher.two_stage, device=device,
                                   batch_size=teacher.batch_size, max_new_tokens=teacher.max_new_tokens)
    if teacher.kind == "oracle":
        from vlmrl.reward_labelers.oracle_teacher import OracleTeacher

        return OracleTeacher(beta=teacher.beta, eps_mistake=teacher.eps_mistake, eps_equal=teacher.eps_equal,
                             eps_skip=teacher.eps_skip, seed=teacher.seed)
    from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler

    return OpenAIPreferenceLabeler(
        base_url=teacher.base_url, model=teacher.model, api_key_env=teacher.api_key_env, store=store_path,
        two_stage=teacher.two_stage, max_concurrency=teacher.max_concurrency, timeout_s=teacher.timeout_s,
        max_retries=teacher.max_retries,
    )


def default_label_store() -> Path:
    from vlmrl.datasets import datasets_root

    return datasets_root() / ".label_stores" / "labels.sqlite"


def sample_pairs(usable: np.ndarray, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_pairs, 2]`` global frame indices, two different frames per pair."""
    first = rng.integers(0, len(usable), size=n_pairs)
    shift = rng.integers(1, len(usable), size=n_pairs)  # never pair a frame with itself
    return np.stack([usable[first], usable[(first + shift) % len(usable)]], axis=1)


def _fit_preference_model(dataset: Any, config: RelabelConfig, index: FrameIndex, work: WorkDir,
                          show_progress: bool, engine: str = "local",
                          ray_options: Any = None) -> tuple[LabelerSpec, dict[str, Any]]:
    """Label pairs (through the label store), fit the Bradley-Terry ensemble, save it in ``work``.

    With ``engine: ray`` and a VLM teacher, Ray workers ask the VLM and this process commits
    their answers to the store; the labels (and so the model) are the same as with ``local``.
    """
    import torch
    from tqdm import tqdm

    from vlmrl.datasets import gather_frames
    from vlmrl.reward_learning import fit_bradley_terry
    from vlmrl.reward_nets import RewardModel, RewardNetConfig

    pref = config.preference
    inputs = "observations" if pref.net == "mlp" else "frames"
    store_path = Path(pref.label_store) if pref.label_store else default_label_store()
    if len(index.usable) < 2:
        raise UserError(f"dataset {dataset.name!r} has fewer than two frames to compare")
    model_path = work.path / "reward_model"
    summary_path = work.path / "labels.json"
    if summary_path.is_file() and model_path.with_suffix(".json").is_file():
        info = json.loads(summary_path.read_text())
        return LabelerSpec.for_reward_model("preference", inputs, model_path, config.device), info

    if engine == "ray" and pref.teacher.kind == "hf":
        from vlmrl.reward_labelers.hf_preference import hf_labeler_config
        from vlmrl.reward_labelers.preference import StoreLedger

        # The VLM loads in the Ray actors only; this process just needs its store keys.
        labeler = StoreLedger(hf_labeler_config(pref.teacher.model, pref.teacher.two_stage,
                                                pref.teacher.max_new_tokens), store_path)
    else:
        labeler = make_preference_labeler(pref.teacher, store_path, config.device)
    rng = np.random.default_rng(pref.seed)
    rounds = (pref.budget + pref.pairs_per_round - 1) // pref.pairs_per_round
    pairs = [sample_pairs(index.usable, min(pref.pairs_per_round, pref.budget - r * pref.pairs_per_round), rng)
             for r in range(rounds)]
    frames_needed = pref.teacher.kind != "oracle"
    if engine == "ray" and frames_needed:
        from vlmrl.relabel_ray import label_pairs_on_ray

        labels = label_pairs_on_ray(labeler, pref.teacher, pref.goal, dataset, config.frames_key, pairs,
                                    index.true_rewards, ray_options, show_progress, config.device)
    else:
        labels = []
        for batch in tqdm(pairs, desc="preference labels", unit="round", disable=not show_progress):
            first = gather_frames(dataset, config.frames_key, batch[:, 0]) if frames_needed else None
            second = gather_frames(dataset, config.frames_key, batch[:, 1]) if frames_needed else None
            true = (index.true_rewards[batch[:, 0]], index.true_rewards[batch[:, 1]])
            labels.append(np.asarray(labeler.compare(first, second, pref.goal, true_rewards=true), dtype=np.float32))
    pairs_all, labels_all = np.concatenate(pairs), np.concatenate(labels)
    keep = ~np.isnan(labels_all)
    if not keep.any():
        raise UserError(f"no usable preference label among {len(labels_all)} pairs (all unsure, failed or identical); "
                        f"check the labeler and the label store {store_path}")

    if inputs == "observations":
        obs_dim = index.observations.shape[1]
        net_config = RewardNetConfig(kind="mlp", obs_dim=obs_dim, hidden_size=pref.hidden_size)
        first_in, second_in = index.observations[pairs_all[keep, 0]], index.observations[pairs_all[keep, 1]]
    else:
        net_config = RewardNetConfig(kind="cnn", input_size=pref.input_size)
        first_in = gather_frames(dataset, config.frames_key, pairs_all[keep, 0])
        second_in = gather_frames(dataset, config.frames_key, pairs_all[keep, 1])
    model = RewardModel(net_config, ensemble_size=pref.ensemble_size, device=config.device, seed=pref.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(pref.seed)
        fit = fit_bradley_terry(model, first_in, second_in, labels_all[keep], epochs=pref.epochs,
                                batch_size=pref.batch_size, lr=pref.lr, seed=pref.seed)
    model.save(model_path)
    counts = {
        "pairs_queried": int(len(labels_all)),
        "pairs_labelled": int(keep.sum()),
        "pairs_discarded": int((~keep).sum()),
        "ties": int((labels_all == 0.5).sum()),
    }
    # Wall-clock time is left out: the metadata must not depend on when or how fast it ran.
    metrics = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in fit.metrics().items()
               if "second" not in k}
    info = {"label_store": str(store_path.resolve()), "counts": counts, "reward_fit": metrics,
            # Not the HF labeler's repr: it names the device, and the dataset must not depend on where it ran.
            "teacher": f"hf-transformers {pref.teacher.model}" if pref.teacher.kind == "hf" else repr(labeler)}
    _atomic_write_bytes(summary_path, json.dumps(info, sort_keys=True).encode())
    return LabelerSpec.for_reward_model("preference", inputs, model_path, config.device), info


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
    parser.add_argument("--labeler", required=True, help="labeler config YAML (kind: oracle|clip|preference|reward_model)")
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
