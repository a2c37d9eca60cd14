"""Answer modes of the endpoint labeler (text / constrained / logprobs) and its start-up check,
against the real chat-completions test server on 127.0.0.1 and real SQLite stores.

The server (tests/openai_test_server.py) judges brightness. With ``logprobs: true`` its first
answer token follows a softmax over ``0`` (logit (b1 - b2) / 20), ``1`` (the negative), ``-``
(tie_tolerance / 20 = 0.025) and two filler tokens, so the expected probabilities are computed
here from the frames' mean brightness.
"""

from __future__ import annotations

import hashlib
import logging
import math
import socket
import time

import numpy as np
import pytest

from openai_test_server import OpenAITestServer, Reply, Status
from test_openai_preference import GOAL, frames
from vlmrl.errors import UserError
from vlmrl.label_store import LabelStore, canonical_config
from vlmrl.reward_labelers.openai_preference import OpenAIPreferenceLabeler
from vlmrl.reward_labelers.vlm_config import OpenAIConfig

CHOICES = ["0", "1", "-1"]
# sha256 of the canonical config JSON of text-mode labelers, as written before answer modes
# existed: text-mode store keys must never change, or old stores would be asked again.
TEXT_CONFIG_SHA256 = {
    True: "ce641b394b0c4935657b77f46942bbf28668f5c2cb0f3f0615cc7ecacc81f4ac",
    False: "35b77a47e5c7c8c4b77444ff4a17ff3ae28ecf5b89c62429e6d48e9fcdac8420",
}


def make_labeler(server: OpenAITestServer, store=None, **kwargs) -> OpenAIPreferenceLabeler:
    options = dict(max_concurrency=1, timeout_s=5.0, max_retries=2, backoff_base_s=0.01, backoff_max_s=0.05)
    options.update(kwargs)
    return OpenAIPreferenceLabeler(server.base_url, "test-vlm", store=store, **options)


def answer_turns(server: OpenAITestServer, two_stage: bool = True) -> list:
    """The requests that asked for the answer (text turns in two-stage mode, vision otherwise)."""
    return [r for r in server.requests if r.stage == ("text" if two_stage else "vision")]


def expected_probabilities(b1: float, b2: float, scale: float = 10.0, tie: float = 0.5) -> tuple[float, float]:
    """P(image 1), P(image 2) the test server's VLM gives, normalised over the three answers."""
    half = (b1 - b2) / (2 * scale)
    weights = np.exp([half, -half, tie / (2 * scale)])
    weights /= weights.sum()
    return float(weights[0]), float(weights[1])


@pytest.fixture
def server():
    with OpenAITestServer(model="test-vlm") as running:
        yield running
        assert running.protocol_errors == []


# -- text mode: unchanged -------------------------------------------------------------------------


@pytest.mark.parametrize("two_stage", [True, False])
def test_text_mode_keys_and_requests_are_those_of_before(server, two_stage):
    labeler = make_labeler(server, two_stage=two_stage)
    config_json = canonical_config(labeler.config)
    assert "answer_mode" not in labeler.config
    assert hashlib.sha256(config_json.encode()).hexdigest() == TEXT_CONFIG_SHA256[two_stage]
    labeler.compare(frames([200]), frames([20], seed=1), GOAL)
    for request in server.requests:
        assert set(request.options) == {"temperature", "max_tokens"}
        assert request.options["max_tokens"] == 512


def test_config_and_create_name_the_mode_and_ask_nothing(server):
    for mode in ("text", "constrained", "logprobs"):
        labeler = OpenAIConfig(base_url=server.base_url, model="test-vlm", answer_mode=mode).create(store=None)
        assert labeler.answer_mode == mode
        assert labeler.config.get("answer_mode", "text") == mode
    assert server.count() == 0 and server.get_requests == []  # neither create() nor __init__ asks
    with pytest.raises(ValueError, match="answer_mode"):
        make_labeler(server, answer_mode="json")
    keys = {canonical_config(make_labeler(server, answer_mode=m).config) for m in ("text", "constrained", "logprobs")}
    assert len(keys) == 3  # another mode is another question: asked again, never read from the store


