"""OpenAIPreferenceLabeler against a real chat-completions HTTP server on 127.0.0.1.

The server (tests/openai_test_server.py) judges brightness: the brighter image "better achieves
the goal". VLM answer 0 means image 1 is better, which is label 1.0.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from openai_test_server import Hang, Malformed, OpenAITestServer, Reply, Status
from vlmrl.label_store import LabelStore
from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler, parse_retry_after

GOAL = "to show the brighter image"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server():
    with OpenAITestServer(model="test-vlm") as running:
        yield running
        assert running.protocol_errors == []  # every request the labeler sent was well-formed


def frames(means: list[int], size: int = 24, seed: int = 0) -> np.ndarray:
    """uint8 [N, size, size, 3] frames with the given mean brightness and a random pattern."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-20, 21, size=(len(means), size, size, 3))
    noise -= noise.mean(axis=(1, 2, 3), keepdims=True).round().astype(noise.dtype)
    return np.clip(np.asarray(means).reshape(-1, 1, 1, 1) + noise, 0, 255).astype(np.uint8)


def make_labeler(server: OpenAITestServer, store=None, **kwargs) -> OpenAIPreferenceLabeler:
    options = dict(max_concurrency=1, timeout_s=5.0, max_retries=3, backoff_base_s=0.01, backoff_max_s=0.05)
    options.update(kwargs)
    return OpenAIPreferenceLabeler(server.base_url, "test-vlm", store=store, **options)


def test_two_stage_labels_follow_the_answer_convention(server, tmp_path):
    first, second = frames([200, 50, 120, 90]), frames([100, 150, 30, 190], seed=1)
    labeler = make_labeler(server, tmp_path / "labels.sqlite", max_concurrency=4)
    labels = labeler.compare(first, second, GOAL, true_rewards=(first.mean((1, 2, 3)), second.mean((1, 2, 3))))
    assert labels.dtype == np.float32
    np.testing.assert_array_equal(labels, [1.0, 0.0, 1.0, 0.0])
    assert server.count("vision") == 4 and server.count("text") == 4
    # Both frames arrive as separate real PNG images in one message.
    vision = [r for r in server.requests if r.stage == "vision"]
    assert all(r.n_images == 2 and r.path == "/v1/chat/completions" for r in vision)
    sent = sorted(r.image_means for r in vision)
    expected = sorted(zip(first.mean((1, 2, 3)).tolist(), second.mean((1, 2, 3)).tolist()))
    np.testing.assert_allclose(sent, expected)
    stats = labeler.stats
    assert (stats.asked, stats.answered, stats.requests, stats.cached) == (4, 4, 8, 0)
    rows = list(labeler.store.iter_rows())
    assert {r.status for r in rows} == {"answered"}
    assert all(r.analysis.startswith("Image 1 has mean brightness") and r.answer in ("0", "1") for r in rows)
    assert all(r.thumb_first and r.true_reward_first is not None for r in rows)


def test_single_stage_asks_once_per_pair(server):
    labeler = make_labeler(server, two_stage=False)
    labels = labeler.compare(frames([10, 240]), frames([240, 10], seed=1), GOAL)
    np.testing.assert_array_equal(labels, [0.0, 1.0])
    assert server.count("vision") == 2 and server.count("text") == 0


def test_unsure_and_unparseable_answers_are_nan_and_final(server, tmp_path):
    store = tmp_path / "labels.sqlite"
    # pair 0: same brightness, different pattern -> the VLM says -1; pair 1: free-form garbage.
    first, second = frames([128, 200]), frames([128, 20], seed=1)
    server.enqueue("text", Reply("-1"), Reply("The first image, I believe, is closer to the goal."))
    labeler = make_labeler(server, store)
    labels = labeler.compare(first, second, GOAL)
    assert np.isnan(labels).all()  # no label invented for either
    assert (labeler.stats.unsure, labeler.stats.unparseable, labeler.stats.answered) == (1, 1, 0)
    rows = {r.answer: r for r in LabelStore(store).iter_rows()}
    assert rows["-1"].status == "unsure" and rows["-1"].label is None
    garbage = rows["The first image, I believe, is closer to the goal."]
    assert garbage.status == "unparseable" and garbage.label is None
    requests = server.count()
    again = make_labeler(server, store)
    assert np.isnan(again.compare(first, second, GOAL)).all()
    assert server.count() == requests and again.stats.cached == 2


def test_429_waits_for_retry_after_then_labels(server, tmp_path):
    server.enqueue("vision", Status(429, retry_after="1"))
    labeler = make_labeler(server, tmp_path / "labels.sqlite", backoff_base_s=0.001)
    labels = labeler.compare(frames([220]), frames([30], seed=1), GOAL)
    np.testing.assert_array_equal(labels, [1.0])
    assert server.counts() == {("vision", "Status"): 1, ("vision", "default"): 1, ("text", "default"): 1}
    first_try, retry = (r.time for r in server.requests[:2])
    assert retry - first_try >= 0.95  # the header's 1 s, not the 1 ms backoff
    assert labeler.store.get(next(labeler.store.iter_rows()).key).attempts == 3


