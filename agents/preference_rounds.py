"""Query rounds and Bradley-Terry refits of online preference learning (RL-VLM-F on PEBBLE, methods.md section 2).

:class:`PreferenceLearner` is what :class:`~vlmrl.agents.preference_reward.PreferenceRewardVecEnv`
learns its reward with, one vector step at a time::

    add_step: ring buffer of the newest ``frame_buffer`` steps (net input, frame for the labeler,
    true reward, episode end) -> update: every ``round_every`` env steps draw ``pairs_per_round``
    pairs and submit them -> answers in: all pairs so far -> Bradley-Terry refit of the ensemble
    -> reward: normalised ensemble-mean prediction

Decisions, and why:

- What the labeler sees. VLM labelers get the frames as rendered, unless the ring buffer would
  then hold more than ``label_frame_mb`` MiB of them: frames are then shrunk once, on arrival,
  keeping their aspect ratio, until the buffer fits (224x224 frames fit 10,000 steps in about
  1.5 GB, so the default 1 GiB shrinks them to about 183x183). The label store keys on the
  pixels the VLM saw, so the cache stays valid across runs with the same settings. The scripted
  teacher (``needs_frames = False``) reads only true rewards and no frames are kept for it.
- Segments for the teacher. ``segment_length = 1`` is RL-VLM-F: one frame per side, the teacher
  compares the two steps' true rewards. With ``segment_length = H > 1`` each side is the
  B-Pref segment of the next ``H`` steps of the same env starting at the sampled step; its
  true return counts zero reward after a termination (the terminal state is absorbing) and a
  segment cut by a truncation (time limit) is never sampled, because its future is unknown.
  The net still scores the segment's first step only (its input, its frame), so the learned
  reward orders states by how much true reward follows them within ``H`` steps. This is what
  makes the teacher informative on CartPole-v1, whose true reward is +1 on every step: single
  frames are always tied there, while a segment that runs into the pole falling is worse.
- The budget counts every pair handed to the labeler, whatever came back (NaN for unsure,
  unparseable, failed or identical frames; 0.5 for ties), as in RL-VLM-F. Pairs of the same
  step are never drawn.
- Reward scale. Bradley-Terry identifies a reward only up to an additive constant. After each
  fit the prediction is mapped affinely so the buffered steps span [0, 1]
  (``reward_normalisation="buffer_minmax"``). An affine map with positive slope leaves the best
  policy of a fixed-length episode unchanged; in envs that terminate it makes living never
  look worse than ending the episode, which is right for "keep the pole up" and wrong for
  tasks where ending the episode is the goal (use ``"none"`` there).
- Asking is split in two (:class:`PairAnswers`): ``submit`` hands a drawn round over, ``poll``
  returns the labels that came in. :class:`SynchronousAnswers` asks the labeler inside
  ``submit``, so the round is labelled and the model refitted in the same vector step. The
  asynchronous implementations (:mod:`vlmrl.agents.async_labelling`) return at once and answer
  pair by pair (:class:`AnsweredPairs`, any order) while the agent keeps stepping; their rounds
  may overlap, and pairs their queue cannot take are dropped (``dropped``, never charged to the
  budget). Every pair gets an id when it is submitted and a label is attached to the pair with
  that id, never by position. Pairs in flight count against the budget from ``submit`` on.
- Refits. A refit follows once ``pairs_per_round`` new pairs came in, or once nothing is in
  flight any more: with synchronous answers that is once per round, as before.
- Checkpoints keep answered pairs only. A round-level implementation's round in flight is drawn
  again after a resume (schedule and RNG saved as they were before it was drawn); with
  overlapping rounds the pairs still in flight are re-sampled instead: the first round after the
  resume draws that many more pairs (``resample``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from vlmrl.agents.preference_config import OnlinePreferenceConfig
from vlmrl.agents.query_sampling import select_pairs
from vlmrl.devices import one_thread_for_small_batches
from vlmrl.reward_learning import FitResult, fit_bradley_terry, preference_fit_labels
from vlmrl.reward_nets import RewardModel

# Vector steps of the ring buffer whose predictions set the reward normalisation after a fit.
NORMALISATION_ROWS = 1024

T = TypeVar("T")


def _shrunk_size(height: int, width: int, rows: int, budget_mb: int) -> tuple[int, int]:
    """(height, width) with the aspect ratio kept so ``rows`` RGB frames fit in ``budget_mb`` MiB."""
    needed = rows * height * width * 3
    budget = budget_mb * 2**20
    if needed <= budget:
        return height, width
    k = math.sqrt(budget / needed)
    return max(int(height * k), 1), max(int(width * k), 1)


class StepRing:
    """The newest steps of every sub-env, one row per vector step.

    Arrays are ``[rows, n_envs, ...]``; row ``total_rows % rows`` is written next. Sized
    ``ceil(frame_buffer / n_envs)`` rows, so it holds at least ``frame_buffer`` env steps.

    Attributes:
        inputs: net inputs, uint8 ``[S, S, 3]`` frames or float32 ``[obs_dim]`` observations.
        frames: frames for the labeler (uint8 ``[h, w, 3]``), or None when it reads no frames.
        rewards: float32 true rewards. ends: the episode ended at this step.
        terminated: it ended by termination (not by truncation).
    """

    def __init__(self, frame_buffer: int, n_envs: int, label_frame_mb: int) -> None:
        self.rows = math.ceil(frame_buffer / n_envs)
        self.n_envs = n_envs
        self.label_frame_mb = label_frame_mb
        self.inputs: np.ndarray | None = None
        self.frames: np.ndarray | None = None
        self.frame_size: tuple[int, int] | None = None
        self.rewards = np.zeros((self.rows, n_envs), dtype=np.float32)
        self.ends = np.zeros((self.rows, n_envs), dtype=bool)
        self.terminated = np.zeros((self.rows, n_envs), dtype=bool)
        self.total_rows = 0

    @property
    def size(self) -> int:
        return min(self.total_rows, self.rows)

    def add(
        self,
        inputs: np.ndarray,
        frames: np.ndarray | None,
        rewards: np.ndarray,
        ends: np.ndarray,
        terminated: np.ndarray,
    ) -> None:
        if self.inputs is None:
            # calloc'd: pages are committed only as rows are written.
            self.inputs = np.zeros((self.rows, *inputs.shape), dtype=inputs.dtype)
        row = self.total_rows % self.rows
        self.inputs[row] = inputs
        if frames is not None:
            if self.frames is None:
                height, width = _shrunk_size(frames.shape[1], frames.shape[2], self.rows * self.n_envs, self.label_frame_mb)
                self.frame_size = (height, width)
                self.frames = np.zeros((self.rows, self.n_envs, height, width, 3), dtype=np.uint8)
            self.frames[row] = self._fit_frames(frames)
        self.rewards[row] = rewards
        self.ends[row] = ends
        self.terminated[row] = terminated
        self.total_rows += 1

    def _fit_frames(self, frames: np.ndarray) -> np.ndarray:
        if frames.shape[1:3] == self.frame_size:
            return frames
        height, width = self.frame_size
        # BOX (area averaging) anti-aliases a downscale, like the envs' own resizing.
        return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BOX)) for f in frames])

    def chronological_rows(self) -> np.ndarray:
        """Row indices of the buffered steps, oldest first: int ``[size]``."""
        start = self.total_rows - self.size
        return np.arange(start, self.total_rows) % self.rows

    def segment_returns(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """True return of the ``length``-step segment starting at each buffered step.

        Returns:
            (returns float64 ``[size, n_envs]``, valid bool ``[size, n_envs]``). Rewards after a
            termination count as zero; a segment is valid when it is complete, or ends in a
            termination, and is not cut short by a truncation.
        """
        order = self.chronological_rows()
        rewards = self.rewards[order].astype(np.float64)
        ends, terminated = self.ends[order], self.terminated[order]
        size = len(order)
        returns = np.zeros((size, self.n_envs))
        valid = np.zeros((size, self.n_envs), dtype=bool)
        cut = np.zeros((size, self.n_envs), dtype=bool)
        alive = np.ones((size, self.n_envs), dtype=bool)
        for k in range(length):
            shifted = np.arange(size) + k
            present = (shifted < size)[:, None] & alive
            index = np.minimum(shifted, size - 1)
            returns += np.where(present, rewards[index], 0.0)
            valid |= present & terminated[index]
            if k == length - 1:
                valid |= present
            else:
                cut |= present & ends[index] & ~terminated[index]
            alive &= ~(present & ends[index])
        return returns, valid & ~cut


class _PairColumn:
    """A read-only column of :class:`PairDataset`: its batches joined (once per change), or, before
    the first pair, an empty array of ``empty_dtype`` (None when ``empty_dtype`` is None)."""

    def __init__(self, empty_dtype: Any) -> None:
        self.empty_dtype = empty_dtype

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, dataset: PairDataset | None, owner: type) -> Any:
        if dataset is None:
            return self
        if not len(dataset):
            return None if self.empty_dtype is None else np.zeros(0, dtype=self.empty_dtype)
        return dataset._column(self.name)


class PairDataset:
    """Every labelled pair so far: net inputs of both sides, label, and the sides' true returns.

    Pairs arrive in small batches (with asynchronous answers, at almost every env step) but are
    read only at a refit or a checkpoint, so ``add`` keeps the batches and the arrays are joined on
    the first read after it, not copied whole at every arrival.
    """

    _COLUMNS = ("first", "second", "labels", "true_first", "true_second", "p_first", "p_second")

    first = _PairColumn(None)
    """Net inputs of the first sides, ``[N, ...]``; None before the first pair."""
    second = _PairColumn(None)
    """Net inputs of the second sides, ``[N, ...]``; None before the first pair."""
    labels = _PairColumn(np.float32)
    """float32 ``[N]``: 1.0 first preferred, 0.0 second, 0.5 tie, NaN none."""
    true_first = _PairColumn(np.float64)
    """float64 ``[N]``: true return of each first side (``true_second``: of each second side)."""
    true_second = _PairColumn(np.float64)
    p_first = _PairColumn(np.float32)
    """float32 ``[N]``: the answer's P(image 1) (``p_second``: P(image 2)), NaN where unknown."""
    p_second = _PairColumn(np.float32)

    def __init__(self) -> None:
        self._batches: dict[str, list[np.ndarray]] = {name: [] for name in self._COLUMNS}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, first: np.ndarray, second: np.ndarray, labels: np.ndarray, true_first: np.ndarray,
            true_second: np.ndarray, p_first: np.ndarray | None = None, p_second: np.ndarray | None = None) -> None:
        # The answers' probabilities are NaN where unknown (for preference.label_confidence).
        unknown = np.full(len(labels), np.nan, dtype=np.float32)
        batch = {"first": first.copy(), "second": second.copy(), "labels": labels.astype(np.float32),
                 "true_first": np.asarray(true_first, dtype=np.float64),
                 "true_second": np.asarray(true_second, dtype=np.float64),
                 "p_first": unknown if p_first is None else p_first.astype(np.float32),
                 "p_second": unknown if p_second is None else p_second.astype(np.float32)}
        for name, values in batch.items():
            self._batches[name].append(values)
        self._size += len(labels)

    def _column(self, name: str) -> np.ndarray:
        batches = self._batches[name]
        if len(batches) > 1:
            batches[:] = [np.concatenate(batches)]
        return batches[0]

    def fit_labels(self, mode: str, min_confidence: float) -> np.ndarray:
        """The labels to fit: as answered (``hard``, no threshold: unchanged, bit for bit), or
        through :func:`~vlmrl.reward_learning.preference_fit_labels` (soft / thresholded)."""
        if mode == "hard" and min_confidence <= 0:
            return self.labels
        return preference_fit_labels(self.labels, self.p_first, self.p_second, mode=mode, min_confidence=min_confidence)

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.first is None:
            return {}
        return {"first": self.first, "second": self.second, "labels": self.labels,
                "true_first": self.true_first, "true_second": self.true_second,
                "p_first": self.p_first, "p_second": self.p_second}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.__init__()
        if state:
            self.add(state["first"], state["second"], state["labels"], state["true_first"], state["true_second"],
                     state.get("p_first"), state.get("p_second"))


