"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ticket_rag.api.deps import ServicesDep
from ticket_rag.runtime.weaviate import is_ready

router = APIRouter(prefix="/health", tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    weaviate: str
    embeddings: str


@router.get("", response_model=Health)
async def liveness() -> Health:
    """The process is up. No I/O: safe for a tight liveness probe."""
    return Health(status="ok")


# HEAD as well, for probes that use it (RFC 9110: HEAD wherever GET is); kept out of the API description.
router.head("", include_in_schema=False)(liveness)


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
def readiness(services: ServicesDep) -> JSONResponse:
    """Weaviate answers and the embedding model is loaded (its last call did not fail); 503 naming the failing part
    otherwise.
    """
    supervisor, url = services.supervisor, services.weaviate_url
    if supervisor is not None and supervisor.status != "ok":
        weaviate_status = supervisor.status  # the embedded Weaviate died and is being started again
    else:
        weaviate_status = "ok" if url is not None and is_ready(url, timeout=2.0) else "unreachable"
    failing = services.embeddings.last_error
    embeddings_status = f"failing: {failing}" if failing else "ok"
    ready = weaviate_status == "ok" and embeddings_status == "ok"
    body = Readiness(status="ready" if ready else "not ready", weaviate=weaviate_status, embeddings=embeddings_status)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


router.head("/ready", include_in_schema=False)(readiness)
