"""Replace a vector env's reward with labeler rewards, optionally distilled into a reward net."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from vlmrl.agents.distill_config import DistillConfig
from vlmrl.reward_labelers.base import FrameRewardLabeler
from vlmrl.reward_learning import FitResult, fit_regression
from vlmrl.reward_nets import RewardModel, downsample_frames


@dataclass
class LabelStats:
    """Running counters, read by the training callback for TensorBoard."""

    labeler_calls: int = 0
    labelled_frames: int = 0
    net_frames: int = 0
    net_fits: int = 0
    labeler_seconds: float = 0.0
    net_seconds: float = 0.0
    recent_labels: list[float] = field(default_factory=list)
    recent_net_rewards: list[float] = field(default_factory=list)
    last_fit: FitResult | None = None

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


class LabelledRewardVecEnv(VecEnvWrapper):
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
    """

    def __init__(
        self,
        venv: VecEnv,
        labeler: FrameRewardLabeler,
        reward_model: RewardModel | None = None,
        schedule: DistillConfig | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(venv)
        self.labeler = labeler
        self.reward_model = reward_model
        self.schedule = schedule or DistillConfig(distill=reward_model is not None)
        self.fit_seed = seed
        self.stats = LabelStats()
        self.vector_steps = 0
        self.env_steps_at_last_fit = 0
        self.buffer = (
            LabelledFrameBuffer(self.schedule.buffer_size, reward_model.config.input_size)
            if reward_model is not None
            else None
        )

    @property
    def net_ready(self) -> bool:
        return self.reward_model is not None and self.stats.net_fits > 0

    def reset(self):
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        observations, env_rewards, dones, infos = self.venv.step_wait()
        true_rewards = np.array([info.get("true_reward", r) for info, r in zip(infos, env_rewards)], dtype=np.float32)
        frames = self._frames(infos)
        self.vector_steps += 1

        if self._should_label():
            rewards = self._label(frames, true_rewards)
            for info, reward in zip(infos, rewards):
                info["labeler_reward"] = float(reward)
        else:
            rewards = self._net_reward(frames)
            for info, reward in zip(infos, rewards):
                info["net_reward"] = float(reward)

        if self.reward_model is not None and self._should_refit():
            self.refit()
        for info, true_reward in zip(infos, true_rewards):
            info["true_reward"] = float(true_reward)
        return observations, rewards.astype(np.float32), dones, infos

    def _frames(self, infos: list[dict]) -> np.ndarray | None:
        if not (self.labeler.needs_frames or self.reward_model is not None):
            return None
        try:
            return np.stack([info["frame"] for info in infos])
        except KeyError as error:
            raise RuntimeError("info has no 'frame': wrap each sub-env in FrameInInfo(capture_frames=True)") from error

    def _should_label(self) -> bool:
        if not self.net_ready:
            return True
        return self.vector_steps % self.schedule.label_every == 0

    def _should_refit(self) -> bool:
        enough_labels = self.buffer.total_added >= self.schedule.warmup_labels
        env_steps = self.vector_steps * self.num_envs
        due = not self.net_ready or env_steps - self.env_steps_at_last_fit >= self.schedule.retrain_every
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
        start = time.perf_counter()
        rewards = self.reward_model.predict(frames)
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
            epochs=self.schedule.fit.epochs,
            batch_size=self.schedule.fit.batch_size,
            lr=self.schedule.fit.lr,
            heldout_fraction=self.schedule.fit.heldout_fraction,
            seed=self.fit_seed + self.stats.net_fits,
        )
        self.stats.net_fits += 1
        self.stats.last_fit = result
        self.env_steps_at_last_fit = self.vector_steps * self.num_envs
        return result
