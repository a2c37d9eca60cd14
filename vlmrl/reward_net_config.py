"""Reward-net configs: light (no torch), so config files and ``vlmrl/config.py`` can use them.

:class:`RewardNetConfig` is the architecture of one network (what a saved model records);
:class:`RewardEnsembleConfig` is the ``net:`` section of a YAML config: which ensemble to build,
with the state size left to the environment (``obs_dim`` is known only once it exists).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlmrl.errors import ConfigError

KINDS = ("cnn", "mlp")
OUTPUT_ACTIVATIONS = ("tanh", "none")

# RL-VLM-F image reward CNN: (kernel, out channels, stride) per layer.
CNN_LAYERS = ((5, 16, 3), (3, 32, 2), (3, 64, 2), (3, 128, 2))


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def _cnn_feature_side(input_size: int) -> int:
    """Side length of the last CNN feature map for a square input (< 1: input too small)."""
    side = input_size
    for kernel, _, stride in CNN_LAYERS:
        if side < kernel:
            return 0
        side = _conv_out(side, kernel, stride)
    return side


@dataclass(frozen=True)
class RewardNetConfig:
    """Architecture of one reward network.

    Args:
        kind: ``"cnn"`` (RL-VLM-F image CNN on frames) or ``"mlp"`` (MLP on state vectors).
        input_size: cnn only: frames are resized to ``input_size x input_size`` pixels (>= 47,
            the smallest size the four strided convolutions accept).
        obs_dim: mlp only (required there): length of the state vector. Ignored for cnn.
        hidden_size: mlp only: width of the two hidden layers.
        output_activation: ``"tanh"`` (bounded output, as in RL-VLM-F) or ``"none"``.
    """

    kind: str = "cnn"
    input_size: int = 64
    obs_dim: int | None = None
    hidden_size: int = 256
    output_activation: str = "tanh"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"RewardNetConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise ConfigError(
                f"RewardNetConfig.output_activation must be one of {OUTPUT_ACTIVATIONS}, "
                f"got {self.output_activation!r}"
            )
        if self.kind == "cnn":
            if not isinstance(self.input_size, int) or not 47 <= self.input_size <= 512:
                raise ConfigError(
                    f"RewardNetConfig.input_size must be an integer in [47, 512] for kind='cnn' "
                    f"(the CNN's strided convolutions need at least 47 pixels), got {self.input_size!r}"
                )
        if self.kind == "mlp":
            if self.obs_dim is None:
                raise ConfigError("RewardNetConfig.obs_dim is required for kind='mlp' (length of the state vector)")
            if not isinstance(self.obs_dim, int) or self.obs_dim < 1:
                raise ConfigError(f"RewardNetConfig.obs_dim must be a positive integer, got {self.obs_dim!r}")
            if not isinstance(self.hidden_size, int) or self.hidden_size < 1:
                raise ConfigError(f"RewardNetConfig.hidden_size must be a positive integer, got {self.hidden_size!r}")


@dataclass(frozen=True)
class RewardEnsembleConfig:
    """The ``net:`` section: an ensemble of ``ensemble_size`` reward nets.

    Attributes:
        kind: ``"cnn"`` (RL-VLM-F image CNN on frames) or ``"mlp"`` (on state observations).
        input_size: cnn input side in pixels (frames are resized to it; >= 47).
        hidden_size: mlp hidden-layer width.
        ensemble_size: members; the reward is their mean.
    """

    kind: Literal["cnn", "mlp"] = "cnn"
    input_size: int = 64
    hidden_size: int = 256
    ensemble_size: int = 1

    def __post_init__(self) -> None:
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {self.ensemble_size}")
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        if self.kind == "cnn" and not 47 <= self.input_size <= 512:
            raise ValueError(f"input_size must be in [47, 512] for a cnn, got {self.input_size}")

    def net_config(self, obs_dim: int | None = None) -> RewardNetConfig:
        """The architecture of one member; ``obs_dim`` (state length) is needed for an mlp."""
        if self.kind == "cnn":
            return RewardNetConfig(kind="cnn", input_size=self.input_size)
        return RewardNetConfig(kind="mlp", obs_dim=obs_dim, hidden_size=self.hidden_size)
