"""The ``agent:`` sections (light: no SB3 or d3rlpy import): online SB3 learners and offline IQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class AgentConfig:
    """The SB3 learner. ``hyperparams`` go to the SB3 constructor and are checked against it."""

    algo: Literal["ppo", "sac"]
    total_timesteps: int
    policy: str = "MlpPolicy"
    device: str = "auto"
    hyperparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.total_timesteps <= 0:
            raise ValueError(f"total_timesteps must be > 0, got {self.total_timesteps}")


@dataclass(frozen=True)
class IQLAgentConfig:
    """d3rlpy IQL (and the BC baseline); the defaults are d3rlpy's IQLConfig defaults (the paper's)."""

    algo: Literal["iql"] = "iql"
    n_steps: int = 100000
    n_steps_per_epoch: int = 5000
    batch_size: int = 256
    device: str = "auto"
    gamma: float = 0.99
    tau: float = 0.005
    expectile: float = 0.7
    weight_temp: float = 3.0
    max_weight: float = 100.0
    actor_learning_rate: float = 3e-4
    critic_learning_rate: float = 3e-4
    bc_learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("n_steps", "n_steps_per_epoch", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.n_steps % self.n_steps_per_epoch:
            raise ValueError(f"n_steps ({self.n_steps}) must be a multiple of n_steps_per_epoch ({self.n_steps_per_epoch})")
        if not 0.5 <= self.expectile < 1.0:
            raise ValueError(f"expectile must be in [0.5, 1), got {self.expectile}")
