"""HFPreferenceLabeler against tiny Qwen2-VL checkpoints saved to disk and loaded by path.

Pretrained weights cannot be downloaded here, so the checkpoints are built by tests/tiny_vlm.py:
the real architecture, processor, tokenizer and chat template, with random weights (random text
out) or hand-set weights that always reply one known character.
"""

from __future__ import annotations

import math
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hub_constants

from vlmrl.errors import MissingWeightsError, UserError
from vlmrl.label_store import ANSWERED, UNPARSEABLE, LabelStore, frame_hash
from vlmrl.reward_labelers.hf_preference import (
    HFPreferenceLabeler,
    _Job,
    _PairBatcher,
    text_message,
    vision_message,
)
from vlmrl.reward_labelers.preference import PairOutcome
from vlmrl.reward_labelers.prompts import ANALYSIS_PROMPT, parse_answer

sys.path.insert(0, str(Path(__file__).parent))

GOAL = "to balance the brown pole on the black cart to be upright"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cpu_labeler(model: Path, **kwargs) -> HFPreferenceLabeler:
    """The random model's exact text depends on the arithmetic: pin it to CPU float32."""
    return HFPreferenceLabeler(str(model), device="cpu", dtype="float32", **kwargs)


def frame_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 36, 44, 3), dtype=np.uint8),
        rng.integers(0, 256, (n, 36, 44, 3), dtype=np.uint8),
    )


def rows_by_pair(store: LabelStore, first: np.ndarray, second: np.ndarray) -> list:
    rows = {(r.first_hash, r.second_hash): r for r in store.iter_rows()}
    return [rows[(frame_hash(a), frame_hash(b))] for a, b in zip(first, second)]


def test_vision_message_puts_both_images_in_one_message_in_order() -> None:
    message = vision_message(ANALYSIS_PROMPT, "{weird} goal")
    assert len(message) == 1 and message[0]["role"] == "user"
    parts = message[0]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text", "image", "text"]
    assert parts[0]["text"].endswith("Image 1:\n") and parts[2]["text"] == "\nImage 2:\n"
    assert "The goal is {weird} goal." in parts[4]["text"]


def test_random_model_two_stage_batches_and_never_invents_labels(random_model: Path, tmp_path: Path) -> None:
    first, second = frame_pairs(4)
    labeler = cpu_labeler(
        random_model,
        store=tmp_path / "labels.sqlite",
        batch_size=2,
        batch_wait_s=2.0,  # only a partial batch would wait; both batches here are full
        max_new_tokens=8,
        answer_max_new_tokens=6,
    )
    labels = labeler.compare(first, second, GOAL)

    assert labels.dtype == np.float32 and labels.shape == (4,)
    # Two full batches, each an analysis turn and a labelling turn.
    assert labeler.batches == [2, 2, 2, 2]
    rows = rows_by_pair(labeler.store, first, second)
    for label, row in zip(labels, rows):
        # Generation really ran: both turns' raw text is kept...
        assert isinstance(row.analysis, str) and row.analysis.strip()
        assert isinstance(row.answer, str) and row.answer
        # ...and the label is exactly what the strict parser makes of the answer, nothing guessed.
        parsed = parse_answer(row.answer).label
        assert (math.isnan(label) and math.isnan(parsed)) or label == parsed
        assert row.attempts == 2
    # Random weights never produce a bare 0 / 1 / -1 line with this seed: all unparseable.
    assert np.isnan(labels).all()
    assert {row.status for row in rows} == {UNPARSEABLE}
    # The images reach the model: different pairs get different analyses.
    assert len({row.analysis for row in rows}) > 1
    assert labeler.stats.asked == 4 and labeler.stats.unparseable == 4 and labeler.stats.requests == 8

    # A rerun reads the store and generates nothing.
    again = labeler.compare(first, second, GOAL)
    assert np.isnan(again).all()
    assert labeler.stats.cached == 4 and labeler.batches == [2, 2, 2, 2]


def test_left_padded_batches_answer_like_one_pair_at_a_time(random_model: Path, tmp_path: Path) -> None:
    first, second = frame_pairs(3, seed=1)
    answers = {}
    for batch_size in (1, 3):
        labeler = cpu_labeler(
            random_model,
            store=tmp_path / f"batch{batch_size}.sqlite",
            batch_size=batch_size,
            batch_wait_s=2.0,
            max_new_tokens=10,
            answer_max_new_tokens=6,
        )
        labeler.compare(first, second, GOAL)
        assert max(labeler.batches) == batch_size
        answers[batch_size] = [(r.analysis, r.answer) for r in rows_by_pair(labeler.store, first, second)]
    # The labelling prompts quote analyses of different token lengths, so that batch is
    # left-padded: padding must not change any answer.
    prompt_lengths = {
        len(labeler.processor.apply_chat_template(
            text_message(labeler.prompts.labelling_question(GOAL, analysis)),
            add_generation_prompt=True,
        ))
        for analysis, _ in answers[1]
    }
    assert len(prompt_lengths) > 1
    assert answers[3] == answers[1]


