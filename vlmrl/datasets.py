"""Offline datasets on local disk: Minari datasets with lossless frames, and plain ``.npz`` files.

Minari layout (``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``; nothing is ever downloaded)::

    <root>/<dataset_id>/data/metadata.json      Minari metadata (+ a ``vlmrl`` entry, below)
    <root>/<dataset_id>/data/main_data.hdf5     Minari episodes (observations, actions, rewards, ...)
    <root>/<dataset_id>/frames/episode_<i>.npy  uint8 [T_i + 1, H, W, 3] rendered frames

Frames are stored beside the Minari data as one raw ``.npy`` per episode: lossless (no JPEG),
and memory-mappable, so a relabel reads a few frames at a time however large the dataset is.
Frame ``k`` of an episode is the render of observation ``k`` (frame 0 = the reset state,
frame ``t + 1`` = the state after action ``t``), so an episode of ``T`` transitions has
``T + 1`` frames, exactly as many as Minari has observations.

``.npz`` layout (flat arrays over all transitions, D4RL style; episodes end at
``terminals | timeouts``)::

    observations  float [N, obs_dim] (or uint8 [N, H, W, 3] images)
    actions       float [N, act_dim]
    rewards       float [N]
    terminals     bool/0-1 [N]
    timeouts      bool/0-1 [N]      (optional; the last transition is always an episode end)
    frames        uint8 [N, H, W, 3] (optional) render of observations[i]

Store frames uncompressed (``np.savez``, not ``savez_compressed``) to let them be
memory-mapped; compressed members are read whole.

Where frames come from (``frames_key``): ``None`` picks the stored frames, else image
observations; ``"frames"`` the stored frames; ``"observations"`` image observations
(uint8 ``[H, W, 3]``); any other name a key of a dict observation (or an ``.npz`` array).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl.errors import UserError, first_line

FRAMES_DIR = "frames"
METADATA_KEY = "vlmrl"
METADATA_FILE = "metadata.json"
HDF5_FILE = "main_data.hdf5"


def datasets_root() -> Path:
    """Directory holding local Minari datasets (``MINARI_DATASETS_PATH`` honoured)."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def check_dataset_id(dataset_id: str) -> str:
    """Raise a UserError unless ``dataset_id`` has Minari's ``(namespace/)name-vN`` form."""
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except Exception as error:  # minari raises a bare ValueError/AssertionError
        raise UserError(
            f"{dataset_id!r} is not a valid dataset id; use (namespace/)name-vVERSION, "
            "e.g. pendulum/random-v0"
        ) from error
    return dataset_id


def dataset_dir(dataset_id: str) -> Path:
    """Directory of a Minari dataset id (it may not exist)."""
    return datasets_root() / dataset_id


def dataset_exists(dataset_id: str) -> bool:
    return (dataset_dir(dataset_id) / "data" / "metadata.json").is_file()


def check_output_dataset(dataset_id: str) -> Path:
    """Check, before any work, that a NEW dataset can be written under ``dataset_id``; return its
    directory. Raises a :class:`UserError` for a bad id, an existing dataset, or a location that
    cannot be written (the datasets root, for staging, and the folder the dataset goes in)."""
    from vlmrl.locks import check_writable_dir

    check_dataset_id(dataset_id)
    target = dataset_dir(dataset_id)
    if target.exists():
        raise UserError(f"dataset {dataset_id!r} already exists at {target}; datasets are immutable, pick a new --out")
    check_writable_dir(datasets_root(), f"dataset {dataset_id!r} (staging folder)")
    check_writable_dir(target, f"dataset {dataset_id!r}")
    return target


def frame_file(dataset_root: Path, episode: int) -> Path:
    return dataset_root / FRAMES_DIR / f"episode_{episode}.npy"


@dataclass(frozen=True)
class EpisodeData:
    """One episode of ``T`` transitions.

    ``observations`` has ``T + 1`` rows for Minari datasets (the final observation included)
    and ``T`` rows for ``.npz`` files; it is a dict of arrays for dict observation spaces.
    ``infos`` is a (possibly nested) dict of arrays or None.
    """

    index: int
    observations: Any
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    infos: dict[str, Any] | None = None
    seed: int | None = None

    @property
    def num_transitions(self) -> int:
        return len(self.rewards)


