"""Composition root: builds settings, clients, stores and chains, and wires them into one FastAPI app.

A request's path: middleware (request id, access log) -> a router in ticket_rag/ (health, tickets,
collections) or a LangServe route added here (/rag, /retriever) -> a store in ticket_rag/ or a
chain in chains/ -> Weaviate, the embedding model, the LLM.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.callbacks.base import BaseCallbackManager
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, RunnableGenerator, RunnableLambda
from langchain_core.runnables.config import var_child_runnable_config
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langserve import add_routes
import langsmith
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from chains.llm import build_llm, describe_llm
from chains.prompts import load_prompts
from chains.evidence import evidence_options
from chains.rag import ChainOptions, PlaygroundSchema, RagInput, RagOutput, build_rag_chain, check_limits
from chains.retrieval import TicketRetriever, build_vectorstore
from ticket_rag import admin, health
from ticket_rag.embeddings import build_embeddings
from ticket_rag.errors import CollectionNotFound, error_responses, register_error_handlers
from ticket_rag.metrics import InstrumentedEmbeddings, LLMMetrics
from ticket_rag.query_embeddings import QueryEmbeddings
from ticket_rag.redaction import RedactingEmbeddings, keep, redact, redact_tree
from ticket_rag.observability import RequestContextMiddleware, request_id_var
from ticket_rag.security import ApiKeyStore, Gatekeeper, RateLimiter, Role, caller, collections_in
from ticket_rag.settings import Settings, load_settings
from ticket_rag.tickets import router as tickets_router
from ticket_rag.tickets.schemas import CollectionName, QueryText, SearchFilters
from ticket_rag.tickets.keywords import KeywordAnalyzer, keyword_properties
from ticket_rag.tickets.store import build_ticket_store
from ticket_rag.weaviate_server import build_weaviate

logger = logging.getLogger(__name__)

_DEFAULT_LLM: Any = object()


class RetrieverInput(PlaygroundSchema):
    query: QueryText = Field(examples=["How do I reset my password?"])
    collection: CollectionName | None = None
    filters: SearchFilters | None = None
    k: int = Field(5, ge=1, le=50)


def create_app(
    settings: Settings | None = None,
    *,
    embeddings: Embeddings | None = None,
    llm: BaseChatModel | None = _DEFAULT_LLM,
) -> FastAPI:
    """Build the app. Clients open in the lifespan and close when it ends; test doubles come in as arguments."""
    settings = settings or load_settings()
    if settings.redact_pii and _tracing_enabled():
        # LangChain's tracer sends runs through langsmith's shared client; this one redacts every string of a
        # run (inputs, outputs, metadata, error) in the request's thread, before the run is queued for sending.
        langsmith.configure(client=langsmith.Client(anonymizer=redact_tree))
    prompts = load_prompts(settings.prompts_dir)
    if llm is _DEFAULT_LLM:
        llm, info = build_llm(settings), describe_llm(settings)
        model, provider, offline = (info.model, info.provider, info.offline_fallback) if info else (None, None, False)
    else:
        model, provider, offline = (getattr(llm, "model_name", None) or type(llm).__name__, "injected", False)
    if llm is not None:
        llm = llm.with_config(callbacks=[LLMMetrics(model or "unknown")])  # type: ignore[assignment]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client, embedded = build_weaviate(settings)
        try:
            app.state.weaviate = client
            app.state.weaviate_url = embedded.url if embedded is not None else settings.weaviate_url
            app.state.embedded_weaviate = embedded
            model = embeddings or build_embeddings(settings)
            # Outermost: the metrics see what callers wait for (cache hits and shared passes included).
            app.state.embeddings = InstrumentedEmbeddings(
                QueryEmbeddings(RedactingEmbeddings(model) if settings.redact_pii else model, cache_size=settings.query_cache_size)
            )
            app.state.store = build_ticket_store(settings=settings, client=client, embeddings=app.state.embeddings)
            app.state.store.ensure_schema(default_collection=settings.default_collection)
            app.state.api_keys = ApiKeyStore(
                client=client, class_name=f"{settings.weaviate_class}ApiKey", cache_seconds=settings.api_key_cache_seconds,
                replication_factor=settings.weaviate_replication_factor,
            )
            app.state.api_keys.ensure_schema()
            app.state.vectorstore = build_vectorstore(
                client=client, class_name=settings.weaviate_class, embeddings=app.state.embeddings,
                consistency=settings.weaviate_consistency,
            )  # fmt: skip
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
        max_body_size=settings.max_body_bytes,
    )
    app.state.settings = settings
    if settings.environment == "production" and settings.anonymous_allowed:
        logger.warning("ALLOW_ANONYMOUS=true in production: anyone who reaches the API has full access")
    app.state.gatekeeper = Gatekeeper(
        keys=lambda: app.state.api_keys,
        allow_anonymous=settings.anonymous_allowed,
        admin_key=settings.admin_api_key.get_secret_value() if settings.admin_api_key else None,
        limiter=RateLimiter(per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst),
    )
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
    app.include_router(admin.router)

    retriever = TicketRetriever(
        vectorstore=lambda: app.state.vectorstore, k=settings.rag_k, alpha=settings.rag_alpha,
        analyzer=KeywordAnalyzer(settings.keyword_stemmer), keyword_properties=keyword_properties(settings.keyword_title_boost),
    ).with_config(run_name="weaviate_retriever")  # fmt: skip
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
    app.state.rag_chain = build_rag_chain(
        retriever=retriever,  # type: ignore[arg-type]
        llm=llm,
        prompts=prompts,
        options=options,
        collection_exists=lambda name: app.state.store.collection_exists(name=name),
    )
    _add_langserve_routes(app, settings, retriever, options)
    return app


def _add_langserve_routes(app: FastAPI, settings: Settings, retriever: Any, options: ChainOptions) -> None:
    """The chain at /rag and the retriever at /retriever, with a pinned set of endpoints."""

    read_access = caller(Role.read)

    async def scoped(request: Request) -> None:
        """Every LangServe endpoint needs a read key; the collections a body asks for must be in its scope."""
        principal = await read_access(request)
        if request.method == "POST":
            for collection in collections_in(await _json_body(request)):
                principal.collection(collection, settings.default_collection)

    def check_envelope(input_type: type[BaseModel]) -> Callable[[Request], Awaitable[None]]:
        """What LangServe's documented request schema says, but LangServe itself lets through into a 500.

        `config` an object (in a batch, or a list of them); `inputs` a list of at most RAG_MAX_BATCH
        valid inputs (LangServe validates a batch's inputs outside its error handling).
        """

        async def check(request: Request) -> None:
            payload = await _json_body(request) if request.method == "POST" else None
            if not isinstance(payload, dict):
                return  # LangServe answers 422
            batch = request.url.path.endswith("/batch")
            config = payload.get("config", {})
            if not all(isinstance(c, dict) for c in (config if batch and isinstance(config, list) else [config])):
                raise _invalid(("config",), "dict_type", "Input should be a valid dictionary")
            if not batch:
                return
            inputs = payload.get("inputs")
            if not isinstance(inputs, list):
                raise _invalid(("inputs",), "list_type", "Input should be a valid list")
            if len(inputs) > settings.rag_max_batch:
                raise _invalid(("inputs",), "too_long", f"at most {settings.rag_max_batch} inputs per batch")
            for index, item in enumerate(inputs):
                try:
                    input_type.model_validate(item)
                except ValidationError as exc:
                    errors = exc.errors(include_url=False)
                    raise RequestValidationError([{**e, "loc": ("body", "inputs", index, *e["loc"])} for e in errors]) from None

        return check

    async def answerable(request: Request) -> None:
        """On the streaming endpoints, refuse what the chain would refuse before the stream starts.

        Once a stream has started its status is 200 whatever happens: an unknown collection or a k
        above RAG_MAX_K would only show as an `error` event. Invoke and batch answer these themselves.
        """
        if "/stream" not in request.url.path or request.method != "POST":
            return
        payload = await _json_body(request)
        try:
            data = RagInput.model_validate(payload.get("input") if isinstance(payload, dict) else None)
        except ValidationError:
            return  # LangServe answers 422
        check_limits(data, options)
        name = data.collection or settings.default_collection
        if not await run_in_threadpool(app.state.store.collection_exists, name=name):
            raise CollectionNotFound(f"collection '{name}' does not exist")

    tracing = _tracing_enabled()
    # stream_log and stream_events show only the answer's own chunks (see _outputs_only); the
    # playground runs on stream_log.
    endpoints: list[Any] = ["invoke", "batch", "stream", "stream_log", "stream_events", "input_schema", "output_schema"]
    if settings.environment != "production":  # a browser cannot send an API key to the playground
        endpoints.append("playground")
    # LangServe declares only 200 and 422; these are what the dependencies, the chain and the middleware add.
    rag = APIRouter(responses=error_responses(401, 404, 413, 429, 503, 504))
    add_routes(
        rag,
        _traced(_outputs_only(app.state.rag_chain), "ticket_rag"),
        path="/rag",
        input_type=RagInput,
        output_type=RagOutput,
        config_keys=(),
        enabled_endpoints=endpoints + (["feedback"] if tracing else []),
        enable_feedback_endpoint=tracing,
        dependencies=[Depends(scoped), Depends(check_envelope(RagInput)), Depends(answerable)],
    )

    def retrieve(raw: RetrieverInput | dict[str, Any], config: Any) -> list[Document]:
        inputs = RetrieverInput.model_validate(raw) if isinstance(raw, dict) else raw
        return retriever.invoke(  # type: ignore[no-any-return]
            inputs.query, config, collection=inputs.collection or settings.default_collection,
            filters=inputs.filters, k=min(inputs.k, settings.rag_max_k),
        )  # fmt: skip

    retrieval = APIRouter(responses=error_responses(401, 404, 413, 429, 503))
    add_routes(
        retrieval,
        _traced(
            RunnableLambda(retrieve, name="retrieve_tickets").with_types(input_type=RetrieverInput, output_type=list[Document]),
            "retrieve_tickets",
        ),
        path="/retriever",
        config_keys=(),
        enabled_endpoints=["invoke", "batch", "input_schema", "output_schema"],
        dependencies=[Depends(scoped), Depends(check_envelope(RetrieverInput))],
    )
    app.include_router(rag)
    app.include_router(retrieval)


def _tracing_enabled() -> bool:
    return os.environ.get("LANGSMITH_TRACING", os.environ.get("LANGCHAIN_TRACING_V2", "")).lower() == "true"


async def _json_body(request: Request) -> Any:
    """The body as JSON; a 422 when it is not (LangServe would answer bytes that are not UTF-8 with a 500)."""
    try:
        return await request.json()
    except ValueError:
        raise _invalid((), "json_invalid", "Invalid JSON body") from None


def _invalid(loc: tuple[str, ...], kind: str, message: str) -> RequestValidationError:
    """A 422 for a LangServe body, shaped like every other validation error."""
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": message}])


def _traced(runnable: Runnable[Any, Any], name: str) -> Runnable[Any, Any]:
    """The runnable as served: its root run keeps its own name and carries the request id and run id.

    LangServe names every root run after its route ("/rag") and, on /batch, drops what a
    per_req_config_modifier adds unless config_keys lets clients send it too. Config factories
    merge after both, so these win on every endpoint.
    """

    def config(merged: RunnableConfig) -> RunnableConfig:
        run_id = merged.get("run_id")
        return {
            "run_name": name,
            "metadata": {"request_id": request_id_var.get(), "ticket_rag_run_id": str(run_id) if run_id else None},
        }

    return RunnableBinding(bound=runnable, config_factories=[config])


def _outputs_only(chain: Runnable[Any, Any]) -> Runnable[Any, Any]:
    """The chain as served: its steps stay in traces but not in stream_log / stream_events.

    Those endpoints would otherwise stream every intermediate value to the client, the raw LLM
    output before it is sanitised included. The inner runs still reach LangSmith and metrics: only
    the streaming handlers LangChain adds for those two endpoints are kept from them.
    """

    async def served(inputs: AsyncIterator[Any], config: RunnableConfig) -> AsyncIterator[Any]:
        callbacks = config.get("callbacks")
        if isinstance(callbacks, BaseCallbackManager):
            callbacks = callbacks.copy()
            callbacks.handlers = [h for h in callbacks.handlers if not isinstance(h, _StreamingCallbackHandler)]
            callbacks.inheritable_handlers = [
                h for h in callbacks.inheritable_handlers if not isinstance(h, _StreamingCallbackHandler)
            ]
        inner: RunnableConfig = {**config, "callbacks": callbacks}
        # LangChain also reads the parent's config from a context variable and merges its callbacks
        # back in; run the inner chain in a context that holds the filtered config instead.
        context = contextvars.copy_context()
        context.run(var_child_runnable_config.set, inner)
        async for item in inputs:
            chunks = chain.astream(item, inner)
            try:
                while True:
                    try:
                        chunk = await asyncio.create_task(anext(chunks), context=context)  # type: ignore[arg-type]
                    except StopAsyncIteration:
                        break
                    yield chunk
            finally:  # close the steps (and end their runs) also when a later step failed
                await asyncio.create_task(chunks.aclose(), context=context)  # type: ignore[arg-type]

    return RunnableGenerator(served, name="ticket_rag").with_types(input_type=RagInput, output_type=RagOutput)
