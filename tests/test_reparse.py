"""The label store keeps raw answers: in-place migration of old stores, `label-pairs --reparse`
and the report (parse rate, answer kinds, agreement per confidence bucket), on real SQLite files."""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
from contextlib import closing

import numpy as np
import pytest

from openai_test_server import OpenAITestServer
from test_openai_preference import GOAL, frames
from vlmrl import label_pairs
from vlmrl.label_store import LabelStore, canonical_config, frame_hash, pair_key
from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler

# The schema as the first release created it, before p_first / p_second.
OLD_SCHEMA = """
CREATE TABLE labels (
    key TEXT PRIMARY KEY, first_hash TEXT NOT NULL, second_hash TEXT NOT NULL, goal TEXT NOT NULL,
    config_json TEXT NOT NULL, analysis TEXT, answer TEXT, label REAL,
    status TEXT NOT NULL CHECK (status IN ('answered', 'unsure', 'unparseable', 'failed')),
    error TEXT, attempts INTEGER NOT NULL DEFAULT 0, true_reward_first REAL, true_reward_second REAL,
    thumb_first BLOB, thumb_second BLOB, created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE INDEX labels_status ON labels (status);
PRAGMA user_version=1;
"""
CONFIG = canonical_config({"model": "m", "mode": "single-stage"})


def run_label_pairs(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    label_pairs.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["label-pairs", *argv])
    return args.func(args)


def put(store: LabelStore, key: str, status: str, label: float | None = None, **extra) -> None:
    store.put(key, first_hash="a" * 64, second_hash="b" * 64, goal="g", config_json=CONFIG, status=status,
              label=label, **extra)


def test_an_old_store_is_migrated_in_place_and_read_without_asking_again(tmp_path):
    path = tmp_path / "labels.sqlite"
    first, second = frames([200, 20]), frames([10, 230], seed=1)
    with OpenAITestServer(model="test-vlm") as server:
        labeler = OpenAIPreferenceLabeler(server.base_url, "test-vlm", two_stage=False)
        config_json = canonical_config(labeler.config)
        # Write the store as the first release did: its schema, its rows.
        with closing(sqlite3.connect(path)) as conn:
            conn.executescript(OLD_SCHEMA)
            for i, (answer, label) in enumerate((("0", 1.0), ("1", 0.0))):
                h1, h2 = frame_hash(first[i]), frame_hash(second[i])
                conn.execute(
                    "INSERT INTO labels VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (pair_key(h1, h2, GOAL, config_json), h1, h2, GOAL, config_json, None, answer, label,
                     "answered", None, 1, None, None, None, None, 1000.0 + i, 1000.0 + i),
                )
            conn.commit()
        with closing(sqlite3.connect(path)) as conn:
            before = conn.execute("SELECT * FROM labels ORDER BY rowid").fetchall()

        with LabelStore(path) as store:
            rows = list(store.iter_rows())
            assert [(r.answer, r.label, r.p_first, r.p_second) for r in rows] == [("0", 1.0, None, None),
                                                                                 ("1", 0.0, None, None)]
        with closing(sqlite3.connect(path)) as conn:
            columns = [row[1] for row in conn.execute("PRAGMA table_info(labels)")]
            after = conn.execute("SELECT * FROM labels ORDER BY rowid").fetchall()
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert columns[-2:] == ["p_first", "p_second"]
        assert [row[:17] for row in after] == before and all(row[17:] == (None, None) for row in after)
        LabelStore(path).close()  # opening a migrated store again changes nothing

        labeler = OpenAIPreferenceLabeler(server.base_url, "test-vlm", two_stage=False, store=path)
        labels, p_first, _ = labeler.compare_with_confidence(first, second, GOAL)
        np.testing.assert_array_equal(labels, [1.0, 0.0])
        assert np.isnan(p_first).all()
        assert server.count() == 0 and labeler.stats.cached == 2  # same keys: nothing asked again


