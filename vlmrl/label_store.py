"""A SQLite file that remembers every preference query, so no pair is ever paid for twice.

One row per (frame pair, goal, labeler config). The key is a sha256 over both frames' shape and
bytes, the goal, and a canonical JSON of the labeler's config (model, prompts, mode; never an API
key), so changing the prompt or the model asks again, while rerunning the same run does not.

Statuses:

- ``answered``: the VLM chose a frame; ``label`` is 1.0 (first frame preferred) or 0.0 (second).
- ``unsure``: the VLM answered ``-1``; ``label`` is NULL.
- ``unparseable``: the answer was not ``0``, ``1`` or ``-1``; ``label`` is NULL.
- ``failed``: no answer came back (HTTP errors, timeouts); ``label`` is NULL and ``error`` says why.

The first three are final: a later run reads them back instead of asking. ``failed`` rows are
only a record: a later run asks again (a failure is not a label).

Every row keeps the raw ``answer`` (and two-stage ``analysis``) text, so a newer parser can
re-read them without asking again (``vlmrl label-pairs STORE --reparse``, :meth:`LabelStore.rewrite_labels`).
Labelers that read the answer token's probabilities (``answer_mode: logprobs``) also store
``p_first`` / ``p_second``: P(answer ``0``: image 1 better) and P(answer ``1``: image 2 better),
normalised over the three answers ``0``, ``1``, ``-1``; NULL for answers read from text.

Schema migration: the two probability columns were added after the first release. Opening a
store written before adds them in place (``ALTER TABLE ... ADD COLUMN``, NULL in old rows), so old
stores are read exactly as before and keep their keys; an older vlmrl still reads the migrated
file (it names its columns).

Every write is committed at once in WAL mode with ``synchronous=FULL``: a process killed mid-run
loses at most the answer in flight, and the file stays consistent.

Only stdlib and numpy are used here; this module is below the labelers in the data flow.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ANSWERED = "answered"
UNSURE = "unsure"
UNPARSEABLE = "unparseable"
FAILED = "failed"
STATUSES = (ANSWERED, UNSURE, UNPARSEABLE, FAILED)
FINAL_STATUSES = frozenset({ANSWERED, UNSURE, UNPARSEABLE})

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    key TEXT PRIMARY KEY,
    first_hash TEXT NOT NULL,
    second_hash TEXT NOT NULL,
    goal TEXT NOT NULL,
    config_json TEXT NOT NULL,
    analysis TEXT,
    answer TEXT,
    label REAL,
    status TEXT NOT NULL CHECK (status IN ('answered', 'unsure', 'unparseable', 'failed')),
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    true_reward_first REAL,
    true_reward_second REAL,
    thumb_first BLOB,
    thumb_second BLOB,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    p_first REAL,
    p_second REAL
);
CREATE INDEX IF NOT EXISTS labels_status ON labels (status);
"""

_COLUMNS = (
    "key",
    "first_hash",
    "second_hash",
    "goal",
    "config_json",
    "analysis",
    "answer",
    "label",
    "status",
    "error",
    "attempts",
    "true_reward_first",
    "true_reward_second",
    "thumb_first",
    "thumb_second",
    "created_at",
    "updated_at",
    "p_first",
    "p_second",
)

# Columns added after schema version 1 was first released: (name, declaration), added in place
# to stores created without them. Additive only, so the schema version stays 1.
_ADDED_COLUMNS = (("p_first", "REAL"), ("p_second", "REAL"))

CONFIDENCE_BUCKETS = ((0.0, 0.6), (0.6, 0.8), (0.8, 0.95), (0.95, math.inf))
"""Buckets of an answer's confidence ``max(p_first, p_second)`` for the agreement report:
``[low, high)`` each; ``<0.6``, ``0.6-0.8``, ``0.8-0.95``, ``>=0.95``."""


def frame_hash(frame: np.ndarray) -> str:
    """sha256 hex digest of one frame's dtype, shape and pixel bytes."""
    frame = np.ascontiguousarray(frame)
    digest = hashlib.sha256()
    digest.update(f"{frame.dtype.str}{frame.shape}".encode())
    digest.update(frame.tobytes())
    return digest.hexdigest()


