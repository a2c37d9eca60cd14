"""CLIP zero-shot rewards with goal-baseline regularisation (VLM-RM, Rocamonde et al. 2024).

The reward of a frame is how close its CLIP image embedding ``x`` lies to the goal prompt
embedding ``g``, measured after projecting onto the baseline->goal direction ``d = g - b``
with strength ``alpha``::

    P = alpha * outer(d, d) / ||d||^2 + (1 - alpha) * I
    r = 1 - 0.5 * ||(x - g) @ P||^2

``x`` is L2-normalised; ``g`` and ``b`` are means of L2-normalised prompt embeddings and are
deliberately not re-normalised (as in the paper). ``alpha = 0`` gives ``1 - 0.5 * ||x - g||^2``,
an affine function of ``cos(x, g)``; ``alpha = 1`` keeps only the component along ``d``.

Example::

    labeler = ClipRewardLabeler("ViT-B-32", "laion2b_s34b_b79k",
                                goal_prompts=["a humanoid robot kneeling"],
                                baseline_prompts=["a humanoid robot"], alpha=0.5)
    rewards = labeler.label(frames)  # uint8 [N, H, W, 3] -> float32 [N]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vlmrl.devices import resolve_device
from vlmrl.errors import ConfigError
from vlmrl.reward_labelers.base import FrameRewardLabeler, check_frames
from vlmrl.reward_labelers.clip_backends import (
    BACKENDS,
    ClipBackend,
    ImagePreprocessing,
    load_clip_backend,
)


def preprocess_frames(frames: torch.Tensor, spec: ImagePreprocessing) -> torch.Tensor:
    """Batched CLIP preprocessing on the frames' own device, without PIL.

    Mirrors the models' PIL transforms: antialiased resize (shortest side to the model size,
    or straight to it for ``"squash"``), center crop, scale to [0, 1], normalise.

    Args:
        frames: uint8 ``[N, H, W, 3]`` RGB.
        spec: the model's preprocessing.

    Returns:
        float32 ``[N, 3, spec.size[0], spec.size[1]]``.
    """
    target_h, target_w = spec.size
    pixels = frames.permute(0, 3, 1, 2)  # a channels-last view: no copy
    height, width = pixels.shape[-2:]
    if spec.resize_mode == "squash":
        resized_h, resized_w = target_h, target_w
    elif target_h == target_w:
        # torchvision's rule for an int size: shorter side -> size, longer side truncated.
        short, long = min(height, width), max(height, width)
        new_long = int(target_h * long / short)
        resized_h, resized_w = (target_h, new_long) if height <= width else (new_long, target_h)
    else:
        scale = max(target_h / height, target_w / width)
        resized_h, resized_w = max(target_h, int(height * scale)), max(target_w, int(width * scale))
    if (resized_h, resized_w) != (height, width):
        pixels = resize_like_pil(pixels, (resized_h, resized_w), spec.interpolation)
    top = int(round((resized_h - target_h) / 2.0))
    left = int(round((resized_w - target_w) / 2.0))
    pixels = pixels[:, :, top : top + target_h, left : left + target_w]
    mean = torch.tensor(spec.mean, device=pixels.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(spec.std, device=pixels.device).view(1, 3, 1, 1) * 255.0
    return ((pixels.float() - mean) / std).contiguous()


def resize_like_pil(
    pixels: torch.Tensor, size: tuple[int, int], mode: str, uint8_kernel: bool | None = None
) -> torch.Tensor:
    """Antialiased resize of uint8 ``[N, 3, H, W]`` to ``size``, with uint8 values as PIL gives.

    ``uint8_kernel`` (default: on CPU) resizes the uint8 tensor directly; otherwise the resize
    runs in float (the only kind CUDA supports) and is clipped and rounded afterwards.
    """
    if uint8_kernel is None:
        uint8_kernel = pixels.device.type == "cpu"
    if uint8_kernel:
        # torch's uint8 antialiased kernels (channels-last) are ~10x faster than float ones.
        return F.interpolate(pixels, size=size, mode=mode, antialias=True, align_corners=False)
    resized = F.interpolate(pixels.float(), size=size, mode=mode, antialias=True, align_corners=False)
    # PIL clips bicubic overshoot and rounds to uint8; the models were trained on that.
    return resized.clamp_(0.0, 255.0).round_()


def mean_prompt_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean of L2-normalised prompt embeddings ``[P, D] -> [D]``, NOT re-normalised."""
    return F.normalize(embeddings.float(), dim=-1).mean(dim=0)


def goal_baseline_projection(goal: torch.Tensor, baseline: torch.Tensor, alpha: float) -> torch.Tensor:
    """``P = alpha * outer(d, d) / ||d||^2 + (1 - alpha) * I`` with ``d = goal - baseline``: ``[D, D]``."""
    direction = goal - baseline
    identity = torch.eye(goal.shape[-1], dtype=goal.dtype, device=goal.device)
    if alpha == 0.0:
        return identity
    norm_sq = direction.dot(direction)
    if norm_sq.item() < 1e-12:
        raise ConfigError(
            "goal and baseline prompts give the same embedding, so the baseline->goal direction "
            "is undefined: use different prompts or alpha=0"
        )
    return alpha * torch.outer(direction, direction) / norm_sq + (1.0 - alpha) * identity


def goal_baseline_reward(
    image_embeddings: torch.Tensor, goal: torch.Tensor, projection: torch.Tensor
) -> torch.Tensor:
    """``r = 1 - 0.5 * ||(x - g) @ P||^2`` for L2-normalised ``x`` ``[N, D]``: returns ``[N]``."""
    projected = (image_embeddings - goal) @ projection
    return 1.0 - 0.5 * projected.pow(2).sum(dim=-1)


class ClipRewardLabeler(FrameRewardLabeler):
    """Zero-shot CLIP reward for rendered frames (VLM-RM goal-baseline regularisation).

    Text embeddings are computed once here; :meth:`label` only runs the image encoder, in
    chunks of at most ``batch_size`` frames, with preprocessing done as one tensor op on the
    labeler's device (autocast fp16/bf16 on CUDA).

    Args:
        model: open_clip model name (``"ViT-B-32"``), model-config JSON path, open_clip model
            folder or ``"hf-hub:ORG/REPO"``; for ``backend="transformers"`` a hub id or a local
            folder with a ``CLIPModel`` / ``SiglipModel``.
        pretrained: open_clip pretrained tag or local checkpoint path; None gives random weights
            (tests only, warns). Must be None for the transformers backend.
        goal_prompts: texts describing the goal; their normalised embeddings are averaged.
        baseline_prompts: texts describing the neutral situation (e.g. "a humanoid robot").
        alpha: goal-baseline regularisation strength in [0, 1]; 0 is plain CLIP similarity.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        backend: ``"open_clip"`` or ``"transformers"``.
        batch_size: most frames sent through the image encoder at once (bounds memory).

    Raises:
        ConfigError: bad alpha, prompts, device, backend or model name.
        MissingWeightsError: weights not on disk and not downloadable; says how to provide them.
    """

    def __init__(
        self,
        model: str,
        pretrained: str | None,
        goal_prompts: Sequence[str],
        baseline_prompts: Sequence[str],
        alpha: float,
        device: str = "auto",
        backend: str = "open_clip",
        batch_size: int = 64,
    ) -> None:
        self.alpha = _check_alpha(alpha)
        self.goal_prompts = _check_prompts("goal_prompts", goal_prompts)
        self.baseline_prompts = _check_prompts("baseline_prompts", baseline_prompts)
        if backend not in BACKENDS:
            raise ConfigError(f"unknown CLIP backend {backend!r}; choose one of {list(BACKENDS)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.backend: ClipBackend = load_clip_backend(backend, model, pretrained, self.device)
        self._autocast_dtype = _autocast_dtype(self.device)

        with torch.inference_mode():
            self._goal = mean_prompt_embedding(self.backend.encode_texts(self.goal_prompts))
            self._baseline = mean_prompt_embedding(self.backend.encode_texts(self.baseline_prompts))
            self._projection = goal_baseline_projection(self._goal, self._baseline, self.alpha)

    @property
    def goal_embedding(self) -> np.ndarray:
        """float32 ``[D]``: mean of the normalised goal prompt embeddings (not re-normalised)."""
        return self._goal.cpu().numpy().copy()

    @property
    def baseline_embedding(self) -> np.ndarray:
        """float32 ``[D]``: mean of the normalised baseline prompt embeddings."""
        return self._baseline.cpu().numpy().copy()

    @torch.inference_mode()
    def label(self, frames: np.ndarray, true_rewards: np.ndarray | None = None) -> np.ndarray:
        """Rewards for uint8 ``[N, H, W, 3]`` frames as float32 ``[N]``; ``true_rewards`` is ignored."""
        frames = check_frames(frames)
        rewards = [
            goal_baseline_reward(self._embed(chunk), self._goal, self._projection)
            for chunk in self._chunks(frames)
        ]
        return _to_numpy(rewards, shape=(0,))

    @torch.inference_mode()
    def encode_images(self, frames: np.ndarray) -> np.ndarray:
        """L2-normalised image embeddings of uint8 ``[N, H, W, 3]`` frames: float32 ``[N, D]``."""
        frames = check_frames(frames)
        embeddings = [self._embed(chunk) for chunk in self._chunks(frames)]
        return _to_numpy(embeddings, shape=(0, self._goal.shape[-1]))

    @torch.inference_mode()
    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """The model input for uint8 ``[N, H, W, 3]`` frames: float32 ``[N, 3, h, w]`` on the device."""
        frames = check_frames(frames)
        return preprocess_frames(self._to_device(frames), self.backend.preprocessing)

    def _chunks(self, frames: np.ndarray):
        for start in range(0, len(frames), self.batch_size):
            yield frames[start : start + self.batch_size]

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image encoder alone on preprocessed pixels (``preprocess`` output): raw
        embeddings ``[N, D]`` on the device, under autocast on CUDA."""
        with self._autocast():
            return self.backend.encode_images(pixels)

    def _embed(self, frames: np.ndarray) -> torch.Tensor:
        """Normalised float32 embeddings ``[N, D]`` on the device for a chunk of frames."""
        pixels = preprocess_frames(self._to_device(frames), self.backend.preprocessing)
        return F.normalize(self.encode_pixels(pixels).float(), dim=-1)

    def _to_device(self, frames: np.ndarray) -> torch.Tensor:
        # uint8 is 4x smaller than float: move it to the device before converting.
        return torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    # bf16/fp16 autocast only pays off on CUDA; on CPU it is slower for ViTs.
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _to_numpy(chunks: list[torch.Tensor], shape: tuple[int, ...]) -> np.ndarray:
    if not chunks:
        return np.zeros(shape, dtype=np.float32)
    return torch.cat(chunks).float().cpu().numpy().astype(np.float32, copy=False)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise ConfigError(f"alpha must be a number in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if math.isnan(alpha) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1] (0 = plain CLIP similarity), got {alpha}")
    return alpha


def _check_prompts(name: str, prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise ConfigError(f"{name} must be a list of strings, got the single string {prompts!r}")
    prompts = list(prompts)
    if not prompts:
        raise ConfigError(f"{name} is empty: give at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ConfigError(f"{name} must be non-empty strings, got {bad!r}")
    return prompts
