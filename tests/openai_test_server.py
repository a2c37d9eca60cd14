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
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

DATA_URL_PREFIX = "data:image/png;base64,"
STAGES = ("vision", "text")
_BRIGHTNESS = re.compile(r"Image 1 has mean brightness ([\d.]+)\. Image 2 has mean brightness ([\d.]+)\.")


@dataclass(frozen=True)
class Reply:
    """Answer 200 with ``text`` as the assistant message."""

    text: str


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
    return model, texts, images


class OpenAITestServer:
    """Chat-completions server on 127.0.0.1 with scripted behaviours and request counting.

    Args:
        port: TCP port; 0 picks a free one.
        latency_ms: delay before every response, in milliseconds.
        model: the only model name accepted; None accepts any.
        tie_tolerance: brightness difference (0-255 levels) below which the default VLM says ``-1``.
    """

    def __init__(
        self, port: int = 0, latency_ms: float = 0.0, model: str | None = None, tie_tolerance: float = 0.5
    ) -> None:
        self.latency_s = latency_ms / 1000.0
        self.model = model
        self.tie_tolerance = tie_tolerance
        self.requests: list[RecordedRequest] = []
        self.protocol_errors: list[str] = []
        self._queues: dict[str, deque[Behaviour]] = {stage: deque() for stage in STAGES}
        self._defaults: dict[str, Behaviour | None] = dict.fromkeys(STAGES)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
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
            self.protocol_errors.clear()

    def _next_behaviour(self, stage: str) -> Behaviour | None:
        with self._lock:
            if self._queues[stage]:
                return self._queues[stage].popleft()
            return self._defaults[stage]

    def default_answer(self, texts: list[str], images: list[np.ndarray]) -> str:
        """The brightness VLM (see the module docstring)."""
        if images:
            if len(images) != 2:
                return f"I was shown {len(images)} images, expected 2."
            b1, b2 = (float(image.mean()) for image in images)
            if any("single line" in text for text in texts):
                return self._verdict(b1, b2)
            return f"Image 1 has mean brightness {b1:.3f}. Image 2 has mean brightness {b2:.3f}."
        match = _BRIGHTNESS.search("\n".join(texts))
        if match is None:
            return "I cannot tell from this text which image is better."
        return self._verdict(float(match.group(1)), float(match.group(2)))

    def _verdict(self, b1: float, b2: float) -> str:
        if abs(b1 - b2) <= self.tie_tolerance:
            return "-1"
        return "0" if b1 > b2 else "1"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if not self.path.endswith("/chat/completions"):
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    if "json" not in (self.headers.get("Content-Type") or ""):
                        raise ProtocolError("Content-Type must be application/json")
                    model, texts, images = parse_chat_request(body, server.model)
                except ProtocolError as error:
                    with server._lock:
                        server.protocol_errors.append(str(error))
                    self._send_json(400, {"error": {"message": str(error), "type": "invalid_request_error"}})
                    return
                stage = "vision" if images else "text"
                behaviour = server._next_behaviour(stage)
                with server._lock:
                    server.requests.append(
                        RecordedRequest(
                            path=self.path,
                            stage=stage,
                            behaviour="default" if behaviour is None else type(behaviour).__name__,
                            authorization=self.headers.get("Authorization"),
                            model=model,
                            n_images=len(images),
                            image_means=tuple(float(image.mean()) for image in images),
                            time=time.monotonic(),
                        )
                    )
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
                text = behaviour.text if isinstance(behaviour, Reply) else server.default_answer(texts, images)
                self._send_json(
                    200,
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
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
    args = parser.parse_args()
    server = OpenAITestServer(port=args.port, latency_ms=args.latency_ms, model=args.model)
    print(f"serving {server.base_url}/chat/completions (Ctrl-C to stop)", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
