"""``kind: reward_model``: an already trained reward model as a per-frame labeler.

Registered here, in the reward-net stage, because a reward net comes after the labelers in the
data flow; ``vlmrl.config`` imports this module so the kind is always available.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vlmrl.errors import UserError
from vlmrl.reward_labelers.base import FrameRewardLabeler
from vlmrl.reward_labelers.registry import LabelerConfig, register_labeler


@register_labeler
@dataclass(frozen=True, kw_only=True)
class RewardModelConfig(LabelerConfig):
    """A saved ``RewardModel`` (``path`` without suffix: ``<path>.json`` + ``<path>.safetensors``).

    A cnn model scores frames; an mlp model scores state observations (relabel only)."""

    kind: ClassVar[str] = "reward_model"
    family: ClassVar[str] = "frame"
    path: str

    @property
    def inputs(self) -> str:
        """``frames`` or ``observations``, read from the model's JSON without loading torch."""
        base = Path(self.path)
        if base.suffix in (".json", ".safetensors"):
            base = base.with_suffix("")
        json_path = base.with_name(base.name + ".json")
        try:
            kind = json.loads(json_path.read_text())["config"]["kind"]
        except FileNotFoundError:
            raise UserError(f"labeler.path: reward model file {json_path} not found "
                            f"(a saved model is a pair {self.path}.json + {self.path}.safetensors)") from None
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"labeler.path: {json_path} is not a vlmrl reward model ({error!r})") from None
        return "frames" if kind == "cnn" else "observations"

    def create(self, *, seed: int = 0, store: str | Path | None = None) -> RewardModelLabeler:
        from vlmrl.reward_nets import RewardModel

        return RewardModelLabeler(RewardModel.load(self.path, device=self.device))


class RewardModelLabeler(FrameRewardLabeler):
    """Labels with a reward model's ensemble-mean prediction (frames for a cnn, states for an mlp)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.needs_frames = model.config.kind == "cnn"

    def label(self, frames: np.ndarray, true_rewards: np.ndarray | None = None) -> np.ndarray:
        """``frames``: uint8 ``[N, H, W, 3]`` (cnn) or float ``[N, obs_dim]`` states (mlp)."""
        return self.model.predict(frames)