@dataclass
class PreferenceRoundStats:
    """Running counters, reported by the preference wrapper's ``metrics()`` and saved in checkpoints.

    ``asked`` pairs went to the labeler and were answered; each ends as ``labelled`` (a finite
    label, ``ties`` of them 0.5) or ``unlabelled`` (NaN). ``agree`` of ``compared`` decisive
    labelled pairs with different true returns prefer the side with the higher true return.
    ``rounds`` counts rounds whose submitted pairs are all answered (a round whose every pair was
    dropped does not count). ``dropped`` pairs did not fit in an asynchronous labeler's queue. ``lag_steps_sum`` / ``lag_steps_max``: env steps from
    a pair's submit to its answer, summed over / largest of the ``asked`` pairs (0 when
    synchronous). ``label_seconds`` is the time the training loop spent in the labeler's
    ``submit``/``poll`` (waiting for answers included).
    """

    asked: int = 0
    labelled: int = 0
    ties: int = 0
    unlabelled: int = 0
    agree: int = 0
    compared: int = 0
    rounds: int = 0
    fits: int = 0
    dropped: int = 0
    lag_steps_sum: int = 0
    lag_steps_max: int = 0
    label_seconds: float = 0.0
    fit_seconds: float = 0.0
    heldout_accuracy: float = math.nan
    train_accuracy: float = math.nan
    last_fit: FitResult | None = field(default=None, repr=False)

    @property
    def accuracy_vs_oracle(self) -> float:
        return self.agree / self.compared if self.compared else math.nan

    @property
    def lag_steps_mean(self) -> float:
        """Mean env steps from submit to answer over the answered pairs (NaN before any)."""
        return self.lag_steps_sum / self.asked if self.asked else math.nan

    def counters(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "last_fit"}


