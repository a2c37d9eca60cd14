"""Configs: one YAML per task under ``configs/``, loaded into frozen dataclasses.

Each concept's config class lives beside the component it configures, in a light module (no
torch): the labelers' in ``reward_labelers/*_config.py`` (one registry, ``kind`` -> class),
``EnvConfig`` in ``envs/env_config.py``, the reward-learning sections in
``agents/distill_config.py`` and ``agents/preference_config.py``, the reward net and its fit in
``vlmrl/reward_net_config.py`` and ``vlmrl/reward_learning_config.py``, the learners in
``agents/agent_config.py``. This module composes them into the three documents users write:

- :class:`ExperimentConfig`: ``vlmrl train`` online (``agent.algo: ppo | sac``)::

      task: cartpole
      env: {id: vlmrl/CartPoleFixedLength-v1, n_envs: 4, render_width: 224, render_height: 224}
      labeler: {kind: clip, model: ViT-B-32, pretrained: laion2b_s34b_b79k, alpha: 0.5,
                goal_prompts: [pole vertically upright on top of the cart], baseline_prompts: [pole]}
      reward: {distill: true, label_every: 8, net: {input_size: 64}, fit: {epochs: 3}}
      agent: {algo: ppo, total_timesteps: 100000}
      run: {seed: 0}

  A pairwise labeler (``kind: teacher | openai | hf``) learns its reward from the
  ``preference:`` section instead of ``reward:``.
- :class:`RelabelConfig`: ``vlmrl relabel --labeler``: the same ``labeler`` and ``preference``
  sections, plus how frames map onto transitions.
- :class:`OfflineExperimentConfig`: ``vlmrl train`` offline (``agent.algo: iql``).

``load_config(path, overrides=["agent.total_timesteps=1000"])`` applies ``--set`` overrides
before validation, so overrides are checked exactly like the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vlmrl.agents.agent_config import AgentConfig, IQLAgentConfig
from vlmrl.agents.distill_config import DistillConfig
from vlmrl.agents.preference_config import OnlinePreferenceConfig, PreferenceLearningConfig
from vlmrl.config_loading import apply_overrides, build_dataclass, load_yaml, to_plain
from vlmrl.envs.env_config import EnvConfig
from vlmrl.errors import ConfigError
from vlmrl.reward_labelers.clip_config import ClipConfig
from vlmrl.reward_labelers.oracle_config import OracleConfig, TeacherConfig
from vlmrl.reward_labelers.registry import LabelerConfig
from vlmrl.reward_labelers.vlm_config import HFConfig, OpenAIConfig
from vlmrl.reward_model_labeler import RewardModelConfig


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


# -- online training ------------------------------------------------------------------------------


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
    # CPU threads for torch; 0 keeps torch's default (all cores). 1 is often faster for small
    # nets (policy MLP, reward CNN) and avoids collapse when other processes share the cores.
    torch_threads: int = 0

    def __post_init__(self) -> None:
        _positive("checkpoint_every", self.checkpoint_every)
        _non_negative("torch_threads", self.torch_threads)
        _non_negative("eval_episodes", self.eval_episodes)
        _non_negative("video_episodes", self.video_episodes)
        _non_negative("video_every", self.video_every)
        _non_negative("video_size", self.video_size)


@dataclass(frozen=True)
class ExperimentConfig:
    """One online training run: env -> labeler -> reward (per-frame or preference) -> agent."""

    task: str
    env: EnvConfig
    labeler: LabelerConfig
    agent: AgentConfig
    reward: DistillConfig = field(default_factory=DistillConfig)
    preference: OnlinePreferenceConfig = field(default_factory=OnlinePreferenceConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _check_goal(self.labeler, self.preference)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)


def _check_goal(labeler: LabelerConfig, preference: PreferenceLearningConfig) -> None:
    if labeler.family == "pair" and labeler.needs_frames and not preference.goal.strip():
        raise ValueError(f"labeler kind {labeler.kind!r} shows frames to a VLM: set preference.goal "
                         "(the task description, e.g. 'to open the drawer')")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load and validate a YAML experiment config; raise ConfigError naming file and key."""
    return _load(ExperimentConfig, path, overrides)


def _load(cls: type, path: str | Path, overrides: list[str] | tuple[str, ...]) -> Any:
    data = load_yaml(path)
    apply_overrides(data, list(overrides), str(path))
    return build_dataclass(cls, data, str(path))


# -- relabel ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelabelConfig:
    """What ``vlmrl relabel --labeler CONFIG`` reads.

    Attributes:
        labeler: any registered labeler (the same section as in training configs). A per-frame
            labeler rewards each frame; a pairwise one labels ``preference.budget`` random pairs,
            fits the ``preference.net`` ensemble and rewards each frame with it.
        preference: as in training configs (pairwise labelers only).
        reward_frame: ``current`` rewards a transition with the frame of the state the action was
            taken in; ``next`` with the frame of the state reached (VLM-RM; Minari datasets only).
        frames_key: where frames come from (``frames``, ``observations`` or a dict-obs key);
            null = the stored frames.
        chunk_size: frames labelled per checkpointed chunk (memory: chunk_size x H x W x 3 bytes).
        seed: seeds pair sampling, the fit and any labeler noise.
    """

    labeler: LabelerConfig
    preference: PreferenceLearningConfig = field(default_factory=PreferenceLearningConfig)
    reward_frame: Literal["current", "next"] = "current"
    frames_key: str | None = None
    chunk_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("chunk_size", self.chunk_size)
        _check_goal(self.labeler, self.preference)


def load_relabel_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RelabelConfig:
    """Load and validate a labeler YAML for ``vlmrl relabel``; ConfigError names the file and key."""
    return _load(RelabelConfig, path, overrides)


# -- offline training -----------------------------------------------------------------------------

OFFLINE_METHODS = ("iql", "bc", "iql-gt")


@dataclass(frozen=True)
class OfflineDatasetConfig:
    """The (relabelled) dataset: a local Minari id or an ``.npz`` path."""

    id: str
    observation_key: str | None = None


@dataclass(frozen=True)
class OfflineEvalConfig:
    """Evaluation in the env. ``env_id``: default = the task the dataset was collected in."""

    episodes: int = 10
    env_id: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OfflineRunConfig:
    """Seeds (every method is trained once per seed), baselines, and where results go."""

    seeds: tuple[int, ...] = (0, 1, 2)
    baselines: tuple[str, ...] = ("bc", "iql-gt")
    root: str = "runs"
    name: str | None = None

    def __post_init__(self) -> None:
        unknown = [b for b in self.baselines if b not in OFFLINE_METHODS]
        if unknown:
            raise ValueError(f"unknown baseline {unknown[0]!r}; choose from {', '.join(OFFLINE_METHODS)}")
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed")


@dataclass(frozen=True)
class OfflineExperimentConfig:
    """``vlmrl train`` with ``agent.algo: iql``: IQL (+ BC, IQL on the true reward) on a dataset."""

    task: str
    dataset: OfflineDatasetConfig
    agent: IQLAgentConfig = field(default_factory=IQLAgentConfig)
    eval: OfflineEvalConfig = field(default_factory=OfflineEvalConfig)
    run: OfflineRunConfig = field(default_factory=OfflineRunConfig)


def load_offline_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> OfflineExperimentConfig:
    """Load and validate an offline training YAML."""
    return _load(OfflineExperimentConfig, path, overrides)


__all__ = [
    "AgentConfig",
    "ClipConfig",
    "ConfigError",
    "DistillConfig",
    "EnvConfig",
    "ExperimentConfig",
    "HFConfig",
    "IQLAgentConfig",
    "LabelerConfig",
    "OfflineExperimentConfig",
    "OnlinePreferenceConfig",
    "OpenAIConfig",
    "OracleConfig",
    "PreferenceLearningConfig",
    "RelabelConfig",
    "RewardModelConfig",
    "RunConfig",
    "TeacherConfig",
    "load_config",
    "load_offline_config",
    "load_relabel_config",
]
