"""Domain errors: what stores, chains and the start-up raise. They know nothing of HTTP (see
ticket_rag/api/http_errors.py).
"""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration or set-up problem the operator must fix; the message says how."""


class DomainError(Exception):
    """Base of the errors that stores and chains raise; `status_code` is the HTTP status they map to."""

    status_code = 500
    retry_after: int | None = None  # seconds, for the Retry-After header of a 429, 503 or 504

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
    """A request that passed schema validation but makes no sense (a value above a configured cap, say).

    Answered like a schema validation error, so every 422 has one shape; `loc` names the field.
    """

    status_code = 422

    def __init__(self, detail: str, *, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(detail)
        self.loc = loc


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


class EmbeddingUnavailable(DomainError):
    """The embedding model failed; nothing was stored (every write embeds before it stores)."""

    status_code = 503


class UpstreamUnavailable(DomainError):
    """The LLM provider refused or failed after retries; `retry_after` is the provider's own, when it sent one."""

    status_code = 503

    def __init__(self, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class UpstreamTimeout(DomainError):
    status_code = 504
