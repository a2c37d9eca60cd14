"""Learned reward networks: an ensemble of small CNNs on frames (RL-VLM-F) or MLPs on states.

Data conventions, fixed here and nowhere else:

- Frames enter as uint8 RGB, channel-last ``[N, H, W, 3]`` of any size (what Gymnasium renders).
  They are resized to ``input_size x input_size`` with antialiased bilinear interpolation (the
  aspect ratio is not kept: a 400x600 CartPole frame is squeezed into a square), rounded back to
  uint8, then mapped to float32 channel-first ``[N, 3, S, S]`` with ``x / 255 - 0.5``, i.e. values
  in ``[-0.5, 0.5]``. Because resizing rounds to uint8 first, frames stored already downsampled
  with :func:`downsample_frames` give exactly the same network input as the full-size frames.
- States enter as float ``[N, obs_dim]``. They are standardised per dimension with
  ``state_mean`` / ``state_std``, which the first fit computes from its inputs and then keeps, so
  later fits continue on the same input scale (CartPole's pole angle spans +-0.21 while its
  velocities span +-2; unscaled, an MLP barely sees the angle).
- Each network outputs one number per input. The model's reward in the target's units is
  ``target_mean + target_std * output_scale * net(x)``: ``output_scale`` is 3 for tanh outputs
  (so standardised regression targets within 3 standard deviations stay representable) and 1
  otherwise. A fresh model has ``target_mean = 0`` and ``target_std = 1``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vlmrl.devices import resolve_device
from vlmrl.errors import ConfigError, MissingWeightsError, UserError
from vlmrl.reward_net_config import (  # noqa: F401  (re-exported: the public names stay here too)
    CNN_LAYERS,
    KINDS,
    OUTPUT_ACTIVATIONS,
    RewardEnsembleConfig,
    RewardNetConfig,
    _cnn_feature_side,
)

FORMAT_NAME = "vlmrl.reward_model"
FORMAT_VERSION = 1

# Scale applied to a tanh output so it can reach +-3 standardised units.
TANH_OUTPUT_SCALE = 3.0

# Frames are resized in chunks so the float intermediate of large frames stays small
# (1024 CartPole frames as float32 would take 2.9 GB).
_RESIZE_CHUNK_BYTES = 64 * 2**20

PREPROCESSING = {
    "frames": "uint8 RGB channel-last [N, H, W, 3], any H and W",
    "resize": "antialiased bilinear to [input_size, input_size] (aspect ratio not kept), rounded to uint8",
    "normalise": "float32 x / 255 - 0.5, channel-first [N, 3, input_size, input_size]",
    "states": "float32 [N, obs_dim], (x - state_mean) / state_std when the model holds those stats",
}


def _as_frame_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate a uint8 channel-last frame batch and return it as a tensor (no copy for numpy)."""
    if isinstance(frames, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(frames))
    elif isinstance(frames, torch.Tensor):
        tensor = frames
    else:
        raise TypeError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
    shape = tuple(tensor.shape)
    if tensor.ndim != 4:
        raise ValueError(f"frames must have shape [N, H, W, 3] (uint8 RGB, channel-last), got shape {shape}")
    if shape[-1] != 3:
        if shape[1] == 3:
            raise ValueError(
                f"frames look channel-first (shape {shape}); reward nets take channel-last "
                "uint8 frames [N, H, W, 3] as rendered by Gymnasium, e.g. frames.transpose(0, 2, 3, 1)"
            )
        raise ValueError(f"frames must have shape [N, H, W, 3] (uint8 RGB, channel-last), got shape {shape}")
    if tensor.dtype != torch.uint8:
        raise ValueError(
            f"frames must be uint8 RGB in [0, 255], got dtype {tensor.dtype}; "
            "floats are refused because [0, 1] and [0, 255] ranges cannot be told apart"
        )
    return tensor


