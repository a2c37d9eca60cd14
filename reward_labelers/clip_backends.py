"""Load CLIP-style models from open_clip or transformers behind one small interface.

A backend owns a model, its tokenizer and the image preprocessing the model was trained with.
It turns normalised pixel tensors and prompt strings into (unnormalised) embeddings; the reward
math lives in :mod:`vlmrl.reward_labelers.clip`.

Weights are never downloaded silently into a broken state: when a model is neither on local
disk nor fetchable, loading raises :class:`~vlmrl.errors.MissingWeightsError` with a message
that says exactly how to provide the weights.
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmrl.errors import ConfigError, MissingWeightsError

BACKENDS = ("open_clip", "transformers")

# Normalisation the OpenAI CLIP models were trained with; the fallback when a transformers
# model folder has no image processor config.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class ImagePreprocessing:
    """How raw frames become model input.

    Attributes:
        size: ``(height, width)`` of the model input in pixels.
        resize_mode: ``"shortest"`` resizes so the frame covers ``size`` keeping its aspect
            ratio, then center-crops (CLIP); ``"squash"`` resizes straight to ``size`` (SigLIP).
        interpolation: ``"bicubic"`` or ``"bilinear"`` (always antialiased, like PIL).
        mean: per-channel mean of pixel values scaled to [0, 1].
        std: per-channel standard deviation of pixel values scaled to [0, 1].
    """

    size: tuple[int, int]
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        if self.resize_mode not in ("shortest", "squash"):
            raise ConfigError(
                f"unsupported image resize mode {self.resize_mode!r}: only 'shortest' (CLIP) and "
                "'squash' (SigLIP) are implemented"
            )
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ConfigError(f"unsupported image interpolation {self.interpolation!r}")


class ClipBackend(ABC):
    """A loaded CLIP-style model: encodes preprocessed images and prompt strings.

    Attributes:
        preprocessing: the resize/crop/normalisation this model expects.
        device: where the model's weights live.
    """

    preprocessing: ImagePreprocessing
    device: torch.device

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings, not normalised.

        Args:
            pixels: float ``[N, 3, H, W]`` already resized and normalised, on ``device``.

        Returns:
            ``[N, D]`` embeddings.
        """

    @abstractmethod
    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings, not normalised: ``[len(prompts), D]`` on ``device``."""


def load_clip_backend(
    backend: str, model: str, pretrained: str | None, device: torch.device
) -> ClipBackend:
    """Load ``model`` with the named backend (``"open_clip"`` or ``"transformers"``) onto ``device``.

    Raises:
        MissingWeightsError: weights (or tokenizer files) are not on disk and cannot be fetched.
        ConfigError: unknown backend, model name or pretrained tag.
    """
    if backend == "open_clip":
        return OpenClipBackend.load(model, pretrained, device)
    if backend == "transformers":
        if pretrained is not None:
            raise ConfigError(
                "the transformers backend takes the weights from `model` (a hub id or a local "
                f"directory); got pretrained={pretrained!r}, pass pretrained=None"
            )
        return TransformersClipBackend.load(model, device)
    raise ConfigError(f"unknown CLIP backend {backend!r}; choose one of {list(BACKENDS)}")


def _hf_cache_dir() -> str:
    """The Hugging Face hub cache in use (honours HF_HOME / HF_HUB_CACHE)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _looks_like_path(value: str) -> bool:
    """True for filesystem paths; False for hub ids (``org/name``) and pretrained tags."""
    return (
        value.startswith(("/", ".", "~"))
        or value.count("/") >= 2
        or "\\" in value
        or value.endswith(_CHECKPOINT_SUFFIXES)
    )


# ---------------------------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------------------------