def reparse_store_fixture(path) -> None:
    with LabelStore(path) as store:
        put(store, "parsed-now", "unparseable", answer="Final answer: 0", error="answer is not 0, 1 or -1")
        put(store, "ambiguous-now", "answered", 1.0, answer="0 or 1")
        put(store, "same", "answered", 0.0, answer="1", true_rewards=(0.0, 1.0))
        put(store, "unsure", "unsure", answer="-1")
        put(store, "failed", "failed", error="HTTP 503")
        put(store, "from-probabilities", "answered", 1.0, answer="0 or", p_first=0.7, p_second=0.2)
        put(store, "empty-analysis", "unparseable", analysis="", error="empty analysis")


def test_reparse_updates_labels_without_asking_and_says_what_changed(tmp_path, capsys):
    path = tmp_path / "labels.sqlite"
    reparse_store_fixture(path)
    assert run_label_pairs([str(path), "--reparse"]) == 0
    out = capsys.readouterr().out
    assert "re-parsed 5 answers: 2 changed (image 1 -> unparseable: 1, unparseable -> image 1: 1)" in out
    with LabelStore(path) as store:
        rows = {r.key: r for r in store.iter_rows()}
    assert (rows["parsed-now"].status, rows["parsed-now"].label, rows["parsed-now"].error) == ("answered", 1.0, None)
    ambiguous = rows["ambiguous-now"]
    assert (ambiguous.status, ambiguous.label) == ("unparseable", None) and "not 0, 1 or -1" in ambiguous.error
    assert ambiguous.answer == "0 or 1"  # the raw answer stays for the next parser
    assert rows["from-probabilities"].label == 1.0  # read from token probabilities: kept
    assert rows["failed"].status == "failed" and rows["empty-analysis"].error == "empty analysis"
    assert (rows["same"].status, rows["same"].label) == ("answered", 0.0)
    assert "answered           3" in out  # the report shows the new labels

    assert run_label_pairs([str(path), "--reparse"]) == 0
    assert "re-parsed 5 answers: 0 changed\n" in capsys.readouterr().out


def test_rewrite_labels_is_all_or_nothing(tmp_path):
    path = tmp_path / "labels.sqlite"
    reparse_store_fixture(path)
    seen = []

    def decide(row):
        seen.append(row.key)
        if len(seen) == 2:
            raise RuntimeError("parser crashed")
        return "unsure", None, None

    with LabelStore(path) as store:
        before = [(r.status, r.label) for r in store.iter_rows()]
        with pytest.raises(RuntimeError, match="parser crashed"):
            store.rewrite_labels(decide)
        assert [(r.status, r.label) for r in store.iter_rows()] == before
        with pytest.raises(ValueError, match="final"):
            store.rewrite_labels(lambda row: ("failed", None, "no"))
        with pytest.raises(ValueError, match="answered row needs label"):
            store.rewrite_labels(lambda row: ("answered", 0.5, None))
        assert [(r.status, r.label) for r in store.iter_rows()] == before


def test_report_without_probabilities_says_na(tmp_path, capsys):
    path = tmp_path / "labels.sqlite"
    reparse_store_fixture(path)
    assert run_label_pairs([str(path)]) == 0
    out = capsys.readouterr().out
    # Final rows: 3 answered, 1 unsure, 2 unparseable (the stored, old-parser statuses).
    assert "parse rate: 0.667 (4/6 answers read as 0, 1 or -1; 1 failed queries brought no answer)" in out
    assert "image 1 (0) 2 (28.6%), image 2 (1) 1 (14.3%), unsure (-1) 1 (14.3%), unparseable 2 (28.6%)" in out
    assert "agreement by confidence max(p_first, p_second):" in out  # one row has probabilities

    empty = tmp_path / "text.sqlite"
    with LabelStore(empty) as store:
        put(store, "k", "answered", 1.0, answer="0", true_rewards=(1.0, 0.0))
    assert run_label_pairs([str(empty)]) == 0
    assert "agreement by confidence: n/a" in capsys.readouterr().out


