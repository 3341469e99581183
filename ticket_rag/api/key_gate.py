"""Authenticate a request that carries a body before anything reads that body.

The routes authenticate through their dependencies, which FastAPI runs only after it has read and parsed the
body, and the strict-JSON check (ticket_rag/api/strict_json.py) reads and parses every body before any route.
Without this gate, a caller with no key (or a wrong one) could make the service read, decode and walk
MAX_BODY_BYTES of JSON only to be told 401. Here the caller is resolved from the headers alone; the route's
dependency reuses that result (Gatekeeper.principal keeps it in the request's state), so a request still
takes one rate-limit token and looks its key up once.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ticket_rag.api.http_errors import domain_error_response
from ticket_rag.auth.keys import Gatekeeper
from ticket_rag.errors import DomainError

# The methods whose bodies the strict-JSON check reads; every route that takes one needs a key.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


# No route of these methods reads a body, and the open ones (/health) must stay open whatever a proxy frames.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _has_body(scope: Scope) -> bool:
    """A POST, PUT or PATCH, or another method's request that says it sends a body (a DELETE with one, say)."""
    if scope["method"] in BODY_METHODS:
        return True
    if scope["method"] in BODYLESS_METHODS:
        return False
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class KeyGateMiddleware:
    """401 (or 429, or 503 while the keys cannot be read) before the body of a request is read."""

    def __init__(self, app: ASGIApp, *, gatekeeper: Gatekeeper) -> None:
        self.app = app
        self.gatekeeper = gatekeeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        try:
            # The key store may ask Weaviate (a sync client): off the event loop, as the route's dependency does.
            # Looked up per request, as the routes' dependency does (app.state.gatekeeper), so both see one object.
            gatekeeper: Gatekeeper = scope["app"].state.gatekeeper if "app" in scope else self.gatekeeper
            await run_in_threadpool(gatekeeper.principal, Request(scope))
        except DomainError as exc:
            await domain_error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)