class OfflineDataset:
    """Read-only view of an offline dataset: episodes, lazily loaded frames, metadata."""

    name: str
    metadata: dict[str, Any]
    observation_space: Any
    action_space: Any

    @property
    def num_episodes(self) -> int:
        raise NotImplementedError

    def episode(self, index: int) -> EpisodeData:
        raise NotImplementedError

    def frames(self, index: int, frames_key: str | None = None) -> Any:
        """Frames of episode ``index`` as an array-like (np.memmap / h5py dataset / ndarray).

        Slicing it (``frames[a:b]``) reads only those frames. Shape ``[F, H, W, 3]``, uint8,
        ``F`` = number of observations of the episode.
        """
        raise NotImplementedError

    def episodes(self) -> Iterator[EpisodeData]:
        for index in range(self.num_episodes):
            yield self.episode(index)

    def _source_dataset(self, source: str) -> OfflineDataset:
        """The dataset this one was relabelled from, opened once per view: opening one checks all
        its episodes, which per episode read would make reading every true reward quadratic."""
        parent = self.__dict__.get("_source")
        if parent is None:
            parent = self._source = open_dataset(source)
        return parent

    def true_rewards(self, episode: EpisodeData) -> np.ndarray:
        """float32 ``[T]`` ground-truth rewards: ``infos["true_reward"]`` when recorded, else the
        rewards of the dataset this one was relabelled from, else its own rewards."""
        infos = episode.infos or {}
        if "true_reward" in infos:
            values = np.asarray(infos["true_reward"], dtype=np.float32).reshape(-1)
            return values[-episode.num_transitions :]
        source = self.metadata.get(METADATA_KEY, {}).get("source_dataset")
        if source:
            try:
                parent = self._source_dataset(source)
            except UserError as error:
                raise UserError(f"dataset {self.name!r}, episode {episode.index}: its true rewards are those of the "
                                f"dataset it was relabelled from, {source!r}, which cannot be read: {error}") from error
            return parent.true_rewards(parent.episode(episode.index))
        return np.asarray(episode.rewards, dtype=np.float32)


class MinariOfflineDataset(OfflineDataset):
    """A Minari dataset on local disk, with frames from ``frames/`` or from image observations."""

    def __init__(self, dataset_id: str) -> None:
        check_dataset_id(dataset_id)
        if not dataset_exists(dataset_id):
            known = _local_dataset_ids()
            hint = f" Local datasets: {', '.join(known)}." if known else " No local datasets."
            raise UserError(
                f"dataset {dataset_id!r} not found under {datasets_root()} "
                f"(set MINARI_DATASETS_PATH to change the root; nothing is downloaded).{hint}"
            )
        self.name = dataset_id
        self.root = dataset_dir(dataset_id)
        self.metadata = _read_minari_metadata(dataset_id, self.root / "data" / METADATA_FILE)
        self.storage = _open_minari_storage(dataset_id, self.root / "data")
        self.observation_space = self.storage.observation_space
        self.action_space = self.storage.action_space
        if self.metadata.get("data_format", "hdf5") == "hdf5":
            _check_hdf5_episodes(dataset_id, self.root / "data" / HDF5_FILE, self.num_episodes)

    @property
    def num_episodes(self) -> int:
        return int(self.metadata["total_episodes"])

    def episode(self, index: int) -> EpisodeData:
        try:
            (raw,) = list(self.storage.get_episodes([index]))
            (meta,) = list(self.storage.get_episode_metadata([index]))
        except (OSError, KeyError, ValueError) as error:  # h5py: corrupt chunks, a missing field
            raise UserError(f"dataset {self.name!r}, episode {index}: cannot read it from "
                            f"{self.root / 'data'}: {first_line(error)}") from error
        return EpisodeData(
            index=index,
            observations=raw["observations"],
            actions=np.asarray(raw["actions"]),
            rewards=np.asarray(raw["rewards"]),
            terminations=np.asarray(raw["terminations"], dtype=bool),
            truncations=np.asarray(raw["truncations"], dtype=bool),
            infos=raw.get("infos"),
            seed=meta.get("seed"),
        )

    def has_stored_frames(self) -> bool:
        return (self.root / FRAMES_DIR).is_dir()

    def frames(self, index: int, frames_key: str | None = None) -> Any:
        if frames_key is None:
            frames_key = "frames" if self.has_stored_frames() else "observations"
        if frames_key == "frames":
            path = frame_file(self.root, index)
            if not path.is_file():
                raise UserError(
                    f"dataset {self.name!r}, episode {index}, field 'frames': no stored frames "
                    f"({path} missing); record with `vlmrl collect` or pick image observations "
                    "with --frames-key"
                )
            try:
                return np.load(path, mmap_mode="r")
            except (ValueError, OSError) as error:  # truncated or not an .npy file
                raise UserError(f"dataset {self.name!r}, episode {index}, field 'frames': {path} is unreadable "
                                f"({first_line(error)})") from error
        return _H5Frames(self, index, frames_key)