def canonical_config(config: Mapping[str, Any]) -> str:
    """The labeler config as canonical JSON (sorted keys, no whitespace): equal configs, equal text."""
    return json.dumps(dict(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def pair_key(first_hash: str, second_hash: str, goal: str, config_json: str) -> str:
    """The store key of one query: sha256 over both frame hashes, the goal and the config JSON.

    Order matters: (a, b) and (b, a) are different queries with opposite labels.
    """
    payload = json.dumps([first_hash, second_hash, goal, config_json], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def encode_png(frame: np.ndarray) -> bytes:
    """A uint8 ``[H, W, 3]`` RGB frame as PNG bytes (stdlib zlib, no filtering)."""
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"encode_png needs an [H, W, 3] frame, got shape {frame.shape}")
    height, width, _ = frame.shape
    # Each scanline starts with its filter type byte (0 = none).
    raw = np.concatenate([np.zeros((height, 1), np.uint8), frame.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)),
            chunk(b"IEND", b""),
        ]
    )


def thumbnail(frame: np.ndarray, max_side: int = 64) -> bytes:
    """A small PNG of ``frame`` (nearest-pixel striding so the longer side is <= ``max_side``)."""
    height, width = frame.shape[:2]
    step = max(1, math.ceil(max(height, width) / max_side))
    return encode_png(frame[::step, ::step])


def answer_kind(status: str, label: float | None) -> str:
    """``"image 1"`` / ``"image 2"`` for an answered pair (label 1.0 / 0.0), else the status."""
    if status == ANSWERED:
        return "image 1" if label == 1.0 else "image 2"
    return status


@dataclass(frozen=True)
class LabelRow:
    """One stored query. ``label`` is None unless ``status == "answered"``; times are Unix seconds.
    ``p_first`` / ``p_second`` are the answer-token probabilities (see the module docstring), or
    None when the answer was read from text."""

    key: str
    first_hash: str
    second_hash: str
    goal: str
    config_json: str
    analysis: str | None
    answer: str | None
    label: float | None
    status: str
    error: str | None
    attempts: int
    true_reward_first: float | None
    true_reward_second: float | None
    thumb_first: bytes | None
    thumb_second: bytes | None
    created_at: float
    updated_at: float
    p_first: float | None = None
    p_second: float | None = None

    @property
    def is_final(self) -> bool:
        """True for answered/unsure/unparseable rows: a rerun must not ask again."""
        return self.status in FINAL_STATUSES

    @property
    def label_value(self) -> float:
        """The label as the labelers return it: 1.0, 0.0, or NaN for anything but ``answered``."""
        return float(self.label) if self.label is not None else math.nan

    @property
    def confidence(self) -> float:
        """``max(p_first, p_second)``, or NaN when the answer has no probabilities."""
        if self.p_first is None or self.p_second is None:
            return math.nan
        return max(float(self.p_first), float(self.p_second))

    @property
    def answer_kind(self) -> str:
        """``"image 1"`` / ``"image 2"`` (answered, label 1.0 / 0.0), or the status."""
        return answer_kind(self.status, self.label)


