"""A real HTTP server speaking the OpenAI chat-completions protocol, for labeler tests and benchmarks.

It stands in for a VLM (whose weights cannot run here) but speaks the real protocol over a real
socket: ``POST /v1/chat/completions`` with a JSON body, images as PNG data URLs. Each request is
validated (model, messages, content parts, data URLs that decode to real PNGs); a malformed one
gets HTTP 400 and is listed in ``server.protocol_errors``.

The default "VLM" judges brightness, so answers depend on the image content:

- a vision request (with images) that asks for an analysis gets
  ``"Image 1 has mean brightness A. Image 2 has mean brightness B."``;
- a text request (the labelling turn) reads those numbers back and answers ``0`` (image 1 is
  brighter), ``1`` (image 2 is brighter) or ``-1`` (within ``tie_tolerance`` levels);
- a vision request that itself asks for the single-line answer (single-stage mode) gets the
  answer directly.

Behaviours can be injected per stage (``"vision"`` or ``"text"``), either queued for the next
requests (``enqueue``) or as a standing default (``set_default``): ``Reply(text)``,
``Status(code, retry_after)``, ``Hang(seconds)`` (no response before the client gives up),
``Malformed()``. ``latency_ms`` delays every response.

What vLLM adds to the protocol, with switches that play servers without it:

- **Constrained choice**: ``guided_choice: [...]`` (vLLM < 0.12) or ``structured_outputs:
  {"choice": [...]}`` (newer) make the answer one of the choices (``constraints="obey"``: the
  text itself when it is a choice, else the choice found earliest in it, longest first, else
  the last choice). ``constraints="reject"`` answers HTTP 400 like a server without the
  feature; ``constraints="ignore"`` answers free text as if the field were not there.
- **Log-probabilities**: ``logprobs: true`` (with ``top_logprobs: k``, at most 20) adds
  ``choices[0].logprobs.content``: one entry per token (``-1`` is ``-`` then ``1``) with its
  ``top_logprobs``. The brightness VLM's first answer token follows a softmax over the answers
  (``0``: ``(b1 - b2) / (2 s)``, ``1``: the negative, ``-``: ``tie_tolerance / (2 s)``, with
  ``s = logprob_scale`` levels) and two filler tokens, so close pairs get unsure
  probabilities and its greedy answer is its text answer; ``Reply(text, top_logprobs={...})``
  scripts them. ``logprobs=False`` omits them (``"logprobs": null``) like a server that lacks them.
- ``max_tokens`` cuts the answer after that many tokens (``finish_reason: "length"``).
- ``GET /v1/models`` lists the served model (``models_route=False``: 404, like servers without
  it); ``api_key="..."`` answers 401 to every request without ``Authorization: Bearer <key>``.

Use it as a context manager (``with OpenAITestServer() as server: server.base_url``) or from the
command line for benchmarks::

    python tests/openai_test_server.py --port 8765 --latency-ms 200
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import math
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

DATA_URL_PREFIX = "data:image/png;base64,"
STAGES = ("vision", "text")
CONSTRAINT_MODES = ("obey", "reject", "ignore")
_BRIGHTNESS = re.compile(r"Image 1 has mean brightness ([\d.]+)\. Image 2 has mean brightness ([\d.]+)\.")
_TOKEN = re.compile(r"-|\d|\s+|[^\s\d-]+")  # "-1" is "-" then "1", as in most real tokenisers
_FILLERS = {"The": -4.0, "I": -5.0}  # tokens a real model would also consider, as logits


@dataclass(frozen=True)
class Reply:
    """Answer 200 with ``text`` as the assistant message; ``top_logprobs`` (token -> log-prob)
    scripts the first token's alternatives when log-probabilities are asked for."""

    text: str
    top_logprobs: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Status:
    """Answer with an HTTP error ``code``; ``retry_after`` is sent as the Retry-After header and
    ``message`` as the error message (default ``"scripted CODE"``)."""

    code: int
    retry_after: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Hang:
    """Send nothing for ``seconds`` (past the client's timeout), then close the connection."""

    seconds: float