class _H5Frames:
    """Frames kept as image observations inside Minari's HDF5 file, read slice by slice."""

    def __init__(self, dataset: MinariOfflineDataset, episode: int, key: str) -> None:
        import gymnasium as gym
        import h5py

        self._file = dataset.root / "data" / "main_data.hdf5"
        self._path = f"episode_{episode}/observations"
        space = dataset.observation_space
        where = f"dataset {dataset.name!r}, episode {episode}, field {key!r}"
        if key != "observations":
            if not isinstance(space, gym.spaces.Dict) or key not in space.spaces:
                raise UserError(
                    f"{where}: observations have no key {key!r} "
                    f"(observation space: {space}); --frames-key names a dict-observation key"
                )
            self._path += f"/{key}"
            space = space.spaces[key]
        elif isinstance(space, gym.spaces.Dict):
            raise UserError(f"{where}: observations are a dict ({list(space.spaces)}); choose one with --frames-key")
        self._jpeg = bool(dataset.metadata.get("jpeg_encoding", True)) and _is_image_space(space)
        if len(getattr(space, "shape", ()) or ()) != 3 or space.shape[-1] != 3:
            raise UserError(
                f"{where}: no frames: observations are {space}, not uint8 [H, W, 3] images; "
                "record frames with `vlmrl collect` or name an image key with --frames-key"
            )
        self._where = where
        try:
            with h5py.File(self._file, "r") as file:
                self._length = len(file[self._path])
        except (OSError, KeyError) as error:
            raise UserError(f"{where}: cannot read {self._path} from {self._file}: {first_line(error)}") from error
        self.shape = (self._length, *space.shape)
        self.dtype = np.dtype(space.dtype)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, item: slice) -> np.ndarray:
        import h5py
        from PIL import Image

        try:
            with h5py.File(self._file, "r") as file:
                data = file[self._path][item]
            if not self._jpeg:
                return np.asarray(data)
            # PIL raises UnidentifiedImageError (an OSError) for bytes that are no image.
            return np.stack([np.asarray(Image.open(io.BytesIO(bytes(b))), dtype=np.uint8) for b in data])
        except (OSError, KeyError) as error:
            raise UserError(f"{self._where}: cannot read frames {item} from {self._file}: "
                            f"{first_line(error)}") from error