def test_parse_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("-3") == 0.0


def test_server_errors_are_retried(server):
    server.enqueue("text", Status(500), Status(503))
    labeler = make_labeler(server)
    np.testing.assert_array_equal(labeler.compare(frames([10]), frames([250], seed=1), GOAL), [0.0])
    assert server.count("text") == 3 and server.count("text", "Status") == 2
    assert labeler.stats.requests == 4 and labeler.stats.failed == 0


def test_hanging_server_times_out_records_failure_and_next_run_retries(server, tmp_path):
    store = tmp_path / "labels.sqlite"
    server.set_default("vision", Hang(10))
    labeler = make_labeler(server, store, timeout_s=0.3, max_retries=2)
    started = time.monotonic()
    labels = labeler.compare(frames([220]), frames([30], seed=1), GOAL)
    assert time.monotonic() - started < 3
    assert np.isnan(labels).all()
    assert server.count("vision") == 3 and server.count("text") == 0  # 1 + max_retries, no label asked
    assert (labeler.stats.failed, labeler.stats.answered, labeler.stats.requests) == (1, 0, 3)
    row = next(LabelStore(store).iter_rows())
    assert (row.status, row.label, row.attempts) == ("failed", None, 3)
    assert "within 0.3 s" in row.error and "gave up after 3 requests" in row.error

    server.set_default("vision", None)  # the server recovers; a failure is not a label: ask again
    rerun = make_labeler(server, store)
    np.testing.assert_array_equal(rerun.compare(frames([220]), frames([30], seed=1), GOAL), [1.0])
    assert rerun.stats.cached == 0 and rerun.stats.answered == 1
    row = LabelStore(store).get(row.key)
    assert (row.status, row.label, row.attempts) == ("answered", 1.0, 5)


@pytest.mark.parametrize("behaviour", [Status(400), Status(404), Malformed()], ids=["400", "404", "malformed"])
def test_client_errors_and_malformed_responses_fail_without_retry(server, tmp_path, behaviour):
    server.enqueue("vision", behaviour)
    labeler = make_labeler(server, tmp_path / "labels.sqlite")
    assert np.isnan(labeler.compare(frames([220]), frames([30], seed=1), GOAL)).all()
    assert server.count() == 1 and labeler.stats.failed == 1
    assert next(labeler.store.iter_rows()).status == "failed"


def test_unreachable_server_fails_after_retries(tmp_path):
    with OpenAITestServer() as server:
        url = server.base_url
    labeler = OpenAIPreferenceLabeler(
        url, "m", store=tmp_path / "labels.sqlite", max_retries=2, backoff_base_s=0.01, timeout_s=1
    )
    assert np.isnan(labeler.compare(frames([220]), frames([30], seed=1), GOAL)).all()
    row = next(labeler.store.iter_rows())
    assert (row.status, row.attempts) == ("failed", 3) and "cannot reach" in row.error


def test_second_run_with_the_same_store_makes_zero_requests(server, tmp_path):
    store = tmp_path / "labels.sqlite"
    first, second = frames([200, 50, 120, 128, 7]), frames([100, 150, 30, 128, 250], seed=1)
    labels = make_labeler(server, store, max_concurrency=3).compare(first, second, GOAL)
    requests = server.count()
    assert requests == 10
    rerun = make_labeler(server, store, max_concurrency=3)
    np.testing.assert_array_equal(rerun.compare(first, second, GOAL), labels)
    assert server.count() == requests
    assert rerun.stats.cached == 5 and rerun.stats.asked == 0

    # Another prompt is another question: it is asked, not read from the store.
    reworded = make_labeler(server, store, labelling_prompt="{analysis}\nAnswer 0, 1 or -1 on a single line.")
    reworded.compare(first[:1], second[:1], GOAL)
    assert server.count() == requests + 2


def test_identical_and_near_identical_pairs_are_skipped_without_requests(server):
    first = frames([100, 150])
    second = first.copy()
    second[1, 0, 0, 0] += 1  # one channel of one pixel: mean difference 1/1728 levels
    labeler = make_labeler(server)
    assert np.isnan(labeler.compare(first, second, GOAL)).all()
    assert server.count() == 0
    assert labeler.stats.skipped_identical == 2 and labeler.stats.asked == 0