@dataclass(frozen=True)
class Malformed:
    """Answer 200 with a body that is not a chat-completions response."""


Behaviour = Reply | Status | Hang | Malformed


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it. ``behaviour`` is ``"default"`` or the injected class name."""

    path: str
    stage: str
    behaviour: str
    authorization: str | None
    model: str | None
    n_images: int
    image_means: tuple[float, ...]
    time: float
    options: dict[str, Any] = field(default_factory=dict)
    """Every request field except ``model`` and ``messages`` (``max_tokens``, ``guided_choice``, ...)."""


class ProtocolError(ValueError):
    """The request does not follow the chat-completions protocol."""


def decode_png_data_url(url: str) -> np.ndarray:
    """Decode a ``data:image/png;base64,...`` URL to a uint8 ``[H, W, 3]`` array (must be a real PNG)."""
    if not url.startswith(DATA_URL_PREFIX):
        raise ProtocolError(f"image_url must be a PNG data URL, got {url[:40]!r}")
    try:
        data = base64.b64decode(url[len(DATA_URL_PREFIX) :], validate=True)
    except binascii.Error as error:
        raise ProtocolError(f"bad base64 in data URL: {error}") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # PIL raises many types for broken files
        raise ProtocolError(f"data URL is not a decodable image: {error}") from None
    if image.format != "PNG":
        raise ProtocolError(f"data URL holds {image.format}, not PNG")
    return np.asarray(image.convert("RGB"))


def parse_chat_request(body: bytes, expected_model: str | None) -> tuple[str, list[str], list[np.ndarray]]:
    """Validate a chat-completions request; return (model, text parts, decoded images)."""
    model, texts, images, _ = _parse_chat(body, expected_model)
    return model, texts, images


@dataclass(frozen=True)
class ChatOptions:
    """The request fields that change the answer: the allowed choices (None: free text), whether
    and how many log-probabilities to return, and the token limit (None: none)."""

    choices: tuple[str, ...] | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    max_tokens: int | None = None


def chat_options(payload: dict[str, Any]) -> ChatOptions:
    """Validate and read the optional fields of a chat request (ProtocolError when malformed)."""
    choices = None
    guided = payload.get("guided_choice")
    structured = payload.get("structured_outputs")
    if structured is not None:
        if not isinstance(structured, dict) or set(structured) - {"choice"}:
            raise ProtocolError("'structured_outputs' must be an object with only 'choice' (this server's subset)")
        structured = structured.get("choice")
    for name, value in (("guided_choice", guided), ("structured_outputs.choice", structured)):
        if value is None:
            continue
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise ProtocolError(f"'{name}' must be a non-empty list of non-empty strings")
        if choices is not None and tuple(value) != choices:
            raise ProtocolError("'guided_choice' and 'structured_outputs.choice' disagree")
        choices = tuple(value)
    logprobs = payload.get("logprobs", False)
    if not isinstance(logprobs, bool):
        raise ProtocolError("'logprobs' must be true or false")
    top = payload.get("top_logprobs", 0)
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
        raise ProtocolError("'top_logprobs' must be an integer in [0, 20]")
    if top and not logprobs:
        raise ProtocolError("'top_logprobs' needs 'logprobs': true")
    max_tokens = payload.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ProtocolError("'max_tokens' must be a positive integer")
    return ChatOptions(choices, logprobs, top, max_tokens)


def tokens_of(text: str) -> list[str]:
    """This server's tokenisation: digits and ``-`` alone, runs of letters, runs of whitespace."""
    return _TOKEN.findall(text)


def constrain(text: str, choices: tuple[str, ...]) -> str:
    """What a decoder constrained to ``choices`` answers instead of ``text`` (see the module docstring)."""
    if text.strip() in choices:
        return text.strip()
    found = [(text.find(c), -len(c), c) for c in choices if c in text]
    return min(found)[2] if found else choices[-1]


