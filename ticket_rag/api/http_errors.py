"""The one place that maps errors to HTTP responses: domain errors, validation errors, anything unexpected."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from ticket_rag.errors import DomainError, InvalidRequest

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5  # when Weaviate or the model is unavailable: they have no opinion of their own


class ErrorBody(BaseModel):
    """The body of every error response but 422."""

    detail: str


_MEANING = {
    400: "The body could not be decoded (it is not UTF-8).",
    401: "No API key, or an unknown or revoked one.",
    403: "The API key lacks the role (or the collection) this needs.",
    404: "The ticket, collection or key does not exist (or is outside the API key's collections).",
    409: "The collection already exists.",
    413: "The body is larger than MAX_BODY_BYTES.",
    429: "Rate limit exceeded; retry after Retry-After seconds.",
    503: "Weaviate, the embedding model or the LLM is unavailable; retry after Retry-After seconds.",
    504: "The LLM did not answer in time.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entries for these error status codes."""
    return {code: {"model": ErrorBody, "description": _MEANING[code]} for code in codes}


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a 422 echoes the input, and a lone surrogate has no UTF-8 form."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


# A 422 echoes the offending input, up to this size as JSON; past it the error keeps its loc, type and msg only.
MAX_ECHO_CHARS = 64 * 1024


def _encoded(error: Any) -> Any:
    """One validation error as JSON, its input echoed only when small.

    The input is usually the parsed body or part of it: jsonable_encoder walks it in Python, seconds for a 4 MB
    body of tiny arrays, all on the event loop. json.dumps measures it in C; what it can encode is JSON already.
    """
    if not isinstance(error, dict) or "input" not in error:
        return jsonable_encoder(error)
    try:
        echo = json.dumps(error["input"], allow_nan=False)
    except (TypeError, ValueError, RecursionError):  # not plain JSON (a date, a model): jsonable_encoder knows it
        return jsonable_encoder(error)
    return {
        key: value if key == "input" else jsonable_encoder(value)
        for key, value in error.items()
        if key != "input" or len(echo) <= MAX_ECHO_CHARS
    }


def reject_above_cap(where: str, field: str, value: int, cap: int) -> None:
    """Reject a count above its configured cap with the same 422 shape as schema validation."""
    if value > cap:
        raise RequestValidationError(
            [
                {
                    "type": "less_than_equal",
                    "loc": (where, field),
                    "msg": f"Input should be less than or equal to {cap}",
                    "input": value,
                    "ctx": {"le": cap},
                }
            ]
        )


def domain_error_response(exc: DomainError) -> JSONResponse:
    """The response for a domain error, also for middleware that answers before any route (the key gate)."""
    headers = {}
    if exc.status_code in (429, 503, 504):
        headers["Retry-After"] = str(exc.retry_after or RETRY_AFTER_SECONDS)
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="ticket-rag"'
    if exc.status_code >= 500:
        logger.warning("%s: %s", type(exc).__name__, exc.detail)
    if isinstance(exc, InvalidRequest):
        detail: Any = [{"type": "value_error", "loc": list(exc.loc), "msg": exc.detail}]
    else:
        detail = exc.detail
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)


def register_error_handlers(app: FastAPI) -> None:
    """Map domain errors to status codes; anything unexpected becomes a logged, generic 500."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _AsciiJSONResponse({"detail": [_encoded(error) for error in exc.errors()]}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 422 and isinstance(exc.detail, str):  # LangServe's own 422s: one shape for all
            detail = [{"type": "value_error", "loc": ["body"], "msg": exc.detail}]
            return JSONResponse({"detail": detail}, status_code=422, headers=exc.headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        return domain_error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)
