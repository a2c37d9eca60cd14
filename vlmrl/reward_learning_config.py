"""The ``fit:`` section: how a reward net is fitted (light: no torch), for ``reward_learning.py``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FitConfig:
    """One fit of a reward-net ensemble (regression on labels, or Bradley-Terry on pairs).

    Attributes:
        epochs: passes over the training items per fit (refits continue from the current weights).
        batch_size: items per gradient step.
        lr: Adam learning rate.
        heldout_fraction: share of the items kept out of the fit to measure it (held-out
            Pearson for regression, accuracy for preferences); 0 keeps none out.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-4
    heldout_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
