"""Preference labels from any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, hosted APIs).

RL-VLM-F's two-stage query (methods.md section 2): an analysis turn that shows both frames as
two separate images, then a text-only labelling turn that contains the analysis and asks for
``0`` / ``1`` / ``-1``. A single-stage mode asks for the answer directly.

Transport is the standard library (``urllib``): one ``POST {base_url}/chat/completions`` per
turn, frames as ``data:image/png;base64,...`` URLs. Rate limits and server errors (429, 5xx),
timeouts and connection errors are retried with exponential backoff and jitter, honouring
``Retry-After``; other 4xx errors are not retried. A pair that still fails is recorded in the
label store as ``failed`` (never as a label) and labelled NaN.

Answer modes (``answer_mode``), all on the answer turn only (the analysis turn is free text):

- ``text``: the answer is free text read by ``prompts.parse_answer``.
- ``constrained``: the server is asked to choose among ``0``, ``1``, ``-1`` (vLLM's guided
  choice: ``guided_choice`` for vLLM < 0.12 and ``structured_outputs.choice`` for newer ones,
  both sent). A server that ignores the constraint answers free text, which the text parser
  reads as usual; one that rejects it (HTTP 400) is asked again without it, and the labeler
  falls back to ``text`` for the rest of its life, with one warning (``preflight`` finds this
  out before the first pair).
- ``logprobs``: ``logprobs: true, top_logprobs: 5, max_tokens: 2`` on the answer turn; the
  first token's top log-probabilities give P(``0``), P(``1``), P(``-1``), normalised over the
  three; the likeliest decides and P(image 1) / P(image 2) are stored beside the label. An answer
  that does not start with one of the three, or a response without log-probabilities, is read
  as text (``preflight`` refuses a server that never returns them).

``preflight()`` checks the endpoint once before a run (reachable, key accepted, answer mode
supported) and raises ``vlmrl.errors.UserError`` with what to fix; ``vlmrl train`` / ``relabel``
call it, constructors never do.

The API key is read from an environment variable at request time and only ever placed in the
``Authorization`` header: it is not kept on the object, and never written to logs, the label
store, configs or reprs.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import json
import logging
import math
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl.errors import UserError
from vlmrl.label_store import FAILED, LabelStore, encode_png
from vlmrl.reward_labelers.preference import DEFAULT_IDENTICAL_THRESHOLD, PairOutcome, PreferenceLabeler, query_outcome
from vlmrl.reward_labelers.prompts import (
    ANALYSIS_PROMPT,
    ANSWER_CHOICES,
    LABELLING_PROMPT,
    SINGLE_STAGE_PROMPT,
    AnswerKind,
    QueryPrompts,
    answer_token_kind,
    vision_content_parts,
)

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 300.0  # a larger Retry-After is taken as a broken header, not waited out

ANSWER_MODES = ("text", "constrained", "logprobs")
TOP_LOGPROBS = 5
"""Alternatives per token asked for in ``logprobs`` mode (OpenAI allows up to 20; 5 holds 0, 1 and -1)."""
LOGPROBS_MAX_TOKENS = 2
"""Answer length in ``logprobs`` mode: ``-1`` is two tokens in many tokenisers."""
PREFLIGHT_TIMEOUT_S = 5.0
"""Seconds ``preflight`` waits for the endpoint to answer ``GET /models``: a dead endpoint must
stop the run at once, not after ``timeout_s`` x retries."""
PROBE_PROMPT = "Reply with the single character 0."


class _RequestFailed(Exception):
    """A chat request that produced no usable response, after any retries.

    ``status`` is the HTTP status of the last response (None when none came back);
    ``unreachable`` says that no HTTP response came back at all (refused, DNS, timeout).
    """

    def __init__(self, message: str, requests: int, status: int | None = None, unreachable: bool = False) -> None:
        super().__init__(message)
        self.requests = requests
        self.status = status
        self.unreachable = unreachable


class _Retryable(Exception):
    """A transient failure worth retrying; ``retry_after_s`` is the server's Retry-After, if any."""

    def __init__(
        self, message: str, retry_after_s: float | None = None, status: int | None = None, unreachable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.status = status
        self.unreachable = unreachable


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def image_part(frame: np.ndarray) -> dict[str, Any]:
    """An ``image_url`` content part holding ``frame`` (uint8 ``[H, W, 3]``) as a PNG data URL."""
    data = base64.b64encode(encode_png(frame)).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def vision_content(template: str, goal: str, first: np.ndarray, second: np.ndarray) -> list[dict[str, Any]]:
    """Content parts for a prompt with ``{image1}``/``{image2}`` placeholders, the frames as PNG
    data URLs (see ``prompts.vision_content_parts``)."""
    return vision_content_parts(template, goal, image_part(first), image_part(second))


class OpenAIPreferenceLabeler(PreferenceLabeler):
    """Compare frame pairs with a VLM behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: endpoint root, e.g. ``http://127.0.0.1:8000/v1`` (vLLM),
            ``http://127.0.0.1:11434/v1`` (Ollama) or ``https://api.openai.com/v1``.
        model: model name sent with each request.
        api_key_env: environment variable holding the API key. Unset -> no ``Authorization``
            header (local servers need none).
        store: label store or its SQLite path (see ``PreferenceLabeler``).
        two_stage: RL-VLM-F's analysis + labelling turns (True) or one direct question (False).
        answer_mode: ``text``, ``constrained`` or ``logprobs`` (see the module docstring).
        analysis_prompt: first-stage template with ``{image1}``, ``{image2}``, ``{goal}``.
        labelling_prompt: second-stage template with ``{goal}`` and ``{analysis}``.
        single_stage_prompt: template used when ``two_stage`` is False.
        max_concurrency: pairs in flight at once (each pair's turns run one after another).
        timeout_s: socket timeout of each request, in seconds.
        max_retries: retries after the first request of a turn (so at most ``1 + max_retries``
            requests per turn).
        backoff_base_s: first backoff delay in seconds; doubles on each retry.
        backoff_max_s: cap on one backoff delay, in seconds.
        temperature: sampling temperature (0 for repeatable labels).
        max_tokens: answer length limit of each turn (``logprobs`` mode: the analysis turn only).
        identical_threshold: see ``PreferenceLabeler``.
        thumbnail_size: see ``PreferenceLabeler``.

    ``prompts`` is the question asked (:class:`~vlmrl.reward_labelers.prompts.QueryPrompts`).
    ``answer_mode`` is the mode in use: ``constrained`` becomes ``text`` once the server rejects
    the constraint (``requested_answer_mode`` keeps what was asked for). It is part of ``config``
    (the store key) only when it is not ``text``, so text-mode stores keep their keys.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        store: LabelStore | str | Path | None = None,
        two_stage: bool = True,
        analysis_prompt: str = ANALYSIS_PROMPT,
        labelling_prompt: str = LABELLING_PROMPT,
        single_stage_prompt: str = SINGLE_STAGE_PROMPT,
        max_concurrency: int = 4,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        temperature: float = 0.0,
        max_tokens: int = 512,
        identical_threshold: float = DEFAULT_IDENTICAL_THRESHOLD,
        thumbnail_size: int = 64,
        answer_mode: str = "text",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout_s <= 0 or max_retries < 0 or backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError("timeout_s must be > 0; max_retries, backoff_base_s, backoff_max_s >= 0")
        if answer_mode not in ANSWER_MODES:
            raise ValueError(f"answer_mode must be one of {ANSWER_MODES}, got {answer_mode!r}")
        self.prompts = QueryPrompts(two_stage, analysis_prompt, labelling_prompt, single_stage_prompt)
        super().__init__(store, max_concurrency, identical_threshold, thumbnail_size)
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.requested_answer_mode = answer_mode
        self.answer_mode = answer_mode
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self._rng = random.Random()
        self._mode_lock = threading.Lock()  # worker threads may find out about the server together
        self._warned_no_logprobs = False

    def __repr__(self) -> str:
        answers = "" if self.answer_mode == "text" else f", answer_mode={self.answer_mode!r}"
        return (
            f"OpenAIPreferenceLabeler(url={self.url!r}, model={self.model!r}, {self.prompts.mode}{answers}, "
            f"api_key_env={self.api_key_env!r}, store={self.store!r})"
        )

    @property
    def config(self) -> Mapping[str, Any]:
        # The endpoint URL is left out on purpose: the same model behind another server (local
        # vLLM vs. hosted) answers the same question, and cached answers stay valid.
        config: dict[str, Any] = {
            "labeler": "openai-chat",
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.prompts.key_fields(),
        }
        # Only a non-text mode is named: text-mode keys must stay those of stores written before
        # answer modes existed.
        if self.answer_mode == "constrained":
            config["answer_mode"] = "constrained"
        elif self.answer_mode == "logprobs":
            config.update(answer_mode="logprobs", answer_max_tokens=LOGPROBS_MAX_TOKENS, top_logprobs=TOP_LOGPROBS)
        return config

    # -- asking ------------------------------------------------------------------------------

    def ask(self, first: np.ndarray, second: np.ndarray, goal: str) -> PairOutcome:
        mode = self.answer_mode
        requests = 0
        analysis: str | None = None
        try:
            content: str | list[dict[str, Any]] = vision_content(self.prompts.vision_template, goal, first, second)
            if self.prompts.two_stage:
                payload, spent = self._chat(content)
                analysis = message_text(payload)
                requests += spent
                if not analysis.strip():
                    return query_outcome(analysis, answer=None, requests=requests)
                content = self.prompts.labelling_question(goal, analysis)  # the answer turn is text only
            payload, spent = self._answer_turn(content, mode)
            requests += spent
        except _RequestFailed as failure:
            return PairOutcome(FAILED, analysis=analysis, error=str(failure), requests=requests + failure.requests)
        answer = message_text(payload)
        probabilities = self._answer_probabilities(payload) if mode == "logprobs" else None
        return query_outcome(analysis, answer, requests, probabilities)

    def _answer_turn(self, content: str | list[dict[str, Any]], mode: str) -> tuple[dict[str, Any], int]:
        """The answer turn in ``mode``; returns (response payload, requests spent)."""
        if mode == "logprobs":
            return self._chat(content, _LOGPROBS_FIELDS, max_tokens=LOGPROBS_MAX_TOKENS)
        if mode != "constrained":
            return self._chat(content)
        try:
            return self._chat(content, _CONSTRAINT_FIELDS)
        except _RequestFailed as failure:
            if failure.status != 400:
                raise
            rejected = failure
        # A 400 may be the constraint or the request itself: only an unconstrained success
        # proves it was the constraint.
        try:
            payload, spent = self._chat(content)
        except _RequestFailed as failure:
            raise _RequestFailed(str(failure), rejected.requests + failure.requests, failure.status,
                                 failure.unreachable) from None
        # Pairs planned before this keep the constrained store key; later plans use text keys.
        self._constraint_rejected(str(rejected))
        return payload, rejected.requests + spent

    def _constraint_rejected(self, detail: str) -> None:
        """Fall back to text answers for good, warning once."""
        with self._mode_lock:
            if self.answer_mode != "constrained":
                return
            self.answer_mode = "text"
        logger.warning(
            "the server at %s rejects constrained answers (guided_choice / structured_outputs): %s; "
            "falling back to answer_mode: text for this run", self.url, detail,
        )

    def _answer_probabilities(self, payload: dict[str, Any]) -> tuple[float, float, float] | None:
        """P(``0``), P(``1``), P(``-1``) (unnormalised) from a ``logprobs`` answer's first token, or
        None when the answer must be read from its text instead."""
        first_token = first_token_logprobs(payload)
        if first_token is None:
            with self._mode_lock:
                warn, self._warned_no_logprobs = not self._warned_no_logprobs, True
            if warn:
                logger.warning("the server at %s returned no log-probabilities; answers are read from their text "
                               "(run preflight() to stop at start-up instead)", self.url)
            return None
        token, alternatives = first_token
        if answer_token_kind(token) is None:
            # The model did not start with an answer ("The first image..."): its text may still
            # hold one, and probabilities of an answer it did not give would be made up.
            return None
        weights = dict.fromkeys(AnswerKind, 0.0)
        for alternative, logprob in alternatives:
            kind = answer_token_kind(alternative)
            if kind is not None:
                weights[kind] += math.exp(logprob)
        return weights[AnswerKind.FIRST], weights[AnswerKind.SECOND], weights[AnswerKind.UNSURE]

    # -- start-up check ----------------------------------------------------------------------

    def preflight(self) -> None:
        """Check the endpoint before any pair is asked; raise a UserError that says what to fix.

        One ``GET {base_url}/models`` (``PREFLIGHT_TIMEOUT_S`` at most): an endpoint that cannot
        be reached (refused, DNS, no answer) or refuses the key (401/403) stops here. Then, unless
        the mode is ``text`` and the model is listed, one 1-token chat request: ``constrained``
        learns whether the server accepts the constraint (a 400 falls back to ``text`` with one
        warning), ``logprobs`` whether it returns log-probabilities (a UserError if not), and a
        model the list lacks must answer it.

        Raises:
            UserError: unreachable endpoint, unauthorised key, unknown model or route, or no
                log-probabilities in ``logprobs`` mode.
        """
        listed = self._listed_models()
        mode = self.answer_mode
        if mode == "text" and listed is not None and self.model in listed:
            return
        if mode == "constrained":
            fields: dict[str, Any] = dict(_CONSTRAINT_FIELDS)
            max_tokens = LOGPROBS_MAX_TOKENS  # room for "-1"
        elif mode == "logprobs":
            fields, max_tokens = dict(_LOGPROBS_FIELDS), 1
        else:
            fields, max_tokens = {}, 1
        try:
            payload, _ = self._chat(PROBE_PROMPT, fields, max_tokens=max_tokens, max_retries=min(self.max_retries, 1))
        except _RequestFailed as failure:
            if not (mode == "constrained" and failure.status == 400):
                raise self._probe_error(failure, mode, listed) from None
            try:
                self._chat(PROBE_PROMPT, max_tokens=1, max_retries=min(self.max_retries, 1))
            except _RequestFailed as again:
                raise self._probe_error(again, "text", listed) from None
            self._constraint_rejected(str(failure))
            return
        if mode == "logprobs" and first_token_logprobs(payload) is None:
            raise UserError(
                f"the server at {self.url} returns no log-probabilities (asked for logprobs: true, "
                f"top_logprobs: {TOP_LOGPROBS}); use answer_mode: text or constrained"
            )

    def _listed_models(self) -> set[str] | None:
        """Model ids from ``GET {base_url}/models``, or None where the server has no usable list."""
        url = f"{self.base_url}/models"
        api_key, headers = self._headers()
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            raw = self._send(request, min(self.timeout_s, PREFLIGHT_TIMEOUT_S), api_key)
        except (_Retryable, _RequestFailed) as failure:
            if failure.unreachable:
                raise UserError(
                    f"cannot reach the VLM endpoint at {self.base_url} ({failure}): check that the server is "
                    "running and that labeler.base_url is right (vLLM: http://HOST:8000/v1, Ollama: "
                    "http://HOST:11434/v1)"
                ) from None
            if failure.status in (401, 403):
                raise self._auth_error(failure.status) from None
            return None  # no /models route (404) or a server error: the chat probe will tell
        try:
            return {str(item["id"]) for item in json.loads(raw)["data"]}
        except (ValueError, KeyError, TypeError):
            return None

    def _probe_error(self, failure: _RequestFailed, mode: str, listed: set[str] | None) -> UserError:
        if failure.status in (401, 403):
            return self._auth_error(failure.status)
        if mode == "logprobs" and failure.status == 400:
            return UserError(f"the server at {self.url} rejects log-probability requests ({failure}); "
                             "use answer_mode: text or constrained")
        if failure.status == 404:
            served = f" (it serves: {', '.join(sorted(listed))})" if listed else ""
            return UserError(f"the server at {self.url} knows no model {self.model!r} or no chat-completions route "
                             f"({failure}): check labeler.model{served} and labeler.base_url (usually ending in /v1)")
        return UserError(f"the VLM endpoint at {self.url} failed a 1-token test request: {failure}; check the "
                         "server's log and labeler.base_url / labeler.model")

    def _auth_error(self, status: int | None) -> UserError:
        if not self.api_key_env:
            hint = "no API key is sent because labeler.api_key_env is empty; name the variable that holds it"
        elif os.environ.get(self.api_key_env):
            hint = f"the key in the environment variable {self.api_key_env} was refused; put a valid one there"
        else:
            hint = f"set the environment variable {self.api_key_env} (labeler.api_key_env) to a valid API key"
        return UserError(f"the VLM endpoint at {self.base_url} answered HTTP {status} (unauthorised): {hint}")

    # -- transport ---------------------------------------------------------------------------

    def _chat(
        self,
        content: str | list[dict[str, Any]],
        fields: Mapping[str, Any] | None = None,
        *,
        max_tokens: int | None = None,
        max_retries: int | None = None,
    ) -> tuple[dict[str, Any], int]:
        """One user turn; returns (response payload, requests spent). Retries transient failures.

        Args:
            content: the user message's content (text, or content parts with images).
            fields: extra request fields (the answer mode's), merged into the body.
            max_tokens: answer length limit; None = ``self.max_tokens``.
            max_retries: None = ``self.max_retries``.

        Raises:
            _RequestFailed: a non-retryable error, or retries exhausted.
        """
        retries = self.max_retries if max_retries is None else max_retries
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": content}],
                "temperature": self.temperature,
                "max_tokens": self.max_tokens if max_tokens is None else max_tokens,
                **(fields or {}),
            }
        ).encode()
        for attempt in range(retries + 1):
            try:
                return self._post(body), attempt + 1
            except _Retryable as transient:
                if attempt == retries:
                    raise _RequestFailed(
                        f"{transient.message} (gave up after {attempt + 1} requests)", attempt + 1,
                        transient.status, transient.unreachable,
                    ) from None
                delay = transient.retry_after_s
                if delay is None:
                    delay = self._backoff(attempt)
                logger.info("retrying chat request in %.2f s: %s", delay, transient.message)
                time.sleep(delay)
            except _RequestFailed as failure:
                raise _RequestFailed(str(failure), attempt + 1, failure.status, failure.unreachable) from None
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: uniform in [d/2, d], d = min(max, base * 2**attempt)."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt)
        return delay * (0.5 + 0.5 * self._rng.random())

    def _headers(self) -> tuple[str | None, dict[str, str]]:
        """(API key or None, request headers); the key is read here, never kept."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        api_key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return api_key, headers

    def _post(self, body: bytes) -> dict[str, Any]:
        """One chat request; the response payload. Raises _Retryable for transient failures,
        _RequestFailed otherwise (a response without ``choices[0].message`` included)."""
        api_key, headers = self._headers()
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        raw = self._send(request, self.timeout_s, api_key)
        try:
            payload = json.loads(raw)
            if not isinstance(payload["choices"][0]["message"], dict):
                raise TypeError("message is not an object")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            snippet = _scrub(raw[:300].decode("utf-8", "replace"), api_key)
            raise _RequestFailed(f"malformed chat-completions response from {self.url}: {snippet!r}", 1) from None
        return payload

    def _send(self, request: urllib.request.Request, timeout: float, api_key: str | None) -> bytes:
        """One HTTP request; the response body. Raises _Retryable for transient failures (429,
        5xx, timeouts, connection errors), _RequestFailed for other HTTP errors."""
        url = request.full_url
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            detail = _scrub(_read_error_body(error), api_key)
            message = f"HTTP {error.code} from {url}: {detail}"
            if error.code in RETRY_STATUSES:
                raise _Retryable(message, parse_retry_after(error.headers.get("Retry-After")), error.code) from None
            raise _RequestFailed(message, 1, error.code) from None
        except (TimeoutError, socket.timeout) as error:
            raise _Retryable(f"no response from {url} within {timeout:g} s ({error})", unreachable=True) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"no response from {url} within {timeout:g} s", unreachable=True) from None
            raise _Retryable(f"cannot reach {url}: {error.reason}", unreachable=True) from None
        except (ConnectionError, http.client.HTTPException, OSError) as error:
            raise _Retryable(f"connection to {url} broke: {type(error).__name__}: {error}", unreachable=True) from None


_CONSTRAINT_FIELDS: dict[str, Any] = {
    # vLLM < 0.12 reads guided_choice, newer ones structured_outputs; each ignores the other.
    "guided_choice": list(ANSWER_CHOICES),
    "structured_outputs": {"choice": list(ANSWER_CHOICES)},
}
_LOGPROBS_FIELDS: dict[str, Any] = {"logprobs": True, "top_logprobs": TOP_LOGPROBS}


def message_text(payload: dict[str, Any]) -> str:
    """The assistant message's text in a chat-completions response ("" when it has none)."""
    content = payload["choices"][0]["message"].get("content")
    if content is None:
        return ""
    if isinstance(content, list):  # some servers return content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def first_token_logprobs(payload: dict[str, Any]) -> tuple[str, list[tuple[str, float]]] | None:
    """``(token, [(alternative, logprob), ...])`` of the answer's first token, from
    ``choices[0].logprobs.content[0]``; None when the response carries no top log-probabilities.

    The chosen token is added to its alternatives when a server leaves it out of the list.
    """
    try:
        logprobs = payload["choices"][0].get("logprobs")
        first = logprobs["content"][0]
        token = str(first["token"])
        alternatives = [(str(item["token"]), float(item["logprob"])) for item in first.get("top_logprobs") or []]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    if not alternatives:
        return None
    if token not in {alternative for alternative, _ in alternatives}:
        try:
            alternatives.append((token, float(first["logprob"])))
        except (KeyError, TypeError, ValueError):
            pass
    return token, alternatives


def _read_error_body(error: urllib.error.HTTPError) -> str:
    try:
        return error.read(500).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        error.close()


def _scrub(text: str, api_key: str | None) -> str:
    """Remove the API key from text a server sent back (some echo the Authorization header)."""
    return text.replace(api_key, "***") if api_key else text


__all__ = ["ANSWER_MODES", "OpenAIPreferenceLabeler", "first_token_logprobs", "message_text", "parse_retry_after"]
