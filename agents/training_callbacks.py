"""SB3 callbacks: labeler metrics to TensorBoard, periodic checkpoints and videos."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from vlmrl.agents.labelled_reward import LabelledRewardVecEnv


class LabelMetricsCallback(BaseCallback):
    """Logs, at every SB3 log dump, what the labeler and reward net did since the last one.

    TensorBoard keys: ``reward/labeler_mean`` (mean label), ``reward/net_mean`` (mean learned
    reward), ``reward/true_return`` (mean true episode return), ``reward/labelled_return``
    (mean episode return under the rewards the agent got), ``labeler/calls``,
    ``labeler/frames``, ``labeler/fraction`` (labelled / all frames), ``net/fits``,
    ``net/heldout_pearson``, ``net/train_loss``, ``time/env_steps_per_s``.
    """

    def __init__(self, labelled_env: LabelledRewardVecEnv) -> None:
        super().__init__()
        self.labelled_env = labelled_env
        self._episode_true = None
        self._episode_given = None
        self._true_returns: list[float] = []
        self._given_returns: list[float] = []
        self._start_time = 0.0
        self._start_steps = 0

    def _on_training_start(self) -> None:
        n_envs = self.training_env.num_envs
        self._episode_true = np.zeros(n_envs)
        self._episode_given = np.zeros(n_envs)
        self._start_time = time.perf_counter()
        self._start_steps = self.num_timesteps

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        rewards = np.asarray(self.locals["rewards"], dtype=np.float64)
        dones = np.asarray(self.locals["dones"], dtype=bool)
        self._episode_true += [info["true_reward"] for info in infos]
        self._episode_given += rewards
        for index in np.flatnonzero(dones):
            self._true_returns.append(float(self._episode_true[index]))
            self._given_returns.append(float(self._episode_given[index]))
            self._episode_true[index] = 0.0
            self._episode_given[index] = 0.0
        return True

    def _on_rollout_end(self) -> None:
        stats = self.labelled_env.stats
        labels, net_rewards = stats.drain_recent()
        if labels:
            self.logger.record("reward/labeler_mean", float(np.mean(labels)))
        if net_rewards:
            self.logger.record("reward/net_mean", float(np.mean(net_rewards)))
        if self._true_returns:
            self.logger.record("reward/true_return", float(np.mean(self._true_returns)))
            self.logger.record("reward/labelled_return", float(np.mean(self._given_returns)))
            self._true_returns, self._given_returns = [], []
        total = stats.labelled_frames + stats.net_frames
        self.logger.record("labeler/calls", stats.labeler_calls)
        self.logger.record("labeler/frames", stats.labelled_frames)
        self.logger.record("labeler/fraction", stats.labelled_frames / max(total, 1))
        self.logger.record("net/fits", stats.net_fits)
        if stats.last_fit is not None:
            self.logger.record("net/heldout_pearson", stats.last_fit.heldout_pearson)
            self.logger.record("net/train_loss", stats.last_fit.train_loss)
        elapsed = time.perf_counter() - self._start_time
        if elapsed > 0:
            self.logger.record("time/env_steps_per_s", (self.num_timesteps - self._start_steps) / elapsed)


class PeriodicCallback(BaseCallback):
    """Calls ``action(num_timesteps)`` every ``every`` env steps (summed over envs)."""

    def __init__(self, every: int, action: Callable[[int], None]) -> None:
        super().__init__()
        self.every = every
        self.action = action
        self._next = every

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self.action(self.num_timesteps)
            self._next += self.every
        return True
