"""SB3 callbacks: reward-wrapper metrics to TensorBoard, periodic actions (checkpoints, videos),
stopping on request, and the base of callbacks whose state a checkpoint must keep."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from stable_baselines3.common.callbacks import BaseCallback

from vlmrl.agents.reward_wrapper import RewardVecEnvWrapper


class RewardMetricsCallback(BaseCallback):
    """Logs the reward wrapper's :meth:`~RewardVecEnvWrapper.metrics` at every rollout end, plus
    ``time/env_steps_per_s`` (env steps of this ``learn`` call per wall-clock second).

    TensorBoard keys, per-frame labels (:class:`~vlmrl.agents.labelled_reward.LabelledRewardVecEnv`):
    ``reward/labeler_mean`` (mean label), ``reward/net_mean`` (mean learned reward),
    ``reward/true_return`` (mean true episode return), ``reward/labelled_return`` (mean episode
    return under the rewards the agent got), ``labeler/calls``, ``labeler/frames``,
    ``labeler/fraction`` (labelled / all frames), ``net/fits``, ``net/heldout_pearson``,
    ``net/train_loss``; with ``labeling: async`` also ``labeler/in_flight`` (frames waiting for
    a label), ``labeler/dropped`` (frames the queue could not take) and ``labeler/lag_steps``
    (mean env steps from submit to label).

    Preferences (:class:`~vlmrl.agents.preference_reward.PreferenceRewardVecEnv`):
    ``labels/asked``, ``labels/answered`` (finite labels, ties included), ``labels/ties``,
    ``labels/unsure``, ``labels/failed`` (from a VLM labeler's own counters; for the teacher,
    unsure = its skipped pairs and failed = 0), ``labels/cached``, ``labels/accuracy_vs_oracle``,
    ``labels/rounds``, ``reward_model/heldout_accuracy``, ``reward_model/train_accuracy``,
    ``reward_model/fits``, ``reward/true_return``, ``reward/learned_return``,
    ``time/label_seconds`` (time ``step_wait`` spent submitting and waiting for labels),
    ``time/fit_seconds``, ``labels/in_flight`` (pairs submitted, not answered yet),
    ``labels/dropped`` (pairs an asynchronous labeler's queue could not take) and
    ``labels/lag_steps`` (mean env steps from submit to answer; 0 when synchronous).
    """

    def __init__(self, reward_env: RewardVecEnvWrapper) -> None:
        super().__init__()
        self.reward_env = reward_env
        self._start_time = 0.0
        self._start_steps = 0

    def _on_training_start(self) -> None:
        self._start_time = time.perf_counter()
        self._start_steps = self.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        for key, value in self.reward_env.metrics().items():
            self.logger.record(key, value)
        elapsed = time.perf_counter() - self._start_time
        if elapsed > 0:
            self.logger.record("time/env_steps_per_s", (self.num_timesteps - self._start_steps) / elapsed)


class CheckpointedCallback(BaseCallback):
    """A callback with state a ``--resume`` needs: :meth:`save` writes it into a checkpoint
    directory beside the agent, :meth:`load` brings it back before training continues."""

    def save(self, directory: str | Path) -> None:
        raise NotImplementedError

    def load(self, directory: str | Path) -> None:
        raise NotImplementedError


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


class StopTrainingCallback(BaseCallback):
    """Ends ``learn`` after the current env step once ``reason()`` returns a reason (not None):
    a stop signal (:mod:`vlmrl.stopping`) or a labeler that keeps failing. The reason is kept
    in :attr:`stopped_because`; the caller checkpoints and exits."""

    def __init__(self, reason: Callable[[], str | None]) -> None:
        super().__init__()
        self.reason = reason
        self.stopped_because: str | None = None

    def _on_step(self) -> bool:
        self.stopped_because = self.reason()
        return self.stopped_because is None
