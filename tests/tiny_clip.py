"""Tiny, randomly initialised CLIP models of the real architectures, saved to local disk.

Pretrained weights cannot be downloaded here, so tests and benchmarks build these instead and
load them through the same paths users take:

- :func:`save_tiny_open_clip` writes an open_clip model-config JSON plus a safetensors
  checkpoint: ``ClipRewardLabeler(model=config_path, pretrained=checkpoint_path)``. The folder
  also holds ``open_clip_config.json``, so ``model="local-dir:" + folder`` works too.
- :func:`save_tiny_hf_clip` writes a transformers ``CLIPModel`` folder (config, weights, a
  working offline tokenizer, image processor): ``ClipRewardLabeler(model=folder,
  pretrained=None, backend="transformers")``. :func:`save_tiny_hf_siglip` does the same for
  a ``SiglipModel`` (with the CLIP tokenizer standing in for SigLIP's SentencePiece one).

Both tokenizers use the real CLIP BPE vocabulary (shipped inside open_clip), so token ids are
those of the pretrained models.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_IMAGE_SIZE = 64

# A ViT-B-32-shaped open_clip config shrunk to 2 layers of width 64 (2 heads of 32).
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": TINY_IMAGE_SIZE,
        "layers": 2,
        "width": 64,
        "head_width": 32,
        "patch_size": 16,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

# The vision tower of the tiny transformers CLIP and SigLIP models.
TINY_HF_VISION_CONFIG = {
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": 16,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}

# The real ViT-B-32 sizes, for timing with random weights.
VIT_B_32_CONFIG = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}


def save_tiny_open_clip(
    directory: str | Path,
    *,
    name: str = "vlmrl-tiny-vit",
    config: dict | None = None,
    seed: int = 0,
) -> tuple[str, str]:
    """Build a random open_clip model and save it.

    Args:
        directory: folder to write into (created if missing).
        name: architecture name; open_clip registers the config under it (the file stem).
        config: open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``);
            defaults to :data:`TINY_OPEN_CLIP_CONFIG`.
        seed: seed for the random weights.

    Returns:
        ``(config_path, checkpoint_path)``: pass them as ``model`` and ``pretrained``.
    """
    import open_clip
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = config or TINY_OPEN_CLIP_CONFIG
    config_path = directory / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=2))
    open_clip.add_model_config(config_path)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None)
    checkpoint_path = directory / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint_path))
    # The layout of open_clip's hub folders, so "local-dir:<directory>" loads the same model.
    preprocess_cfg = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": config, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    return str(config_path), str(checkpoint_path)


def clip_bpe_tokenizer():
    """A transformers ``CLIPTokenizer`` built offline from open_clip's BPE vocabulary.

    Ids match the pretrained CLIP tokenizer (open_clip pads with 0, transformers with 49407).
    """
    import open_clip
    from transformers import CLIPTokenizer

    bpe = open_clip.SimpleTokenizer()
    vocab = dict(bpe.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    # transformers 5 wants merges as (left, right) pairs in rank order.
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges)


def save_tiny_hf_clip(directory: str | Path, *, seed: int = 0) -> str:
    """Build a random transformers ``CLIPModel`` (2 layers, width 64) and save it with its
    tokenizer and image processor.

    Returns:
        The model folder: pass it as ``model`` with ``backend="transformers"``.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config=dict(TINY_HF_VISION_CONFIG),
        projection_dim=32,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(directory)
    clip_bpe_tokenizer().save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    ).save_pretrained(directory)
    return str(directory)


def save_tiny_hf_siglip(directory: str | Path, *, seed: int = 0) -> str:
    """Build a random transformers ``SiglipModel`` (2 layers, width 64) and save it.

    SigLIP's own SentencePiece vocabulary is not available offline, so the CLIP BPE tokenizer
    stands in (vocab size 49408); the model, its pooling and its image processor are SigLIP's.

    Returns:
        The model folder: pass it as ``model`` with ``backend="transformers"``.
    """
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTextConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_bpe_tokenizer()
    text_config = SiglipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    config = SiglipConfig(
        text_config=text_config.to_dict(),
        vision_config=dict(TINY_HF_VISION_CONFIG),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SiglipModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    SiglipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(
        directory
    )
    return str(directory)
