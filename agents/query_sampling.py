"""Which pairs a preference round asks about: uniform, ensemble disagreement or entropy (PEBBLE / B-Pref).

Every method returns ``n`` pairs ``(first[i], second[i])`` of candidate items (flat step indices
of the learner's ring buffer, or any other integer ids), never an item paired with itself::

    uniform:       n pairs drawn uniformly (with replacement) from the candidates
    disagreement:  n * candidate_factor uniform pairs -> score each by how much the ensemble
    entropy:       members disagree / how unsure they are -> keep the n best-scoring pairs

Scores, per candidate pair, from the per-member returns ``R_m`` of both sides (a segment's
summed reward, or a single step's reward when segments are one step long)::

    p_m          = sigmoid(R_m(first) - R_m(second))      member m's P(first preferred), Bradley-Terry
    disagreement = std_m(p_m)                             (population std, ddof 0)
    entropy      = mean_m(-p_m log p_m - (1 - p_m) log(1 - p_m))

Both follow B-Pref's ``reward_model.py`` (Lee et al. 2021, github.com/rll-research/BPref, the
code PEBBLE and RL-VLM-F run on): ``disagreement_sampling`` ranks by the std over members of
each member's softmax probability, ``entropy_sampling`` by the mean over members of each
member's entropy; both draw ``mb_size * large_batch`` uniform candidates first (``large_batch``
is 10 in their scripts, ``candidate_factor`` here). The entropy is per member, then averaged: it
singles out pairs every member finds close (near-ties), while pairs on which confident members
contradict each other are what ``disagreement`` finds.

Before the reward model's first fit there are no member returns; both then fall back to
``uniform`` (B-Pref's first round after unsupervised exploration is uniform too).

Differences from B-Pref, and why:

- Self-pairs are redrawn (B-Pref allows them); an item compared with itself teaches nothing.
- Among the candidates, a pair that was drawn twice (in either order) is ranked once: the
  second copy would spend budget on an identical question. Duplicates are used only when fewer
  than ``n`` distinct pairs were drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np

SamplingMethod = Literal["uniform", "disagreement", "entropy"]
SAMPLING_METHODS: tuple[str, ...] = get_args(SamplingMethod)

# Clips probabilities away from 0 and 1 so the entropy's logarithms stay finite.
PROBABILITY_EPS = 1e-12


def uniform_pairs(candidates: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs drawn uniformly with replacement; a side equal to its partner is redrawn.

    The draws are exactly those :meth:`~vlmrl.agents.preference_rounds.PreferenceLearner._draw_round`
    made before query sampling existed (all firsts, then all seconds, then redraws of the
    seconds that equal their firsts), so a seeded uniform run reproduces the same pairs.

    Args:
        candidates: int ``[C]`` distinct item ids, ``C >= 2``.
        n: pairs to draw.
        rng: the learner's generator (advanced by the draws).

    Returns:
        (first, second): int ``[n]`` each, ``first[i] != second[i]``.
    """
    if len(candidates) < 2:
        raise ValueError(f"need at least 2 candidates to draw pairs, got {len(candidates)}")
    first = rng.choice(candidates, size=n)
    second = rng.choice(candidates, size=n)
    while np.any(same := first == second):
        second[same] = rng.choice(candidates, size=int(same.sum()))
    return first, second


def member_preferences(first_returns: np.ndarray, second_returns: np.ndarray) -> np.ndarray:
    """Each member's Bradley-Terry P(first preferred): ``sigmoid(R_m(first) - R_m(second))``.

    Args:
        first_returns, second_returns: float ``[members, N]`` per-member returns of each side, in
            the units the Bradley-Terry fit used (``RewardModel.predict_members``).

    Returns:
        float64 ``[members, N]`` in [0, 1].
    """
    difference = np.asarray(first_returns, dtype=np.float64) - np.asarray(second_returns, dtype=np.float64)
    # 0.5 * (1 + tanh(x / 2)) is the logistic sigmoid without overflow for large |x|.
    return 0.5 * (1.0 + np.tanh(0.5 * difference))


def disagreement_scores(probabilities: np.ndarray) -> np.ndarray:
    """Std over members of P(first preferred): float64 ``[N]`` from ``[members, N]`` (0 for one member)."""
    return np.asarray(probabilities, dtype=np.float64).std(axis=0)


def entropy_scores(probabilities: np.ndarray) -> np.ndarray:
    """Mean over members of each member's binary entropy of P(first preferred), in nats.

    Args:
        probabilities: float ``[members, N]``.

    Returns:
        float64 ``[N]`` in [0, log 2]; log 2 when every member says 0.5.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
    return (-(p * np.log(p) + (1.0 - p) * np.log1p(-p))).mean(axis=0)


def _rank_distinct(first: np.ndarray, second: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Candidate positions by descending score (ties: drawn first, first), repeated pairs last."""
    order = np.argsort(-scores, kind="stable")
    low = np.minimum(first, second)[order]
    high = np.maximum(first, second)[order]
    # The pair (a, b) is the same question as (b, a): key on the unordered pair.
    keys = np.stack([low, high], axis=1)
    _, first_seen = np.unique(keys, axis=0, return_index=True)
    is_first = np.zeros(len(order), dtype=bool)
    is_first[first_seen] = True
    return np.concatenate([order[is_first], order[~is_first]])


def select_pairs(
    method: SamplingMethod,
    candidates: np.ndarray,
    n: int,
    rng: np.random.Generator,
    member_returns: Callable[[np.ndarray], np.ndarray] | None = None,
    candidate_factor: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose ``n`` pairs of candidate items to ask the labeler about.

    Args:
        method: ``uniform``, ``disagreement`` or ``entropy`` (see the module docstring).
        candidates: int ``[C]`` distinct item ids that may be asked about, ``C >= 2``.
        n: pairs to return.
        rng: the learner's generator (advanced by the draws).
        member_returns: ``items -> [members, len(items)]``: every ensemble member's return of
            each item (its reward, or its segment's summed reward), in the Bradley-Terry
            units; called once per round with the distinct items of the candidate pairs.
            None before the first fit: every method then draws as ``uniform``.
        candidate_factor: uniform candidate pairs drawn per returned pair by ``disagreement``
            and ``entropy`` (B-Pref's ``large_batch``).

    Returns:
        (first, second): int ``[n]`` each, ``first[i] != second[i]``.
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {', '.join(SAMPLING_METHODS)}")
    if candidate_factor < 1:
        raise ValueError(f"candidate_factor must be >= 1, got {candidate_factor}")
    if method == "uniform" or member_returns is None:
        return uniform_pairs(candidates, n, rng)

    first, second = uniform_pairs(candidates, n * candidate_factor, rng)
    # Score each distinct item once: with a small buffer many candidate pairs share items.
    items, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    returns = np.asarray(member_returns(items), dtype=np.float64)
    if returns.ndim != 2 or returns.shape[1] != len(items):
        raise ValueError(f"member_returns gave shape {returns.shape} for {len(items)} items; expected [members, {len(items)}]")
    probabilities = member_preferences(returns[:, inverse[: len(first)]], returns[:, inverse[len(first) :]])
    scores = disagreement_scores(probabilities) if method == "disagreement" else entropy_scores(probabilities)
    keep = _rank_distinct(first, second, scores)[:n]
    return first[keep], second[keep]


__all__ = [
    "SAMPLING_METHODS",
    "SamplingMethod",
    "disagreement_scores",
    "entropy_scores",
    "member_preferences",
    "select_pairs",
    "uniform_pairs",
]
