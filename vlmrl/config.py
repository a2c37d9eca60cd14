"""Experiment configs: one YAML per task under ``configs/``, loaded into frozen dataclasses.

Example (``configs/cartpole_clip.yaml``)::

    task: cartpole
    env: {id: vlmrl/CartPoleFixedLength-v1, n_envs: 4, render_width: 224, render_height: 224}
    labeler:
      kind: clip
      clip: {model: ViT-B-32, pretrained: laion2b_s34b_b79k, alpha: 0.5,
             goal_prompts: [pole vertically upright on top of the cart], baseline_prompts: [pole]}
    reward: {label_every: 8, distill: true}
    agent: {algo: ppo, total_timesteps: 100000}
    run: {seed: 0}

``load_config(path, overrides=["agent.total_timesteps=1000"])`` applies ``--set`` overrides
before validation, so overrides are checked exactly like the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from vlmrl.config_loading import apply_overrides, build_dataclass, load_yaml, to_plain
from vlmrl.errors import ConfigError


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class EnvConfig:
    """Which environment to train in and how to render it.

    ``render_width``/``render_height`` are the frame size in pixels handed to the labeler.
    ``kwargs`` go to ``gymnasium.make`` (e.g. ``episode_length``).
    """

    id: str
    n_envs: int = 4
    render_width: int = 224
    render_height: int = 224
    vec_env: Literal["dummy", "subproc"] = "dummy"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("n_envs", self.n_envs)
        _positive("render_width", self.render_width)
        _positive("render_height", self.render_height)


@dataclass(frozen=True)
class ClipConfig:
    """CLIP zero-shot reward (VLM-RM goal-baseline regularisation, strength ``alpha`` in [0, 1])."""

    goal_prompts: tuple[str, ...]
    baseline_prompts: tuple[str, ...]
    model: str = "ViT-B-32"
    pretrained: str | None = "laion2b_s34b_b79k"
    backend: Literal["open_clip", "transformers"] = "open_clip"
    alpha: float = 0.5
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.goal_prompts:
            raise ValueError("goal_prompts must hold at least one prompt")
        if not self.baseline_prompts:
            raise ValueError("baseline_prompts must hold at least one prompt")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        _positive("batch_size", self.batch_size)


@dataclass(frozen=True)
class OracleConfig:
    """The scripted teacher: the environment's true reward, optionally noisy."""

    scale: float = 1.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        _non_negative("noise_std", self.noise_std)


@dataclass(frozen=True)
class LabelerConfig:
    """Which labeler turns frames into rewards. ``device``: "auto" (CUDA when present), "cpu", "cuda"."""

    kind: Literal["clip", "oracle"]
    device: str = "auto"
    clip: ClipConfig | None = None
    oracle: OracleConfig = field(default_factory=OracleConfig)

    def __post_init__(self) -> None:
        if self.kind == "clip" and self.clip is None:
            raise ValueError("kind is 'clip' but the 'clip' section (goal_prompts, baseline_prompts, model...) is missing")

    @property
    def name(self) -> str:
        return self.kind


@dataclass(frozen=True)
class RewardConfig:
    """How labels become the agent's reward.

    With ``distill: false`` every env step is labelled. With ``distill: true`` a CNN reward net
    (input ``net_input_size`` pixels square) is regressed on the labels: every step is labelled
    until ``warmup_labels`` frames are collected, then only every ``label_every``-th vector step;
    the agent gets the net's reward on the other steps. The net is refitted every
    ``retrain_every`` env steps on the last ``buffer_size`` labelled frames.
    """

    distill: bool = False
    label_every: int = 1
    warmup_labels: int = 512
    retrain_every: int = 2048
    buffer_size: int = 20000
    net_input_size: int = 64
    epochs: int = 3
    batch_size: int = 256
    lr: float = 3e-4

    def __post_init__(self) -> None:
        for name in ("label_every", "warmup_labels", "retrain_every", "buffer_size", "net_input_size", "epochs", "batch_size"):
            _positive(name, getattr(self, name))
        _positive("lr", self.lr)
        if self.label_every > 1 and not self.distill:
            raise ValueError("label_every > 1 needs distill: true (the net rewards the unlabelled steps)")


@dataclass(frozen=True)
class AgentConfig:
    """The SB3 learner. ``hyperparams`` go to the SB3 constructor and are checked against it."""

    algo: Literal["ppo", "sac"]
    total_timesteps: int
    policy: str = "MlpPolicy"
    device: str = "auto"
    hyperparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("total_timesteps", self.total_timesteps)


@dataclass(frozen=True)
class RunConfig:
    """Seeds, checkpoints, evaluation and videos. Step counts are env steps summed over envs."""

    seed: int = 0
    root: str = "runs"
    checkpoint_every: int = 10000
    eval_episodes: int = 5
    video_episodes: int = 1
    video_every: int = 0
    video_size: int = 0

    def __post_init__(self) -> None:
        _positive("checkpoint_every", self.checkpoint_every)
        _non_negative("eval_episodes", self.eval_episodes)
        _non_negative("video_episodes", self.video_episodes)
        _non_negative("video_every", self.video_every)
        _non_negative("video_size", self.video_size)


@dataclass(frozen=True)
class ExperimentConfig:
    """One online training run: env -> labeler -> reward -> agent."""

    task: str
    env: EnvConfig
    labeler: LabelerConfig
    agent: AgentConfig
    reward: RewardConfig = field(default_factory=RewardConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load and validate a YAML experiment config; raise ConfigError naming file and key."""
    data = load_yaml(path)
    apply_overrides(data, list(overrides), str(path))
    return build_dataclass(ExperimentConfig, data, str(path))


def plain_dict(mapping: MappingProxyType | dict) -> dict[str, Any]:
    """A mutable copy of a config mapping (kwargs, hyperparams)."""
    return {key: (plain_dict(value) if isinstance(value, (dict, MappingProxyType)) else value) for key, value in mapping.items()}


__all__ = [
    "AgentConfig",
    "ClipConfig",
    "ConfigError",
    "EnvConfig",
    "ExperimentConfig",
    "LabelerConfig",
    "OracleConfig",
    "RewardConfig",
    "RunConfig",
    "load_config",
]