def test_report_agreement_per_confidence_bucket(tmp_path, capsys):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path) as store:
        # (label, p_first, p_second, rewards): bucket by max(p_first, p_second)
        for i, (label, p1, p2, rewards) in enumerate([
            (1.0, 0.55, 0.40, (0.0, 1.0)),  # <0.6, wrong
            (1.0, 0.70, 0.20, (1.0, 0.0)),  # 0.6-0.8, right
            (0.0, 0.25, 0.70, (0.0, 1.0)),  # 0.6-0.8, right
            (0.0, 0.10, 0.85, (1.0, 0.0)),  # 0.8-0.95, wrong
            (1.0, 0.99, 0.01, (2.0, 1.0)),  # >=0.95, right
            (1.0, 0.97, 0.02, (1.0, 1.0)),  # >=0.95, tie: left out
        ]):
            put(store, f"k{i}", "answered", label, answer=str(int(label == 0.0)), p_first=p1, p_second=p2,
                true_rewards=rewards)
        put(store, "text", "answered", 1.0, answer="0", true_rewards=(3.0, 1.0))
        put(store, "unsure", "unsure", answer="-1", p_first=0.3, p_second=0.3)
        summary = store.summary()
    assert run_label_pairs([str(path)]) == 0
    out = capsys.readouterr().out
    assert "oracle agreement: 0.667 (4/6" in out and "1 ties" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "answered" in line}
    assert lines["<0.6"].split()[1:3] == ["0.000", "(0/1)"]
    assert lines["0.6-0.8"].split()[1:3] == ["1.000", "(2/2)"]
    assert lines["0.8-0.95"].split()[1:3] == ["0.000", "(0/1)"]
    assert lines[">=0.95"].split()[1:4] == ["1.000", "(1/1)", "2"]
    assert lines["no"].split()[2:4] == ["1.000", "(1/1)"]

    as_dict = json.loads(json.dumps(summary.as_dict()))  # JSON-able, for a run summary
    assert as_dict["pairs"] == 8 and as_dict["parse_rate"] == 1.0 and as_dict["with_probabilities"] == 7
    assert as_dict["agreement_by_confidence"][">=0.95"] == {"answered": 2, "compared": 1, "agreeing": 1,
                                                           "agreement": 1.0}
    assert as_dict["agreement_by_confidence"]["<0.6"]["agreement"] == 0.0
    assert math.isnan(LabelStore(tmp_path / "new.sqlite").summary().parse_rate)


def test_a_logprobs_run_is_reported_by_bucket(tmp_path, capsys):
    """End to end: the brightness VLM asked in logprobs mode, the true reward is the brightness."""
    path = tmp_path / "labels.sqlite"
    first, second = frames([200, 100, 30, 150, 90]), frames([20, 104, 220, 110, 80], seed=1)
    with OpenAITestServer(model="test-vlm") as server:
        labeler = OpenAIPreferenceLabeler(server.base_url, "test-vlm", store=path, answer_mode="logprobs",
                                          max_concurrency=2)
        labeler.compare(first, second, GOAL, true_rewards=(first.mean((1, 2, 3)), second.mean((1, 2, 3))))
    assert run_label_pairs([str(path), "--reparse"]) == 0
    out = capsys.readouterr().out
    assert "re-parsed 0 answers: 0 changed" in out  # every label came from probabilities
    assert "oracle agreement: 1.000 (5/5" in out
    summary = LabelStore(path).summary().as_dict()
    buckets = summary["agreement_by_confidence"]
    assert summary["with_probabilities"] == 5 and buckets["no probabilities"]["answered"] == 0
    # Brightness 180 and 190 levels apart: sure; 40 apart: 0.86; 4 and 10 apart: about 0.4 and 0.5.
    assert [buckets[name]["compared"] for name in ("<0.6", "0.6-0.8", "0.8-0.95", ">=0.95")] == [2, 0, 1, 2]


def test_probabilities_are_stored_both_or_neither_and_must_be_probabilities(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite") as store:
        with pytest.raises(ValueError, match="both answer probabilities or neither"):
            put(store, "k", "answered", 1.0, p_first=0.9)
        with pytest.raises(ValueError, match="sum to <= 1"):
            put(store, "k", "answered", 1.0, p_first=0.9, p_second=0.3)
        with pytest.raises(ValueError, match="both answer probabilities or neither"):
            put(store, "k", "answered", 1.0, p_first=0.9, p_second=float("nan"))  # NaN means unknown
        assert store.counts()["answered"] == 0
    with LabelStore(tmp_path / "other.sqlite") as store:
        put(store, "k", "unsure", p_first=float("nan"), p_second=float("nan"))
        row = store.get("k")
        assert (row.p_first, row.p_second) == (None, None) and math.isnan(row.confidence)
