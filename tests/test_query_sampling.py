"""Query sampling (agents/query_sampling.py): uniform as the learner draws, disagreement, entropy."""

import math

import numpy as np
import pytest

from vlmrl.agents.preference_config import OnlinePreferenceConfig
from vlmrl.agents.preference_rounds import PreferenceLearner
from vlmrl.agents.query_sampling import (
    disagreement_scores,
    entropy_scores,
    member_preferences,
    select_pairs,
    uniform_pairs,
)
from vlmrl.reward_net_config import RewardEnsembleConfig
from vlmrl.reward_nets import RewardModel


class NoAnswers:
    """A PairAnswers that is never asked (the test calls _draw_round only)."""

    def submit(self, query) -> None:  # pragma: no cover - not called
        raise AssertionError("not asked")

    def poll(self) -> None:  # pragma: no cover - not called
        return None


@pytest.mark.parametrize("n_envs", [1, 3])
def test_uniform_reproduces_the_learners_draws(n_envs: int) -> None:
    """The pairs the learner's _draw_round draws are select_pairs("uniform") on the same generator."""
    config = OnlinePreferenceConfig(
        pairs_per_round=40, budget=1000, frame_buffer=60, net=RewardEnsembleConfig(kind="mlp", ensemble_size=1)
    )
    model = RewardModel(config.net.net_config(obs_dim=1), device="cpu")
    learner = PreferenceLearner(config, model, n_envs=n_envs, answers=NoAnswers(), seed=7)
    steps = 60 // n_envs
    for t in range(steps):
        # Each step's net input is its chronological flat index, so the drawn pairs can be read back.
        inputs = (t * n_envs + np.arange(n_envs, dtype=np.float32))[:, None]
        ends = np.zeros(n_envs, dtype=bool)
        learner.add_step(inputs, None, np.zeros(n_envs, np.float32), ends, ends)

    query = learner._draw_round(env_steps=steps * n_envs)

    candidates = np.arange(steps * n_envs)
    first, second = select_pairs("uniform", candidates, 40, np.random.default_rng(7))
    np.testing.assert_array_equal(query.first_inputs[:, 0].astype(int), first)
    np.testing.assert_array_equal(query.second_inputs[:, 0].astype(int), second)
    # And the learner's generator is left where select_pairs leaves it.
    rng = np.random.default_rng(7)
    uniform_pairs(candidates, 40, rng)
    assert learner.rng.bit_generator.state == rng.bit_generator.state


@pytest.mark.parametrize("method", ["uniform", "disagreement", "entropy"])
def test_shapes_and_no_self_pairs(method: str) -> None:
    rng = np.random.default_rng(0)
    candidates = np.array([3, 8, 11])  # few candidates: self-pairs would be drawn often
    table = rng.normal(size=(3, 20))

    first, second = select_pairs(method, candidates, 25, rng, member_returns=lambda items: table[:, items])

    assert first.shape == second.shape == (25,)
    assert np.all(first != second)
    assert set(first) | set(second) <= set(candidates.tolist())


@pytest.mark.parametrize("method", ["disagreement", "entropy"])
def test_without_a_model_the_informed_methods_draw_uniformly(method: str) -> None:
    candidates = np.arange(100)
    first, second = select_pairs(method, candidates, 10, np.random.default_rng(3), member_returns=None)
    expected = uniform_pairs(candidates, 10, np.random.default_rng(3))
    np.testing.assert_array_equal(first, expected[0])
    np.testing.assert_array_equal(second, expected[1])


def test_disagreement_picks_the_pairs_the_ensemble_disagrees_on() -> None:
    """Items 0-9 are "contested": member 0 thinks they are great, member 1 terrible. A pair with a
    contested side gets probabilities near 1 from one member and near 0 from the other (std ~0.5);
    pairs of two uncontested items get the same probability from both members (std 0)."""
    n_items = 100
    returns = np.zeros((2, n_items))
    returns[:, 10:] = np.linspace(-1.0, 1.0, n_items - 10)  # both members agree on items 10..99
    returns[0, :10] = 8.0
    returns[1, :10] = -8.0

    first, second = select_pairs(
        "disagreement", np.arange(n_items), 5, np.random.default_rng(1), member_returns=lambda items: returns[:, items],
        candidate_factor=20,
    )

    contested = (first < 10) ^ (second < 10)  # exactly one contested side: the largest disagreement
    assert contested.all(), (first, second)
    probabilities = member_preferences(returns[:, first], returns[:, second])
    assert disagreement_scores(probabilities).min() > 0.45


def test_disagreement_keeps_the_top_scoring_candidates() -> None:
    """The kept pairs are exactly the n best of the candidate set, by the documented score."""
    rng = np.random.default_rng(5)
    returns = rng.normal(scale=2.0, size=(3, 50))
    candidates = np.arange(50)

    first, second = select_pairs("disagreement", candidates, 8, np.random.default_rng(9), lambda items: returns[:, items], candidate_factor=10)

    all_first, all_second = uniform_pairs(candidates, 80, np.random.default_rng(9))
    scores = disagreement_scores(member_preferences(returns[:, all_first], returns[:, all_second]))
    kept = disagreement_scores(member_preferences(returns[:, first], returns[:, second]))
    assert kept.min() >= np.sort(scores)[-8] - 1e-12


def test_entropy_picks_near_ties() -> None:
    """All members agree; the pairs kept are those whose returns are closest (P ~ 0.5)."""
    values = np.arange(60, dtype=np.float64) * 0.5  # distinct, evenly spaced returns
    returns = np.stack([values, values, values])

    first, second = select_pairs(
        "entropy", np.arange(60), 5, np.random.default_rng(2), member_returns=lambda items: returns[:, items],
        candidate_factor=40,
    )

    gaps = np.abs(values[first] - values[second])
    assert gaps.max() <= 1.0, gaps  # neighbours or next-but-one: P within sigmoid(+-1)
    all_first, all_second = uniform_pairs(np.arange(60), 200, np.random.default_rng(2))
    all_gaps = np.sort(np.abs(values[all_first] - values[all_second]))
    assert gaps.max() <= all_gaps[4]


def test_entropy_is_per_member_and_disagreement_is_across_members() -> None:
    """B-Pref's definitions: confident members that contradict each other are a disagreement,
    not an entropy, case; members all at 0.5 are the reverse."""
    contradicting = np.array([[0.999], [0.001]])
    unsure = np.array([[0.5], [0.5]])
    assert entropy_scores(contradicting)[0] < 0.01
    assert disagreement_scores(contradicting)[0] == pytest.approx(0.499)
    assert entropy_scores(unsure)[0] == pytest.approx(math.log(2))
    assert disagreement_scores(unsure)[0] == 0.0


def test_a_pair_drawn_twice_is_asked_once() -> None:
    """With 3 items there are only 3 distinct pairs; asking for 3 returns each once."""
    returns = np.array([[0.0, 5.0, -5.0], [0.0, -5.0, 5.0]])

    first, second = select_pairs("disagreement", np.arange(3), 3, np.random.default_rng(0), lambda items: returns[:, items])

    pairs = {tuple(sorted(p)) for p in zip(first.tolist(), second.tolist())}
    assert pairs == {(0, 1), (0, 2), (1, 2)}


def test_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown sampling method"):
        select_pairs("kcenter", np.arange(5), 2, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 candidates"):
        select_pairs("uniform", np.array([4]), 2, rng)
    with pytest.raises(ValueError, match="expected \\[members, "):
        select_pairs("entropy", np.arange(5), 2, rng, member_returns=lambda items: np.zeros(len(items)))
