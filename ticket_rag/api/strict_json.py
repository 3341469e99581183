"""Refuse JSON bodies no route should ever parse, before any route (FastAPI's or LangServe's) sees them.

Python's json module accepts what RFC 8259 does not (NaN, Infinity, numbers past the float range, duplicate
keys, UTF-16 and UTF-32) and recurses on nesting: each of these reached a 500 somewhere downstream (a 422 that
could not echo NaN, a RecursionError in validation) or was read differently by different parsers. One strict
parse here gives every route the same 422 instead. UTF-8 bodies that are not JSON at all pass through
untouched: the routes answer those as they always did.

What passes is exactly what the routes parse: json.loads(bytes), which FastAPI and LangServe call, would read a
leading UTF-8 byte order mark and UTF-16 or UTF-32 too. A BOM is ignored (RFC 8259 allows it; Windows tools add
one): the text after it is checked like any other and the route gets the body without it. Anything that is not
UTF-8 is refused, as is a second BOM, which json.loads(bytes) would strip again.

A big body is checked in a worker thread, so the event loop keeps serving other requests meanwhile (the key gate
outside this middleware has already refused callers without a valid key, unread). The nesting depth is counted on
the bytes, before the parse, in a few vectorised passes (about 50 ms for 4 MB, where a walk of the parsed tree took
seconds), and so is the number of arrays and objects: the parse never recurses past MAX_DEPTH, and a body of a
million tiny arrays, each a Python object to allocate and for the garbage collector to scan (here and again in the
route), is refused before either parse.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_DEPTH = 32  # the deepest legitimate body (a batch of inputs with filters or chat history) nests 5 levels
# The most arrays and objects one body may hold: the largest legitimate body, a bulk create at its highest cap
# (BULK_MAX_BATCH 10,000 tickets, each an object with a tags array), holds about 20,000. Each costs the parse an
# allocation the garbage collector then scans: 4 MB of `[]` is 1.4 million of them, a second of parsing for the
# route (on the event loop) however fast this check is.
MAX_CONTAINERS = 100_000
# Bodies above this are checked in a worker thread (64 KiB takes a few milliseconds; 4 MiB up to half a second).
THREAD_ABOVE_BYTES = 64 * 1024
# At most this many such checks at once: each holds about nine times its body in numpy arrays (36 MB for 4 MB), so
# forty concurrent large bodies from valid keys would otherwise hold 1.5 GB.
_LARGE_CHECKS = threading.BoundedSemaphore(4)
BOM = b"\xef\xbb\xbf"
NOT_UTF8 = "the body is not UTF-8 (JSON must be, RFC 8259)"
TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels"
TOO_MANY = f"JSON with more than {MAX_CONTAINERS:,} arrays and objects"

# Each byte's step in nesting depth: +1 opens an array or object, -1 closes one (inside strings masked out below).
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


class _Refused(ValueError):
    """Valid to Python's json module, refused here."""


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not valid JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:20]} is out of range")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # over Python's 4,300-digit limit
        raise _Refused("an integer with more than 4,300 digits") from None


def _object(pairs: list[tuple[str, Any]]) -> None:
    """Refuse a duplicate key; the parsed value itself is not kept (the route parses the body again)."""
    if len(pairs) > 1 and len({key for key, _ in pairs}) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"the key {json.dumps(key[:50])} appears twice in one object")
            seen.add(key)


def structure(body: bytes) -> tuple[int, int]:
    """How deep arrays and objects nest in UTF-8 JSON text, and how many there are: counted on the bytes, unparsed.

    Exact for any text json.loads accepts; for other bytes only an estimate, and the parse refuses them anyway.
    """
    # Without escaped backslashes and then escaped quotes, every quote left opens or closes a string (the bytes of
    # multi-byte UTF-8 characters are never quotes or backslashes).
    raw = np.frombuffer(body.replace(b"\\\\", b"").replace(b'\\"', b""), dtype=np.uint8)
    if raw.size == 0:
        return 0, 0
    # A byte is inside a string when an odd number of quotes precede it; uint8 sums wrap but keep their parity.
    inside = (np.cumsum(raw == ord('"'), dtype=np.uint8) & 1).astype(bool)
    steps = _STEP[raw]
    steps[inside] = 0
    return max(0, int(np.cumsum(steps, dtype=np.int32).max())), int(np.count_nonzero(steps == 1))


def refusal(body: bytes) -> str | None:
    """Why this body is refused, or None when it is strict JSON (or UTF-8 that is no JSON at all, left to the route).

    A leading UTF-8 byte order mark is ignored, as json.loads(bytes) ignores it: the text after it is what is checked.
    """
    body = body.removeprefix(BOM)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8
    if "\x00" in text:  # never in UTF-8 JSON; UTF-16/32 of ASCII text is otherwise valid UTF-8, read by json.loads
        return NOT_UTF8
    if text.startswith("\ufeff"):  # json.loads(bytes) would strip this one too, and read what follows
        return "the body starts with more than one byte order mark"
    depth, containers = structure(body)
    if depth > MAX_DEPTH:
        return TOO_DEEP
    if containers > MAX_CONTAINERS:
        return TOO_MANY
    try:
        json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int, object_pairs_hook=_object)
    except _Refused as exc:
        return str(exc)
    except RecursionError:  # not reached within MAX_DEPTH; kept so a deep body can never become a 500
        return TOO_DEEP
    except ValueError:
        return None
    return None


def _limited_refusal(body: bytes) -> str | None:
    """refusal() for a large body in a worker thread, a few at a time (see _LARGE_CHECKS)."""
    with _LARGE_CHECKS:
        return refusal(body)


class StrictJsonMiddleware:
    """A 422 naming the reason for a body that is JSON only to Python; the body is replayed to the route otherwise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:  # the body limit (MAX_BODY_BYTES) is enforced by the middleware around this one
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if len(body) > THREAD_ABOVE_BYTES:
            reason = await run_in_threadpool(_limited_refusal, body)
        else:
            reason = refusal(body) if body else None
        if reason is None:
            if body.startswith(BOM):  # the route reads exactly the text that was checked
                body = body[len(BOM) :]
                scope["headers"] = [
                    (name, str(len(body)).encode() if name == b"content-length" else value)
                    for name, value in scope["headers"]
                ]
            await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)
            return
        payload = json.dumps({"detail": [{"type": "json_invalid", "loc": ["body"], "msg": reason}]}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 422,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay
