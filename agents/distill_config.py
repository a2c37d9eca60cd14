"""The ``reward:`` section of online runs with a per-frame labeler (light: no torch), for
:class:`~vlmrl.agents.labelled_reward.LabelledRewardVecEnv`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlmrl.reward_learning_config import FitConfig
from vlmrl.reward_net_config import RewardEnsembleConfig


@dataclass(frozen=True)
class DistillConfig:
    """How per-frame labels become the agent's reward (counts are env steps summed over envs).

    With ``distill: false`` every env step is labelled and the label is the reward. With
    ``distill: true`` a CNN reward net (``net``) is regressed on the labels (``fit``): every
    vector step is labelled until ``warmup_labels`` frames are, then only every
    ``label_every``-th one, and the net rewards the rest. The net is refitted every
    ``retrain_every`` env steps on the newest ``buffer_size`` labelled frames.

    ``labeling: async`` (needs ``distill: true``) labels the frames in a background thread
    instead: the net rewards every step (0 before its first fit), frames due for a label wait
    in a queue of ``queue_size`` frames (frames that do not fit are dropped and counted), and
    the net is refitted on the same schedule as labels arrive. ``sync`` is the default.
    """

    distill: bool = False
    label_every: int = 1
    warmup_labels: int = 512
    retrain_every: int = 2048
    buffer_size: int = 20000
    net: RewardEnsembleConfig = field(default_factory=RewardEnsembleConfig)
    fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=3, batch_size=256))
    labeling: Literal["sync", "async"] = "sync"
    queue_size: int = 512

    def __post_init__(self) -> None:
        for name in ("label_every", "warmup_labels", "retrain_every", "buffer_size", "queue_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.label_every > 1 and not self.distill:
            raise ValueError("label_every > 1 needs distill: true (the net rewards the unlabelled steps)")
        if self.labeling == "async" and not self.distill:
            raise ValueError("labeling: async needs distill: true (the net rewards the steps whose labels are on the way)")
        if self.net.kind != "cnn":
            raise ValueError("net.kind must be 'cnn': the distilled net reads the frames the labeler saw")
