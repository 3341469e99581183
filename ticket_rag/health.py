"""Liveness and readiness."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

router = APIRouter(prefix="/health", tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    weaviate: str
    embeddings: str


def _state(request: Request) -> object:
    return request.app.state


StateDep = Annotated[object, Depends(_state)]


@router.get("", response_model=Health)
async def liveness() -> Health:
    """The process is up. No I/O: safe for a tight liveness probe."""
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
def readiness(state: StateDep) -> JSONResponse:
    """Weaviate answers and the embedding model is loaded; 503 naming the failing part otherwise."""
    weaviate_status = "ok"
    client = getattr(state, "weaviate", None)
    try:
        if client is None or not client.is_ready():
            weaviate_status = "unreachable"
    except Exception:
        weaviate_status = "unreachable"
    embeddings_status = "ok" if getattr(state, "embeddings", None) is not None else "not loaded"
    ready = weaviate_status == "ok" and embeddings_status == "ok"
    body = Readiness(status="ready" if ready else "not ready", weaviate=weaviate_status, embeddings=embeddings_status)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
