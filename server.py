"""Composition root: builds settings, clients, stores and chains, and wires them into one FastAPI app.

A request's path: middleware (request id, access log) -> a router in ticket_rag/ (health, tickets,
collections) or a LangServe route added here -> a store in ticket_rag/ or a chain in chains/ -> Weaviate,
the embedding model, the LLM.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from langchain_core.embeddings import Embeddings

from ticket_rag import health
from ticket_rag.embeddings import build_embeddings
from ticket_rag.errors import register_error_handlers
from ticket_rag.observability import RequestContextMiddleware
from ticket_rag.settings import Settings, load_settings
from ticket_rag.tickets import router as tickets_router
from ticket_rag.tickets.store import TicketStore
from ticket_rag.weaviate_server import build_weaviate

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, embeddings: Embeddings | None = None) -> FastAPI:
    """Build the app. Clients open in the lifespan and close when it ends; test doubles come in as arguments."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client, embedded = build_weaviate(settings)
        try:
            app.state.weaviate = client
            app.state.embedded_weaviate = embedded
            app.state.embeddings = embeddings or build_embeddings(settings)
            app.state.store = TicketStore(
                client=client, embeddings=app.state.embeddings, class_name=settings.weaviate_class
            )
            app.state.store.ensure_schema(default_collection=settings.default_collection)
            yield
        finally:
            client.close()
            if embedded is not None:
                embedded.stop()

    app = FastAPI(
        title="ticket-rag",
        version="0.1.0",
        summary="Support tickets in Weaviate; similar tickets, duplicates and answers grounded in past tickets.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
        expose_headers=["X-Request-ID", "Retry-After"],
    )
    app.add_middleware(RequestContextMiddleware)
    register_error_handlers(app)
    app.include_router(health.router)
    app.include_router(tickets_router.tickets)
    app.include_router(tickets_router.collections)
    return app
