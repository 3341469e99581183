"""Composition root: builds settings, clients, stores and chains, and wires them into one FastAPI app.

A request's path: middleware (request id and access log, CORS, the key gate, strict JSON) -> a router
(ticket_rag/api/health.py, ticket_rag/tickets/router.py, ticket_rag/auth/router.py) or a LangServe route
(ticket_rag/api/langserve_routes.py: /rag, /retriever) -> the ticket store (ticket_rag/tickets/store.py) or the RAG
chain (chains/) -> Weaviate, the embedding model, the LLM. Routes reach the services through the dependency
aliases in ticket_rag/api/deps.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import langsmith
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable

from chains.evidence import evidence_options
from chains.llm import build_llm, describe_llm
from chains.prompts import load_prompts
from chains.rag import ChainOptions, build_rag_chain
from chains.retrieval import TicketRetriever, build_vectorstore
from ticket_rag.api import health
from ticket_rag.api.deps import Reader, Services
from ticket_rag.api.http_errors import register_error_handlers
from ticket_rag.api.key_gate import KeyGateMiddleware
from ticket_rag.api.langserve_routes import add_langserve_routes
from ticket_rag.api.observability import RequestContextMiddleware, tracing_enabled
from ticket_rag.api.strict_json import StrictJsonMiddleware
from ticket_rag.auth import router as admin_router
from ticket_rag.auth.keys import ApiKeyStore, Gatekeeper, RateLimiter
from ticket_rag.embeddings.model import build_embeddings
from ticket_rag.embeddings.queries import QueryEmbeddings
from ticket_rag.embeddings.redaction import RedactingEmbeddings, keep, redact, redact_tree
from ticket_rag.runtime.metrics import InstrumentedEmbeddings, LLMMetrics
from ticket_rag.runtime.weaviate import WeaviateSupervisor, build_weaviate
from ticket_rag.settings import Settings, load_settings
from ticket_rag.tickets import router as tickets_router
from ticket_rag.tickets import triage_routes
from ticket_rag.tickets.keywords import KeywordAnalyzer, keyword_properties
from ticket_rag.tickets.store import build_ticket_store
from ticket_rag.tickets.triage import TriageService

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    embeddings: Embeddings | None = None,
    llm: BaseChatModel | Literal["settings"] | None = "settings",
) -> FastAPI:
    """Build the app. Clients open in the lifespan and close when it ends; test doubles come in as arguments.

    `llm`: the chat model to answer with ("settings": the one LLM_PROVIDER names; None: no generation).
    """
    settings = settings or load_settings()
    if settings.redact_pii and tracing_enabled():
        # LangChain's tracer sends runs through langsmith's shared client; this one redacts every string of a
        # run (inputs, outputs, metadata, error) in the request's thread, before the run is queued for sending.
        langsmith.configure(client=langsmith.Client(anonymizer=redact_tree))
    production = settings.environment == "production"
    app = FastAPI(
        title="ticket-rag",
        version="0.1.0",
        summary="Support tickets in Weaviate; similar tickets, duplicates and answers grounded in past tickets.",
        lifespan=_lifespan(settings, embeddings),
        max_body_size=settings.max_body_bytes,
        # In production the API description needs a key (below) and the browser pages, which cannot send one, are off.
        openapi_url=None if production else "/openapi.json",
        docs_url=None if production else "/docs",
        redoc_url=None if production else "/redoc",
    )
    app.state.settings = settings
    if production and settings.anonymous_allowed:
        logger.warning("ALLOW_ANONYMOUS=true in production: anyone who reaches the API has full access")
    app.state.gatekeeper = Gatekeeper(
        keys=lambda: _services(app).api_keys,
        allow_anonymous=settings.anonymous_allowed,
        admin_key=settings.admin_api_key.get_secret_value() if settings.admin_api_key else None,
        limiter=RateLimiter(per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst),
        failures=RateLimiter(per_minute=settings.auth_failures_per_minute, burst=10),
    )
    _add_middleware(app, settings)
    register_error_handlers(app)
    _mount_rest_routes(app, production=production)
    retriever = TicketRetriever(
        vectorstore=lambda: _services(app).vectorstore,
        k=settings.rag_k,
        alpha=settings.rag_alpha,
        analyzer=KeywordAnalyzer(settings.keyword_stemmer),
        keyword_properties=keyword_properties(settings.keyword_title_boost),
    ).with_config(run_name="weaviate_retriever")
    chain, options = _build_chain(app, settings, retriever, llm)
    app.state.rag_chain = chain
    add_langserve_routes(app, settings=settings, chain=chain, retriever=retriever, options=options)
    return app


def _services(app: FastAPI) -> Services:
    return app.state.services  # type: ignore[no-any-return]


def _lifespan(settings: Settings, embeddings: Embeddings | None) -> Any:
    """Open Weaviate (starting and supervising the embedded one), the model and the stores; close them at the end."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client, embedded = build_weaviate(settings)
        supervisor = WeaviateSupervisor(embedded).start() if embedded is not None else None
        try:
            model = embeddings or build_embeddings(settings)
            # Outermost: the metrics see what callers wait for (cache hits and shared passes included).
            instrumented = InstrumentedEmbeddings(
                QueryEmbeddings(
                    RedactingEmbeddings(model) if settings.redact_pii else model, cache_size=settings.query_cache_size
                )
            )
            store = build_ticket_store(settings=settings, client=client, embeddings=instrumented)
            store.ensure_schema(default_collection=settings.default_collection)
            api_keys = ApiKeyStore(
                client=client,
                class_name=f"{settings.weaviate_class}ApiKey",
                cache_seconds=settings.api_key_cache_seconds,
                replication_factor=settings.weaviate_replication_factor,
            )
            api_keys.ensure_schema()
            if supervisor is not None:
                supervisor.probe = api_keys.ping
            app.state.services = Services(
                store=store,
                api_keys=api_keys,
                embeddings=instrumented,
                vectorstore=build_vectorstore(
                    client=client,
                    class_name=settings.weaviate_class,
                    embeddings=instrumented,
                    consistency=settings.weaviate_consistency,
                ),
                weaviate_url=embedded.url if embedded is not None else settings.weaviate_url,
                supervisor=supervisor,
                triage=TriageService(store=store, settings=settings),
            )
            yield
        finally:
            app.state.services = None
            if supervisor is not None:
                supervisor.stop()
            client.close()
            if embedded is not None:
                embedded.stop()

    return lifespan


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    """Outermost first: request id and access log, CORS, the key gate (a body is read only for a caller with a
    valid key, when keys are required), then strict JSON (on every route, LangServe's too).
    """
    app.add_middleware(StrictJsonMiddleware)
    app.add_middleware(KeyGateMiddleware, gatekeeper=app.state.gatekeeper)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID", "Idempotency-Key"],
        expose_headers=["X-Request-ID", "Retry-After", "Idempotent-Replayed"],
    )
    app.add_middleware(RequestContextMiddleware)


