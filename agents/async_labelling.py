"""Labelling beside the learner (ONI, Zheng et al.): a bounded queue of unlabelled items, a
worker that labels them, and answers the training loop polls without waiting.

::

    training loop (main thread)                         labelling worker
    -------------------------------------------------   -----------------------------------
    submit: plan (label store: cached / identical       N threads (in this process, or in one
            pairs are answered at once), offer each      child process) take jobs from the
            remaining pair to the bounded job queue  --> queue, ask the labeler, put the
            (a full queue drops it: counted)             outcomes on the results queue
    poll:   drain the results queue (never blocks),  <--
            record each outcome in the label store,
            count failures, hand the labels over by pair id

Decisions, and why:

- One writer for the label store: the thread that polls (the training loop). Workers only ask
  (``PreferenceLabeler.ask``, a pure function of two frames); ``plan`` (store lookups) runs at
  submit and ``record`` (store writes) at poll, both in the training loop. So the store never
  sees two writers, the worker process of a local VLM needs no store at all, and an answer is
  committed the first poll after it arrives (an answer that arrived but was never polled
  before a crash is asked again: at most the answers of one poll interval are paid twice).
- Labels attach to pairs by id: each job carries its id, the id maps to the plan's store key
  and to the pair indices that key covers, and :class:`~vlmrl.agents.preference_rounds.AnsweredPairs`
  names pairs by :attr:`~vlmrl.agents.preference_rounds.PairQuery.ids`. Arrival order never matters.
- Threads for endpoint labelers (their work is HTTP, which releases the GIL), one child process
  for a local transformers VLM (``spawn``; its generate loop would otherwise compete with the
  agent for the GIL), built in the child from its picklable labeler config. The process runs
  the same worker threads as the thread variant, so the labeler's own batching (the HF
  labeler batches concurrent ``ask`` calls) works unchanged.
- Worker threads are daemon threads, never ``concurrent.futures`` workers: the interpreter
  joins those at exit, so a stop would wait for every request in flight to finish its retries
  (minutes against a dead endpoint with long timeouts). :meth:`LabellingWorker.close` stops
  taking work, waits a moment for the threads and abandons requests still in flight.
- Synchronous mode for VLM labelers uses the same machinery with an unbounded queue and a
  :meth:`QueuedPairAnswers.poll` that waits for the round (checking ``should_stop`` every
  0.1 s, so SIGTERM and a failure streak cut a round short). The labels are exactly
  ``compare``'s: the same plan, asks and records.
- Failures: a ``failed`` outcome (no answer after all retries) extends the
  :class:`FailureStreak`; an answered, unsure or unparseable one ends it. The training loop
  stops the run once it reaches ``max_consecutive_failures``.
"""

from __future__ import annotations

import functools
import multiprocessing
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmrl.agents.preference_rounds import AnsweredPairs, PairQuery, SynchronousAnswers
from vlmrl.errors import UserError
from vlmrl.label_store import ANSWERED, FAILED, UNSURE
from vlmrl.reward_labelers.preference import PairOutcome

# Seconds a worker waits for a job (or the training loop for an answer) before it checks for a stop.
POLL_S = 0.1

# Seconds close() waits for worker threads (or the worker process) to finish before abandoning them.
CLOSE_TIMEOUT_S = 2.0

# The answer function of a worker: a batch of job payloads -> one answer per payload, in order.
AnswerBatch = Callable[[list[Any]], list[Any]]


class FailureStreak:
    """Consecutive failed queries, and the last error.

    Args:
        limit: streak length at which :attr:`tripped` turns True; 0 never trips.
    """

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.consecutive = 0
        self.failed = 0
        self.last_error: str | None = None

    def add(self, outcome: PairOutcome) -> None:
        """Count one query's outcome: ``failed`` extends the streak, anything else ends it."""
        if outcome.status == FAILED:
            self.consecutive += 1
            self.failed += 1
            self.last_error = outcome.error
        else:
            self.consecutive = 0

    @property
    def tripped(self) -> bool:
        return self.limit > 0 and self.consecutive >= self.limit

    def describe(self) -> str:
        return f"{self.consecutive} queries in a row failed (last error: {self.last_error})"