def test_batcher_groups_concurrent_asks_and_hands_errors_to_every_asker() -> None:
    sizes: list[int] = []

    def echo(jobs: list[_Job]) -> list[PairOutcome]:
        sizes.append(len(jobs))
        return [PairOutcome(ANSWERED, label=float(job.first[0, 0, 0]), requests=1) for job in jobs]

    batcher = _PairBatcher(echo, max_batch=3, wait_s=2.0)
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(6)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        labels = list(pool.map(lambda f: batcher.ask(f, f, "g").label, frames))
    assert labels == [float(i) for i in range(6)]  # every asker gets its own pair's outcome
    assert sizes == [3, 3]

    def broken(jobs: list[_Job]) -> list[PairOutcome]:
        raise RuntimeError("CUDA error: device-side assert")

    batcher = _PairBatcher(broken, max_batch=2, wait_s=2.0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(batcher.ask, f, f, "g") for f in frames[:2]]
        for future in futures:
            with pytest.raises(RuntimeError, match="device-side assert"):
                future.result(timeout=30)


def test_scripted_model_answers_map_to_labels(scripted_model: tuple[Path, str], tmp_path: Path) -> None:
    path, reply = scripted_model
    expected = 1.0 if reply == "0" else 0.0  # answer "0" = image 1 better = first preferred
    first, second = frame_pairs(3, seed=2)
    for two_stage in (True, False):
        labeler = HFPreferenceLabeler(
            str(path), store=tmp_path / f"{two_stage}.sqlite", two_stage=two_stage, batch_size=3, max_new_tokens=6
        )
        labels = labeler.compare(first, second, GOAL, true_rewards=(np.ones(3), np.zeros(3)))
        np.testing.assert_array_equal(labels, np.full(3, expected, np.float32))
        rows = rows_by_pair(labeler.store, first, second)
        assert all(r.status == ANSWERED and r.answer == reply and r.label == expected for r in rows)
        assert all(r.true_reward_first == 1.0 and r.true_reward_second == 0.0 for r in rows)
        if two_stage:
            assert labeler.batches == [3, 3] and all(r.analysis == reply for r in rows)
        else:
            assert labeler.batches == [3] and all(r.analysis is None for r in rows)


def test_identical_pairs_are_never_asked(scripted_model: tuple[Path, str]) -> None:
    path, _ = scripted_model
    first, second = frame_pairs(3, seed=3)
    second[1] = first[1]
    labeler = HFPreferenceLabeler(str(path), two_stage=False, batch_size=4, max_new_tokens=4)
    labels = labeler.compare(first, second, GOAL)
    assert np.isnan(labels[1]) and not np.isnan(labels[[0, 2]]).any()
    assert labeler.stats.skipped_identical == 1 and labeler.batches == [2]
    if not torch.cuda.is_available():  # device="auto" without a GPU: CPU in float32
        assert str(labeler.device) == "cpu" and labeler.model.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_device_generates_on_the_gpu_in_half_precision(scripted_model: tuple[Path, str]) -> None:
    path, reply = scripted_model
    labeler = HFPreferenceLabeler(str(path), two_stage=True, batch_size=4, max_new_tokens=4)
    assert str(labeler.device) == "cuda" and labeler.model.dtype in (torch.bfloat16, torch.float16)
    assert next(labeler.model.parameters()).is_cuda
    first, second = frame_pairs(4, seed=4)
    labels = labeler.compare(first, second, GOAL)
    np.testing.assert_array_equal(labels, np.full(4, 1.0 if reply == "0" else 0.0, np.float32))


def test_missing_local_folder_says_how_to_provide_weights(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="no model folder") as info:
        HFPreferenceLabeler(str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "hf download" in message and "snapshot_download" in message
    assert isinstance(info.value, UserError)

    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="holds no config.json"):
        HFPreferenceLabeler(str(tmp_path / "empty"))


def test_uncached_hub_id_offline_is_a_missing_weights_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingWeightsError) as info:
        HFPreferenceLabeler("Qwen/Qwen2.5-VL-3B-Instruct", cache_dir=str(tmp_path / "hf-cache"))
    message = str(info.value)
    assert "'Qwen/Qwen2.5-VL-3B-Instruct'" in message and "not in the Hugging Face cache" in message
    assert "hf download Qwen/Qwen2.5-VL-3B-Instruct" in message


def test_hub_id_loads_from_the_hf_cache_offline(
    scripted_model: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, reply = scripted_model
    # The layout `hf download` leaves in the cache: refs/main names the snapshot folder.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-cache" / "models--vlmrl-test--tiny-qwen2-vl"
    shutil.copytree(path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    labeler = HFPreferenceLabeler(
        "vlmrl-test/tiny-qwen2-vl", cache_dir=str(tmp_path / "hf-cache"), two_stage=False, max_new_tokens=4
    )
    assert labeler.config["model"] == "vlmrl-test/tiny-qwen2-vl"
    labels = labeler.compare(*frame_pairs(2, seed=5), GOAL)
    np.testing.assert_array_equal(labels, np.full(2, 1.0 if reply == "0" else 0.0, np.float32))


def test_prompts_without_placeholders_are_rejected_before_loading() -> None:
    with pytest.raises(ValueError, match="analysis_prompt lacks"):
        HFPreferenceLabeler("never-loaded", analysis_prompt="Which image is better for {goal}?")
    with pytest.raises(ValueError, match="labelling_prompt lacks"):
        HFPreferenceLabeler("never-loaded", labelling_prompt="Answer 0 or 1.")
