"""The base of every VecEnv wrapper that replaces the env's reward with a labeler's or a reward net's.

One vector step of :class:`RewardVecEnvWrapper`::

    venv.step_wait() -> true reward kept (info["true_reward"]) -> frames from info["frame"]
    (when the subclass needs them) -> _rewards(...) hook -> given reward into info -> episode
    returns (true and given) for metrics()

The base also owns checkpointing (``save``/``load``: reward net files, one ``.npz`` of arrays and
one ``.json`` of everything else, both from ``state_dict()``), so the training loop never reaches
into a wrapper's internals.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from vlmrl.reward_nets import RewardModel

# Joins nested state_dict keys into one .npz key ("learner.pairs.first").
KEY_SEPARATOR = "."


class EpisodeReturns:
    """True and given return of each sub-env's running episode, and the episodes finished since the last drain."""

    def __init__(self, n_envs: int) -> None:
        self.true = np.zeros(n_envs)
        self.given = np.zeros(n_envs)
        self.finished_true: list[float] = []
        self.finished_given: list[float] = []

    def reset(self) -> None:
        """Forget the running episodes (the vector env was reset); finished ones are kept."""
        self.true[:] = 0.0
        self.given[:] = 0.0

    def add(self, true_rewards: np.ndarray, given_rewards: np.ndarray, dones: np.ndarray) -> None:
        self.true += true_rewards
        self.given += given_rewards
        for index in np.flatnonzero(dones):
            self.finished_true.append(float(self.true[index]))
            self.finished_given.append(float(self.given[index]))
            self.true[index] = 0.0
            self.given[index] = 0.0

    def drain(self) -> tuple[list[float], list[float]]:
        """(true returns, given returns) of the episodes finished since the last call."""
        finished = self.finished_true, self.finished_given
        self.finished_true, self.finished_given = [], []
        return finished


