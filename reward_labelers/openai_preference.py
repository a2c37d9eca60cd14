"""Preference labels from any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, hosted APIs).

RL-VLM-F's two-stage query (methods.md section 2): an analysis turn that shows both frames as
two separate images, then a text-only labelling turn that contains the analysis and asks for
``0`` / ``1`` / ``-1``. A single-stage mode asks for the answer directly.

Transport is the standard library (``urllib``): one ``POST {base_url}/chat/completions`` per
turn, frames as ``data:image/png;base64,...`` URLs. Rate limits and server errors (429, 5xx),
timeouts and connection errors are retried with exponential backoff and jitter, honouring
``Retry-After``; other 4xx errors are not retried. A pair that still fails is recorded in the
label store as ``failed`` (never as a label) and labelled NaN.

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
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl.label_store import FAILED, UNPARSEABLE, LabelStore, encode_png
from vlmrl.reward_labelers.preference import (
    DEFAULT_IDENTICAL_THRESHOLD,
    PairOutcome,
    PreferenceLabeler,
    outcome_from_answer,
)
from vlmrl.reward_labelers.prompts import (
    ANALYSIS_PROMPT,
    LABELLING_PROMPT,
    SINGLE_STAGE_PROMPT,
    prompt_key_fields,
)

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 300.0  # a larger Retry-After is taken as a broken header, not waited out


class _RequestFailed(Exception):
    """A chat request that produced no usable response, after any retries."""

    def __init__(self, message: str, requests: int) -> None:
        super().__init__(message)
        self.requests = requests


class _Retryable(Exception):
    """A transient failure worth retrying; ``retry_after_s`` is the server's Retry-After, if any."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


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
    """Content parts for a prompt with ``{image1}``/``{image2}`` placeholders: text, image, text...

    ``{goal}`` is substituted by plain replacement, so braces inside a goal are harmless.
    """
    text = template.replace("{goal}", goal)
    if text.count("{image1}") != 1 or text.count("{image2}") != 1:
        raise ValueError("a vision prompt must contain {image1} and {image2} exactly once each")
    before, rest = text.split("{image1}")
    middle, after = rest.split("{image2}")
    parts: list[dict[str, Any]] = []
    for piece, frame in ((before, first), (middle, second)):
        if piece.strip():
            parts.append({"type": "text", "text": piece})
        parts.append(image_part(frame))
    if after.strip():
        parts.append({"type": "text", "text": after})
    return parts


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
        max_tokens: answer length limit of each turn.
        identical_threshold: see ``PreferenceLabeler``.
        thumbnail_size: see ``PreferenceLabeler``.
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
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout_s <= 0 or max_retries < 0 or backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError("timeout_s must be > 0; max_retries, backoff_base_s, backoff_max_s >= 0")
        for name, template, needed in (
            ("analysis_prompt", analysis_prompt, ("{image1}", "{image2}", "{goal}")),
            ("labelling_prompt", labelling_prompt, ("{analysis}",)),
            ("single_stage_prompt", single_stage_prompt, ("{image1}", "{image2}", "{goal}")),
        ):
            missing = [p for p in needed if p not in template]
            if missing:
                raise ValueError(f"{name} lacks the placeholder(s) {', '.join(missing)}")
        super().__init__(store, max_concurrency, identical_threshold, thumbnail_size)
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.two_stage = bool(two_stage)
        self.analysis_prompt = analysis_prompt
        self.labelling_prompt = labelling_prompt
        self.single_stage_prompt = single_stage_prompt
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self._rng = random.Random()

    def __repr__(self) -> str:
        mode = "two-stage" if self.two_stage else "single-stage"
        return (
            f"OpenAIPreferenceLabeler(url={self.url!r}, model={self.model!r}, {mode}, "
            f"api_key_env={self.api_key_env!r}, store={self.store!r})"
        )

    @property
    def config(self) -> Mapping[str, Any]:
        # The endpoint URL is left out on purpose: the same model behind another server (local
        # vLLM vs. hosted) answers the same question, and cached answers stay valid.
        return {
            "labeler": "openai-chat",
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **prompt_key_fields(self.two_stage, self.analysis_prompt, self.labelling_prompt, self.single_stage_prompt),
        }

    def ask(self, first: np.ndarray, second: np.ndarray, goal: str) -> PairOutcome:
        requests = 0
        analysis: str | None = None
        try:
            if self.two_stage:
                content = vision_content(self.analysis_prompt, goal, first, second)
                analysis, spent = self._chat(content)
                requests += spent
                if not analysis.strip():
                    return PairOutcome(UNPARSEABLE, analysis=analysis, error="empty analysis", requests=requests)
                prompt = self.labelling_prompt.replace("{goal}", goal).replace("{analysis}", analysis)
                answer, spent = self._chat(prompt)
            else:
                answer, spent = self._chat(vision_content(self.single_stage_prompt, goal, first, second))
            requests += spent
        except _RequestFailed as failure:
            return PairOutcome(FAILED, analysis=analysis, error=str(failure), requests=requests + failure.requests)
        return outcome_from_answer(answer, analysis, requests)

    def _chat(self, content: str | list[dict[str, Any]]) -> tuple[str, int]:
        """One user turn; returns (answer text, requests spent). Retries transient failures.

        Raises:
            _RequestFailed: a non-retryable error, or retries exhausted.
        """
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": content}],
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
        ).encode()
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(body), attempt + 1
            except _Retryable as transient:
                if attempt == self.max_retries:
                    raise _RequestFailed(
                        f"{transient.message} (gave up after {attempt + 1} requests)", attempt + 1
                    ) from None
                delay = transient.retry_after_s
                if delay is None:
                    delay = self._backoff(attempt)
                logger.info("retrying chat request in %.2f s: %s", delay, transient.message)
                time.sleep(delay)
            except _RequestFailed as failure:
                raise _RequestFailed(str(failure), attempt + 1) from None
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: uniform in [d/2, d], d = min(max, base * 2**attempt)."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt)
        return delay * (0.5 + 0.5 * self._rng.random())

    def _post(self, body: bytes) -> str:
        """One HTTP request. Raises _Retryable for transient failures, _RequestFailed otherwise."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        api_key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            detail = _scrub(_read_error_body(error), api_key)
            message = f"HTTP {error.code} from {self.url}: {detail}"
            if error.code in RETRY_STATUSES:
                raise _Retryable(message, parse_retry_after(error.headers.get("Retry-After"))) from None
            raise _RequestFailed(message, 1) from None
        except (TimeoutError, socket.timeout) as error:
            raise _Retryable(f"no response from {self.url} within {self.timeout_s:g} s ({error})") from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, (TimeoutError, socket.timeout)):
                raise _Retryable(f"no response from {self.url} within {self.timeout_s:g} s") from None
            raise _Retryable(f"cannot reach {self.url}: {error.reason}") from None
        except (ConnectionError, http.client.HTTPException, OSError) as error:
            raise _Retryable(f"connection to {self.url} broke: {type(error).__name__}: {error}") from None
        return self._answer_text(raw, api_key)

    def _answer_text(self, raw: bytes, api_key: str | None) -> str:
        try:
            payload = json.loads(raw)
            content = payload["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            snippet = _scrub(raw[:300].decode("utf-8", "replace"), api_key)
            raise _RequestFailed(f"malformed chat-completions response from {self.url}: {snippet!r}", 1) from None
        if content is None:
            return ""
        if isinstance(content, list):  # some servers return content parts
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)


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


__all__ = ["OpenAIPreferenceLabeler", "parse_retry_after"]