# -- workers -------------------------------------------------------------------------------------


def _serve(answer: AnswerBatch, jobs: Any, results: Any, stop: Any, batch_size: int) -> None:
    """One worker thread: take up to ``batch_size`` jobs, answer them, put ``(ids, answers, None)``
    (or ``(ids, None, error)`` when ``answer`` raised) on ``results``; until ``stop`` is set."""
    while not stop.is_set():
        try:
            batch = [jobs.get(timeout=POLL_S)]
        except queue.Empty:
            continue
        while len(batch) < batch_size:
            try:
                batch.append(jobs.get_nowait())
            except queue.Empty:
                break
        ids = [job_id for job_id, _ in batch]
        try:
            answers = answer([payload for _, payload in batch])
        except BaseException as error:  # reported to the training loop, which raises it there
            results.put((ids, None, _WorkerError.of(error)))
            continue
        results.put((ids, answers, None))


def _start_serving(answer: AnswerBatch, jobs: Any, results: Any, stop: Any, threads: int,
                   batch_size: int) -> list[threading.Thread]:
    """Start ``threads`` (at least one) daemon threads running :func:`_serve`; returns them."""
    started = [threading.Thread(target=_serve, args=(answer, jobs, results, stop, batch_size),
                                name=f"vlmrl-labelling-{i}", daemon=True) for i in range(max(1, threads))]
    for thread in started:
        thread.start()
    return started


@dataclass(frozen=True)
class _WorkerError:
    """An exception raised in a worker (picklable: it may come from the worker process)."""

    kind: str
    message: str
    trace: str
    user_error: bool

    @classmethod
    def of(cls, error: BaseException) -> _WorkerError:
        return cls(type(error).__name__, str(error), traceback.format_exc(), isinstance(error, UserError))

    def raise_here(self) -> None:
        if self.user_error:
            raise UserError(self.message)
        raise RuntimeError(f"the labelling worker failed: {self.kind}: {self.message}\n{self.trace}")