class OpenClipBackend(ClipBackend):
    """An open_clip model with its own tokenizer and preprocessing config."""

    def __init__(self, model: torch.nn.Module, tokenizer, preprocessing: ImagePreprocessing):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, model: str, pretrained: str | None, device: torch.device) -> OpenClipBackend:
        """Build an open_clip model.

        Args:
            model: a built-in open_clip model name (``"ViT-B-32"``), a path to a model-config
                JSON file (registered under its file stem), a folder holding
                ``open_clip_config.json`` and weights (same as ``"local-dir:FOLDER"``), or
                ``"hf-hub:ORG/REPO"``.
            pretrained: a pretrained tag (``"laion2b_s34b_b79k"``), a local checkpoint file
                (.pt/.pth/.bin/.safetensors), or None for random weights (tests only). Must be
                None for ``local-dir:`` and ``hf-hub:`` models, which carry their own weights.
            device: where to put the model.
        """
        import open_clip

        name = _resolve_open_clip_name(model)
        if name.startswith(("hf-hub:", "local-dir:")) and pretrained is not None:
            raise ConfigError(
                f"open_clip model {model!r} carries its own weights; pass pretrained=None "
                f"instead of {pretrained!r}"
            )
        if name.startswith("hf-hub:"):
            _fetch_open_clip_hub_model(name.removeprefix("hf-hub:"))
        elif not name.startswith("local-dir:"):
            _check_open_clip_pretrained(name, pretrained)
        try:
            clip_model = open_clip.create_model(name, pretrained=pretrained, device=device)
            tokenizer = open_clip.get_tokenizer(name)
        except OSError as error:
            # e.g. a text tower whose HF tokenizer/config is not cached.
            raise MissingWeightsError(
                f"open_clip model {model!r} needs files that are neither cached nor downloadable "
                f"({error}). Run on a machine with internet:\n"
                f"  python -c \"import open_clip; open_clip.create_model('{name}', "
                f"pretrained={pretrained!r}); open_clip.get_tokenizer('{name}')\"\n"
                f"and copy its Hugging Face cache ({_hf_cache_dir()}) to the same place here."
            ) from error
        cfg = open_clip.get_model_preprocess_cfg(clip_model)
        size = cfg["size"]
        preprocessing = ImagePreprocessing(
            size=(size, size) if isinstance(size, int) else (int(size[0]), int(size[1])),
            resize_mode=cfg.get("resize_mode", "shortest"),
            interpolation=cfg.get("interpolation", "bicubic"),
            mean=tuple(float(m) for m in cfg["mean"]),
            std=tuple(float(s) for s in cfg["std"]),
        )
        return cls(clip_model, tokenizer, preprocessing)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts)).to(self.device)
        return self.model.encode_text(tokens)


def _resolve_open_clip_name(model: str) -> str:
    """Map the user's ``model`` to the name open_clip's factory understands."""
    import open_clip

    if model.startswith(("hf-hub:", "local-dir:")):
        if model.startswith("local-dir:") and not Path(model.removeprefix("local-dir:")).is_dir():
            raise MissingWeightsError(f"open_clip model folder not found: {model}")
        return model
    path = Path(model)
    if model.endswith(".json"):
        if not path.is_file():
            raise ConfigError(f"open_clip model config file not found: {model}")
        # open_clip's registry keys configs by file stem; registering keeps every later step
        # (tag lookup, tokenizer) on the same code path as built-in names.
        open_clip.add_model_config(path)
        return path.stem
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise ConfigError(
                f"{model} is a folder but has no open_clip_config.json; pass a model name, a "
                "model-config JSON file or a folder written by open_clip's push_to_hf_hub"
            )
        return f"local-dir:{model}"
    if model not in open_clip.list_models():
        raise ConfigError(
            f"unknown open_clip model {model!r}. Use a built-in name (open_clip.list_models(), "
            "e.g. 'ViT-B-32'), a path to a model-config JSON file, a folder with "
            "open_clip_config.json, or 'hf-hub:ORG/REPO'."
        )
    return model