class NpzOfflineDataset(OfflineDataset):
    """A flat ``.npz`` file (keys in the module docstring), split into episodes."""

    REQUIRED = ("observations", "actions", "rewards", "terminals")

    def __init__(self, path: str | Path) -> None:
        import gymnasium as gym

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"dataset file {self.path} not found")
        self.name = str(self.path)
        self._arrays = _NpzArrays(self.path)
        missing = [key for key in self.REQUIRED if key not in self._arrays.keys]
        if missing:
            raise UserError(f"{self.path}: missing array {missing[0]!r}; needed: {', '.join(self.REQUIRED)}")
        rewards = np.asarray(self._arrays["rewards"]).reshape(-1)
        n = len(rewards)
        if n == 0:
            raise UserError(f"{self.path}: field 'rewards' has 0 rows: the dataset holds no transitions")
        for key in ("observations", "actions", "terminals", "timeouts", "frames"):
            if key in self._arrays.keys and len(self._arrays[key]) != n:
                raise UserError(f"{self.path}: field {key!r} has {len(self._arrays[key])} rows, rewards has {n}")
        ends = np.asarray(self._arrays["terminals"]).reshape(-1).astype(bool)
        if "timeouts" in self._arrays.keys:
            ends = ends | np.asarray(self._arrays["timeouts"]).reshape(-1).astype(bool)
        ends[-1] = True  # d3rlpy silently drops steps after the last flagged end
        stops = np.flatnonzero(ends) + 1
        self._bounds = list(zip(np.concatenate([[0], stops[:-1]]).tolist(), stops.tolist()))
        observations = self._arrays["observations"]
        actions = np.asarray(self._arrays["actions"])
        if actions.ndim == 1:
            actions = actions[:, None]
        self._actions = actions
        self.observation_space = _box_like(observations)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, shape=actions.shape[1:], dtype=np.float32)
        self.metadata = {"dataset_id": None, "source_file": str(self.path)}

    @property
    def num_episodes(self) -> int:
        return len(self._bounds)

    @property
    def array_keys(self) -> set[str]:
        return set(self._arrays.keys)

    def episode(self, index: int) -> EpisodeData:
        start, stop = self._bounds[index]
        terminals = np.asarray(self._arrays["terminals"][start:stop]).reshape(-1).astype(bool)
        truncations = np.zeros_like(terminals)
        if "timeouts" in self._arrays.keys:
            truncations = np.asarray(self._arrays["timeouts"][start:stop]).reshape(-1).astype(bool)
        if not terminals[-1]:
            truncations[-1] = True
        return EpisodeData(
            index=index,
            observations=np.asarray(self._arrays["observations"][start:stop]),
            actions=self._actions[start:stop],
            rewards=np.asarray(self._arrays["rewards"][start:stop]).reshape(-1),
            terminations=terminals,
            truncations=truncations,
        )

    def frames(self, index: int, frames_key: str | None = None) -> Any:
        if frames_key is None:
            frames_key = "frames" if "frames" in self._arrays.keys else "observations"
        if frames_key not in self._arrays.keys:
            raise UserError(
                f"{self.path}, episode {index}, field {frames_key!r}: no such array "
                f"(arrays: {', '.join(sorted(self._arrays.keys))})"
            )
        start, stop = self._bounds[index]
        return self._arrays[frames_key][start:stop]


