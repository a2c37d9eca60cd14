"""Build and save a tiny, randomly initialised Qwen2-VL that loads like a real hub checkpoint.

Pretrained VLM weights cannot be downloaded in the test environment, so the HF preference
labeler is tested against the real Qwen2-VL architecture (vision tower, M-RoPE, image-token
merging, chat template, processor) at toy size. Everything a hub snapshot holds is written with
``save_pretrained``: config, safetensors weights, a byte-level BPE tokenizer that includes
Qwen2-VL's special and image tokens, the image processor from its class defaults (shrunk to tiny
images), and a Qwen2-VL style chat template. Its answers are random text.

Run as a script to write one: ``python tests/tiny_vlm.py OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Qwen2-VL's chat template, reduced to what the labeler sends: string or [image | text] content.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Small images: the processor resizes every frame to at most 56x56 pixels = 4x4 patches of 14,
# merged 2x2 into 4 image tokens.
MAX_PIXELS = 56 * 56


def build_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) plus Qwen2-VL's specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(byte_alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def build_tiny_qwen2_vl(out_dir: str | Path, seed: int = 0, scripted_reply: str | None = None) -> Path:
    """Write a tiny random Qwen2-VL checkpoint (weights, tokenizer, processor) into ``out_dir``.

    Sizes: text hidden 64, 2 layers, 4 heads; vision embed 32, 1 block; ~0.2M parameters.

    Args:
        out_dir: folder to write.
        seed: seed of the random weights.
        scripted_reply: None for random weights (random text out). A single character such as
            ``"0"`` hand-sets the language model so every reply is exactly that character then
            end-of-turn, whatever it is shown (see ``_script_reply``): real generation with a
            known answer.

    Returns:
        ``out_dir`` as a Path, loadable with ``AutoProcessor`` / ``AutoModelForImageTextToText``.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            # head_dim 16: M-RoPE splits its 8 rotary frequencies over (time, height, width).
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    # Wider weights than the default init: the default makes a toy model repeat one whitespace
    # token whatever it sees, while these make its (random) text depend on the images.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.2)
    if scripted_reply is not None:
        _script_reply(model, tokenizer.convert_tokens_to_ids(scripted_reply), ids["<|im_end|>"])
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]

    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=MAX_PIXELS)
    # The processor insists on a video processor although the labeler sends only images.
    video_processor = Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=MAX_PIXELS)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _script_reply(model, reply_id: int, end_id: int) -> None:
    """Hand-set the language model so it answers ``reply_id`` once, then ``end_id``.

    Two residual-stream dimensions that no layer writes to (their rows of every ``o_proj`` and
    ``down_proj`` are zero) carry the current input token's embedding to the head unchanged:
    dimension 0 holds a constant for every token and votes for the reply; dimension 1 is large
    only for the reply token itself and votes for end-of-turn. So after any prompt the next
    token is the reply, and after the reply it is end-of-turn.
    """
    import torch

    language_model = model.model.language_model
    with torch.no_grad():
        embeddings = language_model.embed_tokens.weight
        embeddings[:, :2] = 0.0
        embeddings[:, 0] = 100.0
        embeddings[reply_id, 1] = 200.0
        for layer in language_model.layers:
            layer.self_attn.o_proj.weight[:2] = 0.0
            layer.mlp.down_proj.weight[:2] = 0.0
        language_model.norm.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[reply_id, 0] = 1.0
        model.lm_head.weight[end_id, 1] = 1.0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_vlm.py OUT_DIR")
    print(build_tiny_qwen2_vl(sys.argv[1]))
