"""Replace a vector env's reward with labeler rewards, optionally distilled into a reward net.

``reward.labeling: sync`` (the default) labels a due vector step inside ``step_wait``: the labels
are that step's reward. ``async`` (with ``distill: true``) hands the due frames to a background
thread (:class:`~vlmrl.agents.async_labelling.BackgroundFrameLabels`) and never waits: the net
rewards every step (0 before its first fit), labels join the net's buffer as they arrive (by
frame id) and the net is refitted on the same schedule. Frames the queue cannot take are
dropped and counted. With PPO the rollout is relabelled after a refit
(:class:`~vlmrl.agents.rollout_relabel.PPORolloutRelabelCallback`), with SAC the replay buffer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from vlmrl.agents.async_labelling import BackgroundFrameLabels
from vlmrl.agents.distill_config import DistillConfig
from vlmrl.agents.reward_wrapper import RewardVecEnvWrapper
from vlmrl.reward_labelers.base import FrameRewardLabeler
from vlmrl.reward_learning import FitResult, fit_regression
from vlmrl.reward_nets import RewardModel, downsample_frames


# The LabelStats fields a checkpoint keeps and summary.json reports (timings and windows are not).
COUNTERS = ("labeler_calls", "labelled_frames", "net_frames", "net_fits")
# Asynchronous labelling's counters: kept and reported too (0 in sync mode, where they are left out).
ASYNC_COUNTERS = ("frames_dropped", "lag_steps_sum", "lag_steps_max")


@dataclass
class LabelStats:
    """Running counters, reported by :meth:`LabelledRewardVecEnv.metrics`."""

    labeler_calls: int = 0
    labelled_frames: int = 0
    net_frames: int = 0
    net_fits: int = 0
    frames_dropped: int = 0
    lag_steps_sum: int = 0
    lag_steps_max: int = 0
    labeler_seconds: float = 0.0
    net_seconds: float = 0.0
    recent_labels: list[float] = field(default_factory=list)
    recent_net_rewards: list[float] = field(default_factory=list)
    last_fit: FitResult | None = None

    def counters(self, asynchronous: bool = False) -> dict[str, int]:
        """The counts a checkpoint keeps and ``summary.json`` reports (with ``asynchronous``,
        also the dropped frames and the label lag)."""
        return {key: getattr(self, key) for key in COUNTERS + (ASYNC_COUNTERS if asynchronous else ())}

    def drain_recent(self) -> tuple[list[float], list[float]]:
        labels, net_rewards = self.recent_labels, self.recent_net_rewards
        self.recent_labels, self.recent_net_rewards = [], []
        return labels, net_rewards


class LabelledFrameBuffer:
    """Ring buffer of downsampled frames (uint8 ``[capacity, S, S, 3]``) and their labels."""

    def __init__(self, capacity: int, frame_size: int) -> None:
        self.frames = np.zeros((capacity, frame_size, frame_size, 3), dtype=np.uint8)
        self.labels = np.zeros(capacity, dtype=np.float32)
        self.capacity = capacity
        self.size = 0
        self.position = 0
        self.total_added = 0

    def add(self, frames: np.ndarray, labels: np.ndarray) -> None:
        for frame, label in zip(frames, labels):
            self.frames[self.position] = frame
            self.labels[self.position] = label
            self.position = (self.position + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)
        self.total_added += len(frames)

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        return self.frames[: self.size], self.labels[: self.size]

    def state_dict(self) -> dict[str, np.ndarray]:
        frames, labels = self.contents()
        return {
            "frames": frames,
            "labels": labels,
            "meta": np.array([self.position, self.total_added], dtype=np.int64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        size = len(state["labels"])
        if size > self.capacity or state["frames"].shape[1:] != self.frames.shape[1:]:
            raise ValueError("saved label buffer does not fit this buffer's capacity or frame size")
        self.frames[:size] = state["frames"]
        self.labels[:size] = state["labels"]
        self.size = size
        self.position, self.total_added = (int(v) for v in state["meta"])


class LabelledRewardVecEnv(RewardVecEnvWrapper):
    """Labels all N frames of a vector step in one batch and makes the labels the reward.

    Each sub-env must be wrapped in :class:`~vlmrl.agents.frame_capture.FrameInInfo`, so
    ``info["frame"]`` (uint8 ``[H, W, 3]``) is the frame of that step, taken before any
    auto-reset. The env's own reward is kept in ``info["true_reward"]``; ``info["labeler_reward"]``
    holds the label where the labeler was called and ``info["net_reward"]`` the net's reward.

    Args:
        venv: the vector env.
        labeler: turns frames (and, for the oracle, true rewards) into rewards.
        reward_model: a reward net to distil the labels into; None labels every step.
        schedule: labelling and refitting schedule (the ``reward:`` section; only used with a reward model).
        seed: seed for the net's fits.
        labeler_name: the labeler's name on videos scored with its labels (e.g. ``"clip"``).
    """

    given_return_metric: ClassVar[str] = "reward/labelled_return"
    reward_net_file: ClassVar[str] = "reward_net"
    arrays_file: ClassVar[str] = "label_buffer.npz"
    state_file: ClassVar[str] = "label_state.json"

    def __init__(
        self,
        venv: VecEnv,
        labeler: FrameRewardLabeler,
        reward_model: RewardModel | None = None,
        schedule: DistillConfig | None = None,
        seed: int = 0,
        labeler_name: str = "labeler",
    ) -> None:
        super().__init__(venv)
        self.labeler = labeler
        self.labeler_name = labeler_name
        self.reward_model = reward_model
        self.schedule = schedule or DistillConfig(distill=reward_model is not None)
        self.fit_seed = seed
        self.stats = LabelStats()
        self.env_steps_at_last_fit = 0
        self.reward_info_key = "labeler_reward"
        self.buffer = (
            LabelledFrameBuffer(self.schedule.buffer_size, reward_model.config.input_size)
            if reward_model is not None
            else None
        )
        self.asynchronous = self.schedule.labeling == "async" and reward_model is not None
        self.background: BackgroundFrameLabels | None = None
        if self.asynchronous:
            self.background = BackgroundFrameLabels(labeler, self.schedule.queue_size)
        self.submitted_frames = 0
        self._in_flight: dict[int, tuple[np.ndarray, int]] = {}  # frame id -> (net input, submitted at env step)
        self.labeling_at_checkpoint: str | None = None
        """The labelling mode of the checkpoint this run resumed from (None before a load)."""

    @property
    def net_ready(self) -> bool:
        return self.reward_model is not None and self.stats.net_fits > 0

    @property
    def needs_frames(self) -> bool:
        return self.labeler.needs_frames or self.reward_model is not None

    @property
    def reward_version(self) -> int:
        return self.stats.net_fits

    @property
    def frames_in_flight(self) -> int:
        return len(self._in_flight)

    def reward(self, inputs: np.ndarray) -> np.ndarray:
        """The net's reward for frames at its input size (uint8 ``[N, S, S, 3]``): float32 ``[N]``; 0 before its first fit."""
        if not self.net_ready:
            return np.zeros(len(inputs), dtype=np.float32)
        return self.reward_model.predict(inputs)

    def _rewards(
        self, observations: Any, frames: np.ndarray | None, true_rewards: np.ndarray, dones: np.ndarray, infos: list[dict]
    ) -> np.ndarray:
        if self.asynchronous:
            return self._rewards_async(frames, true_rewards)
        if self._should_label():
            rewards = self._label(frames, true_rewards)
            self.reward_info_key = "labeler_reward"
        else:
            rewards = self._net_reward(frames)
            self.reward_info_key = "net_reward"
        if self.reward_model is not None and self._should_refit():
            self.refit()
        return rewards

    def _rewards_async(self, frames: np.ndarray, true_rewards: np.ndarray) -> np.ndarray:
        """Take in the labels that arrived, submit this step's frames when due, refit when due,
        reward every frame with the net."""
        start = time.perf_counter()
        inputs = downsample_frames(frames, self.reward_model.config.input_size)
        self._take_labels()
        if self.submitted_frames < self.schedule.warmup_labels or self.vector_steps % self.schedule.label_every == 0:
            self._submit(inputs, frames, true_rewards)
        self.stats.labeler_seconds += time.perf_counter() - start
        if self._should_refit():
            self.refit()
        self.last_inputs = inputs
        self.reward_info_key = "net_reward"
        return self._net_reward(inputs)

    def _submit(self, inputs: np.ndarray, frames: np.ndarray, true_rewards: np.ndarray) -> None:
        ids = np.arange(self.submitted_frames, self.submitted_frames + len(frames), dtype=np.int64)
        self.submitted_frames += len(frames)
        accepted = self.background.submit(ids, frames, true_rewards)
        self.stats.frames_dropped += int((~accepted).sum())
        for frame_id, net_input in zip(ids[accepted], inputs[accepted]):
            self._in_flight[int(frame_id)] = (net_input, self.env_steps)

    def _take_labels(self) -> None:
        answered = self.background.poll()
        if answered is None:
            return
        ids, labels = answered
        waiting = [self._in_flight.pop(int(frame_id)) for frame_id in ids]
        self.buffer.add(np.stack([net_input for net_input, _ in waiting]), labels)
        lags = [self.env_steps - submitted_at for _, submitted_at in waiting]
        self.stats.lag_steps_sum += int(sum(lags))
        self.stats.lag_steps_max = max(self.stats.lag_steps_max, max(lags))
        self.stats.labeler_calls += 1
        self.stats.labelled_frames += len(labels)
        self.stats.recent_labels.extend(labels.tolist())

    def close(self) -> None:
        """Stop the labelling thread (frames in flight are abandoned), then close the envs."""
        if self.background is not None:
            self.background.close()
        super().close()

    def _should_label(self) -> bool:
        if not self.net_ready:
            return True
        return self.vector_steps % self.schedule.label_every == 0

    def _should_refit(self) -> bool:
        enough_labels = self.buffer.total_added >= self.schedule.warmup_labels
        due = not self.net_ready or self.env_steps - self.env_steps_at_last_fit >= self.schedule.retrain_every
        return enough_labels and due

    def _label(self, frames: np.ndarray | None, true_rewards: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        labels = np.asarray(self.labeler.label(frames, true_rewards=true_rewards), dtype=np.float32)
        self.stats.labeler_seconds += time.perf_counter() - start
        self.stats.labeler_calls += 1
        self.stats.labelled_frames += len(labels)
        self.stats.recent_labels.extend(labels.tolist())
        if self.buffer is not None:
            self.buffer.add(downsample_frames(frames, self.reward_model.config.input_size), labels)
        return labels

    def _net_reward(self, frames: np.ndarray) -> np.ndarray:
        """The net's reward for ``frames`` (0 before its first fit), timed and recorded."""
        start = time.perf_counter()
        rewards = self.reward(frames)
        self.stats.net_seconds += time.perf_counter() - start
        self.stats.net_frames += len(rewards)
        self.stats.recent_net_rewards.extend(rewards.tolist())
        return rewards

    def refit(self) -> FitResult:
        """Fit the reward net on the buffered labels (continues from its current weights)."""
        frames, labels = self.buffer.contents()
        result = fit_regression(
            self.reward_model,
            frames,
            labels,
            self.schedule.fit,
            seed=self.fit_seed + self.stats.net_fits,
        )
        self.stats.net_fits += 1
        self.stats.last_fit = result
        self.env_steps_at_last_fit = self.env_steps
        return result

    # -- reporting and checkpoints ---------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """Episode returns, the mean label and net reward since the last call, labeler and net counters
        (keys listed in :class:`~vlmrl.agents.training_callbacks.RewardMetricsCallback`)."""
        stats = self.stats
        labels, net_rewards = stats.drain_recent()
        metrics = super().metrics()
        if labels:
            metrics["reward/labeler_mean"] = float(np.mean(labels))
        if net_rewards:
            metrics["reward/net_mean"] = float(np.mean(net_rewards))
        metrics["labeler/calls"] = stats.labeler_calls
        metrics["labeler/frames"] = stats.labelled_frames
        metrics["labeler/fraction"] = stats.labelled_frames / max(stats.labelled_frames + stats.net_frames, 1)
        metrics["net/fits"] = stats.net_fits
        if self.asynchronous:
            metrics["labeler/in_flight"] = self.frames_in_flight
            metrics["labeler/dropped"] = stats.frames_dropped
            if stats.labelled_frames:
                metrics["labeler/lag_steps"] = stats.lag_steps_sum / stats.labelled_frames
        if stats.last_fit is not None:
            metrics["net/train_loss"] = stats.last_fit.train_loss
            if not math.isnan(stats.last_fit.heldout_pearson):
                metrics["net/heldout_pearson"] = stats.last_fit.heldout_pearson
        return metrics

    def summary(self) -> dict[str, Any]:
        """``labeler_calls``, ``labelled_frames``, ``net_frames``, ``net_fits``; in async mode also
        ``labeling``, ``frames_in_flight``, ``frames_dropped``, ``label_lag_steps_mean`` /
        ``_max`` (env steps from submit to label) and ``label_wait_seconds``."""
        summary = {**super().summary(), **self.stats.counters()}
        if self.asynchronous:
            stats = self.stats
            summary.update(
                labeling="async",
                frames_in_flight=self.frames_in_flight,
                frames_dropped=stats.frames_dropped,
                label_lag_steps_mean=stats.lag_steps_sum / stats.labelled_frames if stats.labelled_frames else None,
                label_lag_steps_max=stats.lag_steps_max,
                label_wait_seconds=round(stats.labeler_seconds, 3),
            )
        return summary

    def video_scorer(self) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
        if self.reward_model is not None:
            return self.reward_model.predict, "learned"
        if self.labeler.needs_frames:
            return self.labeler.label, self.labeler_name
        return super().video_scorer()

    def state_dict(self) -> dict[str, Any]:
        """Vector steps, counters, the last fit's step and (when distilling) the labelled frames.

        Async mode adds its mode and the frames submitted; frames in flight are not saved (the
        next due steps are labelled instead)."""
        state = {**super().state_dict(), "env_steps_at_last_fit": self.env_steps_at_last_fit,
                 "stats": self.stats.counters(self.asynchronous)}
        if self.asynchronous:
            state.update(labeling="async", submitted_frames=self.submitted_frames)
        if self.buffer is not None:
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.env_steps_at_last_fit = int(state["env_steps_at_last_fit"])
        self.labeling_at_checkpoint = state.get("labeling", "sync")
        self.submitted_frames = int(state.get("submitted_frames", self.stats.labelled_frames))
        self._in_flight = {}
        for key, value in state["stats"].items():
            setattr(self.stats, key, value)
        if self.buffer is not None:
            self.buffer.load_state_dict(state["buffer"])
