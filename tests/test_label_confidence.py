"""Confidence is used, not just stored: soft labels and a confidence threshold for the
Bradley-Terry fit (``preference_fit_labels``, ``preference.label_confidence`` /
``preference.min_confidence``), fed by ``compare_with_confidence``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openai_test_server import OpenAITestServer
from test_openai_preference import GOAL, frames
from vlmrl.agents.preference_config import OnlinePreferenceConfig, PreferenceLearningConfig
from vlmrl.config_loading import build_dataclass
from vlmrl.errors import ConfigError
from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler
from vlmrl.reward_learning import fit_bradley_terry, preference_fit_labels
from vlmrl.reward_learning_config import FitConfig
from vlmrl.reward_nets import RewardModel, RewardNetConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
nan = math.nan


def test_hard_mode_keeps_labels_and_soft_mode_uses_the_probabilities():
    labels = np.array([1.0, 0.0, 1.0, nan, 0.5, 1.0], dtype=np.float32)
    p_first = np.array([0.9, 0.2, nan, 0.3, nan, 0.6])
    p_second = np.array([0.05, 0.7, nan, 0.3, nan, 0.2])
    hard = preference_fit_labels(labels, p_first, p_second)
    np.testing.assert_array_equal(hard, labels.astype(np.float64))
    assert hard.dtype == np.float64 and hard is not labels
    soft = preference_fit_labels(labels, p_first, p_second, mode="soft")
    np.testing.assert_allclose(soft, [0.9 / 0.95, 0.2 / 0.9, 1.0, nan, 0.5, 0.75])
    # An unsure answer (NaN label) never becomes a label, whatever its probabilities say.
    assert np.isnan(soft[3])
    # No probabilities at all: the labels as given (the scripted teacher, text answers).
    np.testing.assert_array_equal(preference_fit_labels(labels, mode="soft"), labels.astype(np.float64))


def test_min_confidence_drops_only_unconfident_answers_with_probabilities():
    labels = np.array([1.0, 0.0, 1.0, 1.0])
    p_first = np.array([0.95, 0.3, 0.55, nan])
    p_second = np.array([0.02, 0.65, 0.40, nan])
    kept = preference_fit_labels(labels, p_first, p_second, mode="hard", min_confidence=0.6)
    np.testing.assert_array_equal(kept, [1.0, 0.0, nan, 1.0])  # 0.55 < 0.6 dropped; no probabilities kept
    soft = preference_fit_labels(labels, p_first, p_second, mode="soft", min_confidence=0.7)
    np.testing.assert_allclose(soft, [0.95 / 0.97, nan, nan, 1.0])
    assert np.array_equal(preference_fit_labels(labels, p_first, p_second, min_confidence=0.0), labels)


def test_preference_fit_labels_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        preference_fit_labels(np.ones(2), mode="fuzzy")
    with pytest.raises(ValueError, match="min_confidence"):
        preference_fit_labels(np.ones(2), min_confidence=1.5)
    with pytest.raises(ValueError, match="2 values"):
        preference_fit_labels(np.ones(2), np.ones(3), np.zeros(3))


def test_bradley_terry_learns_the_odds_of_a_soft_label():
    """One pair of states labelled 0.8: the cross-entropy optimum is r1 - r2 = logit(0.8) = log 4,
    where a hard label 1.0 would push the difference as far as the net can go."""
    states = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    first, second = np.repeat(states[:1], 64, axis=0), np.repeat(states[1:], 64, axis=0)
    differences = {}
    for label in (0.8, 1.0):
        torch.manual_seed(0)
        model = RewardModel(RewardNetConfig(kind="mlp", obs_dim=2, hidden_size=16), ensemble_size=1, device="cpu")
        result = fit_bradley_terry(model, first, second, np.full(64, label),
                                   FitConfig(epochs=60, batch_size=64, lr=3e-2, heldout_fraction=0.0))
        reward = model.predict(states)
        differences[label] = float(reward[0] - reward[1])
        assert result.n_train == 64 and result.train_accuracy == 1.0
    assert differences[0.8] == pytest.approx(math.log(4.0), abs=0.1)
    assert differences[1.0] > differences[0.8] + 1.0


def test_config_keys_are_checked_like_every_other_key():
    built = build_dataclass(OnlinePreferenceConfig, {"label_confidence": "soft", "min_confidence": 0.75}, "cfg.yaml",
                            "preference.")
    assert (built.label_confidence, built.min_confidence) == ("soft", 0.75)
    defaults = PreferenceLearningConfig()
    assert (defaults.label_confidence, defaults.min_confidence) == ("hard", 0.0)  # today's behaviour
    with pytest.raises(ConfigError, match="preference.label_confidence"):
        build_dataclass(PreferenceLearningConfig, {"label_confidence": "fuzzy"}, "cfg.yaml", "preference.")
    with pytest.raises(ConfigError, match="min_confidence must be in"):
        build_dataclass(PreferenceLearningConfig, {"min_confidence": 1.2}, "cfg.yaml", "preference.")


def test_labels_and_probabilities_from_a_logprobs_labeler_feed_the_fit(tmp_path):
    first, second = frames([200, 100, 30, 128]), frames([20, 106, 220, 128], seed=1)
    with OpenAITestServer(model="test-vlm") as server:
        labeler = OpenAIPreferenceLabeler(server.base_url, "test-vlm", store=tmp_path / "labels.sqlite",
                                          answer_mode="logprobs", max_concurrency=2)
        labels, p_first, p_second = labeler.compare_with_confidence(first, second, GOAL)
    assert labels.shape == p_first.shape == p_second.shape == (4,)
    soft = preference_fit_labels(labels, p_first, p_second, mode="soft", min_confidence=0.6)
    assert soft[0] > 0.99 and soft[2] < 0.01  # confident answers, soft labels near 1 and 0
    assert np.isnan(soft[1])  # 6 levels apart: max probability about 0.45, dropped
    assert np.isnan(soft[3])  # unsure: no label before, none after