class _NpzArrays:
    """Arrays of an ``.npz``; uncompressed members are memory-mapped instead of read whole."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._cache: dict[str, np.ndarray] = {}
        try:
            with zipfile.ZipFile(path) as archive:
                self._members = {
                    info.filename[: -len(".npy")]: info for info in archive.infolist() if info.filename.endswith(".npy")
                }
        except (zipfile.BadZipFile, OSError) as error:
            raise UserError(f"{path} is not a readable .npz file: {first_line(error)}") from error
        self.keys = set(self._members)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._cache:
            try:
                self._cache[key] = self._open(key)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:  # truncated / not .npy
                raise UserError(f"{self._path}, field {key!r}: unreadable ({first_line(error)})") from error
        return self._cache[key]

    def _open(self, key: str) -> np.ndarray:
        info = self._members[key]
        if info.compress_type == zipfile.ZIP_STORED:
            with open(self._path, "rb") as file:
                file.seek(info.header_offset)
                header = file.read(30)
                name_length = int.from_bytes(header[26:28], "little")
                extra_length = int.from_bytes(header[28:30], "little")
                file.seek(info.header_offset + 30 + name_length + extra_length)
                version = np.lib.format.read_magic(file)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(file)
                offset = file.tell()
            if not dtype.hasobject and not fortran:
                return np.memmap(self._path, dtype=dtype, mode="r", shape=shape, offset=offset)
        with np.load(self._path, allow_pickle=False) as archive:
            return archive[key]


def open_dataset(name: str | Path) -> OfflineDataset:
    """A Minari dataset id, or the path of an ``.npz`` file."""
    if str(name).endswith(".npz"):
        return NpzOfflineDataset(name)
    return MinariOfflineDataset(str(name))


def validate_dataset(dataset: OfflineDataset, frames_key: str | None, need_frames: bool = True,
                     min_steps: int = 1) -> tuple[int, int, int]:
    """Check every episode before anything is written; return the frame shape ``(H, W, 3)``.

    Args:
        min_steps: fewest transitions an episode may have. 1 (the default) refuses episodes of
            0 steps: they hold no transition to reward and Minari cannot store one. 0 accepts
            them (offline training skips them); the dataset must still hold one transition.

    Raises:
        UserError: naming the episode and field, for an empty dataset, too short episodes,
            missing frames, frames that are not uint8 ``[F, H, W, 3]``, a frame count that
            differs from the observation count, frame sizes that differ between episodes,
            unreadable episodes, and NaN/inf in observations, actions or rewards.
    """
    if dataset.num_episodes == 0:
        raise UserError(f"dataset {dataset.name!r} has no episodes")
    frame_shape: tuple[int, int, int] | None = None
    total_steps = 0
    for episode in dataset.episodes():
        where = f"dataset {dataset.name!r}, episode {episode.index}"
        n_obs = _num_rows(episode.observations)
        n_steps = episode.num_transitions
        total_steps += n_steps
        if n_steps < min_steps:
            raise UserError(
                f"{where}: {n_steps} steps (only the reset observation); an episode needs at least "
                f"{min_steps} step here (it has no transition to reward, and Minari cannot store an empty "
                "episode): remove the episode from the dataset"
            )
        if n_obs not in (n_steps, n_steps + 1):
            raise UserError(f"{where}, field 'observations': {n_obs} rows for {n_steps} transitions")
        for field_name, values in (
            ("observations", episode.observations),
            ("actions", episode.actions),
            ("rewards", episode.rewards),
        ):
            for array in _leaves(values):
                if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                    raise UserError(f"{where}, field {field_name!r}: contains NaN or inf")
        if len(episode.actions) != n_steps:
            raise UserError(f"{where}, field 'actions': {len(episode.actions)} rows for {n_steps} transitions")
        if not need_frames:
            continue
        frames = dataset.frames(episode.index, frames_key)
        shape = tuple(frames.shape)
        field_name = frames_key or "frames"
        if np.dtype(frames.dtype) != np.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise UserError(
                f"{where}, field {field_name!r}: frames must be uint8 [F, H, W, 3], "
                f"got {np.dtype(frames.dtype)} {list(shape)}"
            )
        if shape[0] != n_obs:
            raise UserError(
                f"{where}, field {field_name!r}: {shape[0]} frames but {n_obs} observations "
                "(one frame per observation expected)"
            )
        if frame_shape is None:
            frame_shape = shape[1:]  # type: ignore[assignment]
        elif shape[1:] != frame_shape:
            raise UserError(f"{where}, field {field_name!r}: frame size {list(shape[1:])} differs from {list(frame_shape)}")
    if total_steps == 0:
        raise UserError(f"dataset {dataset.name!r}: its {dataset.num_episodes} episode(s) hold no transition (0 steps each)")
    return frame_shape or (0, 0, 3)


def iter_frame_chunks(
    dataset: OfflineDataset, frames_key: str | None, chunk_size: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Stream all frames of all episodes, in order, as chunks of ``chunk_size`` frames.

    Yields ``(chunk_index, first_global_frame, frames)`` with ``frames`` uint8 ``[n, H, W, 3]``;
    only one chunk is held in memory (frames are read slice by slice from memory maps).
    """
    counts = frame_counts(dataset, frames_key)
    total = int(sum(counts))
    starts = np.concatenate([[0], np.cumsum(counts)])
    for chunk_index, first in enumerate(range(0, total, chunk_size)):
        yield chunk_index, first, read_frames(dataset, frames_key, counts, starts, first, min(first + chunk_size, total))


def frame_counts(dataset: OfflineDataset, frames_key: str | None) -> list[int]:
    return [int(dataset.frames(i, frames_key).shape[0]) for i in range(dataset.num_episodes)]


