"""The only test double in the suite: a local OpenAI-compatible endpoint with scripted answers.

README, "Tests": no hosted model, ever. `FakeLlm` is a real HTTP server (stdlib
`ThreadingHTTPServer` on its own thread, so a test's event loop and a proxy running on another
thread can both reach it) that implements `POST /v1/chat/completions` and answers each request
with the next scripted response:

    def test_x(fake_llm):
        fake_llm.script(status(429, retry_after=1), answer(["UPDATE t SET a = 1"]))
        config = LlmConfig(base_url=fake_llm.base_url, api_key="k")
        ...
        assert fake_llm.requests[0].headers["authorization"] == "Bearer k"

Helpers build responses: `answer(inverse, ...)` (a chat.completion whose content is the JSON an
`InverseAnswer` expects), `raw(text)` (any content, for malformed output), `status(code, ...)`
(an error, optionally with Retry-After) and `delay(seconds, then=...)` (to trigger timeouts).
An empty script answers 500 "script exhausted", so a test that asks too often fails instead of
hanging. Every request is recorded (`requests`: path, lower-cased headers, parsed JSON body).

The fixture `fake_llm` is function-scoped; make it visible suite-wide with
`pytest_plugins = ["tests.fake_llm"]` in tests/conftest.py, or in one module with
`from tests.fake_llm import fake_llm_fixture  # noqa: F401` (the function's own name differs from
the fixture's so that test parameters named `fake_llm` do not shadow an import).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True)
class Reply:
    """One scripted response."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0  # seconds to wait before answering
    content: str | None = None  # for a 200: the assistant message text (the body is built per request)


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or the raw text when it was not JSON
    raw: str = ""

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    @property
    def text(self) -> str:
        """All message contents joined: what the model was shown."""
        return "\n".join(str(m.get("content", "")) for m in self.messages)


def answer(inverse: list[str], assumptions: list[str] | None = None,
           cannot_restore: list[str] | None = None) -> Reply:
    """A 200 chat.completion whose message content is an InverseAnswer's JSON."""
    return raw(json.dumps({"inverse": inverse, "assumptions": assumptions or [],
                           "cannot_restore": cannot_restore or []}))


def raw(text: str) -> Reply:
    """A 200 chat.completion whose message content is `text` (malformed output, fenced JSON...)."""
    return Reply(200, content=text)


def status(code: int, body: str = "", retry_after: float | str | None = None) -> Reply:
    """An error response in OpenAI's shape ({"error": {"message": ...}})."""
    message = body or f"fake error {code}"
    payload = json.dumps({"error": {"message": message, "type": "fake_error", "code": str(code)}}).encode()
    headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    return Reply(code, payload, tuple(headers))


def delay(seconds: float, then: Reply | None = None) -> Reply:
    """`then` (default: an empty answer), after `seconds`: longer than the client's timeout to test it."""
    base = then or answer([])
    return Reply(base.status, base.body, base.headers, seconds, base.content)


class FakeLlm:
    """The running server: `base_url`, `script(...)`, `requests`. Use the `fake_llm` fixture."""

    answer = staticmethod(answer)
    raw = staticmethod(raw)
    status = staticmethod(status)
    delay = staticmethod(delay)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Reply] = deque()
        self._stopping = threading.Event()
        self.requests: list[Received] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for it, once per test.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-llm", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *responses: Reply) -> None:
        """Queue responses, answered in order, one per request."""
        with self._lock:
            self._queue.extend(responses)

    @property
    def pending(self) -> int:
        """Scripted responses not used yet."""
        with self._lock:
            return len(self._queue)

    def start(self) -> FakeLlm:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a delay()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # -- used by the handler thread --------------------------------------------------------

    def _next(self, received: Received) -> Reply:
        with self._lock:
            self.requests.append(received)
            if self._queue:
                return self._queue.popleft()
        return status(500, "script exhausted")

    def _record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)

    def _wait(self, seconds: float) -> bool:
        """Sleep; False when the server is stopping."""
        return not self._stopping.wait(seconds)


def _completion(content: str, request: Any) -> bytes:
    model = request.get("model", "fake") if isinstance(request, dict) else "fake"
    prompt = json.dumps(request.get("messages", [])) if isinstance(request, dict) else ""
    prompt_tokens = max(1, len(prompt) // 4)
    completion_tokens = max(1, len(content) // 4)
    return json.dumps({
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                     "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }).encode()


def _handler_for(fake: FakeLlm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            text = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, text)
            if self.path.rstrip("/") != "/v1/chat/completions":
                fake._record(received)
                self._send(status(404, f"no route {self.path}"), body)
                return
            reply = fake._next(received)
            if reply.delay and not fake._wait(reply.delay):
                return
            self._send(reply, body)

        def do_GET(self) -> None:
            self._send(status(404, f"no route {self.path}"), None)

        def _send(self, reply: Reply, request: Any) -> None:
            payload = _completion(reply.content, request) if reply.content is not None else reply.body
            try:
                self.send_response(reply.status)
                names = {k.lower() for k, _ in reply.headers}
                for k, v in reply.headers:
                    self.send_header(k, v)
                if "content-type" not in names:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): nothing to tell it

    return Handler


@pytest.fixture(name="fake_llm")
def fake_llm_fixture() -> Iterator[FakeLlm]:
    """A fresh scripted OpenAI-compatible endpoint per test, stopped afterwards."""
    server = FakeLlm().start()
    try:
        yield server
    finally:
        server.stop()


__all__ = ["FakeLlm", "Received", "Reply", "answer", "delay", "fake_llm_fixture", "raw", "status"]
