"""Build SB3 learners (PPO, SAC) with hyperparameters checked against their constructors."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC}

# Set by vlmrl itself, never through hyperparams.
_RESERVED = {"policy", "env", "seed", "device", "tensorboard_log", "verbose", "_init_setup_model"}


def allowed_hyperparams(algo: str) -> list[str]:
    parameters = inspect.signature(ALGORITHMS[algo].__init__).parameters
    return sorted(name for name in parameters if name not in _RESERVED and name != "self")


def check_hyperparams(algo: str, hyperparams: dict[str, Any]) -> None:
    """Raise ValueError naming an unknown hyperparameter and the allowed ones."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algo!r}; allowed: {', '.join(ALGORITHMS)}")
    allowed = allowed_hyperparams(algo)
    for name in hyperparams:
        if name not in allowed:
            raise ValueError(f"{algo.upper()} has no hyperparameter {name!r}; allowed: {', '.join(allowed)}")


def build_agent(
    algo: str,
    venv: VecEnv,
    *,
    policy: str,
    hyperparams: dict[str, Any],
    seed: int,
    device: str,
    tensorboard_dir: Path | None,
) -> BaseAlgorithm:
    """A fresh PPO/SAC learner on ``venv``, logging to ``tensorboard_dir``."""
    check_hyperparams(algo, hyperparams)
    return ALGORITHMS[algo](
        policy,
        venv,
        seed=seed,
        device=device,
        tensorboard_log=str(tensorboard_dir) if tensorboard_dir else None,
        verbose=0,
        **hyperparams,
    )


def load_agent(algo: str, path: Path, venv: VecEnv | None, device: str) -> BaseAlgorithm:
    """Load a saved learner (``model.zip``), attached to ``venv`` when given."""
    return ALGORITHMS[algo].load(str(path), env=venv, device=device)