def read_frames(
    dataset: OfflineDataset,
    frames_key: str | None,
    counts: list[int],
    starts: np.ndarray,
    first: int,
    stop: int,
) -> np.ndarray:
    """Frames with global indices ``[first, stop)`` (episodes concatenated in order)."""
    parts = []
    episode = int(np.searchsorted(starts, first, side="right") - 1)
    position = first
    while position < stop:
        local = position - int(starts[episode])
        take = min(stop - position, counts[episode] - local)
        parts.append(np.array(dataset.frames(episode, frames_key)[local : local + take]))  # a writable copy
        position += take
        episode += 1
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def gather_frames(dataset: OfflineDataset, frames_key: str | None, indices: np.ndarray,
                  counts: list[int] | None = None) -> np.ndarray:
    """Frames at arbitrary global indices, uint8 ``[len(indices), H, W, 3]``.

    ``counts``: frames per episode (:func:`frame_counts`), when the caller already has them.
    """
    counts = frame_counts(dataset, frames_key) if counts is None else counts
    starts = np.concatenate([[0], np.cumsum(counts)])
    episodes = np.searchsorted(starts, indices, side="right") - 1
    out = []
    for episode, index in zip(episodes.tolist(), np.asarray(indices).tolist()):
        local = index - int(starts[episode])
        out.append(np.asarray(dataset.frames(episode, frames_key)[local : local + 1])[0])
    return np.stack(out)


def to_mdp_dataset(
    dataset: OfflineDataset,
    rewards: str = "dataset",
    observation_key: str | None = None,
) -> Any:
    """Export to a d3rlpy ``MDPDataset`` (float32, one episode end flagged per episode).

    Every transition is kept, one-step episodes included: d3rlpy drops the last step of an
    episode that ends by timeout (it has no next observation), so where the dataset stores the
    final observation (Minari) it is appended as a padding row whose action and reward are never
    used. Episodes of 0 steps are skipped.

    Args:
        rewards: ``"dataset"`` (the stored, possibly relabelled, rewards) or ``"true"``
            (ground-truth rewards, see :meth:`OfflineDataset.true_rewards`).
        observation_key: key of a dict observation to use as the state.

    Raises:
        UserError: the dataset holds no transition d3rlpy can use.
    """
    import d3rlpy

    columns: list[tuple[np.ndarray, ...]] = []
    for episode in dataset.episodes():
        obs = episode.observations
        if isinstance(obs, dict):
            if observation_key is None or observation_key not in obs:
                raise UserError(
                    f"dataset {dataset.name!r}: observations are a dict ({sorted(obs)}); name one key as observation_key"
                )
            obs = obs[observation_key]
        if episode.num_transitions == 0:
            continue  # only a reset observation: no transition to learn from
        values = episode.rewards if rewards == "dataset" else dataset.true_rewards(episode)
        columns.append(_mdp_rows(episode, np.asarray(obs), values))
    usable = sum(len(rows[0]) - (0 if rows[3][-1] else 1) for rows in columns)  # d3rlpy's transition count
    if usable == 0:
        raise UserError(f"dataset {dataset.name!r} holds no transition to train on: every episode has 0 steps, or "
                        "1 step ending by timeout without its final observation (.npz files store none)")
    observations, actions, reward_rows, terminals, timeouts = (np.concatenate(c) for c in zip(*columns))
    return d3rlpy.dataset.MDPDataset(observations=observations, actions=actions, rewards=reward_rows[:, None],
                                     terminals=terminals, timeouts=timeouts)


def _mdp_rows(episode: EpisodeData, observations: np.ndarray, rewards: Any) -> tuple[np.ndarray, ...]:
    """d3rlpy rows of one episode of ``n >= 1`` steps: observations, actions, rewards, terminals,
    timeouts (float32), with the final observation as a padding row after a timeout when known."""
    n = episode.num_transitions
    obs = observations.astype(np.float32).reshape(len(observations), -1)
    actions = np.asarray(episode.actions, dtype=np.float32).reshape(n, -1)
    rewards = np.asarray(rewards, dtype=np.float32).reshape(n)
    terminated = bool(np.asarray(episode.terminations)[-1])
    if not terminated and len(obs) >= n + 1:
        obs = obs[: n + 1]
        actions = np.concatenate([actions, actions[-1:]])
        rewards = np.concatenate([rewards, np.zeros(1, np.float32)])
    else:
        obs = obs[:n]
    terminals, timeouts = np.zeros(len(obs), np.float32), np.zeros(len(obs), np.float32)
    # One end flag per episode; d3rlpy refuses a row flagged both ways, so a termination wins.
    (terminals if terminated else timeouts)[-1] = 1.0
    return obs, actions, rewards, terminals, timeouts


