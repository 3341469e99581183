"""Logging set-up (JSON lines) and the request middleware: request id, one access-log line per request."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.middleware import body_limit
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ticket_rag.runtime.metrics import LATENCY, REQUESTS

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# Starlette's signal that its body limit sent a 413 in place of the app's response (no public name; as FastAPI does).
_LIMIT_RESPONSE_SENT: tuple[type[BaseException], ...] = tuple(
    c for c in [getattr(body_limit, "_RequestBodyLimitResponseSent", None)] if isinstance(c, type)
)
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
access_logger = logging.getLogger("ticket_rag.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "color_message"}


def tracing_enabled() -> bool:
    """Whether LangSmith tracing is on, read from LangSmith's own variables."""
    return os.environ.get("LANGSMITH_TRACING", os.environ.get("LANGCHAIN_TRACING_V2", "")).lower() == "true"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test runners and daemons swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(*, level: str = "INFO", json_lines: bool = True) -> None:
    """Configure the root logger once: JSON lines (or plain text for a terminal) on stderr."""
    handler = _StderrHandler()
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "urllib3", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # An optional SIMD library's absence, announced at import; our vector math is numpy's anyway.
    logging.getLogger("langchain_weaviate._math").setLevel(logging.ERROR)


class RequestContextMiddleware:
    """Give every request an id (X-Request-ID, accepted from the client when well-formed) and log it once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _SAFE_ID.match(supplied) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if not response_started:
                if isinstance(exc, HTTPException):  # the body limit's 413, raised while the body was read
                    status = exc.status_code
                raise
            # A streamed response already told the client (LangServe sends an `error` event); re-raising
            # now would only cut the connection with a second, noisier report. A 413 sent while a chunked
            # body was still arriving ends with the body limit's own signal: expected, not an error.
            if status == 413 or isinstance(exc, _LIMIT_RESPONSE_SENT):
                # A declared Content-Length over the limit: Starlette's limiter answered 413 in place of whatever
                # response began (a 401 from the key gate, say) and signals it by this exception. Expected too.
                status = 413
                logging.getLogger(__name__).debug("body over MAX_BODY_BYTES refused while it streamed in")
            else:
                logging.getLogger(__name__).exception("error after the response started")
        finally:
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - started
            # any other method is one label: a client inventing methods must not grow the metrics without bound
            method = scope["method"] if scope["method"] in METRIC_METHODS else "other"
            REQUESTS.labels(method, route_path, str(status)).inc()
            LATENCY.labels(method, route_path).observe(elapsed)
            access_logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route_path,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 2),
                    "key_id": scope.get("state", {}).get("key_id"),
                },
            )
            request_id_var.reset(token)