class LabelStore:
    """SQLite store of preference queries (see the module docstring for the statuses).

    Safe to share between the threads of one labeler (one connection behind a lock) and between
    processes (SQLite file locking, with a busy timeout).

    Args:
        path: the SQLite file; created with its parent folder if missing.
        busy_timeout_s: how long a write waits for another process's lock.
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.Lock()
        if read_only:
            self._conn = _connect_read_only(self.path, busy_timeout_s)
            tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "labels" not in tables:
                self._conn.close()
                raise ValueError("it holds no 'labels' table (a SQLite database of another program?)")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: each answer costs money, an fsync per commit costs ~1 ms.
            self._conn.execute("PRAGMA synchronous=FULL")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise ValueError(
                f"{self.path} has label store schema version {version}; this vlmrl reads "
                f"version {SCHEMA_VERSION}"
            )
        if not read_only:
            with self._lock:
                self._conn.executescript(_SCHEMA)
                self._add_missing_columns()
                self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # A read-only store written before a column was added reads it as NULL.
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(labels)")}
        self._select = ",".join(name if name in present else f"NULL AS {name}" for name in _COLUMNS)

    def _add_missing_columns(self) -> None:
        """Migrate a store created before ``_ADDED_COLUMNS`` existed (caller holds the lock)."""
        if not self._missing_columns():
            return
        # Under the write lock and checked again: two processes opening one old store at the
        # same time must not both add a column.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for name, declaration in self._missing_columns():
                self._conn.execute(f"ALTER TABLE labels ADD COLUMN {name} {declaration}")
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def _missing_columns(self) -> list[tuple[str, str]]:
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(labels)")}
        return [(name, declaration) for name, declaration in _ADDED_COLUMNS if name not in present]

    def __repr__(self) -> str:
        return f"LabelStore({str(self.path)!r})"

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def get(self, key: str) -> LabelRow | None:
        """The row stored under ``key``, or None."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: list[str]) -> dict[str, LabelRow]:
        """Rows for the keys that are stored, as ``{key: row}``."""
        found: dict[str, LabelRow] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):  # stay below SQLite's variable limit
                batch = unique[start : start + 500]
                marks = ",".join("?" * len(batch))
                query = f"SELECT {self._select} FROM labels WHERE key IN ({marks})"
                for values in self._conn.execute(query, batch):
                    row = LabelRow(*values)
                    found[row.key] = row
        return found

    def put(
        self,
        key: str,
        *,
        first_hash: str,
        second_hash: str,
        goal: str,
        config_json: str,
        status: str,
        label: float | None = None,
        analysis: str | None = None,
        answer: str | None = None,
        error: str | None = None,
        attempts: int = 1,
        true_rewards: tuple[float, float] | None = None,
        thumbnails: tuple[bytes, bytes] | None = None,
        p_first: float | None = None,
        p_second: float | None = None,
    ) -> None:
        """Insert or replace the result of one query and commit it.

        ``attempts`` (HTTP requests spent on this try) adds to the attempts already stored, so a
        key that failed twice and then succeeded shows every request it cost. A final row is
        never overwritten by a failure. ``p_first`` / ``p_second``: answer-token probabilities
        (both or neither, each in [0, 1], summing to at most 1).

        Raises:
            ValueError: unknown status, a label that does not fit the status, or bad probabilities.
        """
        label = _checked_label(status, label)
        p_first, p_second = _checked_probabilities(p_first, p_second)
        reward_first, reward_second = (
            (float(true_rewards[0]), float(true_rewards[1])) if true_rewards is not None else (None, None)
        )
        thumb_first, thumb_second = thumbnails if thumbnails is not None else (None, None)
        now = time.time()
        with self._lock:
            # BEGIN IMMEDIATE takes the write lock first, so the read below cannot go stale.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                old = self._conn.execute(
                    "SELECT status, attempts, created_at, true_reward_first, true_reward_second, "
                    "thumb_first, thumb_second FROM labels WHERE key = ?",
                    (key,),
                ).fetchone()
                if old is not None:
                    old_status, old_attempts, created_at, old_r1, old_r2, old_t1, old_t2 = old
                    if old_status in FINAL_STATUSES and status == FAILED:
                        self._conn.execute("ROLLBACK")
                        return
                    attempts += old_attempts
                    reward_first = reward_first if reward_first is not None else old_r1
                    reward_second = reward_second if reward_second is not None else old_r2
                    thumb_first = thumb_first if thumb_first is not None else old_t1
                    thumb_second = thumb_second if thumb_second is not None else old_t2
                else:
                    created_at = now
                self._conn.execute(
                    f"INSERT OR REPLACE INTO labels ({','.join(_COLUMNS)}) "
                    f"VALUES ({','.join('?' * len(_COLUMNS))})",
                    (
                        key,
                        first_hash,
                        second_hash,
                        goal,
                        config_json,
                        analysis,
                        answer,
                        label,
                        status,
                        error,
                        int(attempts),
                        reward_first,
                        reward_second,
                        thumb_first,
                        thumb_second,
                        created_at,
                        now,
                        p_first,
                        p_second,
                    ),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def counts(self) -> dict[str, int]:
        """Number of rows per status (every status present, zeros included)."""
        result = dict.fromkeys(STATUSES, 0)
        with self._lock:
            for status, count in self._conn.execute("SELECT status, COUNT(*) FROM labels GROUP BY status"):
                result[status] = count
        return result

    def iter_rows(self, status: str | None = None) -> Iterator[LabelRow]:
        """All rows (or those with ``status``) in insertion order.

        Rows are read in one query up front, so writing while iterating is safe.
        """
        query = f"SELECT {self._select} FROM labels"
        params: tuple[str, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            params = (status,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY created_at, rowid", params).fetchall()
        for values in rows:
            yield LabelRow(*values)

    def rewrite_labels(
        self, decide: Callable[[LabelRow], tuple[str, float | None, str | None] | None]
    ) -> list[tuple[LabelRow, str, float | None]]:
        """Re-decide the status and label of every final row in one transaction (all or nothing).

        ``decide(row)`` returns the new ``(status, label, error)`` (a final status; the label as
        :meth:`put` requires it) or None to leave the row alone. Rows whose status and label stay
        the same are not written. The write lock is held from the read to the commit, so no
        answer stored meanwhile is lost or overwritten with a stale decision.

        Returns:
            ``(row before, new status, new label)`` for every row that changed.

        Raises:
            ValueError: ``decide`` returned a non-final status or a label that does not fit it
                (nothing is written).
        """
        changed: list[tuple[LabelRow, str, float | None]] = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                marks = ",".join("?" * len(FINAL_STATUSES))
                rows = self._conn.execute(
                    f"SELECT {self._select} FROM labels WHERE status IN ({marks}) ORDER BY created_at, rowid",
                    tuple(sorted(FINAL_STATUSES)),
                ).fetchall()
                now = time.time()
                for values in rows:
                    row = LabelRow(*values)
                    decision = decide(row)
                    if decision is None:
                        continue
                    status, label, error = decision
                    if status not in FINAL_STATUSES:
                        raise ValueError(f"rewrite_labels keeps rows final; got status {status!r}")
                    label = _checked_label(status, label)
                    if status == row.status and label == row.label:
                        continue
                    self._conn.execute(
                        "UPDATE labels SET status = ?, label = ?, error = ?, updated_at = ? WHERE key = ?",
                        (status, label, error, now, row.key),
                    )
                    changed.append((row, status, label))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return changed

    def summary(self, oracle: Mapping[str, float] | None = None) -> LabelSummary:
        """:func:`summarise_labels` over every row of this store."""
        return summarise_labels(self.iter_rows(), oracle)

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result: ``"ok"`` for a sound file."""
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0]


SQLITE_HEADER = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file."""


def file_header(path: Path) -> bytes:
    """The first ``len(SQLITE_HEADER)`` bytes of ``path`` (fewer for a shorter file); OSError if unreadable.
    Compared with :data:`SQLITE_HEADER`, it tells a label store from any other file without opening it."""
    with Path(path).open("rb") as file:
        return file.read(len(SQLITE_HEADER))


def _connect_read_only(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """Open ``path`` without writing anything. A WAL database normally needs its ``-shm`` file
    beside it; where the folder or file is read-only (an archived run), fall back to SQLite's
    ``immutable`` mode, which reads the file as it is."""
    uri = path.resolve().as_uri()
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=busy_timeout_s, check_same_thread=False,
                               isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False, isolation_level=None)


def _checked_label(status: str, label: float | None) -> float | None:
    """The label to store for ``status`` (0.0/1.0 when answered, else None); ValueError otherwise."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if status == ANSWERED:
        if label is None or float(label) not in (0.0, 1.0):
            raise ValueError(f"an answered row needs label 0.0 or 1.0, got {label!r}")
        return float(label)
    if label is not None and not math.isnan(label):
        raise ValueError(f"a {status} row carries no label, got {label!r}")
    return None


def _checked_probabilities(p_first: float | None, p_second: float | None) -> tuple[float | None, float | None]:
    """Both probabilities or neither (NaN counts as missing); each in [0, 1], their sum <= 1."""
    missing = [p is None or math.isnan(p) for p in (p_first, p_second)]
    if all(missing):
        return None, None
    if any(missing):
        raise ValueError(f"store both answer probabilities or neither, got {p_first!r} and {p_second!r}")
    p_first, p_second = float(p_first), float(p_second)
    if not (0.0 <= p_first <= 1.0 and 0.0 <= p_second <= 1.0 and p_first + p_second <= 1.0 + 1e-6):
        raise ValueError(f"answer probabilities must be in [0, 1] and sum to <= 1, got {p_first} and {p_second}")
    return p_first, p_second


def bucket_name(low: float, high: float) -> str:
    """``"<0.6"``, ``"0.6-0.8"``, ``">=0.95"``: how a confidence bucket is printed."""
    if low <= 0.0:
        return f"<{high:g}"
    if math.isinf(high):
        return f">={low:g}"
    return f"{low:g}-{high:g}"


@dataclass(frozen=True)
class BucketAgreement:
    """Agreement with the scripted teacher of the answered pairs in one confidence bucket.

    ``name`` is a :func:`bucket_name` or ``"no probabilities"`` (answers read from text).
    ``compared`` pairs have known, unequal true rewards; ``agreeing`` of them were labelled the
    way the true rewards order them (label > 0.5 iff r_first > r_second); ``answered`` counts
    every answered pair in the bucket.
    """

    name: str
    answered: int = 0
    compared: int = 0
    agreeing: int = 0

    @property
    def fraction(self) -> float:
        return self.agreeing / self.compared if self.compared else math.nan


@dataclass(frozen=True)
class LabelSummary:
    """What a store says about its labeler: answer kinds, parse rate, agreement by confidence.

    Attributes:
        counts: rows per status (every status, zeros included).
        kinds: answered split by side plus the other statuses: ``image 1``, ``image 2``,
            ``unsure``, ``unparseable``, ``failed``.
        parsed, answers: final rows whose answer parsed (answered + unsure) and final rows
            (answered + unsure + unparseable); failed queries brought no answer to parse.
        with_probabilities: rows holding answer-token probabilities.
        buckets: agreement per :data:`CONFIDENCE_BUCKETS` bucket, then ``no probabilities``.
    """

    counts: dict[str, int]
    kinds: dict[str, int]
    parsed: int
    answers: int
    with_probabilities: int
    buckets: tuple[BucketAgreement, ...] = field(default_factory=tuple)

    @property
    def parse_rate(self) -> float:
        """parsed / answers, NaN without answers."""
        return self.parsed / self.answers if self.answers else math.nan

    def as_dict(self) -> dict[str, object]:
        """JSON-able form (NaN as None), e.g. for a run's ``summary.json``."""

        def finite(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "pairs": sum(self.counts.values()),
            "counts": dict(self.counts),
            "kinds": dict(self.kinds),
            "parse_rate": finite(self.parse_rate),
            "with_probabilities": self.with_probabilities,
            "agreement_by_confidence": {
                b.name: {"answered": b.answered, "compared": b.compared, "agreeing": b.agreeing,
                         "agreement": finite(b.fraction)}
                for b in self.buckets
            },
        }


def summarise_labels(rows: Iterable[LabelRow], oracle: Mapping[str, float] | None = None) -> LabelSummary:
    """Count answer kinds and measure agreement with the scripted teacher per confidence bucket.

    True rewards come from the row, else from ``oracle`` (``{frame_sha256: reward}``); pairs
    whose true rewards are unknown or equal are left out of the agreement.
    """
    counts = dict.fromkeys(STATUSES, 0)
    kinds = dict.fromkeys(("image 1", "image 2", UNSURE, UNPARSEABLE, FAILED), 0)
    names = [bucket_name(low, high) for low, high in CONFIDENCE_BUCKETS] + ["no probabilities"]
    tallies = {name: [0, 0, 0] for name in names}  # answered, compared, agreeing
    with_probabilities = 0
    for row in rows:
        counts[row.status] += 1
        kinds[row.answer_kind] += 1
        confidence = row.confidence
        with_probabilities += not math.isnan(confidence)
        if row.status != ANSWERED:
            continue
        if math.isnan(confidence):
            name = names[-1]
        else:
            name = next(bucket_name(low, high) for low, high in CONFIDENCE_BUCKETS if confidence < high)
        tally = tallies[name]
        tally[0] += 1
        r1 = row.true_reward_first if row.true_reward_first is not None else (oracle or {}).get(row.first_hash)
        r2 = row.true_reward_second if row.true_reward_second is not None else (oracle or {}).get(row.second_hash)
        if r1 is None or r2 is None or r1 == r2:
            continue
        tally[1] += 1
        tally[2] += int((row.label > 0.5) == (r1 > r2))
    parsed = counts[ANSWERED] + counts[UNSURE]
    buckets = tuple(BucketAgreement(name, *tallies[name]) for name in names)
    return LabelSummary(counts, kinds, parsed, parsed + counts[UNPARSEABLE], with_probabilities, buckets)
