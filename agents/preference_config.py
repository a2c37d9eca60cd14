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
        label_confidence: what the fit learns from an answer that carries answer-token
            probabilities (a VLM labeler with ``answer_mode: logprobs``): ``hard`` its 1/0
            label, ``soft`` P(image 1) / (P(image 1) + P(image 2)). Answers without
            probabilities keep their label either way.
        min_confidence: answers whose max(P(image 1), P(image 2)) is below this are left out
            of the fit (and still count against the budget); 0 keeps all. Answers without
            probabilities are kept.
    """

    goal: str = ""
    budget: int = 2000
    pairs_per_round: int = 50
    label_store: str | None = None
    net: RewardEnsembleConfig = field(default_factory=lambda: RewardEnsembleConfig(ensemble_size=3))
    fit: FitConfig = field(default_factory=FitConfig)
    label_confidence: Literal["hard", "soft"] = "hard"
    min_confidence: float = 0.0

    def __post_init__(self) -> None:
        for name in ("budget", "pairs_per_round"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")


@dataclass(frozen=True)
class OnlinePreferenceConfig(PreferenceLearningConfig):
    """The online query schedule, on top of :class:`PreferenceLearningConfig`.

    Every ``round_every`` env steps (first at ``first_round_at``) ``pairs_per_round`` pairs are
    drawn from the newest ``frame_buffer`` steps and labelled, until ``budget`` pairs were asked.

    Attributes:
        segment_length: steps per side whose true return the scripted teacher compares
            (B-Pref segments); 1 = RL-VLM-F's single frames.
        label_frame_mb: MiB the frames kept for a VLM may take; larger frames are shrunk once.
        unsupervised_steps: PEBBLE's unsupervised exploration: SAC on the k-nearest-neighbour
            (k=5) state-entropy reward for this many env steps before the first query (RL-VLM-F:
            9,000); 0 turns it off. SAC only.
        sampling: how a round's pairs are chosen: ``uniform``, or PEBBLE's ``disagreement``
            (largest std of the ensemble members' preference) / ``entropy`` (largest mean
            entropy of the members' preference) among ``candidate_factor`` times more uniform
            candidates (uniform until the first fit).
        reward_normalisation: ``buffer_minmax`` maps the learned reward so buffered steps span
            [0, 1] (right for "keep doing X"); ``none`` keeps the raw ensemble mean (use it where
            ending the episode is the goal).
        labeling: ``sync`` asks a round's pairs inside the env step and waits for every answer
            (the default); ``async`` hands them to a background labelling worker (a thread for
            endpoint labelers, a process for a local transformers VLM) and takes the answers in
            as they arrive, so the agent never waits for the labeler (see
            :mod:`vlmrl.agents.async_labelling`).
        queue_size: ``async`` only: pairs that may wait for the worker; pairs of a round that do
            not fit are dropped (counted as ``pairs_dropped``, never asked, not charged to the
            budget).
        max_consecutive_failures: stop the run (after a checkpoint) once this many queries in a
            row failed (no answer after all retries: endpoint down, key refused); an answered,
            unsure or unparseable query resets the count. 0 never stops.
    """

    round_every: int = 4000
    first_round_at: int = 1000
    frame_buffer: int = 10000
    segment_length: int = 1
    label_frame_mb: int = 1024
    reward_normalisation: Literal["buffer_minmax", "none"] = "buffer_minmax"
    unsupervised_steps: int = 0
    sampling: Literal["uniform", "disagreement", "entropy"] = "uniform"
    candidate_factor: int = 10
    labeling: Literal["sync", "async"] = "sync"
    queue_size: int = 100
    max_consecutive_failures: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("round_every", "frame_buffer", "segment_length", "label_frame_mb", "queue_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.first_round_at < 0:
            raise ValueError(f"first_round_at must be >= 0, got {self.first_round_at}")
        if self.unsupervised_steps < 0:
            raise ValueError(f"unsupervised_steps must be >= 0, got {self.unsupervised_steps}")
        if self.candidate_factor < 1:
            raise ValueError(f"candidate_factor must be >= 1, got {self.candidate_factor}")
        if self.max_consecutive_failures < 0:
            raise ValueError(f"max_consecutive_failures must be >= 0 (0: never stop), got {self.max_consecutive_failures}")
