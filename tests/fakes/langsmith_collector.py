"""A loopback server that accepts what the real langsmith client sends, and keeps the runs it describes.

The client fetches GET /info once, then sends runs from a background thread, normally as
POST /runs/multipart (parts `post.<id>`, `patch.<id>`, `post.<id>.inputs`, ...), zstd-compressed
when /info says the server accepts that, as LangSmith's does. /runs/batch, POST /runs and
PATCH /runs/<id> are accepted too, in case a client version falls back to them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import zstandard

# What the client reads from /info: multipart ingestion, zstd compression, as LangSmith's own server.
INFO = {
    "version": "0.0.0-loopback",
    "batch_ingest_config": {
        "use_multipart_endpoint": True,
        "size_limit": 100,
        "size_limit_bytes": 20_971_520,
        "scale_up_nthreads_limit": 1,
        "scale_up_qsize_trigger": 1000,
        "scale_down_nempty_trigger": 4,
    },
    "instance_flags": {"zstd_compression_enabled": True},
}
_OUT_OF_BAND = {"inputs", "outputs", "events", "extra", "error", "serialized"}


@dataclass
class Received:
    """One request as the collector saw it, the body decompressed, so tests can search it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class LangSmithCollector:
    """`with LangSmithCollector() as c:`; give the service `c.url` as LANGSMITH_ENDPOINT; read `c.runs`.

    `stop()` closes the port (requests then fail with connection refused) and `start()` opens it again
    on the same port, so a test can take the collector away under a running service. Every response
    closes its connection (HTTP/1.0), so no kept-alive connection outlives a `stop()`.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.runs: dict[str, dict[str, Any]] = {}
        self.received: list[Received] = []
        self.errors: list[str] = []  # requests the collector could not understand
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LangSmithCollector:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> LangSmithCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """A copy of the runs received so far, by run id."""
        with self.lock:
            return json.loads(json.dumps(self.runs))

    def merge(self, run_id: str, fields: dict[str, Any]) -> None:
        """Fold a post or patch (or one out-of-band part of it) into the run; dict fields merge shallowly."""
        with self.lock:
            run = self.runs.setdefault(run_id, {"id": run_id})
            for key, value in fields.items():
                old = run.get(key)
                run[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value

    def ingest_multipart(self, content_type: str, body: bytes) -> None:
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        if not message.is_multipart():
            raise ValueError("not a multipart body")
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition") or ""
            kind, _, rest = str(name).partition(".")
            run_id, _, field = rest.partition(".")
            if kind not in ("post", "patch"):
                continue  # feedback and attachments: not runs
            value = json.loads(part.get_payload(decode=True) or b"null")
            if not field:
                self.merge(run_id, value)
            elif field in _OUT_OF_BAND:
                self.merge(run_id, {field: value})


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if encoding != "identity":
        raise ValueError(f"unexpected content-encoding {encoding}")
    return body


def _handler_for(collector: LangSmithCollector) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                data = b""
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return data
            return self.rfile.read(int(self.headers.get("content-length", 0)))

        def _reply(self, status: int, payload: object) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            path = self.path.split("?")[0].rstrip("/")
            body = self._body()
            try:
                body = _decoded(body, headers.get("content-encoding", "identity"))
                collector.received.append(Received(self.command, path, headers, body))
                if (self.command, path) == ("GET", "/info"):
                    return self._reply(200, INFO)
                if (self.command, path) == ("POST", "/runs/multipart"):
                    collector.ingest_multipart(headers.get("content-type", ""), body)
                elif (self.command, path) == ("POST", "/runs/batch"):
                    batch = json.loads(body)
                    for run in batch.get("post", []) + batch.get("patch", []):
                        collector.merge(str(run["id"]), run)
                elif (self.command, path) == ("POST", "/runs"):
                    run = json.loads(body)
                    collector.merge(str(run["id"]), run)
                elif self.command == "PATCH" and path.startswith("/runs/"):
                    collector.merge(path.removeprefix("/runs/"), json.loads(body))
                else:
                    return self._reply(404, {"detail": f"no route {self.command} {path}"})
            except (ValueError, KeyError, zstandard.ZstdError) as exc:
                collector.errors.append(f"{self.command} {path}: {exc!r}")
                return self._reply(422, {"detail": "could not decode the request"})
            self._reply(202, {})

        do_GET = do_POST = do_PATCH = _handle

    return Handler
