"""Rewards at update time: after the reward model changes, the agent's stored transitions get
the new model's rewards before it learns from them.

Both callbacks keep a parallel array of the reward wrapper's net inputs
(:attr:`~vlmrl.agents.reward_wrapper.RewardVecEnvWrapper.last_inputs`: the step's frame at
the net's size, or its observation) at the SB3 buffer's write position, written in
``_on_step``, which SB3 calls after ``env.step`` and before it stores the transition. Rewriting
a stored reward is then ``wrapper.reward(inputs)``: exactly what the wrapper would give now.

- :class:`SACReplayRelabelCallback` (PEBBLE): after each refit, every reward in the off-policy
  replay buffer.
- :class:`PPORolloutRelabelCallback`: at the end of a rollout in which the reward changed, every
  reward of the rollout buffer, then SB3's time-limit bootstrap again and the returns and
  advantages, so late labels count in this very update.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor

from vlmrl.agents.reward_wrapper import RewardVecEnvWrapper
from vlmrl.agents.training_callbacks import CheckpointedCallback

REPLAY_INPUTS_FILE = "replay_reward_inputs.npz"


class SACReplayRelabelCallback(CheckpointedCallback):
    """PEBBLE: after each reward-model refit, rewrite every reward in the off-policy replay buffer.

    A parallel ring ``[buffer_size, n_envs, ...]`` holds the wrapper's net input of each stored
    transition, written at the replay buffer's ``pos``. For a 64x64 cnn input that is 12 KiB
    per transition: size SAC's ``buffer_size`` accordingly.

    Args:
        reward_env: the wrapper whose reward the agent trains on (its ``reward_version``
            tells when to relabel).
    """

    def __init__(self, reward_env: RewardVecEnvWrapper) -> None:
        super().__init__()
        self.reward_env = reward_env
        self.inputs: np.ndarray | None = None
        self.relabels = 0
        self._version_seen = 0
        self._pending: np.ndarray | None = None

    def _on_training_start(self) -> None:
        buffer = getattr(self.model, "replay_buffer", None)
        if buffer is None:
            raise TypeError(f"{type(self.model).__name__} has no replay buffer to relabel (use SAC)")
        if self._pending is not None:
            self.inputs = self._allocate(self._pending.shape[2:], self._pending.dtype)
            self.inputs[: len(self._pending)] = self._pending
            self._pending = None
        self._version_seen = self.reward_env.reward_version

    def _allocate(self, item_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        buffer = self.model.replay_buffer
        # calloc'd: only rows the replay buffer reaches are committed to memory.
        return np.zeros((buffer.buffer_size, buffer.n_envs, *item_shape), dtype=dtype)

    def _on_step(self) -> bool:
        latest = self.reward_env.last_inputs
        if self.inputs is None:
            self.inputs = self._allocate(latest.shape[1:], latest.dtype)
        self.inputs[self.model.replay_buffer.pos] = latest
        if self.reward_env.reward_version != self._version_seen:
            self.relabel()
        return True

    @property
    def stored(self) -> int:
        buffer = self.model.replay_buffer
        return buffer.buffer_size if buffer.full else buffer.pos

    def relabel(self) -> None:
        """Rewards of all stored transitions <- the wrapper's current reward of their inputs."""
        size = self.stored
        if size and self.inputs is not None:
            items = self.inputs[:size]
            rewards = self.reward_env.reward(items.reshape(-1, *items.shape[2:]))
            self.model.replay_buffer.rewards[:size] = rewards.reshape(size, -1)
        self.relabels += 1
        self._version_seen = self.reward_env.reward_version

    def save(self, directory: str | Path) -> None:
        """Write the stored part of the parallel ring to ``directory/REPLAY_INPUTS_FILE``, for checkpoints."""
        items = self.inputs[: self.stored] if self.inputs is not None else np.zeros((0, 0))
        np.savez(Path(directory) / REPLAY_INPUTS_FILE, inputs=items)

    def load(self, directory: str | Path) -> None:
        """Restore :meth:`save`'s inputs (if saved); applied when training (re)starts with the loaded replay buffer."""
        path = Path(directory) / REPLAY_INPUTS_FILE
        if not path.is_file():
            return
        with np.load(path) as data:
            items = data["inputs"]
        self._pending = items if items.ndim >= 3 and len(items) else None