class LabellingWorker:
    """A bounded job queue, worker threads that answer jobs, and a results queue polled without blocking.

    Args:
        answer: answers a batch of job payloads (called in the worker threads).
        queue_size: jobs that may wait; None or 0 for no bound.
        threads: worker threads (e.g. the labeler's ``max_concurrency``).
        batch_size: jobs one ``answer`` call takes at most.
    """

    def __init__(self, answer: AnswerBatch, queue_size: int | None, threads: int = 1, batch_size: int = 1) -> None:
        self.jobs: Any = queue.Queue(maxsize=queue_size or 0)
        self.results: Any = queue.Queue()
        self.stop = threading.Event()
        self.threads = _start_serving(answer, self.jobs, self.results, self.stop, threads, batch_size)

    def offer(self, job_id: int, payload: Any) -> bool:
        """Queue a job; False (and nothing queued) when the queue is full or the worker is closed."""
        if self.stop.is_set():
            return False
        try:
            self.jobs.put_nowait((job_id, payload))
        except queue.Full:
            return False
        return True

    def drain(self, wait_s: float = 0.0) -> list[tuple[int, Any]]:
        """``(job id, answer)`` of every job answered since the last call; waits up to ``wait_s``
        seconds for the first one (0: never waits). Raises a worker's exception here."""
        answered: list[tuple[int, Any]] = []
        block = wait_s > 0
        while True:
            try:
                ids, answers, error = self.results.get(timeout=wait_s) if block else self.results.get_nowait()
            except queue.Empty:
                break
            block = False
            if error is not None:
                error.raise_here()
            answered.extend(zip(ids, answers))
        if not answered:
            self.check_alive()
        return answered

    def check_alive(self) -> None:
        """Raise when the worker died; threads cannot (their errors come through ``results``)."""

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop taking jobs and give the threads ``timeout_s`` to finish; requests still in
        flight after that are abandoned (daemon threads do not hold up the interpreter's exit)."""
        self.stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _process_main(factory: Callable[[], AnswerBatch], jobs: Any, results: Any, stop: Any, threads: int, batch_size: int) -> None:
    """The worker process: build the answer function (loads the model), serve until stopped or orphaned."""
    # Ctrl-C reaches the whole process group; the training process decides when this one stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        answer = factory()
    except BaseException as error:
        results.put((None, None, _WorkerError.of(error)))
        return
    results.put((None, None, None))  # ready
    _start_serving(answer, jobs, results, stop, threads, batch_size)
    parent = multiprocessing.parent_process()
    while not stop.wait(0.5):
        if parent is not None and not parent.is_alive():  # the training process was killed
            break
    # Stopping: answers nobody will read must not keep this process alive (the queue's feeder
    # thread would otherwise wait to flush them into a pipe no one empties).
    results.cancel_join_thread()


class ProcessLabellingWorker(LabellingWorker):
    """:class:`LabellingWorker` whose threads run in one child process (``spawn``).

    The constructor returns once the child has built its labeler (loaded the model), so a
    model that cannot load stops the run before training starts, and the first rounds are not
    queued behind the start-up.

    Args:
        factory: picklable; called once in the child, returns the answer function (so the
            labeler, and a model's weights, exist only in the child).
        queue_size, threads, batch_size: as for :class:`LabellingWorker`.
        should_stop: checked while waiting for the child to start; True gives up (SIGTERM).

    Raises:
        UserError / RuntimeError: the child could not build its labeler (or died doing so).
    """

    def __init__(
        self,
        factory: Callable[[], AnswerBatch],
        queue_size: int | None,
        threads: int = 1,
        batch_size: int = 1,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.jobs = context.Queue(maxsize=queue_size or 0)
        self.results = context.Queue()
        self.stop = context.Event()
        self.threads = []
        self.process = context.Process(
            target=_process_main, args=(factory, self.jobs, self.results, self.stop, threads, batch_size),
            name="vlmrl-labelling", daemon=True,
        )
        self.process.start()
        try:
            self._wait_ready(should_stop)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, should_stop: Callable[[], bool] | None) -> None:
        while not (should_stop is not None and should_stop()):
            died = not self.process.is_alive()  # checked first: a child's last message may still be on its way
            try:
                _, _, error = self.results.get(timeout=0.5)
            except queue.Empty:
                if died:
                    self.check_alive()
                continue
            if error is not None:
                error.raise_here()
            return

    def check_alive(self) -> None:
        if not self.process.is_alive() and not self.stop.is_set():
            raise RuntimeError(f"the labelling worker process exited (exit code {self.process.exitcode})")

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        if self.process.exitcode is not None and self.stop.is_set():
            return  # closed already
        self.stop.set()
        # Jobs the child will never read must not hold up this process's exit.
        self.jobs.cancel_join_thread()
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout_s)


# -- preference pairs ----------------------------------------------------------------------------


def _has_store_split(labeler: Any) -> bool:
    """Whether ``labeler`` is a :class:`~vlmrl.reward_labelers.preference.PreferenceLabeler`-like
    labeler whose asking (``ask``) can run apart from its store (``plan`` / ``record``)."""
    return all(callable(getattr(labeler, name, None)) for name in ("plan", "ask", "record"))


def _ask_each(labeler: Any, goal: str, payloads: list[tuple[np.ndarray, np.ndarray]]) -> list[PairOutcome]:
    return [labeler.ask(first, second, goal) for first, second in payloads]