def _check_open_clip_pretrained(name: str, pretrained: str | None) -> None:
    """Make sure ``pretrained`` resolves to weights on disk before open_clip builds the model.

    open_clip turns download failures into a bare RuntimeError; fetching here first lets us
    raise one actionable error instead.
    """
    import open_clip
    from open_clip.pretrained import download_pretrained

    if pretrained is None:
        warnings.warn(
            f"open_clip model {name!r} built with RANDOM weights (pretrained=None): its rewards "
            "are meaningless. Pass a pretrained tag such as 'laion2b_s34b_b79k' or a checkpoint "
            "path; random weights are only for tests.",
            UserWarning,
            stacklevel=4,
        )
        return
    if os.path.isfile(pretrained):
        return
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        if "/" in pretrained or _looks_like_path(pretrained):  # tags never hold a "/"
            raise MissingWeightsError(
                f"open_clip checkpoint file not found: {pretrained}. Pass the path of an existing "
                f".pt/.pth/.bin/.safetensors file, or a pretrained tag of {name!r}: "
                f"{open_clip.list_pretrained_tags_by_model(name)}"
            )
        raise ConfigError(
            f"unknown pretrained tag {pretrained!r} for open_clip model {name!r}; known tags: "
            f"{open_clip.list_pretrained_tags_by_model(name)}, or pass a checkpoint file path"
        )
    try:
        download_pretrained(tag_cfg)
    except Exception as error:  # open_clip wraps hub/HTTP errors in assorted types
        hub = tag_cfg.get("hf_hub", "").rstrip("/")
        source = f"https://huggingface.co/{hub.split('/')[0]}/{hub.split('/')[1]}" if hub else (
            tag_cfg.get("url", "")
        )
        raise MissingWeightsError(
            f"open_clip weights {name!r} / {pretrained!r} are not in the local cache and cannot "
            "be downloaded here. Provide them in one of two ways:\n"
            "  1. On a machine with internet run\n"
            f"       python -c \"import open_clip; open_clip.create_model('{name}', "
            f"pretrained='{pretrained}')\"\n"
            f"     then copy its Hugging Face cache (~/.cache/huggingface, or $HF_HOME) to this "
            f"machine (the cache in use here is {_hf_cache_dir()}).\n"
            f"  2. Download the checkpoint file from {source} and pass its path as pretrained=."
        ) from error


def _fetch_open_clip_hub_model(repo_id: str) -> None:
    """Fetch (or find in cache) an ``hf-hub:`` open_clip model's config and weights."""
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        download_pretrained_from_hf(repo_id, filename="open_clip_config.json")
        download_pretrained_from_hf(repo_id)
    except Exception as error:
        raise MissingWeightsError(
            f"open_clip model hf-hub:{repo_id} is not in the local cache and cannot be downloaded "
            "here. On a machine with internet run\n"
            f"  python -c \"from huggingface_hub import snapshot_download; "
            f"snapshot_download('{repo_id}')\"\n"
            f"and copy the Hugging Face cache (~/.cache/huggingface, or $HF_HOME; in use here: "
            f"{_hf_cache_dir()}) to this machine, or copy the downloaded folder and pass "
            "model='local-dir:FOLDER'."
        ) from error


# ---------------------------------------------------------------------------------------------
# transformers
# ---------------------------------------------------------------------------------------------

_SUPPORTED_HF_TYPES = ("clip", "siglip")
_PIL_RESAMPLE_NAMES = {2: "bilinear", 3: "bicubic"}


class TransformersClipBackend(ClipBackend):
    """A transformers ``CLIPModel`` or ``SiglipModel`` with its tokenizer."""

    def __init__(self, model, tokenizer, preprocessing: ImagePreprocessing, pad_to_max: bool):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.device = next(model.parameters()).device
        # SigLIP was trained on max-length padded text; CLIP pools at the end-of-text token.
        self._pad_to_max = pad_to_max
        self._max_length = model.config.text_config.max_position_embeddings

    @classmethod
    def load(cls, model: str, device: torch.device) -> TransformersClipBackend:
        """Load from a hub id (via the local Hugging Face cache) or a local model folder."""
        from transformers import AutoConfig, AutoModel

        if _looks_like_path(model) and not Path(model).is_dir():
            raise MissingWeightsError(
                f"transformers model folder not found: {model}. Pass an existing folder written "
                "by save_pretrained/snapshot_download, or a hub id that is in the local cache."
            )
        try:
            config = AutoConfig.from_pretrained(model)
            if config.model_type not in _SUPPORTED_HF_TYPES:
                raise ConfigError(
                    f"transformers model {model!r} is a {config.model_type!r} model; the CLIP "
                    f"labeler supports {list(_SUPPORTED_HF_TYPES)}"
                )
            hf_model = AutoModel.from_pretrained(model, dtype=torch.float32).to(device)
            tokenizer = _load_hf_tokenizer(model, config)
        except MissingWeightsError:
            raise
        except OSError as error:
            raise MissingWeightsError(_hf_missing_message(model)) from error
        preprocessing = _hf_preprocessing(model, config)
        return cls(hf_model, tokenizer, preprocessing, pad_to_max=config.model_type == "siglip")

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        inputs = self.tokenizer(
            list(prompts),
            padding="max_length" if self._pad_to_max else True,
            truncation=True,
            max_length=self._max_length,
            return_tensors="pt",
        ).to(self.device)
        if self._pad_to_max:
            return _pooled(self.model.get_text_features(input_ids=inputs["input_ids"]))
        return _pooled(self.model.get_text_features(**inputs))


