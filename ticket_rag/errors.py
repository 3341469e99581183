"""Domain errors, and the one place that maps them to HTTP responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)


class DomainError(Exception):
    """Base of the errors that stores and chains raise; they know nothing of HTTP."""

    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    status_code = 404


class TicketNotFound(NotFound):
    pass


class CollectionNotFound(NotFound):
    pass


class CollectionExists(DomainError):
    status_code = 409


class InvalidRequest(DomainError):
    """A request that passed schema validation but makes no sense (an unknown field value, say)."""

    status_code = 422


class Unauthorized(DomainError):
    """No API key, or one that is unknown or revoked."""

    status_code = 401


class Forbidden(DomainError):
    """The key lacks the role the route needs."""

    status_code = 403


class RateLimited(DomainError):
    status_code = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class StoreUnavailable(DomainError):
    """Weaviate cannot be reached or did not answer in time."""

    status_code = 503


class UpstreamUnavailable(DomainError):
    """The LLM provider refused or failed after retries."""

    status_code = 503


class UpstreamTimeout(DomainError):
    status_code = 504


RETRY_AFTER_SECONDS = "5"


def register_error_handlers(app: FastAPI) -> None:
    """Map domain errors to status codes; anything unexpected becomes a logged, generic 500."""

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if exc.status_code in (503, 504) else {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="ticket-rag"'
        if exc.status_code >= 500:
            logger.warning("%s: %s", type(exc).__name__, exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)
