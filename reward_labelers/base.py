"""The two labeler interfaces every reward labeler implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class FrameRewardLabeler(ABC):
    """Gives every frame a scalar reward (CLIP zero-shot, or the true reward for the oracle).

    ``needs_frames`` is False for labelers that only read ``true_rewards`` (the oracle), so
    callers may skip rendering.
    """

    needs_frames: bool = True

    @abstractmethod
    def label(self, frames: np.ndarray, true_rewards: np.ndarray | None = None) -> np.ndarray:
        """Rewards for a batch of frames.

        Args:
            frames: uint8 ``[N, H, W, 3]`` RGB frames.
            true_rewards: float ``[N]`` ground-truth rewards of the same steps, when known.
                Only the oracle reads them.

        Returns:
            float32 ``[N]`` rewards.
        """


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Validate a frame batch: uint8 ``[N, H, W, 3]``; raise a ValueError saying what is wrong."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [N, H, W, 3], got {tuple(frames.shape)}")
    return frames
