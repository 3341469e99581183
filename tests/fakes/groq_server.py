"""A loopback server that speaks Groq's OpenAI-compatible chat API, scripted per test, recording every request."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PATH = "/openai/v1/chat/completions"


@dataclass
class Reply:
    """One scripted answer: a status (200 answers `chunks` joined, or streams them), extra headers, a delay."""

    status: int = 200
    chunks: list[str] = field(default_factory=lambda: ["Hello", " from", " fake", " Groq."])
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    # Streaming only: after the first chunk, wait for this before sending the rest (and abort if it never comes).
    gate: threading.Event | None = None


@dataclass
class Recorded:
    """A request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeGroq:
    """Start with `with FakeGroq() as fake:`; `fake.url` is the base URL to give the Groq client."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.default = Reply()
        self.requests: list[Recorded] = []
        self.stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def then(self, *replies: Reply) -> FakeGroq:
        """Queue replies for the next requests, in order; later requests get `default`."""
        self.script.extend(replies)
        return self

    def next_reply(self) -> Reply:
        return self.script.popleft() if self.script else self.default

    def __enter__(self) -> FakeGroq:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()  # wakes handlers sleeping through a `delay`
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    words = len(text.split())
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words},
    }


def _chunk(body: dict[str, Any], delta: dict[str, str], finish: str | None) -> bytes:
    data = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(data)}\n\n".encode()


def _handler_for(fake: FakeGroq) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.loads(raw or b"{}")
            fake.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            reply = fake.next_reply()
            if reply.delay and fake.stopping.wait(reply.delay):
                return
            try:
                if self.path != CHAT_PATH:
                    self._json(404, {"error": {"message": f"no route {self.path}"}}, {})
                elif reply.status != 200:
                    error = {"message": f"fake error {reply.status}", "type": "fake", "code": str(reply.status)}
                    self._json(reply.status, {"error": error}, reply.headers)
                elif body.get("stream"):
                    self._stream(body, reply)
                else:
                    self._json(200, _completion(body, "".join(reply.chunks)), reply.headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, body: dict[str, Any], reply: Reply) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            for i, text in enumerate(reply.chunks):
                delta = {"role": "assistant", "content": text} if i == 0 else {"content": text}
                self.wfile.write(_chunk(body, delta, None))
                self.wfile.flush()
                if i == 0 and reply.gate is not None and not reply.gate.wait(5):
                    return  # the client never saw the first chunk: cut the stream short
            self.wfile.write(_chunk(body, {}, "stop"))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler
