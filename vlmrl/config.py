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

    ``render_devices`` picks the EGL device (GPU index, as ``MUJOCO_EGL_DEVICE_ID`` counts them)
    each ``subproc`` worker renders on, round robin: worker ``i`` uses
    ``devices[i % len(devices)]``, so ``n_envs`` need not be a multiple of the GPU count.

    - ``"auto"`` (default): every CUDA GPU (``0..n-1``) when ``MUJOCO_GL=egl`` and CUDA sees GPUs
      and ``MUJOCO_EGL_DEVICE_ID`` is not already set; otherwise no assignment.
    - ``"none"``: never assign (every worker renders where MuJoCo picks by default).
    - a non-empty list of indices >= 0, e.g. ``[0, 1]``: always assign those.

    Ignored with ``vec_env: dummy``: all envs share one process and thus one EGL context.
    """

    id: str
    n_envs: int = 4
    render_width: int = 224
    render_height: int = 224
    vec_env: Literal["dummy", "subproc"] = "dummy"
    render_devices: str | tuple[int, ...] = "auto"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("n_envs", self.n_envs)
        _positive("render_width", self.render_width)
        _positive("render_height", self.render_height)
        _check_render_devices(self)


_RENDER_DEVICES_ALLOWED = "'auto', 'none' or a non-empty list of GPU indices >= 0 (e.g. [0, 1])"


def _is_device_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_render_devices(config: EnvConfig) -> None:
    """Validate ``render_devices`` and store a list given from Python as a tuple (the config is frozen
    and compared by value, so ``[0, 1]`` and ``(0, 1)`` must end up equal)."""
    value = config.render_devices
    if isinstance(value, str):
        if value not in ("auto", "none"):
            raise ValueError(f"render_devices must be {_RENDER_DEVICES_ALLOWED}, got {value!r}")
        return
    if not isinstance(value, (list, tuple)) or not value or not all(_is_device_index(d) for d in value):
        raise ValueError(f"render_devices must be {_RENDER_DEVICES_ALLOWED}, got {value!r}")
    object.__setattr__(config, "render_devices", tuple(value))


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
class OpenAIEndpointConfig:
    """An OpenAI-compatible chat-completions endpoint (vLLM, Ollama, hosted APIs).

    The API key is read from the environment variable ``api_key_env`` only (never from here).
    """

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    two_stage: bool = True
    max_concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 5

    def __post_init__(self) -> None:
        _positive("max_concurrency", self.max_concurrency)
        _positive("timeout_s", self.timeout_s)
        _non_negative("max_retries", self.max_retries)


@dataclass(frozen=True)
class HFVlmConfig:
    """A local transformers vision-language model (hub id or local directory)."""

    model: str
    two_stage: bool = True
    batch_size: int = 4
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        _positive("batch_size", self.batch_size)
        _positive("max_new_tokens", self.max_new_tokens)


@dataclass(frozen=True)
class TeacherConfig:
    """B-Pref scripted-teacher noise: rationality ``beta`` (null = perfectly rational),
    ``eps_mistake`` (flip probability), ``eps_equal`` (tie margin), ``eps_skip`` (skip bad pairs)."""

    beta: float | None = None
    eps_mistake: float = 0.0
    eps_equal: float = 0.0
    eps_skip: float = 0.0

    def __post_init__(self) -> None:
        for name in ("eps_mistake", "eps_equal", "eps_skip"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class PreferenceConfig:
    """Pairwise preferences from a VLM (RL-VLM-F) or the scripted teacher.

    ``store``: the SQLite label store; null = ``labels.sqlite`` in the run directory.
    """

    goal: str
    backend: Literal["oracle", "openai", "hf"] = "oracle"
    store: str | None = None
    openai: OpenAIEndpointConfig | None = None
    hf: HFVlmConfig | None = None
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def __post_init__(self) -> None:
        if self.backend == "openai" and self.openai is None:
            raise ValueError("backend is 'openai' but the 'openai' section (base_url, model) is missing")
        if self.backend == "hf" and self.hf is None:
            raise ValueError("backend is 'hf' but the 'hf' section (model) is missing")


@dataclass(frozen=True)
class LabelerConfig:
    """Which labeler turns frames into rewards. ``device``: "auto" (CUDA when present), "cpu", "cuda"."""

    kind: Literal["clip", "oracle", "preference"]
    device: str = "auto"
    clip: ClipConfig | None = None
    oracle: OracleConfig = field(default_factory=OracleConfig)
    preference: PreferenceConfig | None = None

    def __post_init__(self) -> None:
        if self.kind == "clip" and self.clip is None:
            raise ValueError("kind is 'clip' but the 'clip' section (goal_prompts, baseline_prompts, model...) is missing")
        if self.kind == "preference" and self.preference is None:
            raise ValueError("kind is 'preference' but the 'preference' section (goal, backend...) is missing")

    @property
    def name(self) -> str:
        if self.kind == "preference":
            return f"pref-{self.preference.backend}"
        return self.kind


@dataclass(frozen=True)
class PreferenceLearningConfig:
    """Query schedule and Bradley-Terry reward learning for preference labelers.

    Every ``round_every`` env steps (first at ``first_round_at``) ``pairs_per_round`` pairs of
    frames are sampled from the newest ``frame_buffer`` frames and labelled, until ``budget``
    pairs have been asked (unsure/unparseable answers count against it). The ensemble of
    ``ensemble_size`` nets (``net``: "cnn" on frames, "mlp" on observations) is then refitted.
    ``segment_length`` > 1 compares B-Pref segments (the next H steps) instead of single frames
    (1 = RL-VLM-F); the scripted teacher needs it where single steps all pay the same reward.
    """

    pairs_per_round: int = 50
    round_every: int = 4000
    first_round_at: int = 1000
    budget: int = 2000
    frame_buffer: int = 10000
    ensemble_size: int = 3
    net: Literal["cnn", "mlp"] = "cnn"
    net_input_size: int = 64
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-4
    segment_length: int = 1

    def __post_init__(self) -> None:
        for name in ("pairs_per_round", "round_every", "first_round_at", "budget", "frame_buffer",
                     "ensemble_size", "net_input_size", "epochs", "batch_size", "segment_length"):
            _positive(name, getattr(self, name))
        _positive("lr", self.lr)


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
    preference: PreferenceLearningConfig = field(default_factory=PreferenceLearningConfig)

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
