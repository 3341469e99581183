"""Admin routes: API keys, and the Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ticket_rag.api.deps import Admin, ApiKeysDep
from ticket_rag.api.http_errors import error_responses
from ticket_rag.auth.keys import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from ticket_rag.errors import Forbidden

router = APIRouter(tags=["admin"], responses=error_responses(401, 403, 429, 503))


@router.post(
    "/admin/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyCreated,
    responses=error_responses(400, 413),
)
def create_key(body: ApiKeyCreate, keys: ApiKeysDep, who: Admin) -> ApiKeyCreated:
    """Create an API key scoped to collections and a role; the key is in this response only.

    An admin key scoped to some collections grants only those, never `*`, and no role above its own.
    """
    return keys.create(body=body, granted_by=who)


@router.get("/admin/keys", response_model=list[ApiKeyPublic])
def list_keys(keys: ApiKeysDep, who: Admin) -> list[ApiKeyPublic]:
    """Every key within this admin key's collections, without secrets."""
    return keys.list(within=who)


@router.delete("/admin/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
def revoke_key(key_id: str, keys: ApiKeysDep, who: Admin) -> Response:
    """Revoke a key within this admin key's collections: refused at once here, within
    API_KEY_CACHE_SECONDS elsewhere.
    """
    keys.revoke(key_id=key_id, within=who)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/metrics", include_in_schema=False)
def metrics(who: Admin) -> Response:
    """Prometheus metrics (an unscoped admin key when keys are required: they cover every collection)."""
    if not who.unscoped:
        raise Forbidden("the metrics cover every collection: they need an admin key for '*'")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
