"""The SQLite label store and the `vlmrl label-pairs` command, on real SQLite files."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sqlite3

import numpy as np
import pytest
from PIL import Image

from vlmrl.errors import UserError
from vlmrl.label_store import (
    LabelStore,
    canonical_config,
    encode_png,
    frame_hash,
    pair_key,
    thumbnail,
)
from vlmrl import label_pairs

CONFIG = canonical_config({"model": "m", "mode": "two-stage"})


def _put(store: LabelStore, key: str, status: str, label: float | None = None, **extra) -> None:
    store.put(
        key,
        first_hash="a" * 64,
        second_hash="b" * 64,
        goal="to be bright",
        config_json=CONFIG,
        status=status,
        label=label,
        **extra,
    )


def test_keys_cover_frames_shape_goal_config_and_order():
    frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert frame_hash(frame) == frame_hash(frame.copy())
    assert frame_hash(frame) != frame_hash(frame.reshape(3, 2, 3))  # same bytes, other shape
    h1, h2 = frame_hash(frame), frame_hash(frame[::-1])
    base = pair_key(h1, h2, "goal", CONFIG)
    assert base != pair_key(h2, h1, "goal", CONFIG)
    assert base != pair_key(h1, h2, "other goal", CONFIG)
    assert base != pair_key(h1, h2, "goal", canonical_config({"model": "m2", "mode": "two-stage"}))
    assert canonical_config({"b": 1, "a": [1, 2]}) == canonical_config({"a": [1, 2], "b": 1})


def test_put_get_roundtrip_counts_and_reopen(tmp_path):
    path = tmp_path / "runs" / "labels.sqlite"
    with LabelStore(path) as store:
        _put(store, "k1", "answered", 1.0, analysis="A", answer="0", true_rewards=(2.0, 1.0))
        _put(store, "k2", "unsure", answer="-1")
        _put(store, "k3", "unparseable", answer="maybe", error="answer is not 0, 1 or -1")
        _put(store, "k4", "failed", error="HTTP 500")
        assert store.counts() == {"answered": 1, "unsure": 1, "unparseable": 1, "failed": 1}
    with LabelStore(path) as store:  # everything was committed
        row = store.get("k1")
        assert (row.status, row.label, row.analysis, row.answer) == ("answered", 1.0, "A", "0")
        assert (row.true_reward_first, row.true_reward_second) == (2.0, 1.0)
        assert row.is_final and row.label_value == 1.0
        assert math.isnan(store.get("k2").label_value) and store.get("k2").is_final
        assert not store.get("k4").is_final
        assert store.get("missing") is None
        assert [r.key for r in store.iter_rows()] == ["k1", "k2", "k3", "k4"]
        assert [r.key for r in store.iter_rows("failed")] == ["k4"]
        assert store.integrity_check() == "ok"
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_rows_are_retried_records_and_never_overwrite_final_rows(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite") as store:
        _put(store, "k", "failed", error="timeout", attempts=3)
        _put(store, "k", "failed", error="timeout", attempts=3)
        assert store.get("k").attempts == 6
        _put(store, "k", "answered", 0.0, attempts=2)
        row = store.get("k")
        assert (row.status, row.label, row.attempts, row.error) == ("answered", 0.0, 8, None)
        _put(store, "k", "failed", error="late failure")  # a final answer stays
        assert store.get("k").status == "answered"


def test_put_rejects_labels_that_do_not_fit_the_status(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite") as store:
        with pytest.raises(ValueError, match="status"):
            _put(store, "k", "maybe")
        with pytest.raises(ValueError, match="answered row needs label"):
            _put(store, "k", "answered", 0.5)
        with pytest.raises(ValueError, match="carries no label"):
            _put(store, "k", "unsure", 1.0)
        assert store.counts()["answered"] == 0


def test_png_encoder_and_thumbnails_decode_exactly():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(frame))).convert("RGB"))
    np.testing.assert_array_equal(decoded, frame)
    small = Image.open(io.BytesIO(thumbnail(rng.integers(0, 256, size=(400, 600, 3), dtype=np.uint8), 64)))
    assert max(small.size) <= 64 and small.format == "PNG"


def _run_label_pairs(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    label_pairs.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["label-pairs", *argv])
    return args.func(args)


def _filled_store(path):
    thumb = thumbnail(np.full((32, 32, 3), 200, np.uint8))
    with LabelStore(path) as store:
        # agree, agree, disagree with the true rewards; one tie; one unsure
        for key, label, rewards in (("a", 1.0, (2, 1)), ("b", 0.0, (0, 1)), ("c", 1.0, (0, 5)), ("d", 1.0, (3, 3))):
            _put(store, key, "answered", label, true_rewards=rewards, thumbnails=(thumb, thumb))
        _put(store, "e", "unsure", thumbnails=(thumb, thumb))
        _put(store, "f", "failed", error="HTTP 503")


def test_label_pairs_prints_counts_agreement_and_exports(tmp_path, capsys):
    store = tmp_path / "labels.sqlite"
    _filled_store(store)
    csv_path, jsonl_path, grid_path = tmp_path / "rows.csv", tmp_path / "rows.jsonl", tmp_path / "grid.png"
    assert _run_label_pairs([str(store), "--export", str(csv_path), "--grid", str(grid_path), "--n", "3"]) == 0
    out = capsys.readouterr().out
    assert "6 pairs" in out
    assert "answered           4" in out and "failed             1" in out
    assert "oracle agreement: 0.667 (2/3" in out and "1 ties" in out
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["key"] for r in rows] == ["a", "b", "c", "d", "e", "f"]
    assert rows[5]["status"] == "failed" and rows[5]["error"] == "HTTP 503"
    grid = Image.open(grid_path)
    assert grid.height > 3 * 32  # three pairs, one per line

    assert _run_label_pairs([str(store), "--export", str(jsonl_path), "--status", "answered"]) == 0
    records = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert [r["label"] for r in records] == [1.0, 0.0, 1.0, 1.0]
    assert records[0]["config"] == {"model": "m", "mode": "two-stage"}


def test_label_pairs_oracle_file_and_user_errors(tmp_path, capsys):
    store = tmp_path / "labels.sqlite"
    with LabelStore(store) as s:
        _put(s, "k", "answered", 0.0)  # first_hash a..., second_hash b...; no stored rewards
    oracle = tmp_path / "oracle.json"
    oracle.write_text(json.dumps({"a" * 64: 0.0, "b" * 64: 1.0}))
    assert _run_label_pairs([str(store), "--oracle-rewards", str(oracle)]) == 0
    assert "oracle agreement: 1.000 (1/1" in capsys.readouterr().out
    with pytest.raises(UserError, match="no label store"):
        _run_label_pairs([str(tmp_path / "missing.sqlite")])
    with pytest.raises(UserError, match="thumbnails"):
        _run_label_pairs([str(store), "--grid", str(tmp_path / "g.png")])
    with pytest.raises(UserError, match=".csv or .jsonl"):
        _run_label_pairs([str(store), "--export", str(tmp_path / "rows.txt")])
    not_sqlite = tmp_path / "notes.sqlite"
    not_sqlite.write_text("hello, not a database" * 100)
    with pytest.raises(UserError, match="not a vlmrl label store"):
        _run_label_pairs([str(not_sqlite)])