@dataclass
class PairQuery:
    """One drawn round of ``n`` pairs, as handed to :class:`PairAnswers`.

    Attributes:
        first_frames, second_frames: uint8 ``[n, h, w, 3]`` frames shown to a VLM, or None for a
            labeler that reads no frames.
        first_inputs, second_inputs: the sides' net inputs (kept with the labels for the fits).
        true_first, true_second: float64 ``[n]`` true (segment) returns, for the scripted teacher
            and for the agreement counters.
        next_round_before, rng_before: the schedule as it was before this round was drawn, so a
            checkpoint taken while it is in flight draws it again after a resume.
        ids: int64 ``[n]`` pair ids, unique within a run, set when the round is submitted; an
            answer names the pairs it labels by these ids.
    """

    first_frames: np.ndarray | None
    second_frames: np.ndarray | None
    first_inputs: np.ndarray
    second_inputs: np.ndarray
    true_first: np.ndarray
    true_second: np.ndarray
    next_round_before: int
    rng_before: dict[str, Any]
    ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.true_first)


@dataclass
class AnsweredPairs:
    """Labels of some pairs in flight, from any rounds, in any order.

    Attributes:
        ids: int64 ``[k]`` ids (:attr:`PairQuery.ids`) of the pairs answered.
        labels: float32 ``[k]``: 1.0 first preferred, 0.0 second, 0.5 tie, NaN none.
        p_first, p_second: float32 ``[k]`` the VLM's P(image 1 better) / P(image 2 better)
            (``answer_mode: logprobs``), NaN where unknown; None = all unknown.
    """

    ids: np.ndarray
    labels: np.ndarray
    p_first: np.ndarray | None = None
    p_second: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