def _parse_chat(body: bytes, expected_model: str | None) -> tuple[str, list[str], list[np.ndarray], dict[str, Any]]:
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise ProtocolError(f"body is not JSON: {error}") from None
    if not isinstance(payload, dict):
        raise ProtocolError("body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise ProtocolError("'model' must be a non-empty string")
    if expected_model is not None and model != expected_model:
        raise ProtocolError(f"unknown model {model!r}")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProtocolError("'messages' must be a non-empty list")
    texts: list[str] = []
    images: list[np.ndarray] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ProtocolError(f"bad message {str(message)[:80]!r}")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list) or not content:
            raise ProtocolError("message content must be a string or a non-empty list of parts")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                images.append(decode_png_data_url(str(part["image_url"].get("url", ""))))
            else:
                raise ProtocolError(f"bad content part {str(part)[:80]!r}")
    for key in ("temperature", "max_tokens"):
        if key in payload and not isinstance(payload[key], (int, float)):
            raise ProtocolError(f"'{key}' must be a number")
    return model, texts, images, payload


class _ThreadingServer(ThreadingHTTPServer):
    # socketserver's listen backlog of 5 drops connections when 16 clients connect at once, and
    # each dropped SYN costs a 1 s TCP retransmit (`vlmrl bench labels` halved at random);
    # uvicorn, which serves vLLM, uses 2048.
    request_queue_size = 128
    daemon_threads = True


