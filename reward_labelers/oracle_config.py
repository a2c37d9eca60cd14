"""Configs of the labelers built from the environment's true reward (no frames, no weights):
``kind: oracle`` (per-frame reward) and ``kind: teacher`` (B-Pref scripted preferences)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from vlmrl.reward_labelers.registry import LabelerConfig, register_labeler


@register_labeler
@dataclass(frozen=True, kw_only=True)
class OracleConfig(LabelerConfig):
    """The true reward as a per-frame label: ``scale * r + N(0, noise_std^2)``."""

    kind: ClassVar[str] = "oracle"
    family: ClassVar[str] = "frame"
    needs_frames: ClassVar[bool] = False
    scale: float = 1.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")

    def create(self, *, seed: int = 0, store: str | Path | None = None) -> Any:
        from vlmrl.reward_labelers.oracle import OracleRewardLabeler

        return OracleRewardLabeler(scale=self.scale, noise_std=self.noise_std, seed=seed)


@register_labeler
@dataclass(frozen=True, kw_only=True)
class TeacherConfig(LabelerConfig):
    """The B-Pref scripted teacher: preferences from true segment returns (methods.md section 4).

    Attributes:
        beta: Bradley-Terry rationality (> 0); null = perfectly rational.
        gamma: myopic discount over a segment, in (0, 1]; 1 = plain sum.
        eps_mistake: probability of flipping a label.
        eps_equal: how close two returns must be to call a tie.
        eps_skip: how bad both segments must be to skip the pair.
        return_scale: B-Pref's margin (a typical segment return); null = batch-relative thresholds.
    """

    kind: ClassVar[str] = "teacher"
    family: ClassVar[str] = "pair"
    needs_frames: ClassVar[bool] = False
    beta: float | None = None
    gamma: float = 1.0
    eps_mistake: float = 0.0
    eps_equal: float = 0.0
    eps_skip: float = 0.0
    return_scale: float | None = None

    def __post_init__(self) -> None:
        for name in ("eps_mistake", "eps_equal", "eps_skip"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.beta is not None and self.beta <= 0:
            raise ValueError(f"beta must be > 0 (or null for a perfectly rational teacher), got {self.beta}")
        if self.return_scale is not None and self.return_scale <= 0:
            raise ValueError(f"return_scale must be > 0 (or null), got {self.return_scale}")

    def create(self, *, seed: int = 0, store: str | Path | None = None) -> Any:
        from vlmrl.reward_labelers.oracle_teacher import OracleTeacher

        return OracleTeacher(beta=self.beta, gamma=self.gamma, eps_mistake=self.eps_mistake, eps_skip=self.eps_skip,
                             eps_equal=self.eps_equal, return_scale=self.return_scale, seed=seed)
