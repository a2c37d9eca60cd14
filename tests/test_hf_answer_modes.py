"""HFPreferenceLabeler's ``logprobs`` answer mode on tiny Qwen2-VL checkpoints (tests/tiny_vlm.py):
the answers ``0`` / ``1`` / ``-1`` are scored from one forward pass of the answer turn, no sampling.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmrl.label_store import ANSWERED, canonical_config
from vlmrl.reward_labelers.hf_preference import HFPreferenceLabeler, answer_token_ids, hf_labeler_config, vision_message
from vlmrl.reward_labelers.vlm_config import HFConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_hf_preference import GOAL, frame_pairs, rows_by_pair  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# sha256 of the canonical config JSON of text-mode HF labelers, as written before answer modes
# existed (model "m", defaults): text-mode store keys must never change.
TEXT_CONFIG_SHA256 = {
    True: "775c886a4bf8172588e227918a44c6bcc8891de5563f942770bad08ac4c9899c",
    False: "5e5683504064b3d58ee83a67a1541d43dc004fdc85979ac2dd2bf427d028becb",
}


def logprobs_labeler(model: Path, **kwargs) -> HFPreferenceLabeler:
    return HFPreferenceLabeler(str(model), device="cpu", dtype="float32", answer_mode="logprobs", **kwargs)


def test_store_keys_of_text_mode_are_unchanged_and_logprobs_is_another_question() -> None:
    for two_stage in (True, False):
        text = canonical_config(hf_labeler_config("m", two_stage))
        assert hashlib.sha256(text.encode()).hexdigest() == TEXT_CONFIG_SHA256[two_stage]
        assert canonical_config(hf_labeler_config("m", two_stage, answer_mode="text")) == text
        logprobs = hf_labeler_config("m", two_stage, answer_mode="logprobs")
        assert logprobs["answer_mode"] == "logprobs" and "answer_max_new_tokens" not in logprobs
    assert HFConfig(model="m").store_key_config() == hf_labeler_config("m")
    assert HFConfig(model="m", answer_mode="logprobs").store_key_config()["answer_mode"] == "logprobs"
    with pytest.raises(ValueError, match="answer_mode"):
        hf_labeler_config("m", answer_mode="constrained")


def test_scripted_model_scores_its_answer_with_certainty(scripted_model: tuple[Path, str], tmp_path: Path) -> None:
    path, reply = scripted_model
    expected = 1.0 if reply == "0" else 0.0
    first, second = frame_pairs(3, seed=2)
    for two_stage in (True, False):
        labeler = logprobs_labeler(path, store=tmp_path / f"{two_stage}.sqlite", two_stage=two_stage, batch_size=3,
                                   max_new_tokens=6)
        labels, p_first, p_second = labeler.compare_with_confidence(first, second, GOAL)
        np.testing.assert_array_equal(labels, np.full(3, expected, np.float32))
        sure = p_first if reply == "0" else p_second
        assert (sure > 0.99).all() and ((p_first + p_second) <= 1.0 + 1e-6).all()
        rows = rows_by_pair(labeler.store, first, second)
        assert all(r.status == ANSWERED and r.answer == reply and r.label == expected for r in rows)
        np.testing.assert_allclose([r.p_first for r in rows], p_first, rtol=1e-6)
        # One forward pass for the answers (no generate): two-stage still generates the analysis.
        assert labeler.batches == ([3, 3] if two_stage else [3])
        assert labeler.stats.requests == 3 * (2 if two_stage else 1)


def test_scores_are_the_first_generated_token_distribution(random_model: Path) -> None:
    labeler = logprobs_labeler(random_model, two_stage=False, batch_size=3)
    first, second = frame_pairs(3, seed=6)
    messages = [vision_message(labeler.prompts.single_stage, GOAL) for _ in range(3)]
    from PIL import Image

    images = [[Image.fromarray(a), Image.fromarray(b)] for a, b in zip(first, second)]
    scored = labeler._score_answers(messages, images)
    # What generate() sees at its first step, read through its own logits output.
    inputs = labeler._model_inputs(messages, images)
    with torch.inference_mode():
        out = labeler.model.generate(**inputs, max_new_tokens=1, do_sample=False, temperature=None, top_p=None,
                                     top_k=None, output_logits=True, return_dict_in_generate=True,
                                     pad_token_id=labeler.processor.tokenizer.pad_token_id)
    reference = torch.softmax(out.logits[0].float(), dim=-1)[:, list(labeler.answer_token_ids)].double().numpy()
    np.testing.assert_allclose(scored, reference, rtol=1e-4, atol=1e-7)
    assert scored.shape == (3, 3) and (scored > 0).all() and (scored.sum(axis=1) < 1).all()


def test_random_model_probabilities_match_one_pair_at_a_time(random_model: Path, tmp_path: Path) -> None:
    first, second = frame_pairs(3, seed=7)
    results = {}
    for batch_size in (1, 3):
        labeler = logprobs_labeler(random_model, store=tmp_path / f"b{batch_size}.sqlite", batch_size=batch_size,
                                   batch_wait_s=2.0, max_new_tokens=8)
        results[batch_size] = labeler.compare_with_confidence(first, second, GOAL)
        assert max(labeler.batches) == batch_size
        labels, p_first, p_second = results[batch_size]
        # The label is the likelier side, never made up: finite probabilities on every pair.
        assert np.isfinite(p_first).all() and np.isfinite(p_second).all()
        for label, p1, p2 in zip(labels, p_first, p_second):
            assert (np.isnan(label) and max(p1, p2) <= 1 - p1 - p2) or label == float(p1 > p2)
    # Left padding must not change any probability.
    for one, batched in zip(results[1], results[3]):
        np.testing.assert_allclose(batched, one, rtol=1e-4, equal_nan=True)


def test_a_tokenizer_whose_answers_share_a_first_token_still_serves_text_mode(random_model: Path, monkeypatch) -> None:
    from vlmrl.reward_labelers import hf_preference

    def shared_first_token(tokenizer):
        raise ValueError("the answers start with the same token ids")

    monkeypatch.setattr(hf_preference, "answer_token_ids", shared_first_token)
    text = HFPreferenceLabeler(str(random_model), device="cpu", dtype="float32", two_stage=False)
    assert text.answer_token_ids is None
    with pytest.raises(ValueError, match="same token"):
        logprobs_labeler(random_model, two_stage=False)


def test_answer_token_ids_are_the_first_tokens(random_model: Path) -> None:
    labeler = logprobs_labeler(random_model, two_stage=False)
    tokenizer = labeler.processor.tokenizer
    assert labeler.answer_token_ids == answer_token_ids(tokenizer)
    assert [tokenizer.decode([i]) for i in labeler.answer_token_ids] == ["0", "1", "-"]  # byte-level: "-1" is 2
    assert labeler.preflight() is None  # nothing to check for a local model
    assert "answer_mode='logprobs'" in repr(labeler)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_logprobs_mode_on_the_gpu_in_half_precision(scripted_model: tuple[Path, str]) -> None:
    path, reply = scripted_model
    labeler = HFPreferenceLabeler(str(path), answer_mode="logprobs", two_stage=True, batch_size=4, max_new_tokens=4)
    assert str(labeler.device) == "cuda" and labeler.model.dtype in (torch.bfloat16, torch.float16)
    labels, p_first, p_second = labeler.compare_with_confidence(*frame_pairs(4, seed=8), GOAL)
    np.testing.assert_array_equal(labels, np.full(4, 1.0 if reply == "0" else 0.0, np.float32))
    assert ((p_first if reply == "0" else p_second) > 0.99).all()