# -- constrained ---------------------------------------------------------------------------------


def test_constrained_mode_sends_the_choice_only_on_the_answer_turn(server, tmp_path):
    first, second = frames([128, 200, 40]), frames([128, 30, 220], seed=1)
    labeler = make_labeler(server, tmp_path / "labels.sqlite", answer_mode="constrained")
    np.testing.assert_array_equal(labeler.compare(first, second, GOAL)[1:], [1.0, 0.0])
    assert labeler.stats.unsure == 1 and labeler.stats.answered == 2
    for request in server.requests:
        if request.stage == "vision":  # the analysis turn stays free text
            assert "guided_choice" not in request.options and "structured_outputs" not in request.options
        else:
            assert request.options["guided_choice"] == CHOICES
            assert request.options["structured_outputs"] == {"choice": CHOICES}
    rows = list(labeler.store.iter_rows())
    assert {r.answer for r in rows} == {"0", "1", "-1"}
    assert all(r.p_first is None for r in rows) and '"answer_mode":"constrained"' in rows[0].config_json


def test_a_server_that_ignores_the_constraint_goes_through_the_text_parser(tmp_path):
    with OpenAITestServer(model="test-vlm", constraints="ignore") as server:
        server.enqueue("text", Reply("Image 1 is better."), Reply("I am not sure, maybe 0 or 1"))
        labeler = make_labeler(server, tmp_path / "labels.sqlite", answer_mode="constrained")
        labels = labeler.compare(frames([10, 200]), frames([200, 10], seed=1), GOAL)
        assert labels[0] == 1.0 and np.isnan(labels[1])  # read from text; nothing invented
        assert (labeler.stats.answered, labeler.stats.unparseable) == (1, 1)
        assert labeler.answer_mode == "constrained"  # it accepted the field: no fallback


def test_a_server_that_rejects_the_constraint_falls_back_to_text_once(tmp_path, caplog):
    with OpenAITestServer(model="test-vlm", constraints="reject") as server:
        labeler = make_labeler(server, tmp_path / "labels.sqlite", answer_mode="constrained", two_stage=False)
        with caplog.at_level(logging.WARNING):
            labels = labeler.compare(frames([200, 10, 220]), frames([10, 200, 30], seed=1), GOAL)
        np.testing.assert_array_equal(labels, [1.0, 0.0, 1.0])
        # One rejected request, asked again without the constraint; the rest never send it.
        assert server.count(behaviour="rejected") == 1 and server.count() == 4
        assert labeler.stats.requests == 4 and labeler.stats.failed == 0
        assert [r.behaviour for r in server.requests] == ["rejected", "default", "default", "default"]
        assert all("guided_choice" not in r.options for r in server.requests[1:])
        warnings = [r for r in caplog.records if "rejects constrained answers" in r.getMessage()]
        assert len(warnings) == 1 and "Unrecognized request argument" in warnings[0].getMessage()
        assert labeler.answer_mode == "text" and labeler.requested_answer_mode == "constrained"
        assert "answer_mode" not in labeler.config  # from now on it asks, and keys, as text mode does


def test_preflight_finds_a_rejected_constraint_before_the_first_pair(tmp_path, caplog):
    store = tmp_path / "labels.sqlite"
    with OpenAITestServer(model="test-vlm", constraints="reject") as server:
        # Answers already stored in text mode are read back after the fallback.
        make_labeler(server, store, two_stage=False).compare(frames([200]), frames([10], seed=1), GOAL)
        server.reset_counts()
        labeler = make_labeler(server, store, answer_mode="constrained", two_stage=False)
        with caplog.at_level(logging.WARNING):
            labeler.preflight()
        assert server.get_requests == ["/v1/models"]
        assert [r.behaviour for r in server.requests] == ["rejected", "default"]  # the 1-token probes
        assert all(r.options["max_tokens"] <= 2 for r in server.requests)
        assert sum("rejects constrained answers" in r.getMessage() for r in caplog.records) == 1
        assert labeler.answer_mode == "text"
        server.reset_counts()
        labels = labeler.compare(frames([200, 20]), frames([10, 240], seed=1), GOAL)
        np.testing.assert_array_equal(labels, [1.0, 0.0])
        assert labeler.stats.cached == 1 and server.count() == 1 and server.count(behaviour="rejected") == 0


