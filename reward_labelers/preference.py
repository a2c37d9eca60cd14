"""Preference labelers: which of two frames better achieves a goal (RL-VLM-F, methods.md section 2).

``PreferenceLabeler`` holds the logic every VLM backend shares: validating the batch, skipping
(near-)identical pairs before any query, reading final answers from the label store, asking the
rest with bounded concurrency, committing each answer to the store as it arrives, and counting.
A backend implements only ``config`` (what determines its answers) and ``ask`` (one pair),
and may check its endpoint before a run in ``preflight``.

Label convention: a label is the probability that the *first* frame is preferred:
1.0 first better, 0.0 second better, NaN when there is no usable answer. Labels are never
invented: unsure, unparseable, failed and skipped pairs are NaN.

Answers read from the answer token's probabilities (``answer_mode: logprobs``) also carry
``p_first`` / ``p_second`` = P(answer ``0``) / P(answer ``1``), normalised over the answers
``0``, ``1``, ``-1``; the label is still hard (1.0 / 0.0 for the likelier side, NaN when ``-1``
is likeliest). ``compare_with_confidence`` returns them beside the labels, so a Bradley-Terry fit
can use soft labels or drop unconfident answers (``vlmrl.reward_learning.preference_fit_labels``).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl.label_store import (
    ANSWERED,
    FAILED,
    UNPARSEABLE,
    UNSURE,
    LabelStore,
    canonical_config,
    frame_hash,
    pair_key,
    thumbnail,
)
from vlmrl.reward_labelers.base import check_frames
from vlmrl.reward_labelers.prompts import AnswerKind, ParsedAnswer, parse_answer

logger = logging.getLogger(__name__)

DEFAULT_IDENTICAL_THRESHOLD = 0.01
"""Mean absolute pixel difference (uint8 levels, 0-255) below which a pair counts as identical.

