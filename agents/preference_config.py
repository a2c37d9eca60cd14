"""The ``preference:`` section (light: no torch): learning a reward from pairwise labels.

:class:`PreferenceLearningConfig` is what online training and ``vlmrl relabel`` share (the goal,
the budget, the net and its fit); :class:`OnlinePreferenceConfig` adds the online query schedule
of :class:`~vlmrl.agents.preference_reward.PreferenceRewardVecEnv`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlmrl.reward_learning_config import FitConfig
from vlmrl.reward_net_config import RewardEnsembleConfig


@dataclass(frozen=True)
class PreferenceLearningConfig:
    """Pairs -> preference labels -> Bradley-Terry ensemble (RL-VLM-F, methods.md section 2).

    Attributes:
        goal: the task description shown to a VLM (e.g. "to open the drawer"); the scripted
            teacher ignores it.
        budget: pairs asked in all; every asked pair counts, labelled or not (as in RL-VLM-F).
        pairs_per_round: pairs asked together.
        label_store: SQLite file of the VLM's answers; null = ``labels.sqlite`` in the run
            directory (train) or ``<datasets root>/.label_stores/labels.sqlite`` (relabel).
        net: the ensemble (``cnn`` on frames or ``mlp`` on state observations).
        fit: the Bradley-Terry fit after each round, on all pairs so far.
    """

    goal: str = ""
    budget: int = 2000
    pairs_per_round: int = 50
    label_store: str | None = None
    net: RewardEnsembleConfig = field(default_factory=lambda: RewardEnsembleConfig(ensemble_size=3))
    fit: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        for name in ("budget", "pairs_per_round"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class OnlinePreferenceConfig(PreferenceLearningConfig):
    """The online query schedule, on top of :class:`PreferenceLearningConfig`.

    Every ``round_every`` env steps (first at ``first_round_at``) ``pairs_per_round`` pairs are
    drawn from the newest ``frame_buffer`` steps and labelled, until ``budget`` pairs were asked.

    Attributes:
        segment_length: steps per side whose true return the scripted teacher compares
            (B-Pref segments); 1 = RL-VLM-F's single frames.
        label_frame_mb: MiB the frames kept for a VLM may take; larger frames are shrunk once.
        reward_normalisation: ``buffer_minmax`` maps the learned reward so buffered steps span
            [0, 1] (right for "keep doing X"); ``none`` keeps the raw ensemble mean (use it where
            ending the episode is the goal).
    """

    round_every: int = 4000
    first_round_at: int = 1000
    frame_buffer: int = 10000
    segment_length: int = 1
    label_frame_mb: int = 1024
    reward_normalisation: Literal["buffer_minmax", "none"] = "buffer_minmax"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("round_every", "frame_buffer", "segment_length", "label_frame_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.first_round_at < 0:
            raise ValueError(f"first_round_at must be >= 0, got {self.first_round_at}")