class PPORolloutRelabelCallback(BaseCallback):
    """Before PPO's update, give the rollout the current reward model's rewards when it changed
    during the rollout; recompute SB3's time-limit bootstrap, returns and advantages.

    SB3's ``collect_rollouts`` stores ``reward + gamma * V(terminal observation)`` for steps
    whose episode was truncated (time limit) and computes returns and advantages (GAE) before
    ``on_rollout_end``. This callback redoes both exactly as SB3 does them: the same value
    function (it does not change during a rollout), the same float32 operations per step, and
    ``compute_returns_and_advantage`` from the value and episode starts of the last observation.
    A rollout whose rewards all came from the current reward model is left untouched.

    Args:
        reward_env: the wrapper whose reward the agent trains on.

    Attributes:
        inputs: ``[n_steps, n_envs, ...]`` net inputs of the rollout's steps.
        versions: int64 ``[n_steps]``: the wrapper's ``reward_version`` each step's reward came from.
        relabels: rollouts relabelled so far.
    """

    def __init__(self, reward_env: RewardVecEnvWrapper) -> None:
        super().__init__()
        self.reward_env = reward_env
        self.inputs: np.ndarray | None = None
        self.versions: np.ndarray | None = None
        self.truncated: list[tuple[int, int, Any]] = []  # (row, env, terminal observation)
        self.relabels = 0

    def _on_training_start(self) -> None:
        if getattr(self.model, "rollout_buffer", None) is None:
            raise TypeError(f"{type(self.model).__name__} has no rollout buffer to relabel (use PPO)")

    def _on_rollout_start(self) -> None:
        self.truncated = []

    def _on_step(self) -> bool:
        buffer = self.model.rollout_buffer
        latest = self.reward_env.last_inputs
        if self.inputs is None:
            self.inputs = np.zeros((buffer.buffer_size, buffer.n_envs, *latest.shape[1:]), dtype=latest.dtype)
            self.versions = np.zeros(buffer.buffer_size, dtype=np.int64)
        row = buffer.pos
        self.inputs[row] = latest
        self.versions[row] = self.reward_env.reward_version
        # The steps collect_rollouts is about to bootstrap (its test, verbatim).
        for index, done in enumerate(self.locals["dones"]):
            info = self.locals["infos"][index]
            if done and info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
                self.truncated.append((row, index, info["terminal_observation"]))
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        if buffer.full and np.any(self.versions != self.reward_env.reward_version):
            self.relabel()

    def relabel(self) -> None:
        """Rewards of the full rollout buffer <- the wrapper's current reward of their inputs, plus
        the time-limit bootstrap; then returns and advantages again."""
        model = self.model
        buffer = model.rollout_buffer
        rewards = np.zeros_like(buffer.rewards)
        for row in range(buffer.buffer_size):
            # One vector step at a time: the batch the reward was given in, so an unchanged
            # model reproduces its rewards bit for bit.
            rewards[row] = self.reward_env.reward(self.inputs[row])
        for row, index, terminal_observation in self.truncated:
            step_rewards = rewards[row]
            terminal_obs = model.policy.obs_to_tensor(terminal_observation)[0]
            with torch.no_grad():
                terminal_value = model.policy.predict_values(terminal_obs)[0]
            step_rewards[index] += model.gamma * terminal_value
        buffer.rewards[:] = rewards
        with torch.no_grad():
            last_values = model.policy.predict_values(obs_as_tensor(model._last_obs, model.device))
        buffer.compute_returns_and_advantage(last_values=last_values, dones=model._last_episode_starts)
        self.relabels += 1


__all__ = ["PPORolloutRelabelCallback", "REPLAY_INPUTS_FILE", "SACReplayRelabelCallback"]
