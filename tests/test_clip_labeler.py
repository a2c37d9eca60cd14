"""ClipRewardLabeler on tiny random CLIP models of the real architectures (open_clip and
transformers), saved to disk and loaded through the same paths users take."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from tiny_clip import (
    clip_bpe_tokenizer,
    save_tiny_hf_clip,
    save_tiny_hf_siglip,
    save_tiny_open_clip,
)

from vlmrl.errors import ConfigError, MissingWeightsError
from vlmrl.reward_labelers import ClipRewardLabeler, FrameRewardLabeler

GOALS = ["a pole standing upright on a cart", "a balanced pole"]
BASELINES = ["a pole on a cart", "a cart"]


@pytest.fixture(scope="module")
def open_clip_files(tmp_path_factory):
    """(config_path, checkpoint_path) of a tiny random open_clip ViT."""
    return save_tiny_open_clip(tmp_path_factory.mktemp("tiny_open_clip"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_tiny_hf_clip(tmp_path_factory.mktemp("tiny_hf_clip"))


@pytest.fixture(scope="module")
def frames():
    """Six visibly different uint8 [6, 120, 160, 3] frames, including a real CartPole render."""
    import gymnasium as gym

    env = gym.make("CartPole-v1", render_mode="rgb_array")
    env.reset(seed=0)
    cartpole = np.asarray(Image.fromarray(env.render()).resize((160, 120)))
    env.close()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:160]
    gradient = np.stack([xx * 255 // 159, yy * 255 // 119, np.full_like(xx, 128)], -1)
    boxes = np.zeros((120, 160, 3), np.uint8)
    boxes[20:60, 30:90] = (255, 0, 0)
    boxes[70:110, 100:150] = (0, 0, 255)
    return np.stack(
        [
            cartpole,
            np.zeros((120, 160, 3), np.uint8),
            np.full((120, 160, 3), 255, np.uint8),
            rng.integers(0, 256, (120, 160, 3), dtype=np.uint8),
            gradient.astype(np.uint8),
            boxes,
        ]
    )


def make_open_clip_labeler(files, alpha=0.3, goals=GOALS, baselines=BASELINES, **kwargs):
    config_path, checkpoint = files
    return ClipRewardLabeler(config_path, checkpoint, goals, baselines, alpha, device="cpu", **kwargs)


def reference_open_clip(files):
    """The same model loaded with plain open_clip: (model, tokenizer, PIL val transform)."""
    config_path, checkpoint = files
    name = os.path.splitext(os.path.basename(config_path))[0]
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=checkpoint)
    return model.eval(), open_clip.get_tokenizer(name), preprocess


def normalise(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def formula_reward(x: np.ndarray, g: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """methods.md section 1, written out with an explicit projection matrix."""
    d = g - b
    projection = alpha * np.outer(d, d) / (d @ d) + (1 - alpha) * np.eye(len(d))
    return 1 - 0.5 * np.sum(((x - g) @ projection) ** 2, axis=-1)


# --- reward math -----------------------------------------------------------------------------


def test_reward_matches_formula_from_the_models_own_embeddings(open_clip_files, frames):
    labeler = make_open_clip_labeler(open_clip_files, alpha=0.3)
    model, tokenizer, pil_preprocess = reference_open_clip(open_clip_files)
    with torch.no_grad():
        goal_each = normalise(model.encode_text(tokenizer(GOALS)).numpy())
        base_each = normalise(model.encode_text(tokenizer(BASELINES)).numpy())
        pil_pixels = torch.stack([pil_preprocess(Image.fromarray(f)) for f in frames])
        x_reference = normalise(model.encode_image(pil_pixels).numpy())
    g, b = goal_each.mean(0), base_each.mean(0)

    # Prompt means are not re-normalised (two distinct prompts average to norm < 1).
    assert np.linalg.norm(g) < 0.9999
    np.testing.assert_allclose(labeler.goal_embedding, g, atol=1e-5)
    np.testing.assert_allclose(labeler.baseline_embedding, b, atol=1e-5)

    x = labeler.encode_images(frames)
    assert x.shape == (len(frames), 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # Same embedding as the model's own PIL pipeline, up to resize rounding.
    assert np.min(np.sum(x * x_reference, axis=1)) > 0.9995

    rewards = labeler.label(frames)
    assert rewards.shape == (len(frames),) and rewards.dtype == np.float32
    np.testing.assert_allclose(rewards, formula_reward(x, g, b, 0.3), atol=1e-5)
    np.testing.assert_allclose(rewards, formula_reward(x_reference, g, b, 0.3), atol=2e-3)
    assert np.ptp(rewards) > 1e-3, "frames must get different rewards for this test to mean anything"


def test_alpha_zero_is_affine_in_cosine_and_alpha_one_keeps_only_the_goal_direction(
    open_clip_files, frames
):
    single_goal = make_open_clip_labeler(open_clip_files, alpha=0.0, goals=GOALS[:1])
    x = single_goal.encode_images(frames)
    g = single_goal.goal_embedding
    # One unit-length goal: 1 - 0.5 * ||x - g||^2 == cos(x, g).
    np.testing.assert_allclose(single_goal.label(frames), x @ g, atol=1e-5)

    plain = make_open_clip_labeler(open_clip_files, alpha=0.0)
    g = plain.goal_embedding
    np.testing.assert_allclose(plain.label(frames), 1 - 0.5 * np.sum((x - g) ** 2, 1), atol=1e-5)

    projected = make_open_clip_labeler(open_clip_files, alpha=1.0)
    d = projected.goal_embedding - projected.baseline_embedding
    along = (x - g) @ (d / np.linalg.norm(d))
    rewards = projected.label(frames)
    np.testing.assert_allclose(rewards, 1 - 0.5 * along**2, atol=1e-5)
    assert not np.allclose(rewards, plain.label(frames), atol=1e-3)


def test_single_frames_and_small_chunks_give_the_batch_result(open_clip_files, frames):
    labeler = make_open_clip_labeler(open_clip_files)
    batch = labeler.label(frames)
    one_by_one = np.concatenate([labeler.label(frames[i : i + 1]) for i in range(len(frames))])
    np.testing.assert_allclose(one_by_one, batch, atol=1e-5)
    chunked = make_open_clip_labeler(open_clip_files, batch_size=4).label(frames)
    np.testing.assert_allclose(chunked, batch, atol=1e-5)
    assert labeler.label(frames, true_rewards=np.ones(len(frames))).tolist() == batch.tolist()
    empty = labeler.label(np.zeros((0, 120, 160, 3), np.uint8))
    assert empty.shape == (0,) and empty.dtype == np.float32


def test_goal_equal_to_baseline_is_rejected_unless_alpha_is_zero(open_clip_files, frames):
    with pytest.raises(ConfigError, match="same embedding"):
        make_open_clip_labeler(open_clip_files, alpha=0.5, goals=["a cart"], baselines=["a cart"])
    same = make_open_clip_labeler(open_clip_files, alpha=0.0, goals=["a cart"], baselines=["a cart"])
    assert np.all(np.isfinite(same.label(frames)))


# --- preprocessing ---------------------------------------------------------------------------


@pytest.mark.parametrize("uint8_kernel", [True, False], ids=["uint8-cpu-kernel", "float-cuda-kernel"])
def test_batched_preprocessing_matches_open_clips_pil_transform(
    open_clip_files, frames, monkeypatch, uint8_kernel
):
    import vlmrl.reward_labelers.clip as clip_module

    resize = clip_module.resize_like_pil
    monkeypatch.setattr(
        clip_module, "resize_like_pil", lambda *args: resize(*args, uint8_kernel=uint8_kernel)
    )
    labeler = make_open_clip_labeler(open_clip_files)
    _, _, pil_preprocess = reference_open_clip(open_clip_files)
    ours = labeler.preprocess(frames).numpy()
    reference = torch.stack([pil_preprocess(Image.fromarray(f)) for f in frames]).numpy()
    assert ours.shape == reference.shape == (len(frames), 3, 64, 64)
    diff = np.abs(ours - reference)
    grey_level = 1 / 255 / min(open_clip.OPENAI_DATASET_STD)  # ~0.0151 after normalisation
    if uint8_kernel:  # torch's uint8 kernels reproduce PIL to within one grey level
        assert diff.max() <= grey_level * 1.01
        assert diff.mean() < grey_level * 0.01
    else:  # float kernels differ by at most a level almost everywhere, more on sharp edges
        assert diff.mean() < grey_level * 0.3
        assert np.quantile(diff, 0.99) < grey_level * 1.5
        assert diff.max() < grey_level * 20


# --- loading ---------------------------------------------------------------------------------


def test_labeler_is_a_frame_reward_labeler_and_local_dir_loads_the_same_model(
    open_clip_files, frames
):
    labeler = make_open_clip_labeler(open_clip_files)
    assert isinstance(labeler, FrameRewardLabeler) and labeler.needs_frames
    folder = os.path.dirname(open_clip_files[0])
    from_folder = ClipRewardLabeler(f"local-dir:{folder}", None, GOALS, BASELINES, 0.3, device="cpu")
    np.testing.assert_allclose(from_folder.label(frames), labeler.label(frames), atol=1e-6)


def test_random_weights_warn_loudly(open_clip_files):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        ClipRewardLabeler(open_clip_files[0], None, GOALS, BASELINES, 0.0, device="cpu")


def test_transformers_backend_matches_the_hf_model(hf_dir, frames):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    labeler = ClipRewardLabeler(
        hf_dir, None, GOALS, BASELINES, 0.3, device="cpu", backend="transformers"
    )
    rewards = labeler.label(frames)
    assert rewards.shape == (len(frames),) and rewards.dtype == np.float32
    assert np.all(np.isfinite(rewards)) and np.ptp(rewards) > 1e-3

    model = CLIPModel.from_pretrained(hf_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    processor = CLIPImageProcessor.from_pretrained(hf_dir)
    with torch.no_grad():
        text = model.get_text_features(**tokenizer(GOALS, padding=True, return_tensors="pt"))
        pixels = processor(images=list(frames), return_tensors="pt")["pixel_values"]
        x_reference = normalise(model.get_image_features(pixel_values=pixels).pooler_output.numpy())
    np.testing.assert_allclose(
        labeler.goal_embedding, normalise(text.pooler_output.numpy()).mean(0), atol=1e-5
    )
    x = labeler.encode_images(frames)
    assert np.min(np.sum(x * x_reference, axis=1)) > 0.9995
    g, b = labeler.goal_embedding, labeler.baseline_embedding
    np.testing.assert_allclose(rewards, formula_reward(x, g, b, 0.3), atol=1e-5)


def test_transformers_backend_detects_siglip_and_uses_its_processing(tmp_path, frames):
    from transformers import AutoImageProcessor, AutoTokenizer, SiglipModel

    folder = save_tiny_hf_siglip(tmp_path / "siglip")
    labeler = ClipRewardLabeler(
        folder, None, GOALS, BASELINES, 0.5, device="cpu", backend="transformers"
    )
    spec = labeler.backend.preprocessing
    assert (spec.resize_mode, spec.size, spec.mean) == ("squash", (64, 64), (0.5, 0.5, 0.5))

    model = SiglipModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    pixels = processor(images=list(frames), return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(labeler.preprocess(frames).numpy(), pixels.numpy(), atol=0.02)
    with torch.no_grad():
        # SigLIP was trained on max-length padded text without an attention mask.
        ids = tokenizer(GOALS, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
        text = normalise(model.get_text_features(input_ids=ids).pooler_output.numpy())
        x_reference = normalise(model.get_image_features(pixel_values=pixels).pooler_output.numpy())
    np.testing.assert_allclose(labeler.goal_embedding, text.mean(0), atol=1e-5)
    x = labeler.encode_images(frames)
    assert np.min(np.sum(x * x_reference, axis=1)) > 0.9995
    g, b = labeler.goal_embedding, labeler.baseline_embedding
    np.testing.assert_allclose(labeler.label(frames), formula_reward(x, g, b, 0.5), atol=1e-5)


def test_offline_bpe_tokenizer_gives_open_clip_token_ids():
    texts = ["a humanoid robot kneeling", "A pole, upright on top of the cart!"]
    hf_ids = clip_bpe_tokenizer()(texts, padding="max_length", max_length=77, return_tensors="pt")
    open_clip_ids = open_clip.get_tokenizer("ViT-B-32")(texts)
    real = open_clip_ids != 0  # open_clip pads with 0, transformers with 49407
    assert torch.equal(hf_ids["input_ids"][real], open_clip_ids[real])
    assert int(real.sum()) > 2 * len(texts)


def test_broken_hf_tokenizer_is_refused(tmp_path):
    """transformers 5 builds a 3-token CLIPTokenizer when vocab files are missing; catch it."""
    from transformers import CLIPTokenizer

    folder = save_tiny_hf_clip(tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        os.remove(os.path.join(folder, name))
    CLIPTokenizer().save_pretrained(folder)
    with pytest.raises(MissingWeightsError, match="vocabulary files are missing"):
        ClipRewardLabeler(folder, None, GOALS, BASELINES, 0.0, device="cpu", backend="transformers")


MISSING_WEIGHTS_SCRIPT = textwrap.dedent(
    """
    import json, time
    import open_clip, transformers  # imported first so the timing below is the failure alone
    from vlmrl.reward_labelers import ClipRewardLabeler
    results = {}
    for backend, model, pretrained in [
        ("open_clip", "ViT-B-32", "laion2b_s34b_b79k"),
        ("transformers", "openai/clip-vit-base-patch32", None),
    ]:
        start = time.perf_counter()
        try:
            ClipRewardLabeler(model, pretrained, ["a"], ["b"], 0.0, device="cpu", backend=backend)
            results[backend] = ["loaded", "", 0.0]
        except Exception as error:
            results[backend] = [type(error).__name__, str(error), time.perf_counter() - start]
    print("RESULTS" + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def offline_errors(tmp_path_factory):
    """What a fresh user process without network or cached weights gets from each backend."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path_factory.mktemp("empty_hf_home")))
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", MISSING_WEIGHTS_SCRIPT], env=env, capture_output=True, text=True,
        timeout=120,
    )
    line = [l for l in done.stdout.splitlines() if l.startswith("RESULTS")]
    assert line, done.stderr[-3000:]
    return json.loads(line[0].removeprefix("RESULTS"))


def test_missing_open_clip_weights_say_how_to_provide_them(offline_errors):
    kind, message, seconds = offline_errors["open_clip"]
    assert kind == "MissingWeightsError", message
    assert "open_clip.create_model('ViT-B-32', pretrained='laion2b_s34b_b79k')" in message
    assert "HF_HOME" in message and "pass its path as pretrained=" in message
    assert "huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message
    assert seconds < 15  # no network retries


def test_missing_transformers_weights_say_how_to_provide_them(offline_errors):
    kind, message, seconds = offline_errors["transformers"]
    assert kind == "MissingWeightsError", message
    assert "hf download openai/clip-vit-base-patch32" in message
    assert "snapshot_download('openai/clip-vit-base-patch32')" in message
    assert "pass its path as model=" in message
    assert seconds < 15  # no network retries


def test_missing_local_files_raise_missing_weights(open_clip_files, tmp_path):
    with pytest.raises(MissingWeightsError, match="checkpoint file not found"):
        ClipRewardLabeler(open_clip_files[0], str(tmp_path / "nope.safetensors"), GOALS, BASELINES, 0.0)
    with pytest.raises(MissingWeightsError, match="folder not found"):
        ClipRewardLabeler(str(tmp_path / "no_model"), None, GOALS, BASELINES, 0.0, backend="transformers")


# --- bad inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_alpha_outside_zero_one_is_rejected(open_clip_files, alpha):
    with pytest.raises(ValueError, match="alpha"):
        make_open_clip_labeler(open_clip_files, alpha=alpha)


@pytest.mark.parametrize(
    ("goals", "baselines", "match"),
    [([], BASELINES, "goal_prompts is empty"), (GOALS, [], "baseline_prompts is empty"),
     ("a cart", BASELINES, "single string"), (GOALS, ["ok", ""], "non-empty strings")],
)
def test_bad_prompts_are_rejected(open_clip_files, goals, baselines, match):
    with pytest.raises(ValueError, match=match):
        make_open_clip_labeler(open_clip_files, goals=goals, baselines=baselines)


def test_bad_frames_are_rejected(open_clip_files, frames):
    labeler = make_open_clip_labeler(open_clip_files)
    with pytest.raises(ValueError, match="uint8"):
        labeler.label(frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        labeler.label(frames[0])
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        labeler.encode_images(frames[..., :1])


def test_bad_model_backend_and_options_are_rejected(open_clip_files, hf_dir):
    config_path, checkpoint = open_clip_files
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        ClipRewardLabeler("ViT-Nope-1", None, GOALS, BASELINES, 0.0)
    with pytest.raises(ConfigError, match="unknown pretrained tag"):
        ClipRewardLabeler("ViT-B-32", "no_such_tag", GOALS, BASELINES, 0.0)
    with pytest.raises(ConfigError, match="unknown CLIP backend"):
        ClipRewardLabeler(config_path, checkpoint, GOALS, BASELINES, 0.0, backend="jax")
    with pytest.raises(ConfigError, match="pretrained=None"):
        ClipRewardLabeler(hf_dir, "x", GOALS, BASELINES, 0.0, backend="transformers")
    with pytest.raises(ConfigError, match="batch_size"):
        ClipRewardLabeler(config_path, checkpoint, GOALS, BASELINES, 0.0, batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            ClipRewardLabeler(config_path, checkpoint, GOALS, BASELINES, 0.0, device="cuda")
