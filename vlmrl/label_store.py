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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
    updated_at REAL NOT NULL
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
)


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


@dataclass(frozen=True)
class LabelRow:
    """One stored query. ``label`` is None unless ``status == "answered"``; times are Unix seconds."""

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

    @property
    def is_final(self) -> bool:
        """True for answered/unsure/unparseable rows: a rerun must not ask again."""
        return self.status in FINAL_STATUSES

    @property
    def label_value(self) -> float:
        """The label as the labelers return it: 1.0, 0.0, or NaN for anything but ``answered``."""
        return float(self.label) if self.label is not None else math.nan


class LabelStore:
    """SQLite store of preference queries (see the module docstring for the statuses).

    Safe to share between the threads of one labeler (one connection behind a lock) and between
    processes (SQLite file locking, with a busy timeout).

    Args:
        path: the SQLite file; created with its parent folder if missing.
        busy_timeout_s: how long a write waits for another process's lock.
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
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
        with self._lock:
            self._conn.executescript(_SCHEMA)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

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
                query = f"SELECT {','.join(_COLUMNS)} FROM labels WHERE key IN ({marks})"
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
    ) -> None:
        """Insert or replace the result of one query and commit it.

        ``attempts`` (HTTP requests spent on this try) adds to the attempts already stored, so a
        key that failed twice and then succeeded shows every request it cost. A final row is
        never overwritten by a failure.

        Raises:
            ValueError: unknown status, or a label that does not fit the status.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if status == ANSWERED:
            if label is None or float(label) not in (0.0, 1.0):
                raise ValueError(f"an answered row needs label 0.0 or 1.0, got {label!r}")
            label = float(label)
        elif label is not None and not math.isnan(label):
            raise ValueError(f"a {status} row carries no label, got {label!r}")
        else:
            label = None
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
        query = f"SELECT {','.join(_COLUMNS)} FROM labels"
        params: tuple[str, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            params = (status,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY created_at, rowid", params).fetchall()
        for values in rows:
            yield LabelRow(*values)

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result: ``"ok"`` for a sound file."""
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0]