def test_api_key_goes_in_the_header_only(server, tmp_path, monkeypatch, caplog):
    key = "sk-test-0123456789abcdefSECRET"
    monkeypatch.setenv("VLMRL_TEST_KEY", key)
    store = tmp_path / "labels.sqlite"
    server.enqueue("vision", Status(401, message=f"Incorrect API key provided: {key}"))
    labeler = make_labeler(server, store, api_key_env="VLMRL_TEST_KEY")
    with caplog.at_level(logging.DEBUG):
        labels = labeler.compare(frames([200, 10]), frames([100, 90], seed=1), GOAL)
    assert np.isnan(labels[0]) and labels[1] == 0.0
    assert {r.authorization for r in server.requests} == {f"Bearer {key}"}
    labeler.store.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("labels.sqlite"))
    assert b"Incorrect API key provided: ***" in stored  # the server's echo was scrubbed
    assert key.encode() not in stored
    assert key not in repr(labeler) and key not in str(labeler.config) and key not in caplog.text
    assert key not in str(vars(labeler))

    monkeypatch.delenv("VLMRL_TEST_KEY")
    server.reset_counts()
    make_labeler(server, api_key_env="VLMRL_TEST_KEY").compare(frames([200]), frames([10], seed=1), GOAL)
    assert {r.authorization for r in server.requests} == {None}  # local servers need no header


def test_compare_validates_its_inputs(server):
    labeler = make_labeler(server)
    with pytest.raises(ValueError, match="same shape"):
        labeler.compare(frames([1, 2]), frames([1]), GOAL)
    with pytest.raises(ValueError, match="uint8"):
        labeler.compare(frames([1]).astype(np.float32), frames([1]), GOAL)
    with pytest.raises(ValueError, match="true_rewards"):
        labeler.compare(frames([1]), frames([200]), GOAL, true_rewards=([1.0, 2.0], [0.0, 1.0]))
    assert labeler.compare(frames([1])[:0], frames([1])[:0], GOAL).shape == (0,)
    assert server.count() == 0


LABEL_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from test_openai_preference import frames, GOAL
    from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler

    url, store = sys.argv[1], sys.argv[2]
    n = int(sys.argv[4])
    labeler = OpenAIPreferenceLabeler(url, "test-vlm", store=store, max_concurrency=1)
    labeler.compare(frames(list(range(0, 5 * n, 5))), frames(list(range(250, 250 - 5 * n, -5)), seed=1), GOAL)
    """
)


def test_killed_labelling_process_loses_nothing_stored(tmp_path):
    n = 24
    store = tmp_path / "labels.sqlite"
    script = tmp_path / "label.py"
    script.write_text(LABEL_SCRIPT)
    with OpenAITestServer(model="test-vlm", latency_ms=40) as server:
        process = subprocess.Popen(
            [sys.executable, str(script), server.base_url, str(store), str(REPO / "tests"), str(n)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            answered = 0
            while answered < 5:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline, "the labelling script stored nothing in 60 s"
                time.sleep(0.02)
                if store.exists():
                    try:
                        with closing(sqlite3.connect(store, timeout=5)) as conn:
                            answered = conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
                    except sqlite3.OperationalError:  # table not created yet
                        pass
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == -signal.SIGKILL

        with LabelStore(store) as label_store:
            assert label_store.integrity_check() == "ok"
            stored = label_store.counts()
            assert stored["answered"] == sum(stored.values())  # no half-written or failed rows
            kept = stored["answered"]
        assert 5 <= kept < n

        server.reset_counts()
        rerun = OpenAIPreferenceLabeler(server.base_url, "test-vlm", store=store, max_concurrency=4)
        labels = rerun.compare(frames(list(range(0, 5 * n, 5))), frames(list(range(250, 250 - 5 * n, -5)), seed=1), GOAL)
        assert server.count("vision") == n - kept and server.count("text") == n - kept
        assert rerun.stats.cached == kept and rerun.stats.answered == n - kept
        expected = np.where(np.arange(0, 5 * n, 5) > np.arange(250, 250 - 5 * n, -5), 1.0, 0.0)
        np.testing.assert_array_equal(labels, expected)


def test_label_bench_reports_each_level_and_stored_pairs_cost_nothing(tmp_path):
    from vlmrl.bench_labels import format_label_bench, run_label_bench

    with OpenAITestServer(model="test-vlm", latency_ms=50) as server:
        rows = run_label_bench(server.base_url, "test-vlm", concurrency_levels=(1, 4), n_pairs=8, store_dir=tmp_path)
        assert server.count() == 2 * 8 * 2  # two turns per pair, two levels; the reruns asked nothing
        assert server.protocol_errors == []
    assert [r["concurrency"] for r in rows] == [1, 4]
    for row in rows:
        assert row["requests"] == 16 and row["failed"] == 0 and row["answered"] + row["unsure"] == 8
        assert row["rerun_requests"] == 0
    # 16 sequential 50 ms requests vs. 4 rounds of 4: a loose bound that survives a busy machine.
    assert rows[1]["pairs_per_s"] > 1.5 * rows[0]["pairs_per_s"]
    assert "speedup" in format_label_bench(rows)


def test_a_pair_repeated_in_one_batch_is_asked_once(server):
    first, second = frames([200, 200, 10]), frames([10, 10, 200], seed=1)
    first[1], second[1] = first[0], second[0]
    labeler = make_labeler(server, max_concurrency=4)
    labels = labeler.compare(first, second, GOAL)
    np.testing.assert_array_equal(labels, [1.0, 1.0, 0.0])
    assert server.count("vision") == 2 and labeler.stats.asked == 2