class OpenAITestServer:
    """Chat-completions server on 127.0.0.1 with scripted behaviours and request counting.

    Args:
        port: TCP port; 0 picks a free one.
        latency_ms: delay before every response, in milliseconds.
        model: the only model name accepted; None accepts any.
        tie_tolerance: brightness difference (0-255 levels) below which the default VLM says ``-1``.
        constraints: ``obey``, ``reject`` (HTTP 400) or ``ignore`` guided choices.
        logprobs: return log-probabilities when asked (False: omit them).
        logprob_scale: brightness levels per unit of the default VLM's answer logits.
        models_route: serve ``GET /v1/models`` (False: 404).
        api_key: require ``Authorization: Bearer <api_key>`` (401 otherwise); None requires nothing.
    """

    def __init__(
        self,
        port: int = 0,
        latency_ms: float = 0.0,
        model: str | None = None,
        tie_tolerance: float = 0.5,
        constraints: str = "obey",
        logprobs: bool = True,
        logprob_scale: float = 10.0,
        models_route: bool = True,
        api_key: str | None = None,
    ) -> None:
        if constraints not in CONSTRAINT_MODES:
            raise ValueError(f"constraints must be one of {CONSTRAINT_MODES}, got {constraints!r}")
        self.latency_s = latency_ms / 1000.0
        self.model = model
        self.tie_tolerance = tie_tolerance
        self.constraints = constraints
        self.logprobs = logprobs
        self.logprob_scale = logprob_scale
        self.models_route = models_route
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.get_requests: list[str] = []
        """Paths of every GET request (``/v1/models``), kept apart from the chat ``requests``."""
        self.protocol_errors: list[str] = []
        self._queues: dict[str, deque[Behaviour]] = {stage: deque() for stage in STAGES}
        self._defaults: dict[str, Behaviour | None] = dict.fromkeys(STAGES)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _ThreadingServer(("127.0.0.1", port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """What a client passes as ``base_url``: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAITestServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def enqueue(self, stage: str, *behaviours: Behaviour) -> None:
        """Use ``behaviours`` for the next requests of ``stage`` ("vision" or "text"), in order."""
        with self._lock:
            self._queues[stage].extend(behaviours)

    def set_default(self, stage: str, behaviour: Behaviour | None) -> None:
        """Use ``behaviour`` for every request of ``stage`` once its queue is empty (None: the brightness VLM)."""
        with self._lock:
            self._defaults[stage] = behaviour

    def count(self, stage: str | None = None, behaviour: str | None = None) -> int:
        """Requests received (valid ones only), optionally only of one stage and/or behaviour name."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (stage is None or r.stage == stage) and (behaviour is None or r.behaviour == behaviour)
            )

    def counts(self) -> Counter[tuple[str, str]]:
        """Requests per (stage, behaviour)."""
        with self._lock:
            return Counter((r.stage, r.behaviour) for r in self.requests)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.get_requests.clear()
            self.protocol_errors.clear()

    def _next_behaviour(self, stage: str) -> Behaviour | None:
        with self._lock:
            if self._queues[stage]:
                return self._queues[stage].popleft()
            return self._defaults[stage]

    def default_answer(self, texts: list[str], images: list[np.ndarray]) -> str:
        """The brightness VLM (see the module docstring)."""
        return self._default(texts, images)[0]

    def _default(self, texts: list[str], images: list[np.ndarray]) -> tuple[str, dict[str, float] | None]:
        """(the brightness VLM's answer, its first token's log-probabilities when it is a verdict)."""
        if images:
            if len(images) != 2:
                return f"I was shown {len(images)} images, expected 2.", None
            b1, b2 = (float(image.mean()) for image in images)
            if any("single line" in text for text in texts):
                return self._verdict(b1, b2), self._verdict_logprobs(b1, b2)
            return f"Image 1 has mean brightness {b1:.3f}. Image 2 has mean brightness {b2:.3f}.", None
        match = _BRIGHTNESS.search("\n".join(texts))
        if match is None:
            return "I cannot tell from this text which image is better.", None
        b1, b2 = float(match.group(1)), float(match.group(2))
        return self._verdict(b1, b2), self._verdict_logprobs(b1, b2)

    def _verdict(self, b1: float, b2: float) -> str:
        if abs(b1 - b2) <= self.tie_tolerance:
            return "-1"
        return "0" if b1 > b2 else "1"

    def _verdict_logprobs(self, b1: float, b2: float) -> dict[str, float]:
        """Log-softmax over the answers' first tokens and two fillers; its argmax is ``_verdict``'s."""
        half = (b1 - b2) / (2.0 * self.logprob_scale)
        logits = {"0": half, "1": -half, "-": self.tie_tolerance / (2.0 * self.logprob_scale), **_FILLERS}
        top = max(logits.values())
        norm = top + math.log(sum(math.exp(v - top) for v in logits.values()))
        return {token: value - norm for token, value in logits.items()}

    def _logprobs(self, text: str, first: Mapping[str, float] | None, top: int) -> dict[str, Any]:
        """``choices[0].logprobs`` for ``text``: every token sure except the first, whose
        alternatives are ``first`` (or, unscripted, the token itself at 0.9 plus fillers)."""
        content = []
        for index, token in enumerate(tokens_of(text)):
            if index == 0 and first:
                alternatives = dict(first)
                alternatives.setdefault(token, math.log(1e-6))
            elif index == 0:
                alternatives = {token: math.log(0.9), **{k: math.log(0.05) for k in _FILLERS if k != token}}
            else:
                alternatives = {token: 0.0}
            ranked = sorted(alternatives.items(), key=lambda item: -item[1])[: max(top, 1)]
            content.append(
                {
                    "token": token,
                    "logprob": alternatives[token],
                    "bytes": list(token.encode()),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in ranked[:top]
                    ],
                }
            )
        return {"content": content}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def _authorised(self) -> bool:
                if server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self._send_json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
                return False

            def do_GET(self) -> None:
                with server._lock:
                    server.get_requests.append(self.path)
                if not (server.models_route and self.path.rstrip("/").endswith("/models")):
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if not self._authorised():
                    return
                served = server.model or "test-vlm"
                self._send_json(200, {"object": "list", "data": [{"id": served, "object": "model", "owned_by": "vlmrl"}]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if not self.path.endswith("/chat/completions"):
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    if "json" not in (self.headers.get("Content-Type") or ""):
                        raise ProtocolError("Content-Type must be application/json")
                    model, texts, images, payload = _parse_chat(body, server.model)
                    options = chat_options(payload)
                except ProtocolError as error:
                    with server._lock:
                        server.protocol_errors.append(str(error))
                    self._send_json(400, {"error": {"message": str(error), "type": "invalid_request_error"}})
                    return
                stage = "vision" if images else "text"
                unauthorised = server.api_key is not None and (
                    self.headers.get("Authorization") != f"Bearer {server.api_key}"
                )
                rejected = options.choices is not None and server.constraints == "reject"
                # A refused request takes no scripted behaviour: it never reached the "model".
                behaviour = None if unauthorised or rejected else server._next_behaviour(stage)
                if unauthorised:
                    name = "unauthorised"
                elif rejected:
                    name = "rejected"
                else:
                    name = "default" if behaviour is None else type(behaviour).__name__
                with server._lock:
                    server.requests.append(
                        RecordedRequest(
                            path=self.path,
                            stage=stage,
                            behaviour=name,
                            authorization=self.headers.get("Authorization"),
                            model=model,
                            n_images=len(images),
                            image_means=tuple(float(image.mean()) for image in images),
                            time=time.monotonic(),
                            options={k: v for k, v in payload.items() if k not in ("model", "messages")},
                        )
                    )
                if unauthorised:
                    self._authorised()
                    return
                if rejected:
                    # What an OpenAI-compatible server without guided decoding says.
                    field_name = "guided_choice" if "guided_choice" in payload else "structured_outputs"
                    message = f"Unrecognized request argument supplied: {field_name}"
                    self._send_json(400, {"error": {"message": message, "type": "invalid_request_error"}})
                    return
                if server.latency_s > 0:
                    server._stopping.wait(server.latency_s)
                if isinstance(behaviour, Hang):
                    server._stopping.wait(behaviour.seconds)
                    self.close_connection = True
                    return
                if isinstance(behaviour, Status):
                    headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
                    message = behaviour.message or f"scripted {behaviour.code}"
                    self._send_json(behaviour.code, {"error": {"message": message}}, headers)
                    return
                if isinstance(behaviour, Malformed):
                    self._send_raw(200, b'{"not": "a chat completion"}')
                    return
                if isinstance(behaviour, Reply):
                    text, first_logprobs = behaviour.text, behaviour.top_logprobs
                else:
                    text, first_logprobs = server._default(texts, images)
                if options.choices is not None and server.constraints == "obey":
                    text = constrain(text, options.choices)
                    if first_logprobs is not None and tokens_of(text)[:1] != [max(first_logprobs, key=first_logprobs.get)]:
                        first_logprobs = None  # the constraint overrode the free answer
                finish_reason = "stop"
                tokens = tokens_of(text)
                if options.max_tokens is not None and len(tokens) > options.max_tokens:
                    text, finish_reason = "".join(tokens[: options.max_tokens]), "length"
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
                if options.logprobs:
                    choice["logprobs"] = (
                        server._logprobs(text, first_logprobs, options.top_logprobs) if server.logprobs else None
                    )
                self._send_json(
                    200,
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [choice],
                        "usage": {"prompt_tokens": 0, "completion_tokens": len(tokens_of(text)), "total_tokens": 0},
                    },
                )

            def _send_json(self, code: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                self._send_raw(code, json.dumps(payload).encode(), headers)

            def _send_raw(self, code: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server (brightness VLM).")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every response")
    parser.add_argument("--model", default=None, help="only accept this model name")
    parser.add_argument("--constraints", choices=CONSTRAINT_MODES, default="obey",
                        help="obey guided choices (default), reject them with HTTP 400, or ignore them")
    parser.add_argument("--no-logprobs", action="store_true", help="never return log-probabilities")
    args = parser.parse_args()
    server = OpenAITestServer(port=args.port, latency_ms=args.latency_ms, model=args.model,
                              constraints=args.constraints, logprobs=not args.no_logprobs)
    print(f"serving {server.base_url}/chat/completions (Ctrl-C to stop)", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