class PairAnswers(Protocol):
    """Where drawn rounds go to be labelled.

    :meth:`submit` may return a bool ``[n]`` mask of the pairs it accepted (the rest were dropped:
    a full queue) or None when it took them all. :meth:`poll` returns what came in since the
    last poll: an :class:`AnsweredPairs`, or float32 labels of every pair in flight in submit
    order (a round-level implementation), or None. Labels are 1.0 first preferred, 0.0
    second, 0.5 tie, NaN none.

    A class attribute ``rounds_overlap = True`` lets the learner draw a round while earlier
    ones are in flight (implementations that answer pair by pair, see
    :mod:`vlmrl.agents.async_labelling`); without it one round is in flight at a time. An
    optional ``close()`` stops any worker.
    """

    def submit(self, query: PairQuery) -> np.ndarray | None: ...

    def poll(self) -> AnsweredPairs | np.ndarray | None: ...


class SynchronousAnswers:
    """Asks the labeler inside :meth:`submit`, so a round's labels are ready at once.

    Args:
        labeler: ``compare(first, second, goal, true_rewards=(r1, r2)) -> float32 [N]``: a VLM
            preference labeler or the scripted teacher.
        goal: the task description shown to a VLM.
    """

    def __init__(self, labeler: Any, goal: str) -> None:
        self.labeler = labeler
        self.goal = goal
        self._labels: np.ndarray | None = None

    def submit(self, query: PairQuery) -> None:
        self._labels = np.asarray(
            self.labeler.compare(
                query.first_frames, query.second_frames, self.goal, true_rewards=(query.true_first, query.true_second)
            ),
            dtype=np.float32,
        )

    def poll(self) -> np.ndarray | None:
        labels, self._labels = self._labels, None
        return labels