def _teacher_outcomes(labeler: Any, goal: str, payloads: list[tuple[float, float]]) -> list[PairOutcome]:
    """A labeler without a store split (the scripted teacher): ``compare`` on true returns."""
    r1 = np.array([p[0] for p in payloads], dtype=np.float64)
    r2 = np.array([p[1] for p in payloads], dtype=np.float64)
    labels = np.asarray(labeler.compare(None, None, goal, true_rewards=(r1, r2)), dtype=np.float32)
    return [PairOutcome(ANSWERED if np.isfinite(label) else UNSURE, label=float(label)) for label in labels]


def _asker_in_child(labeler_config: Any, goal: str, seed: int) -> AnswerBatch:
    """Runs in the worker process: build the labeler without a store (the training process records)."""
    labeler = labeler_config.create(seed=seed, store=None)
    return functools.partial(_ask_each, labeler, goal)


@dataclass
class _Job:
    """A pair query on its way: the round's plan, the store key asked and the pair indices it labels."""

    query: PairQuery
    plan: Any  # PairPlan, or None for a labeler without a store split
    key: str | None
    indices: list[int]


class QueuedPairAnswers:
    """:class:`~vlmrl.agents.preference_rounds.PairAnswers` through a :class:`LabellingWorker`.

    Args:
        ledger: the labeler whose ``plan`` / ``record`` (the label store and the counters) run in
            the training loop: the labeler itself for the thread variant, a
            :class:`~vlmrl.reward_labelers.preference.StoreLedger` for a process worker. A labeler
            without them (the scripted teacher) is asked with ``compare`` in the worker.
        goal: the task description shown to a VLM.
        worker: where the questions are answered.
        wait: synchronous mode: :meth:`poll` waits until every pair in flight is answered (the
            queue should then be unbounded); else it never waits and rounds may overlap.
        max_consecutive_failures: failure streak that stops the run (0: never).
        should_stop: checked every ``POLL_S`` while :meth:`poll` waits; True cuts the wait short
            (SIGTERM). None: never.
    """

    def __init__(
        self,
        ledger: Any,
        goal: str,
        worker: LabellingWorker,
        wait: bool = False,
        max_consecutive_failures: int = 0,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.ledger = ledger
        self.goal = goal
        self.worker = worker
        self.wait = wait
        self.failures = FailureStreak(max_consecutive_failures)
        self.should_stop = should_stop
        self.jobs: dict[int, _Job] = {}
        self._next_job = 0
        # (ids, labels, p_first, p_second) answered without a query
        self._ready: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def rounds_overlap(self) -> bool:
        """Rounds may be drawn while earlier ones are unanswered unless a round waits for its answers."""
        return not self.wait

    def submit(self, query: PairQuery) -> np.ndarray:
        """Plan the round and queue its questions; returns bool ``[n]``: False for dropped pairs."""
        n = len(query)
        accepted = np.ones(n, dtype=bool)
        if _has_store_split(self.ledger):
            plan = self.ledger.plan(query.first_frames, query.second_frames, self.goal, (query.true_first, query.true_second))
            queued = np.zeros(n, dtype=bool)
            for key, indices in plan.to_ask.items():
                i = indices[0]
                if self._offer(_Job(query, plan, key, indices), (query.first_frames[i], query.second_frames[i])):
                    queued[indices] = True
                else:
                    accepted[indices] = False
            # Stored and (near-)identical pairs: their labels are in the plan already.
            at_once = accepted & ~queued
            if at_once.any():
                self._ready.append((query.ids[at_once], plan.labels[at_once], plan.p_first[at_once],
                                    plan.p_second[at_once]))
        else:
            for i in range(n):
                accepted[i] = self._offer(_Job(query, None, None, [i]), (query.true_first[i], query.true_second[i]))
        return accepted

    def _offer(self, job: _Job, payload: Any) -> bool:
        job_id = self._next_job
        self._next_job += 1
        if not self.worker.offer(job_id, payload):
            return False
        self.jobs[job_id] = job
        return True

    def poll(self) -> AnsweredPairs | None:
        """The labels that came in (recorded in the store first); None when none did.

        In synchronous mode waits until no question is in flight, unless ``should_stop`` or the
        failure streak cuts the wait short (the rest stays in flight).
        """
        ids, labels, p_first, p_second = ([ready[k] for ready in self._ready] for k in range(4))
        self._ready = []
        for job_id, outcome in self.worker.drain():
            self._take(job_id, outcome, ids, labels, p_first, p_second)
        while self.wait and self.jobs and not self._interrupted():
            for job_id, outcome in self.worker.drain(wait_s=POLL_S):
                self._take(job_id, outcome, ids, labels, p_first, p_second)
        if not ids:
            return None
        return AnsweredPairs(np.concatenate(ids), np.concatenate(labels).astype(np.float32),
                             np.concatenate(p_first).astype(np.float32), np.concatenate(p_second).astype(np.float32))

    def _interrupted(self) -> bool:
        return self.failures.tripped or (self.should_stop is not None and self.should_stop())

    def _take(self, job_id: int, outcome: PairOutcome, ids: list[np.ndarray], labels: list[np.ndarray],
              p_first: list[np.ndarray], p_second: list[np.ndarray]) -> None:
        job = self.jobs.pop(job_id)
        indices = np.asarray(job.indices)
        if job.plan is not None:
            i = job.indices[0]
            self.ledger.record(job.plan, job.key, outcome, job.query.first_frames[i], job.query.second_frames[i])
            self.failures.add(outcome)
            label = job.plan.labels[indices]
            p_first.append(job.plan.p_first[indices])
            p_second.append(job.plan.p_second[indices])
        else:
            label = np.full(len(indices), outcome.label, dtype=np.float32)
            p_first.append(np.full(len(indices), np.nan, dtype=np.float32))
            p_second.append(np.full(len(indices), np.nan, dtype=np.float32))
        ids.append(job.query.ids[indices])
        labels.append(label)

    def close(self) -> None:
        """Stop the worker; questions still in flight are abandoned (they are asked again after a resume)."""
        self.worker.close()


class ThreadedPairAnswers(QueuedPairAnswers):
    """Pairs asked by worker threads in this process: for endpoint labelers (HTTP) and the teacher.

    Args:
        labeler: a :class:`~vlmrl.reward_labelers.preference.PreferenceLabeler` (its ``ask`` runs
            in ``max_concurrency`` worker threads; ``plan`` / ``record`` in the training loop) or
            a ``compare``-only labeler such as the scripted teacher (one worker thread).
        goal: the task description shown to a VLM.
        queue_size: questions that may wait for a worker; None for no bound (synchronous mode).
        wait, max_consecutive_failures, should_stop: see :class:`QueuedPairAnswers`.
    """

    def __init__(
        self,
        labeler: Any,
        goal: str,
        queue_size: int | None,
        wait: bool = False,
        max_consecutive_failures: int = 0,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        if _has_store_split(labeler):
            answer = functools.partial(_ask_each, labeler, goal)
            worker = LabellingWorker(answer, queue_size, threads=int(getattr(labeler, "max_concurrency", 1)))
        else:
            worker = LabellingWorker(functools.partial(_teacher_outcomes, labeler, goal), queue_size, batch_size=64)
        super().__init__(labeler, goal, worker, wait, max_consecutive_failures, should_stop)


class ProcessPairAnswers(QueuedPairAnswers):
    """Pairs asked in a worker process that builds the labeler from its config: for a local
    transformers VLM, whose generation would otherwise compete with the agent for the GIL.

    Args:
        labeler_config: a picklable pairwise labeler config (``config.labeler``); the child calls
            ``create(seed=seed, store=None)`` and runs ``pairs_in_flight`` asking threads.
        ledger: plans and records in the training process under the same store keys (e.g.
            ``StoreLedger(labeler_config.store_key_config(), store)``).
        goal, queue_size, wait, max_consecutive_failures, should_stop: see :class:`ThreadedPairAnswers`.
        seed: the labeler's seed.
    """

    def __init__(
        self,
        labeler_config: Any,
        ledger: Any,
        goal: str,
        queue_size: int | None,
        wait: bool = False,
        max_consecutive_failures: int = 0,
        should_stop: Callable[[], bool] | None = None,
        seed: int = 0,
    ) -> None:
        if not _has_store_split(ledger):
            raise TypeError(f"a process worker needs a ledger with plan/record, got {type(ledger).__name__}")
        factory = functools.partial(_asker_in_child, labeler_config, goal, seed)
        worker = ProcessLabellingWorker(factory, queue_size, threads=int(labeler_config.pairs_in_flight),
                                        should_stop=should_stop)
        super().__init__(ledger, goal, worker, wait, max_consecutive_failures, should_stop)


def make_pair_answers(
    labeler: Any,
    goal: str,
    labeling: str = "sync",
    queue_size: int = 100,
    max_consecutive_failures: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """The :class:`~vlmrl.agents.preference_rounds.PairAnswers` for ``labeler`` in mode ``labeling``.

    ``sync``: the scripted teacher (no store split) is asked inline
    (:class:`~vlmrl.agents.preference_rounds.SynchronousAnswers`, bit-exact with earlier
    versions); a VLM labeler through :class:`ThreadedPairAnswers` that waits for each round
    (same labels as ``compare``, but a stop or a failure streak can cut the round short).
    ``async``: :class:`ThreadedPairAnswers` with a bounded queue of ``queue_size`` questions.
    (A worker process is built by the caller: :class:`ProcessPairAnswers` needs the labeler's config.)
    """
    if labeling == "async":
        return ThreadedPairAnswers(labeler, goal, queue_size, False, max_consecutive_failures, should_stop)
    if _has_store_split(labeler):
        return ThreadedPairAnswers(labeler, goal, None, True, max_consecutive_failures, should_stop)
    return SynchronousAnswers(labeler, goal)


# -- per-frame labels ----------------------------------------------------------------------------


def _label_frames(labeler: Any, payloads: list[tuple[np.ndarray, float]]) -> list[float]:
    frames = np.stack([frame for frame, _ in payloads])
    true_rewards = np.array([reward for _, reward in payloads], dtype=np.float32)
    return np.asarray(labeler.label(frames, true_rewards=true_rewards), dtype=np.float32).tolist()


class BackgroundFrameLabels:
    """Per-frame labels (CLIP, the oracle) from one worker thread, for
    :class:`~vlmrl.agents.labelled_reward.LabelledRewardVecEnv` with ``labeling: async``.

    Args:
        labeler: ``label(frames, true_rewards=...) -> float32 [N]``.
        queue_size: frames that may wait; frames that do not fit are dropped.
        batch_size: frames labelled together at most.
    """

    def __init__(self, labeler: Any, queue_size: int, batch_size: int = 64) -> None:
        self.worker = LabellingWorker(functools.partial(_label_frames, labeler), queue_size, batch_size=batch_size)

    def submit(self, ids: np.ndarray, frames: np.ndarray, true_rewards: np.ndarray) -> np.ndarray:
        """Queue frames (uint8 ``[N, H, W, 3]``) with their ids; returns bool ``[N]``, False for dropped ones."""
        accepted = np.array([self.worker.offer(int(i), (frame, float(r))) for i, frame, r in zip(ids, frames, true_rewards)],
                            dtype=bool)
        return accepted

    def poll(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids int64 [k], labels float32 [k])`` of the frames labelled since the last poll, or None."""
        answered = self.worker.drain()
        if not answered:
            return None
        ids = np.array([job_id for job_id, _ in answered], dtype=np.int64)
        return ids, np.array([label for _, label in answered], dtype=np.float32)

    def close(self) -> None:
        self.worker.close()


__all__ = [
    "BackgroundFrameLabels",
    "FailureStreak",
    "LabellingWorker",
    "ProcessLabellingWorker",
    "ProcessPairAnswers",
    "QueuedPairAnswers",
    "ThreadedPairAnswers",
    "make_pair_answers",
]