Kept tiny on purpose: in a 600x400 CartPole frame the pole is a few percent of the pixels, so
two genuinely different states can differ by well under one level on average.
"""


@dataclass
class PreferenceStats:
    """Running counts over every ``compare`` call of one labeler (pairs, not HTTP requests).

    ``asked`` pairs were sent to the VLM in this process; each of them ends as exactly one of
    ``answered``, ``unsure``, ``unparseable`` or ``failed``. ``cached`` pairs came from the label
    store without a request; ``skipped_identical`` pairs were never asked. ``requests`` counts
    HTTP requests, retries included.
    """

    asked: int = 0
    answered: int = 0
    unsure: int = 0
    unparseable: int = 0
    failed: int = 0
    skipped_identical: int = 0
    cached: int = 0
    requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class PairOutcome:
    """What one query produced.

    Attributes:
        status: answered / unsure / unparseable / failed (see ``vlmrl.label_store``).
        label: 1.0 or 0.0 when answered, NaN otherwise.
        analysis: the first-stage answer (two-stage mode), or None.
        answer: the raw labelling answer, or None when none came back.
        error: why the query failed or could not be parsed, or None.
        requests: HTTP requests spent on this pair, retries included.
        p_first, p_second: P(answer ``0``: image 1 better) and P(answer ``1``: image 2 better)
            when the label was read from the answer token's probabilities, else None.
    """

    status: str
    label: float = math.nan
    analysis: str | None = None
    answer: str | None = None
    error: str | None = None
    requests: int = 1
    p_first: float | None = None
    p_second: float | None = None


_STATUS_OF_KIND = {
    AnswerKind.FIRST: ANSWERED,
    AnswerKind.SECOND: ANSWERED,
    AnswerKind.UNSURE: UNSURE,
    AnswerKind.UNPARSEABLE: UNPARSEABLE,
}


def outcome_from_answer(answer: str | None, analysis: str | None, requests: int) -> PairOutcome:
    """The outcome of one labelling answer, parsed by ``prompts.parse_answer`` (every backend).

    Answered pairs get label 1.0 (image 1 better) or 0.0 (image 2 better); unsure and
    unparseable ones NaN, the latter with an error saying why. The raw answer and analysis are
    kept as given.
    """
    parsed = parse_answer(answer)
    error = "answer is not 0, 1 or -1 (or it is ambiguous)" if parsed.kind is AnswerKind.UNPARSEABLE else None
    return PairOutcome(
        _STATUS_OF_KIND[parsed.kind], label=parsed.label, analysis=analysis, answer=answer, error=error, requests=requests
    )


def outcome_from_probabilities(
    p_first: float, p_second: float, p_unsure: float, answer: str | None, analysis: str | None, requests: int
) -> PairOutcome:
    """The outcome of an answer read from the probabilities of its first token (every backend).

    Args:
        p_first, p_second, p_unsure: probabilities (or any non-negative weights) of the answers
            ``0``, ``1`` and ``-1``; normalised here over their sum.
        answer: the raw answer text kept with the row (the generated text, or the likeliest
            answer where nothing was generated).

    The likeliest answer decides, as a constrained greedy decoder would: ``0`` -> label 1.0,
    ``1`` -> 0.0, ``-1`` (or a tie between ``0`` and ``1``) -> unsure, NaN. Zero total weight
    (none of the three answers was scored) is unparseable. Normalised ``p_first`` / ``p_second``
    are kept on every parsed outcome.
    """
    weights = np.array([p_first, p_second, p_unsure], dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"answer probabilities must be finite and >= 0, got {weights.tolist()}")
    total = float(weights.sum())
    if total <= 0.0:
        return PairOutcome(UNPARSEABLE, analysis=analysis, answer=answer, requests=requests,
                           error="none of the answers 0, 1, -1 was among the scored tokens")
    p1, p2, pu = (weights / total).tolist()
    if p1 > max(p2, pu):
        kind = AnswerKind.FIRST
    elif p2 > max(p1, pu):
        kind = AnswerKind.SECOND
    else:  # -1 likeliest, or 0 and 1 exactly tied: no preference, none invented
        kind = AnswerKind.UNSURE
    return PairOutcome(_STATUS_OF_KIND[kind], label=ParsedAnswer(kind).label, analysis=analysis, answer=answer,
                       requests=requests, p_first=p1, p_second=p2)


def query_outcome(
    analysis: str | None,
    answer: str | None,
    requests: int,
    probabilities: tuple[float, float, float] | None = None,
) -> PairOutcome:
    """The outcome of one pair's query from what the VLM returned (every backend).

    Args:
        analysis: the first-stage answer (two-stage mode), or None.
        answer: the labelling answer; None when a two-stage analysis came back empty, so no
            labelling turn was run: the pair is unparseable (nothing to label from).
        requests: model requests spent on this pair, retries included.
        probabilities: P(``0``), P(``1``), P(``-1``) of the answer's first token where the
            backend scored them (read by ``outcome_from_probabilities``); None reads the answer's
            text (``outcome_from_answer``).
    """
    if answer is None:
        return PairOutcome(UNPARSEABLE, analysis=analysis, error="empty analysis", requests=requests)
    if probabilities is not None:
        return outcome_from_probabilities(*probabilities, answer, analysis, requests)
    return outcome_from_answer(answer, analysis, requests)


@dataclass
class PairPlan:
    """What :meth:`PreferenceLabeler.plan` decided for a batch of ``N`` pairs before any query.

    Attributes:
        goal, config_json: what the store keys were built from.
        keys, hashes: store key and ``(first, second)`` frame hashes of each pair, ``N`` each.
        labels: float32 ``[N]``; stored labels filled in, NaN elsewhere (``record`` fills the rest).
        to_ask: store key -> indices of the pairs with that key, one entry per query to make.
        true_rewards: the ``(r_first, r_second)`` float64 ``[N]`` arrays given, or None.
        p_first, p_second: float32 ``[N]`` answer probabilities (see ``PairOutcome``), NaN where
            unknown; filled like ``labels``.
    """

    goal: str
    config_json: str
    keys: list[str]
    hashes: list[tuple[str, str]]
    labels: np.ndarray
    to_ask: dict[str, list[int]]
    true_rewards: tuple[np.ndarray, np.ndarray] | None
    p_first: np.ndarray | None = None
    p_second: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.p_first is None:
            self.p_first = np.full(len(self.labels), np.nan, dtype=np.float32)
        if self.p_second is None:
            self.p_second = np.full(len(self.labels), np.nan, dtype=np.float32)


def mean_abs_difference(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Mean absolute pixel difference per pair, in uint8 levels: float64 ``[N]``."""
    n = first.shape[0]
    out = np.empty(n, dtype=np.float64)
    for i in range(n):  # one pair at a time keeps the int16 copy small for large frames
        out[i] = np.abs(first[i].astype(np.int16) - second[i].astype(np.int16)).mean()
    return out