@dataclass
class _RoundInFlight:
    """A submitted round with pairs still waiting for their labels."""

    query: PairQuery
    submitted_at: int  # env steps
    waiting: np.ndarray  # bool [n]: accepted by the answers and not answered yet

    @property
    def first_id(self) -> int:
        return int(self.query.ids[0])


class PreferenceLearner:
    """Draws query rounds from the newest steps, takes in their labels and refits the reward on all pairs so far.

    Per vector step call :meth:`add_step`, then :meth:`update`; :meth:`reward` is the reward the
    agent gets for net inputs. Env steps are summed over sub-envs.

    Args:
        config: the ``preference:`` section (schedule, budget, fit, normalisation).
        reward_model: the ensemble to fit (cnn on frames or mlp on observations).
        n_envs: sub-envs per vector step.
        answers: where drawn rounds are labelled (:class:`SynchronousAnswers` asks at once).
        seed: seeds pair sampling (``default_rng(seed)``); fit ``k`` is seeded ``seed + k``.
    """

    def __init__(
        self, config: OnlinePreferenceConfig, reward_model: RewardModel, n_envs: int, answers: PairAnswers, seed: int = 0
    ) -> None:
        self.config = config
        self.reward_model = reward_model
        self.answers = answers
        self.fit_seed = seed
        self.rng = np.random.default_rng(seed)
        self.ring = StepRing(config.frame_buffer, n_envs, config.label_frame_mb)
        self.pairs = PairDataset()
        self.stats = PreferenceRoundStats()
        # PEBBLE: no query before the unsupervised exploration has ended.
        self.next_round_at = max(config.first_round_at, config.unsupervised_steps)
        self.rounds_in_flight: list[_RoundInFlight] = []
        self.resample = 0  # pairs in flight at the checkpoint this run resumed from, drawn again
        self.reward_offset = 0.0
        self.reward_scale = 1.0
        self._next_pair_id = 0
        self._new_since_fit = 0

    @property
    def rounds_overlap(self) -> bool:
        """Whether a round may be drawn while earlier ones are in flight (see :class:`PairAnswers`)."""
        return bool(getattr(self.answers, "rounds_overlap", False))

    @property
    def pending(self) -> PairQuery | None:
        """The oldest round with pairs in flight, or None."""
        return self.rounds_in_flight[0].query if self.rounds_in_flight else None

    @property
    def pairs_in_flight(self) -> int:
        """Pairs submitted and not answered yet (dropped pairs are not in flight)."""
        return sum(int(flying.waiting.sum()) for flying in self.rounds_in_flight)

    @property
    def budget_left(self) -> int:
        """Pairs that may still be drawn (pairs in flight count as asked)."""
        return self.config.budget - self.stats.asked - self.pairs_in_flight

    @property
    def fitted(self) -> bool:
        return self.stats.fits > 0

    def add_step(
        self, inputs: np.ndarray, frames: np.ndarray | None, true_rewards: np.ndarray, ends: np.ndarray, terminated: np.ndarray
    ) -> None:
        """Buffer one vector step: net inputs ``[n_envs, ...]``, the labeler's frames (or None),
        float32 true rewards and bool episode ends / terminations, each ``[n_envs]``."""
        self.ring.add(inputs, frames, true_rewards, ends, terminated)

    def update(self, env_steps: int) -> bool:
        """Draw and submit a round when one is due, take in the labels that came in, refit when enough did.

        Polls the answers once per call (when pairs are in flight).

        Returns:
            True when the reward model was refitted (the agent's reward changed).
        """
        if self._round_due(env_steps):
            query = self._draw_round(env_steps)
            if query is not None:
                self.next_round_at = max(self.next_round_at + self.config.round_every, env_steps + 1)
                self.resample = 0
                self._submit(query, env_steps)
        if not self.rounds_in_flight:
            return False
        answered = self._timed_labels(self.answers.poll)
        if answered is None:
            return False
        self._take_answers(answered, env_steps)
        return self._refit_if_enough_new()

    def _round_due(self, env_steps: int) -> bool:
        if self.budget_left <= 0 or env_steps < self.next_round_at:
            return False
        return self.rounds_overlap or not self.rounds_in_flight

    def _timed_labels(self, call: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return call()
        finally:
            self.stats.label_seconds += time.perf_counter() - start

    # -- query rounds ----------------------------------------------------------------------------

    def _draw_round(self, env_steps: int) -> PairQuery | None:
        """The one place where a round's pairs are chosen: up to ``pairs_per_round`` pairs (plus
        any to re-sample after a resume), within the budget, from the steps in the ring buffer.

        Returns None (and draws nothing) when the buffer holds fewer than two usable steps.
        """
        returns, valid = self.ring.segment_returns(self.config.segment_length)
        candidates = np.flatnonzero(valid.reshape(-1))
        if len(candidates) < 2:
            return None
        rng_before = self.rng.bit_generator.state
        n = min(self.config.pairs_per_round + self.resample, self.budget_left)
        n_envs = self.ring.n_envs
        order = self.ring.chronological_rows()
        flat_rows = order[:, None].repeat(n_envs, axis=1).reshape(-1)
        flat_envs = np.tile(np.arange(n_envs), len(order))

        def gather(array: np.ndarray | None, picks: np.ndarray) -> np.ndarray | None:
            # Fancy indexing copies: the ring may be overwritten while the round is in flight.
            return None if array is None else array[flat_rows[picks], flat_envs[picks]]

        def member_returns(picks: np.ndarray) -> np.ndarray:
            # The net scores a segment by its first step (module docstring), so that is its return.
            return self.reward_model.predict_members(gather(self.ring.inputs, picks))

        first, second = select_pairs(self.config.sampling, candidates, n, self.rng,
                                     member_returns=member_returns if self.fitted else None,
                                     candidate_factor=self.config.candidate_factor)
        return PairQuery(
            first_frames=gather(self.ring.frames, first),
            second_frames=gather(self.ring.frames, second),
            first_inputs=gather(self.ring.inputs, first),
            second_inputs=gather(self.ring.inputs, second),
            true_first=returns.reshape(-1)[first],
            true_second=returns.reshape(-1)[second],
            next_round_before=self.next_round_at,
            rng_before=rng_before,
        )

    def _submit(self, query: PairQuery, env_steps: int) -> None:
        """Give the round's pairs their ids and hand it to the answers; count what they dropped."""
        n = len(query)
        query.ids = np.arange(self._next_pair_id, self._next_pair_id + n, dtype=np.int64)
        self._next_pair_id += n
        accepted = self._timed_labels(lambda: self.answers.submit(query))
        waiting = np.ones(n, dtype=bool) if accepted is None else np.array(accepted, dtype=bool).reshape(n)
        self.stats.dropped += int(n - waiting.sum())
        if waiting.any():
            self.rounds_in_flight.append(_RoundInFlight(query, env_steps, waiting))

    def _take_answers(self, answered: AnsweredPairs | np.ndarray, env_steps: int) -> None:
        """Attach each label to the pair with its id, round by round (pairs in id order)."""
        p_first = p_second = None
        if isinstance(answered, AnsweredPairs):
            ids = np.asarray(answered.ids, dtype=np.int64).reshape(-1)
            labels = np.asarray(answered.labels, dtype=np.float32).reshape(-1)
            if labels.shape != ids.shape:
                raise RuntimeError(f"answers carry {len(labels)} labels for {len(ids)} pair ids")
            if answered.p_first is not None and answered.p_second is not None:
                p_first = np.asarray(answered.p_first, dtype=np.float32).reshape(-1)
                p_second = np.asarray(answered.p_second, dtype=np.float32).reshape(-1)
        else:  # round-level: labels of every pair in flight, in submit order
            ids = np.concatenate([flying.query.ids[flying.waiting] for flying in self.rounds_in_flight])
            labels = np.asarray(answered, dtype=np.float32)
            if labels.shape != ids.shape:
                raise RuntimeError(f"labeler returned labels of shape {labels.shape} for {len(ids)} pairs")
        order = np.argsort(ids, kind="stable")
        ids, labels = ids[order], labels[order]
        if p_first is not None:
            p_first, p_second = p_first[order], p_second[order]
        taken = 0
        for flying in list(self.rounds_in_flight):
            mine = (ids >= flying.first_id) & (ids < flying.first_id + len(flying.query))
            if not mine.any():
                continue
            index = ids[mine] - flying.first_id
            if not flying.waiting[index].all() or len(np.unique(index)) != len(index):
                raise RuntimeError(f"answers for pairs that are not in flight: ids {ids[mine][~flying.waiting[index]].tolist()}")
            flying.waiting[index] = False
            query = flying.query
            self.pairs.add(query.first_inputs[index], query.second_inputs[index], labels[mine],
                           query.true_first[index], query.true_second[index],
                           None if p_first is None else p_first[mine], None if p_second is None else p_second[mine])
            self._count(labels[mine], query.true_first[index], query.true_second[index])
            lag = env_steps - flying.submitted_at
            self.stats.lag_steps_sum += lag * len(index)
            self.stats.lag_steps_max = max(self.stats.lag_steps_max, lag)
            taken += len(index)
            if not flying.waiting.any():
                self.rounds_in_flight.remove(flying)
                self.stats.rounds += 1
        if taken != len(ids):
            raise RuntimeError(f"answers for {len(ids) - taken} pair id(s) that were never submitted")
        self._new_since_fit += taken

    def _count(self, labels: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> None:
        finite = np.isfinite(labels)
        ties = finite & (labels == 0.5)
        decisive = finite & ~ties & (r1 != r2)
        self.stats.asked += len(labels)
        self.stats.labelled += int(finite.sum())
        self.stats.ties += int(ties.sum())
        self.stats.unlabelled += int((~finite).sum())
        self.stats.compared += int(decisive.sum())
        self.stats.agree += int(((labels > 0.5) == (r1 > r2))[decisive].sum())

    def _refit_if_enough_new(self) -> bool:
        """Refit once ``pairs_per_round`` new pairs are in, or once nothing is in flight any more."""
        if self._new_since_fit < self.config.pairs_per_round and self.rounds_in_flight:
            return False
        self._new_since_fit = 0
        return self.refit() is not None

    # -- fits and rewards ------------------------------------------------------------------------

    def refit(self) -> FitResult | None:
        """Refit the ensemble on all pairs so far (from its current weights); None without any label."""
        if self.stats.labelled == 0:
            return None
        start = time.perf_counter()
        result = fit_bradley_terry(
            self.reward_model,
            self.pairs.first,
            self.pairs.second,
            self.pairs.fit_labels(self.config.label_confidence, self.config.min_confidence),
            self.config.fit,
            seed=self.fit_seed + self.stats.fits,
        )
        self.stats.fits += 1
        self.stats.last_fit = result
        self.stats.heldout_accuracy = result.heldout_accuracy
        self.stats.train_accuracy = result.train_accuracy
        self._update_normalisation()
        self.stats.fit_seconds += time.perf_counter() - start
        return result

    def _update_normalisation(self) -> None:
        if self.config.reward_normalisation == "none":
            self.reward_offset, self.reward_scale = 0.0, 1.0
            return
        rows = self.ring.chronological_rows()
        # An evenly spaced subset keeps this cheap for a cnn over a 10k-step buffer.
        rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), NORMALISATION_ROWS)).astype(int)]
        buffered = self.ring.inputs[rows]
        predicted = self.reward_model.predict(buffered.reshape(-1, *buffered.shape[2:]))
        low, high = float(predicted.min()), float(predicted.max())
        self.reward_offset = low
        self.reward_scale = high - low if high - low > 1e-6 else 1.0

    def reward(self, inputs: np.ndarray) -> np.ndarray:
        """The agent's reward for net inputs (frames or observations): float32 ``[N]``; zeros before the first fit."""
        if not self.fitted:
            return np.zeros(len(inputs), dtype=np.float32)
        with one_thread_for_small_batches(len(inputs)):
            predicted = self.reward_model.predict(inputs)
        return ((predicted - self.reward_offset) / self.reward_scale).astype(np.float32)

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Pairs (arrays), counters, schedule position, normalisation and sampling RNG.

        The ring buffer of recent steps is not included: after a resume it refills before the
        next round. Pairs still in flight are not included either: with round-level answers the
        schedule and RNG are those of before the oldest round in flight was drawn, so a resumed
        run draws it again; with overlapping rounds the schedule goes on and ``resample`` says how
        many pairs the next round draws on top of its own.
        """
        schedule, rng, resample = self.next_round_at, self.rng.bit_generator.state, self.resample
        if self.rounds_in_flight and not self.rounds_overlap:
            oldest = self.rounds_in_flight[0].query
            schedule, rng = oldest.next_round_before, oldest.rng_before
        elif self.rounds_in_flight:
            resample += self.pairs_in_flight
        return {
            "next_round_at": schedule,
            "resample": resample,
            "reward_offset": self.reward_offset,
            "reward_scale": self.reward_scale,
            "stats": self.stats.counters(),
            "rng": rng,
            "pairs": self.pairs.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the reward model is restored separately)."""
        self.pairs.load_state_dict(state["pairs"])
        self.next_round_at = int(state["next_round_at"])
        self.resample = int(state.get("resample", 0))
        self.reward_offset = float(state["reward_offset"])
        self.reward_scale = float(state["reward_scale"])
        self.stats = PreferenceRoundStats(**state["stats"])
        self.rng.bit_generator.state = state["rng"]
        self.rounds_in_flight = []
        self._new_since_fit = 0


__all__ = [
    "AnsweredPairs",
    "PairAnswers",
    "PairDataset",
    "PairQuery",
    "PreferenceLearner",
    "PreferenceRoundStats",
    "StepRing",
    "SynchronousAnswers",
]
