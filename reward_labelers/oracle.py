"""The scripted teacher for per-frame rewards: the environment's own true reward."""

from __future__ import annotations

import numpy as np

from vlmrl.reward_labelers.base import FrameRewardLabeler


class OracleRewardLabeler(FrameRewardLabeler):
    """Returns the true reward of each step, so the whole pipeline can be validated without a VLM.

    Args:
        scale: multiplies the true reward.
        noise_std: standard deviation of Gaussian noise added to each label (0 = exact).
        seed: seed of the noise generator.
    """

    needs_frames = False

    def __init__(self, scale: float = 1.0, noise_std: float = 0.0, seed: int = 0) -> None:
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.scale = float(scale)
        self.noise_std = float(noise_std)
        self._rng = np.random.default_rng(seed)

    def label(self, frames: np.ndarray | None, true_rewards: np.ndarray | None = None) -> np.ndarray:
        if true_rewards is None:
            raise ValueError("OracleRewardLabeler needs the true rewards of the labelled steps")
        rewards = self.scale * np.asarray(true_rewards, dtype=np.float64)
        if self.noise_std > 0:
            rewards = rewards + self._rng.normal(0.0, self.noise_std, size=rewards.shape)
        return rewards.astype(np.float32)
