"""Reward labelers: turn rendered frames into rewards or preferences."""

from vlmrl.reward_labelers.base import FrameRewardLabeler
from vlmrl.reward_labelers.clip import ClipRewardLabeler
from vlmrl.reward_labelers.hf_preference import HFPreferenceLabeler
from vlmrl.reward_labelers.oracle import OracleRewardLabeler
from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler
from vlmrl.reward_labelers.oracle_teacher import OracleTeacher
from vlmrl.reward_labelers.preference import PreferenceLabeler, PreferenceStats

__all__ = [
    "ClipRewardLabeler",
    "FrameRewardLabeler",
    "HFPreferenceLabeler",
    "OracleRewardLabeler",
    "OpenAIPreferenceLabeler",
    "OracleTeacher",
    "PreferenceLabeler",
    "PreferenceStats",
]