# -- logprobs ------------------------------------------------------------------------------------


def test_logprobs_mode_stores_the_answer_probabilities(server, tmp_path):
    store = tmp_path / "labels.sqlite"
    # Tied, clear and close pairs (mean brightness differences 0.2, 150 and -6 levels).
    first, second = frames([128, 200, 100]), frames([128, 50, 106], seed=1)
    true_rewards = (first.mean((1, 2, 3)), second.mean((1, 2, 3)))
    labeler = make_labeler(server, store, answer_mode="logprobs")
    labels, p_first, p_second = labeler.compare_with_confidence(first, second, GOAL, true_rewards=true_rewards)

    for b1, b2, got1, got2 in zip(*true_rewards, p_first, p_second):
        want1, want2 = expected_probabilities(round(b1, 3), round(b2, 3))  # as the analysis quotes them
        assert got1 == pytest.approx(want1, abs=1e-5) and got2 == pytest.approx(want2, abs=1e-5)
    assert np.isnan(labels[0]) and p_first[0] == pytest.approx(p_second[0], abs=0.01)  # tied: -1 likeliest
    assert labels[1] == 1.0 and p_first[1] > 0.99  # clear: confident
    assert labels[2] == 0.0 and 0.4 < p_second[2] < 0.6  # close: the likeliest answer, but unsure of it
    assert (labeler.stats.answered, labeler.stats.unsure) == (2, 1)

    for request in answer_turns(server):
        assert request.options == {"temperature": 0.0, "max_tokens": 2, "logprobs": True, "top_logprobs": 5}
    for request in server.requests:
        if request.stage == "vision":
            assert "logprobs" not in request.options and request.options["max_tokens"] == 512

    rows = {r.answer: r for r in LabelStore(store).iter_rows()}
    assert set(rows) == {"0", "1", "-1"}  # the raw answer text is kept too
    assert rows["1"].p_second == pytest.approx(float(p_second[2]), abs=1e-6) and rows["-1"].status == "unsure"
    assert '"answer_mode":"logprobs"' in rows["0"].config_json

    # A rerun reads labels and probabilities from the store and asks nothing.
    requests = server.count()
    again = make_labeler(server, store, answer_mode="logprobs")
    cached = again.compare_with_confidence(first, second, GOAL)
    assert server.count() == requests and again.stats.cached == 3
    for got, want in zip(cached, (labels, p_first, p_second)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(again.compare(first, second, GOAL), labels)


def test_logprobs_read_only_when_the_answer_starts_with_an_answer_token(server):
    server.enqueue(
        "text",
        Reply("1", top_logprobs={"1": math.log(0.6), "0": math.log(0.3), "-": math.log(0.05), "The": math.log(0.05)}),
        Reply("The first image is better."),  # prose: its first token commits to nothing
        Reply("0", top_logprobs={"0": math.log(0.45), "1": math.log(0.45), "-": math.log(0.1)}),
    )
    labeler = make_labeler(server, answer_mode="logprobs")
    labels, p_first, p_second = labeler.compare_with_confidence(
        frames([10, 20, 30]), frames([200, 210, 220], seed=1), GOAL
    )
    assert labels[0] == 0.0
    assert (p_first[0], p_second[0]) == pytest.approx((0.3 / 0.95, 0.6 / 0.95), abs=1e-6)
    # max_tokens 2 cut the prose to "The ": read as text, unparseable, no probabilities made up.
    assert np.isnan(labels[1]) and np.isnan(p_first[1]) and labeler.stats.unparseable == 1
    assert np.isnan(labels[2]) and p_first[2] == pytest.approx(p_second[2])  # 0 and 1 tied: unsure


def test_logprobs_without_them_from_the_server(tmp_path, caplog):
    with OpenAITestServer(model="test-vlm", logprobs=False) as server:
        labeler = make_labeler(server, tmp_path / "labels.sqlite", answer_mode="logprobs")
        started = time.monotonic()
        with pytest.raises(UserError) as info:
            labeler.preflight()
        assert time.monotonic() - started < 3
        message = str(info.value)
        assert server.base_url in message and "returns no log-probabilities" in message
        assert "answer_mode: text or constrained" in message
        assert server.get_requests == ["/v1/models"] and server.count() == 1  # one 1-token probe
        assert server.requests[0].options["max_tokens"] == 1 and server.requests[0].options["logprobs"] is True

        # Without the start-up check, every answer is read from its text, with one warning.
        server.reset_counts()
        with caplog.at_level(logging.WARNING):
            labels, p_first, _ = labeler.compare_with_confidence(frames([200, 10]), frames([10, 200], seed=1), GOAL)
        np.testing.assert_array_equal(labels, [1.0, 0.0])
        assert np.isnan(p_first).all()
        assert sum("no log-probabilities" in r.getMessage() for r in caplog.records) == 1


# -- preflight -----------------------------------------------------------------------------------


def test_preflight_text_mode_costs_one_models_request(server):
    make_labeler(server).preflight()
    assert server.get_requests == ["/v1/models"] and server.count() == 0


def test_preflight_logprobs_mode_passes_on_a_server_with_logprobs(server):
    make_labeler(server, answer_mode="logprobs").preflight()
    assert server.get_requests == ["/v1/models"] and server.count() == 1


def test_preflight_without_a_models_route_probes_with_one_token():
    with OpenAITestServer(model="test-vlm", models_route=False) as server:
        labeler = make_labeler(server)
        labeler.preflight()
        assert server.count() == 1 and server.requests[0].options["max_tokens"] == 1
        server.enqueue("text", Status(404, message="The model `test-vlm` does not exist."))
        with pytest.raises(UserError, match="labeler.model") as info:
            labeler.preflight()
        assert "does not exist" in str(info.value) and "base_url" in str(info.value)


def test_preflight_stops_at_once_on_an_unreachable_endpoint():
    with OpenAITestServer() as server:
        url = server.base_url  # closed when the block ends: connection refused
    labeler = OpenAIPreferenceLabeler(url, "m", timeout_s=60, max_retries=5)
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        labeler.preflight()
    assert time.monotonic() - started < 3  # no retries, no 60 s timeout
    assert "cannot reach the VLM endpoint" in str(info.value) and url in str(info.value)
    assert "running" in str(info.value)


def test_preflight_gives_up_on_a_silent_endpoint_within_its_short_timeout():
    # A socket that accepts connections (the kernel's backlog) but never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        labeler = OpenAIPreferenceLabeler(url, "m", timeout_s=1.0, max_retries=5)
        started = time.monotonic()
        with pytest.raises(UserError, match="cannot reach the VLM endpoint") as info:
            labeler.preflight()
        assert time.monotonic() - started < 4 and "within 1 s" in str(info.value)
    finally:
        listener.close()


def test_preflight_names_the_key_variable_when_unauthorised(monkeypatch):
    secret = "sk-right-0123456789"
    with OpenAITestServer(model="test-vlm", api_key=secret) as server:
        monkeypatch.delenv("VLMRL_TEST_KEY", raising=False)
        labeler = make_labeler(server, api_key_env="VLMRL_TEST_KEY")
        with pytest.raises(UserError, match="set the environment variable VLMRL_TEST_KEY") as info:
            labeler.preflight()
        assert "HTTP 401" in str(info.value)
        monkeypatch.setenv("VLMRL_TEST_KEY", "sk-wrong-key")
        with pytest.raises(UserError, match="VLMRL_TEST_KEY was refused") as info:
            labeler.preflight()
        assert "sk-wrong-key" not in str(info.value)
        assert server.count() == 0  # stopped at GET /models
        monkeypatch.setenv("VLMRL_TEST_KEY", secret)
        labeler.preflight()
        make_labeler(server, api_key_env="VLMRL_TEST_KEY", answer_mode="logprobs").preflight()
        assert [r.behaviour for r in server.requests] == ["default"]


def test_base_labeler_preflight_is_a_no_op(tmp_path):
    from vlmrl.reward_labelers.preference import StoreLedger

    assert StoreLedger({"labeler": "x"}, tmp_path / "labels.sqlite").preflight() is None
