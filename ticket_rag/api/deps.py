"""What the routes get from the app: the services built in the lifespan, as typed dependency aliases.

Every router takes its store, settings, chain and key store through these, never through `app.state` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Depends, Request
from langchain_core.runnables import Runnable
from langchain_weaviate import WeaviateVectorStore

from ticket_rag.auth.keys import Admin, ApiKeyStore, Reader, Writer
from ticket_rag.errors import StoreUnavailable
from ticket_rag.runtime.metrics import InstrumentedEmbeddings
from ticket_rag.runtime.weaviate import WeaviateSupervisor
from ticket_rag.settings import Settings
from ticket_rag.tickets.store import TicketStore
from ticket_rag.tickets.triage import TriageService

__all__ = [
    "Admin",
    "ApiKeysDep",
    "RagChainDep",
    "Reader",
    "Services",
    "ServicesDep",
    "SettingsDep",
    "StoreDep",
    "TriageDep",
    "Writer",
]


@dataclass(frozen=True)
class Services:
    """The clients and stores one app runs on, opened in its lifespan and closed when it ends."""

    store: TicketStore
    api_keys: ApiKeyStore
    embeddings: InstrumentedEmbeddings
    vectorstore: WeaviateVectorStore
    weaviate_url: str | None
    supervisor: WeaviateSupervisor | None  # the embedded Weaviate's, when there is one
    triage: TriageService  # per-collection triage models, fitted on first use


def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:  # only before the lifespan has run, or after it ended
        raise StoreUnavailable("the service is starting or stopping; try again shortly")
    return cast(Services, services)


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


def get_rag_chain(request: Request) -> Runnable[Any, Any]:
    return cast(Runnable[Any, Any], request.app.state.rag_chain)


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RagChainDep = Annotated[Runnable[Any, Any], Depends(get_rag_chain)]


def _store(services: ServicesDep) -> TicketStore:
    return services.store


def _api_keys(services: ServicesDep) -> ApiKeyStore:
    return services.api_keys


def _triage(services: ServicesDep) -> TriageService:
    return services.triage


StoreDep = Annotated[TicketStore, Depends(_store)]
TriageDep = Annotated[TriageService, Depends(_triage)]
ApiKeysDep = Annotated[ApiKeyStore, Depends(_api_keys)]