class MinariWriter:
    """Writes a NEW Minari dataset into a hidden staging directory and publishes it atomically.

    Use as a context manager; :meth:`publish` renames the staging directory to the dataset's
    directory, so a crash leaves nothing under the dataset id.
    """

    def __init__(self, dataset_id: str, observation_space: Any, action_space: Any, env_spec: Any = None,
                 staging: Path | None = None) -> None:
        from minari.dataset.minari_storage import MinariStorage

        check_dataset_id(dataset_id)
        if dataset_dir(dataset_id).exists():
            raise UserError(f"dataset {dataset_id!r} already exists at {dataset_dir(dataset_id)}; datasets are immutable, pick a new id")
        self.dataset_id = dataset_id
        self.staging = staging or datasets_root() / f".staging-{dataset_id.replace('/', '__')}"
        if self.staging.exists():
            _remove_tree(self.staging)
        try:
            (self.staging / "data").mkdir(parents=True)
            (self.staging / FRAMES_DIR).mkdir()
        except OSError as error:
            raise UserError(f"dataset {dataset_id!r}: cannot create the staging folder {self.staging} "
                            f"({error.strerror})") from error
        # jpeg_encoding=False: image observations are copied losslessly.
        self.storage = MinariStorage.new(
            self.staging / "data", observation_space=observation_space, action_space=action_space,
            env_spec=env_spec, data_format="hdf5", jpeg_encoding=False,
        )
        self._episodes = 0
        self._has_frames = False

    def add_episode(self, episode: EpisodeData, rewards: np.ndarray | None = None,
                    frames: np.ndarray | None = None, frames_from: Path | None = None) -> None:
        """Append an episode; ``frames`` (uint8 [T+1, H, W, 3]) are saved, or ``frames_from`` linked."""
        from minari.data_collector.episode_buffer import EpisodeBuffer

        if episode.num_transitions == 0:
            raise UserError(f"dataset {self.dataset_id!r}, episode {episode.index}: 0 steps; Minari cannot store an "
                            "empty episode (at least 1 step needed)")
        values = episode.rewards if rewards is None else rewards
        buffer = EpisodeBuffer(
            id=self._episodes,
            seed=episode.seed,
            observations=episode.observations,
            actions=np.asarray(episode.actions),
            rewards=np.asarray(values, dtype=np.float64),
            terminations=np.asarray(episode.terminations, dtype=bool),
            truncations=np.asarray(episode.truncations, dtype=bool),
            infos=episode.infos,
        )
        self.storage.update_episodes([buffer])
        target = frame_file(self.staging, self._episodes)
        if frames is not None:
            np.save(target, np.ascontiguousarray(frames, dtype=np.uint8))
            self._has_frames = True
        elif frames_from is not None:
            _link_or_copy(frames_from, target)
            self._has_frames = True
        self._episodes += 1

    def open_frames(self, n_frames: int, height: int, width: int) -> np.memmap:
        """A writable memory map for the frames (uint8 ``[n_frames, height, width, 3]``) of the
        episode added next, for frames too many to hold in memory; add the episode without
        ``frames`` afterwards."""
        self._has_frames = True
        path = frame_file(self.staging, self._episodes)
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n_frames, height, width, 3))

    def publish(self, metadata: dict[str, Any]) -> Path:
        """Write the metadata and rename the staging directory to the dataset's directory."""
        import minari

        from minari.namespace import create_namespace, list_local_namespaces
        from minari.dataset.minari_dataset import parse_dataset_id

        if not self._has_frames:
            (self.staging / FRAMES_DIR).rmdir()
        extra = {"dataset_id": self.dataset_id, "minari_version": minari.__version__}
        self.storage.update_metadata({**extra, **metadata})
        namespace = parse_dataset_id(self.dataset_id)[0]
        if namespace is not None and namespace not in list_local_namespaces():
            create_namespace(namespace)
        target = dataset_dir(self.dataset_id)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.staging, target)
        except OSError as error:  # a folder made read-only, a full disk, or the id taken meanwhile
            raise UserError(f"dataset {self.dataset_id!r}: cannot publish it to {target} ({error.strerror})") from error
        return target

    def discard(self) -> None:
        if self.staging.exists():
            _remove_tree(self.staging)