class RewardVecEnvWrapper(VecEnvWrapper):
    """Gives the agent the reward of :meth:`_rewards` instead of the env's reward.

    Every sub-env must be wrapped in :class:`~vlmrl.agents.frame_capture.FrameInInfo`, with frame
    capture on when :attr:`needs_frames` is. After each step ``info["true_reward"]`` holds the
    env's reward and ``info[self.reward_info_key]`` the reward given.

    Subclasses implement :attr:`needs_frames` and :meth:`_rewards`, hold their reward net (or
    None) in ``reward_model``, and extend :meth:`state_dict`, :meth:`load_state_dict`,
    :meth:`metrics` and :meth:`summary` (calling ``super()``).

    Class attributes:
        reward_info_key: info key of the reward given (a subclass may change it per step).
        given_return_metric: metrics key of the mean given episode return.
        reward_net_file, arrays_file, state_file: checkpoint file names (see :meth:`save`).
    """

    reward_info_key: str = "given_reward"
    given_return_metric: ClassVar[str] = "reward/given_return"
    reward_net_file: ClassVar[str] = "reward_net"
    arrays_file: ClassVar[str] = "reward_arrays.npz"
    state_file: ClassVar[str] = "reward_state.json"

    reward_model: RewardModel | None

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)
        self.vector_steps = 0
        self.episodes = EpisodeReturns(self.num_envs)
        self.last_inputs: np.ndarray | None = None
        """Net inputs of the latest vector step, ``[n_envs, ...]``, where :meth:`reward` can score
        them again (read by the relabelling callbacks of :mod:`vlmrl.agents.rollout_relabel`)."""

    # -- the step --------------------------------------------------------------------------------

    @property
    @abstractmethod
    def needs_frames(self) -> bool:
        """Whether :meth:`_rewards` reads frames (then every step's ``info["frame"]`` is required)."""

    @abstractmethod
    def _rewards(
        self,
        observations: Any,
        frames: np.ndarray | None,
        true_rewards: np.ndarray,
        dones: np.ndarray,
        infos: list[dict],
    ) -> np.ndarray:
        """The reward given for this vector step.

        Args:
            observations: the vector env's observations (a finished sub-env's is already the
                next episode's first; its last one is in ``info["terminal_observation"]``).
            frames: uint8 ``[n_envs, H, W, 3]`` frames of this step (before any auto-reset), or
                None when :attr:`needs_frames` is False.
            true_rewards: float32 ``[n_envs]`` env rewards.
            dones: bool ``[n_envs]`` episode ends (termination or truncation).
            infos: the sub-envs' infos (writable).

        Returns:
            float ``[n_envs]`` rewards; ``vector_steps`` already counts this step.
        """

    @property
    def reward_version(self) -> int:
        """Changes whenever the reward of a given input changes (a refit): stored rewards older
        than the current version are stale. 0 for a reward that never changes."""
        return 0

    def reward(self, inputs: np.ndarray) -> np.ndarray:
        """The reward given now for :attr:`last_inputs`-like net inputs ``[N, ...]``: float32 ``[N]``."""
        raise NotImplementedError(f"{type(self).__name__} cannot score stored inputs again")

    def labelling_failure(self) -> str | None:
        """Why the run should stop because its labeler keeps failing, or None (see
        :class:`~vlmrl.agents.async_labelling.FailureStreak`)."""
        return None

    @property
    def env_steps(self) -> int:
        """Env steps so far, summed over sub-envs."""
        return self.vector_steps * self.num_envs

    def reset(self) -> Any:
        self.episodes.reset()
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        observations, env_rewards, dones, infos = self.venv.step_wait()
        true_rewards = np.array([info.get("true_reward", r) for info, r in zip(infos, env_rewards)], dtype=np.float32)
        frames = self._frames(infos) if self.needs_frames else None
        self.vector_steps += 1
        rewards = np.asarray(self._rewards(observations, frames, true_rewards, dones, infos), dtype=np.float32)
        for info, true_reward, reward in zip(infos, true_rewards, rewards):
            info["true_reward"] = float(true_reward)
            info[self.reward_info_key] = float(reward)
        self.episodes.add(true_rewards, rewards, np.asarray(dones, dtype=bool))
        return observations, rewards, dones, infos

    @staticmethod
    def _frames(infos: list[dict]) -> np.ndarray:
        try:
            return np.stack([info["frame"] for info in infos])
        except KeyError as error:
            raise RuntimeError("info has no 'frame': wrap each sub-env in FrameInInfo(capture_frames=True)") from error

    # -- reporting -------------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """Scalars for TensorBoard, read once per rollout by
        :class:`~vlmrl.agents.training_callbacks.RewardMetricsCallback`.

        Window values (episode returns here; label means in subclasses) cover the steps since the
        previous call, so each call drains them. Undefined values are left out.
        """
        true_returns, given_returns = self.episodes.drain()
        if not true_returns:
            return {}
        return {"reward/true_return": float(np.mean(true_returns)), self.given_return_metric: float(np.mean(given_returns))}

    def summary(self) -> dict[str, Any]:
        """Strict-JSON counters for the run's ``summary.json`` (undefined values as None)."""
        return {}

    def video_scorer(self) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
        """(frames uint8 ``[N, H, W, 3]`` -> rewards ``[N]``, its name) to draw on videos; (None, "reward") for none."""
        return None, "reward"

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs except the reward net: JSON values, numpy arrays and nested dicts of them."""
        return {"vector_steps": self.vector_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.vector_steps = int(state["vector_steps"])

    def save(self, directory: str | Path) -> None:
        """Write ``reward_net_file`` (.safetensors + .json, when there is a net), ``arrays_file``
        (the arrays of :meth:`state_dict`) and ``state_file`` (the rest) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.reward_model is not None:
            self.reward_model.save(directory / self.reward_net_file)
        values, arrays = _split_arrays(self.state_dict())
        np.savez(directory / self.arrays_file, **arrays)
        (directory / self.state_file).write_text(json.dumps(values, indent=2))

    def load(self, directory: str | Path) -> None:
        """Restore what :meth:`save` wrote (the reward net onto its current device)."""
        directory = Path(directory)
        if self.reward_model is not None:
            self.reward_model = RewardModel.load(directory / self.reward_net_file, device=str(self.reward_model.device))
        values = json.loads((directory / self.state_file).read_text())
        with np.load(directory / self.arrays_file) as data:
            arrays = {key: data[key] for key in data.files}
        self.load_state_dict(_join_arrays(values, arrays))


def _split_arrays(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Nested state -> (the same without arrays, {joined key: array})."""
    values: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if KEY_SEPARATOR in key:
            raise ValueError(f"state key {key!r} contains {KEY_SEPARATOR!r}")
        if isinstance(value, np.ndarray):
            arrays[prefix + key] = value
        elif isinstance(value, dict):
            values[key], inner = _split_arrays(value, prefix + key + KEY_SEPARATOR)
            arrays.update(inner)
        else:
            values[key] = value
    return values, arrays


def _join_arrays(values: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Undo :func:`_split_arrays`."""
    for joined, array in arrays.items():
        *parents, key = joined.split(KEY_SEPARATOR)
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = array
    return values


__all__ = ["EpisodeReturns", "RewardVecEnvWrapper"]
