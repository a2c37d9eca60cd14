"""Reward labelers: turn rendered frames into rewards or preferences."""

from vlmrl.reward_labelers.base import FrameRewardLabeler
from vlmrl.reward_labelers.oracle import OracleRewardLabeler

__all__ = ["FrameRewardLabeler", "OracleRewardLabeler"]