def read_vlmrl_metadata(dataset_id: str) -> dict[str, Any]:
    path = dataset_dir(dataset_id) / "data" / "metadata.json"
    return json.loads(path.read_text()).get(METADATA_KEY, {})


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link (datasets are immutable, so sharing the bytes is safe), else copy."""
    import shutil

    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _local_dataset_ids() -> list[str]:
    root = datasets_root()
    if not root.is_dir():
        return []
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("data/metadata.json") if not any(
        part.startswith(".") for part in p.relative_to(root).parts))


def _is_image_space(space: Any) -> bool:
    from minari.dataset.minari_storage import is_image_space

    return bool(is_image_space(space))


def _box_like(array: np.ndarray) -> Any:
    import gymnasium as gym

    if array.dtype == np.uint8:
        return gym.spaces.Box(0, 255, shape=array.shape[1:], dtype=np.uint8)
    return gym.spaces.Box(-np.inf, np.inf, shape=array.shape[1:], dtype=np.float32)


def _num_rows(values: Any) -> int:
    if isinstance(values, dict):
        return min(_num_rows(v) for v in values.values())
    return len(values)


def _leaves(values: Any) -> Iterator[np.ndarray]:
    if isinstance(values, dict):
        for value in values.values():
            yield from _leaves(value)
    elif isinstance(values, (list, tuple)):
        for value in values:
            yield from _leaves(value)
    else:
        yield np.asarray(values)


def _read_minari_metadata(dataset_id: str, path: Path) -> dict[str, Any]:
    """Minari's ``metadata.json`` as a dict, or a :class:`UserError` naming the file and the field."""
    where = f"dataset {dataset_id!r}, file {path}"
    try:
        metadata = json.loads(path.read_text())
    except OSError as error:
        raise UserError(f"{where}: cannot read it ({error.strerror})") from error
    except UnicodeDecodeError as error:
        raise UserError(f"{where}: not a JSON text file ({error.reason} at byte {error.start})") from error
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: corrupt JSON at line {error.lineno}, column {error.colno}: {error.msg}") from error
    if not isinstance(metadata, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(metadata).__name__}")
    total = metadata.get("total_episodes")
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise UserError(f"{where}, field 'total_episodes': expected a count >= 0, got {total!r}")
    return metadata


def _open_minari_storage(dataset_id: str, data_path: Path) -> Any:
    """``MinariStorage.read``, its errors on bad metadata turned into one :class:`UserError`."""
    import gymnasium as gym
    from minari.dataset.minari_storage import MinariStorage

    try:
        return MinariStorage.read(data_path)
    # Minari asserts field types, and deserialising spaces / the env spec raises these.
    except (KeyError, ValueError, TypeError, AssertionError, gym.error.Error) as error:
        field = f", field {error.args[0]!r}" if isinstance(error, KeyError) and error.args else ""
        raise UserError(f"dataset {dataset_id!r}, file {data_path / METADATA_FILE}{field}: cannot read the "
                        f"observation/action spaces or env spec ({type(error).__name__}: {first_line(error)})") from error


def _check_hdf5_episodes(dataset_id: str, path: Path, total_episodes: int) -> None:
    """Open Minari's HDF5 file once, now, so a truncated or corrupt file is reported here, by
    name, and check it holds the ``total_episodes`` episodes its metadata promises."""
    import h5py

    where = f"dataset {dataset_id!r}, file {path}"
    if not path.is_file():
        raise UserError(f"{where}: missing")
    try:
        with h5py.File(path, "r") as file:
            missing = [i for i in range(total_episodes) if f"episode_{i}" not in file]
    except BlockingIOError as error:  # HDF5 file locking: another process has it open for writing
        raise UserError(f"{where}: locked by another process writing it ({first_line(error)})") from error
    except OSError as error:
        raise UserError(f"{where}: not a readable HDF5 file, truncated or corrupt ({first_line(error)})") from error
    if missing:
        raise UserError(f"{where}: metadata.json says {total_episodes} episodes but episode {missing[0]} is missing "
                        f"({len(missing)} missing)")
