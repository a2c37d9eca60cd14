"""The two labeler interfaces every reward labeler implements.

- :class:`FrameRewardLabeler` (``family = "frame"`` in the registry): one reward per frame.
- :class:`PairwiseLabeler` (``family = "pair"``): which of two frames (or segments) better
  achieves a goal. VLM labelers share :class:`~vlmrl.reward_labelers.preference.PreferenceLabeler`;
  the scripted teacher implements the protocol directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class PairwiseLabeler(Protocol):
    """Preferences between pairs of frames (or of segments, for the scripted teacher).

    Attributes:
        needs_frames: False for labelers that read only ``true_rewards`` (the scripted teacher):
            callers may then pass ``None`` for the frames and skip rendering.
        stats: running counters with ``as_dict() -> dict[str, int]`` (asked, answered, unsure,
            unparseable, failed, ...), logged to TensorBoard and the run summary.
    """

    needs_frames: bool
    stats: Any

    def compare(
        self,
        first: np.ndarray | None,
        second: np.ndarray | None,
        goal: str,
        true_rewards: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Labels for ``N`` pairs.

        Args:
            first: uint8 ``[N, H, W, 3]`` frames shown as image 1 (None if not ``needs_frames``).
            second: uint8 ``[N, H, W, 3]`` frames shown as image 2.
            goal: the task description shown to a VLM.
            true_rewards: ``(r_first, r_second)``, float ``[N]`` each: true returns of the two
                sides, when known (the teacher's only input; stored beside VLM answers).

        Returns:
            float32 ``[N]``: 1.0 first preferred, 0.0 second, 0.5 tie, NaN no usable answer.
        """
        ...


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Validate a frame batch: uint8 ``[N, H, W, 3]``; raise a ValueError saying what is wrong."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [N, H, W, 3], got {tuple(frames.shape)}")
    return frames