def _pooled(output) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding;
    # transformers 4 returned the tensor itself.
    return output.pooler_output if hasattr(output, "pooler_output") else output


def _load_hf_tokenizer(model: str, config):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    # transformers 5 can silently build a 2-token tokenizer (every word -> one id) when the
    # vocabulary files are missing; such a tokenizer makes every prompt embed the same way.
    expected = config.text_config.vocab_size
    if len(tokenizer) < expected // 2:
        raise MissingWeightsError(
            f"the tokenizer loaded for {model!r} has {len(tokenizer)} tokens but the model "
            f"expects about {expected}: its vocabulary files are missing. "
            + _hf_missing_message(model)
        )
    return tokenizer


def _hf_preprocessing(model: str, config) -> ImagePreprocessing:
    """Image size/mean/std from the saved image processor, else from the model config."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(model)
    except OSError:
        size = config.vision_config.image_size
        siglip = config.model_type == "siglip"
        warnings.warn(
            f"{model!r} has no image processor config; using image size {size} from the model "
            f"config and {'SigLIP' if siglip else 'OpenAI CLIP'} mean/std",
            UserWarning,
            stacklevel=4,
        )
        return ImagePreprocessing(
            size=(size, size),
            resize_mode="squash" if siglip else "shortest",
            interpolation="bicubic",
            mean=(0.5, 0.5, 0.5) if siglip else OPENAI_CLIP_MEAN,
            std=(0.5, 0.5, 0.5) if siglip else OPENAI_CLIP_STD,
        )
    size = dict(processor.size)
    resample = getattr(processor, "resample", 3)
    interpolation = _PIL_RESAMPLE_NAMES.get(int(resample), "bicubic")
    if "shortest_edge" in size:
        crop = dict(processor.crop_size) if getattr(processor, "do_center_crop", True) else None
        if crop is None:
            raise ConfigError(f"{model!r}: resize-shortest-edge without center crop is unsupported")
        resize_mode, target = "shortest", (int(crop["height"]), int(crop["width"]))
    else:
        resize_mode, target = "squash", (int(size["height"]), int(size["width"]))
    return ImagePreprocessing(
        size=target,
        resize_mode=resize_mode,
        interpolation=interpolation,
        mean=tuple(float(m) for m in processor.image_mean),
        std=tuple(float(s) for s in processor.image_std),
    )


def _hf_missing_message(model: str) -> str:
    return (
        f"transformers model {model!r} is not in the local Hugging Face cache "
        f"({_hf_cache_dir()}) and cannot be downloaded here. Provide it in one of two ways:\n"
        "  1. On a machine with internet run\n"
        f"       hf download {model}\n"
        f"     (or: python -c \"from huggingface_hub import snapshot_download; "
        f"snapshot_download('{model}')\")\n"
        "     then copy the Hugging Face cache (~/.cache/huggingface, or $HF_HOME) to this "
        "machine.\n"
        "  2. Copy a folder holding the model (config.json, weights, tokenizer and "
        "preprocessor_config.json) and pass its path as model=."
    )