def _resize_uint8(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8 ``[N, size, size, 3]`` on the same device."""
    n, height, width, _ = frames.shape
    if height == size and width == size:
        return frames
    out = torch.empty((n, size, size, 3), dtype=torch.uint8, device=frames.device)
    chunk = max(1, _RESIZE_CHUNK_BYTES // (height * width * 3 * 4))
    for start in range(0, n, chunk):
        # NCHW view of channel-last memory: torch's antialiased uint8 kernel works on it directly.
        batch = frames[start : start + chunk].permute(0, 3, 1, 2)
        if batch.device.type == "cpu":
            resized = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        else:
            resized = F.interpolate(
                batch.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            resized = resized.round_().clamp_(0, 255).to(torch.uint8)
        out[start : start + chunk] = resized.permute(0, 2, 3, 1)
    return out


def downsample_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize frames for compact storage in replay and label buffers.

    Args:
        frames: uint8 RGB ``[N, H, W, 3]``.
        size: side of the square output, in pixels.

    Returns:
        uint8 ``[N, size, size, 3]``, resized exactly as :func:`frames_to_tensor` resizes, so
        the net sees identical inputs whether it gets full-size or downsampled frames.
    """
    tensor = _as_frame_tensor(frames)
    return _resize_uint8(tensor.cpu(), size).numpy()


def frames_to_tensor(frames: np.ndarray | torch.Tensor, size: int, device: str | torch.device) -> torch.Tensor:
    """The network input for a batch of frames: the one place that fixes layout and scaling.

    Args:
        frames: uint8 RGB channel-last ``[N, H, W, 3]`` (numpy or torch). Channel-first input
            ``[N, 3, H, W]`` and float frames are refused with a ValueError.
        size: side of the square network input, in pixels.
        device: device of the returned tensor.

    Returns:
        float32 ``[N, 3, size, size]`` with values ``x / 255 - 0.5`` in ``[-0.5, 0.5]``.
    """
    tensor = _as_frame_tensor(frames)
    device = torch.device(device)
    if tensor.device.type == "cpu":
        # Resize before the transfer: a 64x64 frame is 59x smaller than a 400x600 one.
        small = _resize_uint8(tensor, size).to(device)
    else:
        small = _resize_uint8(tensor.to(device), size)
    # The NCHW view of channel-last memory is torch's channels_last format, which CPU
    # convolutions run ~1.5x faster on; it is deliberately not made contiguous.
    return small.permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5)


def states_to_tensor(states: np.ndarray | torch.Tensor, obs_dim: int, device: str | torch.device) -> torch.Tensor:
    """float ``[N, obs_dim]`` states -> float32 tensor on ``device``; ValueError on a wrong shape."""
    tensor = torch.as_tensor(states)
    if tensor.ndim != 2 or tensor.shape[1] != obs_dim:
        raise ValueError(f"states must have shape [N, {obs_dim}], got shape {tuple(tensor.shape)}")
    if not (tensor.dtype.is_floating_point or tensor.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"states must be a float array, got dtype {tensor.dtype}")
    return tensor.to(device=device, dtype=torch.float32)


class RewardNet(nn.Module):
    """One ensemble member: maps a preprocessed batch to one reward per item.

    cnn: float32 ``[B, 3, S, S]`` -> ``[B]``; convolutions (kernels 5,3,3,3; channels
    16,32,64,128; strides 3,2,2,2) with LeakyReLU, then a linear layer.
    mlp: float32 ``[B, obs_dim]`` -> ``[B]``; two hidden LeakyReLU layers of ``hidden_size``.
    Both end with tanh when ``output_activation == "tanh"``.
    """

    def __init__(self, config: RewardNetConfig) -> None:
        super().__init__()
        self.config = config
        if config.kind == "cnn":
            layers: list[nn.Module] = []
            in_channels = 3
            for kernel, out_channels, stride in CNN_LAYERS:
                layers += [nn.Conv2d(in_channels, out_channels, kernel, stride), nn.LeakyReLU()]
                in_channels = out_channels
            layers.append(nn.Flatten())
            side = _cnn_feature_side(config.input_size)
            self.body = nn.Sequential(*layers)
            self.head = nn.Linear(in_channels * side * side, 1)
        else:
            assert config.obs_dim is not None  # checked by RewardNetConfig
            self.body = nn.Sequential(
                nn.Linear(config.obs_dim, config.hidden_size),
                nn.LeakyReLU(),
                nn.Linear(config.hidden_size, config.hidden_size),
                nn.LeakyReLU(),
            )
            self.head = nn.Linear(config.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(x)).squeeze(-1)
        return torch.tanh(out) if self.config.output_activation == "tanh" else out


def _base_path(path: str | Path) -> Path:
    """``model``, ``model.json`` and ``model.safetensors`` all name the pair of files ``model.*``."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        return path.with_suffix("")
    return path


def _with_suffix(base: Path, suffix: str) -> Path:
    return base.parent / (base.name + suffix)


def model_files(path: str | Path) -> tuple[Path, Path]:
    """The two files of a saved model (``RewardModel.save(path)``): ``(<path>.json, <path>.safetensors)``."""
    base = _base_path(path)
    return _with_suffix(base, ".json"), _with_suffix(base, ".safetensors")


class RewardModel:
    """An ensemble of :class:`RewardNet` with input preprocessing and output de-normalisation.

    Args:
        config: architecture shared by all members.
        ensemble_size: number of independently initialised members (RL-VLM-F uses 3).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        seed: member ``i`` is initialised from seed ``seed + i``; the global torch RNG is untouched.

    Attributes:
        target_mean, target_std: reward = ``target_mean + target_std * output_scale * net(x)``.
            :func:`vlmrl.reward_learning.fit_regression` sets them from its targets.
        state_mean, state_std: mlp only: float32 ``[obs_dim]`` input standardisation, or None
            (identity) until :meth:`set_state_normaliser` is called (the first fit does).
        members: ``nn.ModuleList`` of the ensemble members.
    """

    def __init__(self, config: RewardNetConfig, ensemble_size: int = 1, device: str = "auto", seed: int = 0) -> None:
        if not isinstance(ensemble_size, int) or ensemble_size < 1:
            raise ConfigError(f"ensemble_size must be a positive integer, got {ensemble_size!r}")
        self.config = config
        self.ensemble_size = ensemble_size
        self.device = resolve_device(device)
        self.seed = seed
        self.target_mean = 0.0
        self.target_std = 1.0
        self.state_mean: np.ndarray | None = None
        self.state_std: np.ndarray | None = None
        members = []
        for i in range(ensemble_size):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + i)
                members.append(RewardNet(config))
        self.members = nn.ModuleList(members).to(self.device)
        if config.kind == "cnn":
            self.members.to(memory_format=torch.channels_last)

    @property
    def output_scale(self) -> float:
        """Standardised reward units per unit of raw network output."""
        return TANH_OUTPUT_SCALE if self.config.output_activation == "tanh" else 1.0

    # -- preprocessing -------------------------------------------------------------------------

    def prepare(self, inputs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Compact, validated form of the inputs, kept on the CPU for batching during training.

        cnn: uint8 ``[N, S, S, 3]`` (resized); mlp: float32 ``[N, obs_dim]``.
        """
        if self.config.kind == "cnn":
            return _resize_uint8(_as_frame_tensor(inputs).cpu(), self.config.input_size)
        assert self.config.obs_dim is not None
        return states_to_tensor(inputs, self.config.obs_dim, "cpu")

    def set_state_normaliser(self, states: torch.Tensor | np.ndarray) -> None:
        """mlp: standardise inputs with the per-dimension mean and std of ``states`` ``[N, obs_dim]``.

        Dimensions with a std below 1e-6 are only centred.
        """
        prepared = self.prepare(states).double()
        std = prepared.std(dim=0, unbiased=False) if len(prepared) > 1 else torch.ones(prepared.shape[1])
        self.state_mean = prepared.mean(dim=0).float().numpy()
        self.state_std = torch.where(std < 1e-6, torch.ones_like(std), std).float().numpy()

    def to_network_input(self, prepared: torch.Tensor) -> torch.Tensor:
        """Prepared inputs (see :meth:`prepare`) -> float32 network input on the model's device."""
        if self.config.kind == "cnn":
            return frames_to_tensor(prepared, self.config.input_size, self.device)
        x = prepared.to(self.device)
        if self.state_mean is not None and self.state_std is not None:
            mean = torch.as_tensor(self.state_mean, device=self.device)
            std = torch.as_tensor(self.state_std, device=self.device)
            x = (x - mean) / std
        return x

    def raw_members(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs of every member for a network-input batch: ``[ensemble_size, B]``."""
        return torch.stack([member(x) for member in self.members])

    def to_reward(self, raw: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Raw network outputs -> rewards in the target's units."""
        return self.target_mean + self.target_std * self.output_scale * raw

    # -- inference -----------------------------------------------------------------------------

    def predict_members(self, inputs: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        """Reward of every member for every input.

        Args:
            inputs: cnn: uint8 frames ``[N, H, W, 3]`` (any H, W); mlp: float states ``[N, obs_dim]``.
            batch_size: inputs per forward pass.

        Returns:
            float32 ``[ensemble_size, N]`` in the target's units.
        """
        prepared = self.prepare(inputs)
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(prepared), batch_size):
                x = self.to_network_input(prepared[start : start + batch_size])
                outputs.append(self.raw_members(x).float().cpu())
        raw = torch.cat(outputs, dim=1) if outputs else torch.zeros((self.ensemble_size, 0))
        return self.to_reward(raw.numpy()).astype(np.float32)

    def predict(self, inputs: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
        """Ensemble-mean reward: float32 ``[N]`` in the target's units (inputs as in :meth:`predict_members`)."""
        return self.predict_members(inputs, batch_size=batch_size).mean(axis=0)

    # -- persistence ---------------------------------------------------------------------------

    def metadata(self) -> dict:
        """What :meth:`save` writes to the JSON file."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "config": asdict(self.config),
            "ensemble_size": self.ensemble_size,
            "seed": self.seed,
            "target_mean": float(self.target_mean),
            "target_std": float(self.target_std),
            "state_mean": None if self.state_mean is None else [float(v) for v in self.state_mean],
            "state_std": None if self.state_std is None else [float(v) for v in self.state_std],
            "output_scale": self.output_scale,
            "preprocessing": PREPROCESSING,
        }

    def save(self, path: str | Path) -> None:
        """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (everything else).

        A ``.json`` or ``.safetensors`` suffix on ``path`` is ignored. Each file is written to a
        temporary name and renamed, so a reader never sees a half-written file.
        """
        from safetensors.torch import save_file

        base = _base_path(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in self.members.state_dict().items()}
        weights_path = _with_suffix(base, ".safetensors")
        tmp = _with_suffix(base, f".safetensors.tmp{os.getpid()}")
        save_file(weights, str(tmp), metadata={"format": FORMAT_NAME})
        os.replace(tmp, weights_path)
        json_path = _with_suffix(base, ".json")
        tmp = _with_suffix(base, f".json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.metadata(), indent=2) + "\n")
        os.replace(tmp, json_path)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> RewardModel:
        """Load a model written by :meth:`save`.

        Raises:
            MissingWeightsError: one of the two files does not exist.
            UserError: a file is corrupt, of another format version, or does not match its config.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        base = _base_path(path)
        json_path = _with_suffix(base, ".json")
        weights_path = _with_suffix(base, ".safetensors")
        for needed in (json_path, weights_path):
            if not needed.is_file():
                raise MissingWeightsError(
                    f"reward model file {needed} not found (a saved model is a pair {base}.json + {base}.safetensors)"
                )
        try:
            meta = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"reward model metadata {json_path} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise UserError(f"{json_path} is not a vlmrl reward model file (missing format {FORMAT_NAME!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{json_path} has format_version {meta.get('format_version')!r}; this vlmrl reads version {FORMAT_VERSION}"
            )
        try:
            known = {f.name for f in fields(RewardNetConfig)}
            config = RewardNetConfig(**{k: v for k, v in meta["config"].items() if k in known})
            model = cls(config, ensemble_size=int(meta["ensemble_size"]), device=device, seed=int(meta.get("seed", 0)))
            model.target_mean = float(meta["target_mean"])
            model.target_std = float(meta["target_std"])
            for name in ("state_mean", "state_std"):
                values = meta.get(name)
                if values is not None:
                    values = np.asarray(values, dtype=np.float32)
                    if values.shape != (config.obs_dim,):
                        raise ValueError(f"{name} has shape {values.shape}, expected ({config.obs_dim},)")
                setattr(model, name, values)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"reward model metadata {json_path} is incomplete or invalid: {exc!r}") from exc
        try:
            weights = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"reward model weights {weights_path} are corrupt or unreadable: {exc}") from exc
        try:
            model.members.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise UserError(
                f"reward model weights {weights_path} do not match the architecture in {json_path}: {exc}"
            ) from exc
        if not all(math.isfinite(v) for v in (model.target_mean, model.target_std)):
            raise UserError(f"{json_path} holds non-finite target_mean/target_std")
        return model
