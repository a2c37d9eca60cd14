"""The B-Pref scripted teacher: rational labels, noise rates, ties, skips and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from vlmrl.reward_labelers.oracle_teacher import TIE_LABEL, OracleTeacher


def random_returns(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), rng.normal(size=n)


def test_perfect_teacher_agrees_with_the_sign_of_the_return_difference() -> None:
    r1, r2 = random_returns(5000)
    r1[:10] = r2[:10]  # exact ties
    labels = OracleTeacher().compare(None, None, "any goal", true_rewards=(r1, r2))
    assert labels.dtype == np.float32 and labels.shape == (5000,)
    expected = np.where(r1 > r2, 1.0, np.where(r1 < r2, 0.0, TIE_LABEL))
    np.testing.assert_array_equal(labels, expected)


def test_frames_are_optional_but_their_count_must_match() -> None:
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    labels = OracleTeacher().compare(frames, frames, "goal", true_rewards=([1.0, 0.0, 2.0], [0.0, 1.0, 1.0]))
    np.testing.assert_array_equal(labels, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="2 items but true_rewards has 3"):
        OracleTeacher().compare(frames[:2], frames, "goal", true_rewards=([1.0, 0.0, 2.0], [0.0, 1.0, 1.0]))


def test_missing_true_rewards_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"needs the true rewards.*true_rewards=\(r1, r2\)"):
        OracleTeacher().compare(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 4, 3), np.uint8), "goal")
    with pytest.raises(ValueError, match="equal shapes"):
        OracleTeacher().compare(None, None, "goal", true_rewards=(np.zeros(3), np.zeros(4)))


def test_mistakes_flip_the_requested_fraction() -> None:
    r1, r2 = random_returns(20_000)
    truth = (r1 > r2).astype(np.float32)
    labels = OracleTeacher(eps_mistake=0.2, seed=3).compare(None, None, "goal", true_rewards=(r1, r2))
    flipped = np.mean(labels != truth)
    # Binomial std at n=20k is 0.003; the seed makes the draw fixed, the margin is ~7 std.
    assert abs(flipped - 0.2) < 0.02
    assert set(np.unique(labels)) <= {0.0, 1.0}


def test_bradley_terry_agreement_matches_its_probability() -> None:
    r1, r2 = random_returns(20_000, seed=2)
    beta = 2.0
    labels = OracleTeacher(beta=beta, seed=5).compare(None, None, "goal", true_rewards=(r1, r2))
    prob_first = 1.0 / (1.0 + np.exp(-beta * (r1 - r2)))
    # On average, the label is the BT probability that the first is preferred...
    assert abs(labels.mean() - prob_first.mean()) < 0.02
    # ...and the agreement with the rational label is the mean of max(p, 1 - p).
    agreement = np.mean(labels == (r1 > r2))
    assert abs(agreement - np.maximum(prob_first, 1 - prob_first).mean()) < 0.02
    # A less rational teacher agrees less often.
    noisy = OracleTeacher(beta=0.5, seed=5).compare(None, None, "goal", true_rewards=(r1, r2))
    assert np.mean(noisy == (r1 > r2)) < agreement - 0.1


def test_bradley_terry_on_one_repeated_pair_hits_its_probability() -> None:
    n = 20_000
    r1, r2 = np.full(n, 1.0), np.full(n, 0.5)  # p(first) = sigmoid(2 * 0.5) = 0.731
    labels = OracleTeacher(beta=2.0, seed=0).compare(None, None, "goal", true_rewards=(r1, r2))
    assert abs(labels.mean() - 1.0 / (1.0 + np.exp(-1.0))) < 0.015


def test_close_returns_are_ties_and_ties_are_never_flipped() -> None:
    r1 = np.array([0.0, 0.0, 0.0, 0.0, 10.0])
    r2 = np.array([0.5, 0.9, 1.5, 10.0, 0.0])
    # Batch range is 10: eps_equal 0.1 ties differences below 1.0.
    labels = OracleTeacher(eps_equal=0.1).compare(None, None, "goal", true_rewards=(r1, r2))
    np.testing.assert_array_equal(labels, [TIE_LABEL, TIE_LABEL, 0.0, 0.0, 1.0])
    always_wrong = OracleTeacher(eps_equal=0.1, eps_mistake=1.0).compare(None, None, "goal", true_rewards=(r1, r2))
    np.testing.assert_array_equal(always_wrong, [TIE_LABEL, TIE_LABEL, 1.0, 1.0, 0.0])
    # B-Pref's absolute rule with an outside margin.
    scaled = OracleTeacher(eps_equal=0.5, return_scale=2.0).compare(None, None, "goal", true_rewards=(r1, r2))
    np.testing.assert_array_equal(scaled, [TIE_LABEL, TIE_LABEL, 0.0, 0.0, 1.0])


def test_pairs_where_both_are_bad_are_skipped() -> None:
    r1 = np.array([0.0, 1.0, 2.0, 9.0, 0.5])
    r2 = np.array([0.2, 0.1, 8.0, 3.0, 0.4])
    # The 0.3 quantile of the ten returns is 0.34: pairs whose better side is below it are skipped.
    labels = OracleTeacher(eps_skip=0.3).compare(None, None, "goal", true_rewards=(r1, r2))
    assert np.isnan(labels[0])
    np.testing.assert_array_equal(labels[1:], [1.0, 0.0, 1.0, 1.0])
    absolute = OracleTeacher(eps_skip=0.5, return_scale=2.0).compare(None, None, "goal", true_rewards=(r1, r2))
    np.testing.assert_array_equal(np.isnan(absolute), [True, False, False, False, True])


def test_segments_are_discounted_towards_the_last_step() -> None:
    # Same undiscounted return; the myopic teacher prefers the segment whose reward comes last.
    early = np.array([[1.0, 0.0, 0.0]])
    late = np.array([[0.0, 0.0, 1.0]])
    assert OracleTeacher(gamma=0.5).compare(None, None, "goal", true_rewards=(early, late))[0] == 0.0
    assert OracleTeacher(gamma=0.5).compare(None, None, "goal", true_rewards=(late, early))[0] == 1.0
    # Without discount the two are exactly equal: a tie.
    assert OracleTeacher(gamma=1.0).compare(None, None, "goal", true_rewards=(early, late))[0] == TIE_LABEL
    # Segment returns are sums: [1, 1] beats [0, 1.5].
    assert OracleTeacher().compare(None, None, "goal", true_rewards=([[1.0, 1.0]], [[0.0, 1.5]]))[0] == 1.0


def test_deterministic_given_the_seed() -> None:
    r1, r2 = random_returns(500)

    def labels(seed: int) -> np.ndarray:
        teacher = OracleTeacher(beta=1.0, eps_mistake=0.1, seed=seed)
        return np.concatenate([teacher.compare(None, None, "g", true_rewards=(r1, r2)) for _ in range(2)])

    np.testing.assert_array_equal(labels(7), labels(7))
    assert not np.array_equal(labels(7), labels(8))


@pytest.mark.parametrize(
    "kwargs",
    [{"beta": 0.0}, {"gamma": 0.0}, {"gamma": 1.5}, {"eps_mistake": -0.1}, {"eps_skip": 2.0}, {"return_scale": 0.0}],
)
def test_rejects_out_of_range_knobs(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        OracleTeacher(**kwargs)


def test_the_teacher_config_builds_the_teacher_with_every_knob() -> None:
    from vlmrl.reward_labelers.oracle_config import TeacherConfig

    config = TeacherConfig(beta=2.0, gamma=0.9, eps_mistake=0.1, eps_equal=0.05, eps_skip=0.2, return_scale=3.0)
    teacher = config.create(seed=4)
    assert repr(teacher) == repr(OracleTeacher(beta=2.0, gamma=0.9, eps_mistake=0.1, eps_skip=0.2, eps_equal=0.05,
                                               return_scale=3.0, seed=4))
    r1, r2 = random_returns(200)
    segments = (np.stack([r1, r2], axis=1), np.stack([r2, r1], axis=1))
    direct = OracleTeacher(beta=2.0, gamma=0.9, eps_mistake=0.1, eps_skip=0.2, eps_equal=0.05, return_scale=3.0, seed=4)
    np.testing.assert_array_equal(teacher.compare(None, None, true_rewards=segments),
                                  direct.compare(None, None, true_rewards=segments))
