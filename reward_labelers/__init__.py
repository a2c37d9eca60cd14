"""Reward labelers: turn rendered frames into rewards or preferences.

The labelers load lazily (``from vlmrl.reward_labelers import ClipRewardLabeler`` imports torch
only then), so the light config modules of this package can be imported by ``vlmrl.config``.
Each kind's config class is registered in :mod:`vlmrl.reward_labelers.registry`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ClipRewardLabeler": "vlmrl.reward_labelers.clip",
    "FrameRewardLabeler": "vlmrl.reward_labelers.base",
    "PairwiseLabeler": "vlmrl.reward_labelers.base",
    "HFPreferenceLabeler": "vlmrl.reward_labelers.hf_preference",
    "OracleRewardLabeler": "vlmrl.reward_labelers.oracle",
    "OpenAIPreferenceLabeler": "vlmrl.reward_labelers.openai_preference",
    "OracleTeacher": "vlmrl.reward_labelers.oracle_teacher",
    "PreferenceLabeler": "vlmrl.reward_labelers.preference",
    "PreferenceStats": "vlmrl.reward_labelers.preference",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
