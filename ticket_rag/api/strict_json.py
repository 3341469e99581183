"""Refuse JSON bodies no route should ever parse, before any route (FastAPI's or LangServe's) sees them.

Python's json module accepts what RFC 8259 does not (NaN, Infinity, numbers past the float range, duplicate
keys, UTF-16 and UTF-32) and recurses on nesting: each of these reached a 500 somewhere downstream (a 422 that
could not echo NaN, a RecursionError in validation) or was read differently by different parsers. One strict
parse here gives every route the same 422 instead. UTF-8 bodies that are not JSON at all pass through
untouched: the routes answer those as they always did.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_DEPTH = 32  # the deepest legitimate body (a batch of inputs with filters or chat history) nests 5 levels


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


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"the key {json.dumps(key[:50])} appears twice in one object")
        result[key] = value
    return result


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def refusal(body: bytes) -> str | None:
    """Why this body is refused, or None when it is strict JSON (or UTF-8 that is no JSON at all, left to the route)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = "\x00"
    if (
        "\x00" in text
    ):  # never in UTF-8 JSON; UTF-16/32 of ASCII text is otherwise valid UTF-8, read by json.loads(bytes)
        return "the body is not UTF-8 (JSON must be, RFC 8259)"
    try:
        parsed = json.loads(
            text, parse_constant=_constant, parse_float=_float, parse_int=_int, object_pairs_hook=_object
        )
    except _Refused as exc:
        return str(exc)
    except RecursionError:
        return f"JSON nested deeper than {MAX_DEPTH} levels"
    except ValueError:
        return None
    if _depth(parsed) > MAX_DEPTH:
        return f"JSON nested deeper than {MAX_DEPTH} levels"
    return None


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
        reason = refusal(body) if body else None
        if reason is None:
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
