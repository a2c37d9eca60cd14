"""A toy labeler plugin, ``kind: spy``: the true reward as the label, a note of every call in
``LABEL_CALLS``, and ``delay`` seconds of sleep per call.

tests/test_bad_input.py imports it to prove bad input is caught before any labelling, and names it
in ``VLMRL_LABELERS`` (with this folder on ``PYTHONPATH``) for relabels run as separate processes,
slowed down (``delay``) so that they can be raced and killed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from vlmrl.reward_labelers.registry import LabelerConfig, register_labeler

LABEL_CALLS: list[int] = []


class SpyLabeler:
    """The true reward, after ``delay`` seconds, and a note of every call."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def label(self, frames, true_rewards=None) -> np.ndarray:
        LABEL_CALLS.append(len(true_rewards))
        time.sleep(self.delay)
        return np.asarray(true_rewards, dtype=np.float32)


@register_labeler
@dataclass(frozen=True, kw_only=True)
class SpyConfig(LabelerConfig):
    """``delay``: seconds each call sleeps (0: none)."""

    delay: float = 0.0
    kind: ClassVar[str] = "spy"
    family: ClassVar[str] = "frame"
    needs_frames: ClassVar[bool] = False

    def create(self, *, seed: int = 0, store=None) -> SpyLabeler:
        return SpyLabeler(self.delay)