class PreferenceLabeler(ABC):
    """Base class of labelers that compare two frames against a goal.

    Args:
        store: the label store (a ``LabelStore`` or a path to its SQLite file); None keeps no
            record and asks every time.
        max_concurrency: pairs queried at the same time.
        identical_threshold: pairs whose mean absolute pixel difference (0-255 levels) is below
            this are skipped without a query.
        thumbnail_size: longest side in pixels of the PNG thumbnails stored with each row
            (for ``vlmrl label-pairs --grid``); 0 stores none.
    """

    def __init__(
        self,
        store: LabelStore | str | Path | None = None,
        max_concurrency: int = 4,
        identical_threshold: float = DEFAULT_IDENTICAL_THRESHOLD,
        thumbnail_size: int = 64,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if identical_threshold < 0:
            raise ValueError(f"identical_threshold must be >= 0, got {identical_threshold}")
        self.store = store if isinstance(store, LabelStore) or store is None else LabelStore(store)
        self.max_concurrency = int(max_concurrency)
        self.identical_threshold = float(identical_threshold)
        self.thumbnail_size = int(thumbnail_size)
        self.stats = PreferenceStats()

    @property
    @abstractmethod
    def config(self) -> Mapping[str, Any]:
        """Everything that determines the answers (model, prompts, mode, sampling), as JSON-able
        values. It is part of the store key and is written to the store: never put secrets here.
        """

    @abstractmethod
    def ask(self, first: np.ndarray, second: np.ndarray, goal: str) -> PairOutcome:
        """Query the VLM about one pair (uint8 ``[H, W, 3]`` frames), retries included.

        Called from worker threads; must not raise for network or protocol failures (return a
        ``failed`` outcome instead).
        """

    def preflight(self) -> None:
        """Check, before a run asks anything, that the labeler can work as configured (an
        endpoint is reachable, accepts the key, supports the answer mode); raise
        ``vlmrl.errors.UserError`` saying what to fix. Call it once at start-up: failing on the
        first pair beats failing after hundreds. Nothing to check here; endpoint labelers override it.
        """

    def compare(
        self,
        first: np.ndarray,
        second: np.ndarray,
        goal: str,
        true_rewards: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Preference labels for a batch of frame pairs.

        Args:
            first: uint8 ``[N, H, W, 3]`` frames shown as image 1.
            second: uint8 ``[N, H, W, 3]`` frames shown as image 2 (same shape as ``first``).
            goal: the task description, e.g. ``"to balance the pole upright on the cart"``.
            true_rewards: optional ``(r_first, r_second)``, float ``[N]`` each: the true rewards
                of the frames, stored with each row so label accuracy can be measured later
                (``vlmrl label-pairs``). Never shown to the VLM.

        Returns:
            float32 ``[N]``: 1.0 the first frame better achieves the goal, 0.0 the second,
            NaN when the VLM was unsure, saw no difference, gave an unparseable answer, the
            query failed, or the frames were (near-)identical.
        """
        return self.compare_with_confidence(first, second, goal, true_rewards)[0]

    def compare_with_confidence(
        self,
        first: np.ndarray,
        second: np.ndarray,
        goal: str,
        true_rewards: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`compare`, plus how sure each answer was.

        Returns:
            ``(labels, p_first, p_second)``, float32 ``[N]`` each: the labels of ``compare``, and
            P(image 1 better) / P(image 2 better) of each answer read from the answer token's
            probabilities (``answer_mode: logprobs``), stored ones included; NaN where unknown
            (answers read from text, unanswered and skipped pairs).
        """
        first, second = check_frames(first), check_frames(second)
        plan = self.plan(first, second, goal, true_rewards)
        if plan.to_ask:
            self._ask_planned(plan, first, second, goal)
        return plan.labels, plan.p_first, plan.p_second

    def _ask_planned(self, plan: PairPlan, first: np.ndarray, second: np.ndarray, goal: str) -> None:
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(plan.to_ask))) as pool:
            futures = {
                pool.submit(self.ask, first[idx[0]], second[idx[0]], goal): key for key, idx in plan.to_ask.items()
            }
            try:
                # Record each answer the moment it arrives: a killed run keeps everything paid for.
                for future in as_completed(futures):
                    key = futures[future]
                    i = plan.to_ask[key][0]
                    self.record(plan, key, future.result(), first[i], second[i])
            except BaseException:
                # Ctrl-C or a bug: start no new queries; those in flight end within their timeout.
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    def plan(
        self,
        first: np.ndarray,
        second: np.ndarray,
        goal: str,
        true_rewards: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> PairPlan:
        """Everything ``compare`` decides before querying: store keys, skipped identical pairs,
        labels already in the store, and the distinct pairs still to ask (same arguments as
        ``compare``). Counts ``skipped_identical`` and ``cached``."""
        first = check_frames(first)
        second = check_frames(second)
        if first.shape != second.shape:
            raise ValueError(f"first and second must have the same shape, got {first.shape} and {second.shape}")
        n = first.shape[0]
        rewards = self._check_true_rewards(true_rewards, n)
        labels = np.full(n, np.nan, dtype=np.float32)
        config_json = canonical_config(self.config)
        hashes = [(frame_hash(first[i]), frame_hash(second[i])) for i in range(n)]
        keys = [pair_key(h1, h2, goal, config_json) for h1, h2 in hashes]
        to_ask: dict[str, list[int]] = {}
        if n == 0:
            return PairPlan(goal, config_json, keys, hashes, labels, to_ask, rewards)

        identical = mean_abs_difference(first, second) < self.identical_threshold
        self.stats.skipped_identical += int(identical.sum())
        stored = self.store.get_many([k for k, same in zip(keys, identical) if not same]) if self.store else {}
        p_first = np.full(n, np.nan, dtype=np.float32)
        p_second = np.full(n, np.nan, dtype=np.float32)
        # One query per distinct key (a batch may repeat a pair).
        for i in range(n):
            if identical[i]:
                continue
            row = stored.get(keys[i])
            if row is not None and row.is_final:
                labels[i] = row.label_value
                if row.p_first is not None and row.p_second is not None:
                    p_first[i], p_second[i] = row.p_first, row.p_second
                self.stats.cached += 1
            else:
                to_ask.setdefault(keys[i], []).append(i)
        return PairPlan(goal, config_json, keys, hashes, labels, to_ask, rewards, p_first, p_second)

    def ask_many(self, first: np.ndarray, second: np.ndarray, goal: str) -> list[PairOutcome]:
        """Ask about every pair, ``max_concurrency`` at a time, and return the outcomes in order.

        No store lookup, no identical-pair skip, nothing recorded or counted: this is the part a
        remote worker runs while one process (``plan`` / ``record``) owns the label store.
        """
        first, second = check_frames(first), check_frames(second)
        if len(first) == 0:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(first))) as pool:
            return list(pool.map(self.ask, first, second, [goal] * len(first)))

    def record(self, plan: PairPlan, key: str, outcome: PairOutcome, first: np.ndarray, second: np.ndarray) -> None:
        """Count ``outcome`` (the answer to ``plan.to_ask[key]``), put its label into
        ``plan.labels`` and commit it to the store. ``first``/``second``: that pair's uint8
        ``[H, W, 3]`` frames (for the stored thumbnails)."""
        self._count(outcome)
        indices = plan.to_ask[key]
        plan.labels[indices] = outcome.label
        plan.p_first[indices] = math.nan if outcome.p_first is None else outcome.p_first
        plan.p_second[indices] = math.nan if outcome.p_second is None else outcome.p_second
        if self.store is not None:
            self._record(key, plan.hashes[indices[0]], plan.goal, plan.config_json, outcome, first, second,
                         plan.true_rewards, indices[0])

    def _count(self, outcome: PairOutcome) -> None:
        self.stats.asked += 1
        self.stats.requests += outcome.requests
        if outcome.status == ANSWERED:
            self.stats.answered += 1
        elif outcome.status == UNSURE:
            self.stats.unsure += 1
        elif outcome.status == UNPARSEABLE:
            self.stats.unparseable += 1
        else:
            self.stats.failed += 1
            logger.warning("preference query failed after %d request(s): %s", outcome.requests, outcome.error)

    def _record(
        self,
        key: str,
        hashes: tuple[str, str],
        goal: str,
        config_json: str,
        outcome: PairOutcome,
        first: np.ndarray,
        second: np.ndarray,
        rewards: tuple[np.ndarray, np.ndarray] | None,
        index: int,
    ) -> None:
        thumbs = None
        if self.thumbnail_size > 0 and outcome.status != FAILED:
            thumbs = (thumbnail(first, self.thumbnail_size), thumbnail(second, self.thumbnail_size))
        self.store.put(
            key,
            first_hash=hashes[0],
            second_hash=hashes[1],
            goal=goal,
            config_json=config_json,
            status=outcome.status,
            label=None if math.isnan(outcome.label) else outcome.label,
            analysis=outcome.analysis,
            answer=outcome.answer,
            error=outcome.error,
            attempts=outcome.requests,
            true_rewards=(rewards[0][index], rewards[1][index]) if rewards is not None else None,
            thumbnails=thumbs,
            p_first=outcome.p_first,
            p_second=outcome.p_second,
        )

    @staticmethod
    def _check_true_rewards(
        true_rewards: tuple[np.ndarray, np.ndarray] | None, n: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        if true_rewards is None:
            return None
        if len(true_rewards) != 2:
            raise ValueError("true_rewards must be a pair (rewards of first frames, rewards of second frames)")
        r1, r2 = (np.asarray(r, dtype=np.float64).reshape(-1) for r in true_rewards)
        if r1.shape != (n,) or r2.shape != (n,):
            raise ValueError(f"true_rewards must hold {n} rewards each, got {r1.shape} and {r2.shape}")
        return r1, r2


class StoreLedger(PreferenceLabeler):
    """The label-store half of a labeler whose queries run elsewhere (e.g. Ray actors holding
    the VLM): ``plan`` and ``record`` under the asking labeler's ``config``; it never asks.

    Args:
        config: the asking labeler's ``config`` (it makes the store keys).
        store, identical_threshold, thumbnail_size: as for :class:`PreferenceLabeler`.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        store: LabelStore | str | Path | None,
        identical_threshold: float = DEFAULT_IDENTICAL_THRESHOLD,
        thumbnail_size: int = 64,
    ) -> None:
        super().__init__(store, 1, identical_threshold, thumbnail_size)
        self._config = dict(config)

    def __repr__(self) -> str:
        return f"StoreLedger({self._config.get('labeler')!r}, model={self._config.get('model')!r}, store={self.store!r})"

    @property
    def config(self) -> Mapping[str, Any]:
        return self._config

    def ask(self, first: np.ndarray, second: np.ndarray, goal: str) -> PairOutcome:
        raise RuntimeError("a StoreLedger records answers asked elsewhere; it cannot ask a VLM itself")


__all__ = [
    "StoreLedger",
    "DEFAULT_IDENTICAL_THRESHOLD",
    "PairOutcome",
    "PairPlan",
    "PreferenceLabeler",
    "PreferenceStats",
    "mean_abs_difference",
    "outcome_from_answer",
    "outcome_from_probabilities",
    "query_outcome",
]