def _mount_rest_routes(app: FastAPI, *, production: bool) -> None:
    app.include_router(health.router)
    app.include_router(tickets_router.tickets)
    app.include_router(triage_routes.router)
    app.include_router(tickets_router.collections)
    app.include_router(admin_router.router)
    if production:

        @app.get("/openapi.json", include_in_schema=False)
        def openapi(who: Reader) -> dict[str, Any]:
            """The API description, for callers with a key."""
            return app.openapi()


def _build_chain(
    app: FastAPI, settings: Settings, retriever: Runnable[Any, Any], llm: BaseChatModel | Literal["settings"] | None
) -> tuple[Runnable[Any, Any], ChainOptions]:
    """The RAG chain over the retriever and the LLM (LLM_PROVIDER's, unless the caller gave one or None)."""
    model: str | None
    provider: str | None
    if llm == "settings":
        llm, info = build_llm(settings), describe_llm(settings)
        model, provider, offline = (info.model, info.provider, info.offline_fallback) if info else (None, None, False)
    else:
        model, provider, offline = (getattr(llm, "model_name", None) or type(llm).__name__, "injected", False)
    if llm is not None:
        llm = llm.with_config(callbacks=[LLMMetrics(model or "unknown")])  # type: ignore[assignment]
    options = ChainOptions(
        default_collection=settings.default_collection,
        k=settings.rag_k,
        max_k=settings.rag_max_k,
        min_similarity=settings.rag_min_similarity,
        max_history=settings.rag_max_history,
        alpha=settings.rag_alpha,
        model=model,
        provider=provider,
        offline_fallback=offline,
        redact=redact if settings.redact_pii else keep,
        **evidence_options(settings),
    )
    chain = build_rag_chain(
        retriever=retriever,  # type: ignore[arg-type]
        llm=llm,
        prompts=load_prompts(settings.prompts_dir),
        options=options,
        collection_exists=lambda name: _services(app).store.collection_exists(name=name),
    )
    return chain, options
