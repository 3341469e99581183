"""The LangServe surface: the RAG chain at /rag and the retriever at /retriever, and the checks around them.

The only module that imports LangServe (in maintenance mode: replacing it stays a change to this file).
Each body is checked against what its endpoint will run: only the fields LangServe's own request model for
that endpoint reads, the collections in the caller's scope, batches and configs LangServe would take into a
500; the served runnables check the caller's scope again for each input as they run.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, cast

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from langchain_core.callbacks.base import BaseCallbackManager
from langchain_core.documents import Document
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, RunnableGenerator, RunnableLambda
from langchain_core.runnables.config import var_child_runnable_config
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langserve import add_routes
from langserve.validation import (
    create_batch_request_model,
    create_invoke_request_model,
    create_stream_events_request_model,
    create_stream_log_request_model,
    create_stream_request_model,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from chains.rag import ChainOptions, check_limits
from chains.schemas import PlaygroundSchema, RagInput, RagOutput
from ticket_rag.api.deps import get_services
from ticket_rag.api.http_errors import error_responses
from ticket_rag.api.observability import request_id_var, tracing_enabled
from ticket_rag.auth.keys import Role, authorized_collection, caller, collections_in
from ticket_rag.errors import CollectionNotFound, InvalidRequest
from ticket_rag.settings import Settings
from ticket_rag.tickets.schemas import CollectionName, QueryText, SearchFilters


class RetrieverInput(PlaygroundSchema):
    model_config = ConfigDict(extra="forbid")

    query: QueryText = Field(examples=["How do I reset my password?"])
    collection: CollectionName | None = None
    filters: SearchFilters | None = None
    k: int = Field(5, ge=1, le=100, description="Tickets to retrieve; capped by RAG_MAX_K.")


# The top-level fields each LangServe endpoint reads, from LangServe's own request models: a body with any
# other field is refused, so what the scope check reads is exactly what LangServe runs.
_ENVELOPES = {
    endpoint: frozenset(factory("ticket_rag", Any, BaseModel).model_fields)
    for endpoint, factory in {
        "invoke": create_invoke_request_model,
        "batch": create_batch_request_model,
        "stream": create_stream_request_model,
        "stream_log": create_stream_log_request_model,
        "stream_events": create_stream_events_request_model,
    }.items()
}


def add_langserve_routes(
    app: FastAPI, *, settings: Settings, chain: Runnable[Any, Any], retriever: Runnable[Any, Any], options: ChainOptions
) -> None:
    """The chain at /rag and the retriever at /retriever, each with a pinned set of endpoints."""
    tracing = tracing_enabled()
    # stream_log and stream_events show only the answer's own chunks (see _outputs_only); the
    # playground runs on stream_log.
    endpoints: list[Any] = ["invoke", "batch", "stream", "stream_log", "stream_events", "input_schema", "output_schema"]
    if settings.environment != "production":  # a browser cannot send an API key to the playground
        endpoints.append("playground")
    scoped = Depends(_scoped(settings.default_collection))
    # LangServe declares only 200 and 422; these are what the dependencies, the chain and the middleware add.
    rag = APIRouter(responses=error_responses(401, 404, 413, 429, 503, 504))
    add_routes(
        rag,
        _traced(_outputs_only(chain, settings.default_collection), "ticket_rag"),
        path="/rag",
        input_type=RagInput,
        output_type=RagOutput,
        config_keys=(),
        enabled_endpoints=endpoints + (["feedback"] if tracing else []),
        enable_feedback_endpoint=tracing,
        dependencies=[
            scoped,
            Depends(_check_envelope(RagInput, settings, limits=lambda data: check_limits(data, options))),
            Depends(_answerable(settings, options)),
        ],
    )
    retrieval = APIRouter(responses=error_responses(401, 404, 413, 429, 503))
    add_routes(
        retrieval,
        _traced(_served_retriever(retriever, settings), "retrieve_tickets"),
        path="/retriever",
        config_keys=(),
        enabled_endpoints=["invoke", "batch", "input_schema", "output_schema"],
        dependencies=[scoped, Depends(_check_envelope(RetrieverInput, settings, limits=_retriever_limits(settings)))],
    )
    app.include_router(rag)
    app.include_router(retrieval)


def _scoped(default_collection: str) -> Callable[[Request], Awaitable[None]]:
    """Every LangServe endpoint needs a read key; the collections a body asks for must be in its scope.

    The body may hold only the fields that endpoint's LangServe request model reads, so the collections
    checked here are the ones LangServe will run; the runnables check them again as they run.
    """
    read_access = caller(Role.read)

    async def scoped(request: Request) -> None:
        principal = await read_access(request)
        if request.method != "POST":
            return
        payload = await _json_body(request)
        endpoint = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        allowed = _ENVELOPES.get(endpoint)
        if allowed is not None and isinstance(payload, dict):
            for name in payload:
                if name not in allowed:
                    raise _invalid((name,), "extra_forbidden", f"Extra inputs are not permitted on /{endpoint}")
        for collection in collections_in(payload, batch=endpoint == "batch"):
            principal.collection(collection, default_collection)

    return scoped


def _check_envelope(
    input_type: type[BaseModel], settings: Settings, *, limits: Callable[[Any], None]
) -> Callable[[Request], Awaitable[None]]:
    """What LangServe's documented request schema says, but LangServe itself lets through into a 500 or ignores.

    `config` an object (in a batch, or a list of them); `kwargs` empty (RemoteRunnable never sends any; LangServe
    would drop them without a word); `inputs` a list of at most RAG_MAX_BATCH valid inputs within the caps
    (LangServe validates a batch's inputs outside its error handling, and a cap refused inside the batch would name
    `input` rather than the item). `config.configurable` is let through and ignored (config_keys=() drops it): a
    RemoteRunnable inside a LangGraph graph or under with_config() sends its caller's configurable fields
    (thread_id, ...), and refusing them would break such clients; the served chain has no configurable fields.
    """

    async def check(request: Request) -> None:
        payload = await _json_body(request) if request.method == "POST" else None
        if not isinstance(payload, dict):
            return  # LangServe answers 422
        batch = request.url.path.endswith("/batch")
        config = payload.get("config", {})
        configs = config if batch and isinstance(config, list) else [config]
        for index, item in enumerate(configs):
            where = ("config", index) if configs is config else ("config",)
            if not isinstance(item, dict):
                raise _invalid(where, "dict_type", "Input should be a valid dictionary")
        if payload.get("kwargs"):
            raise _invalid(("kwargs",), "extra_forbidden", "no keyword arguments are accepted")
        if batch:
            _check_batch(payload.get("inputs"), input_type, settings.rag_max_batch, limits)
        elif "input" in payload:  # LangServe's own errors would name the field without ("body", "input")
            try:
                input_type.model_validate(payload["input"])
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
                raise RequestValidationError([{**e, "loc": ("body", "input", *e["loc"])} for e in errors]) from None

    return check


def _check_batch(inputs: Any, input_type: type[BaseModel], max_batch: int, limits: Callable[[Any], None]) -> None:
    if not isinstance(inputs, list):
        raise _invalid(("inputs",), "list_type", "Input should be a valid list")
    if len(inputs) > max_batch:
        raise _invalid(("inputs",), "too_long", f"at most {max_batch} inputs per batch")
    for index, item in enumerate(inputs):
        try:
            limits(input_type.model_validate(item))
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            raise RequestValidationError([{**e, "loc": ("body", "inputs", index, *e["loc"])} for e in errors]) from None
        except InvalidRequest as exc:  # loc ("body", "input", field): name the item instead
            raise InvalidRequest(str(exc), loc=("body", "inputs", index, *exc.loc[2:])) from None


def _retriever_limits(settings: Settings) -> Callable[[Any], None]:
    def limits(inputs: RetrieverInput) -> None:
        if inputs.k > settings.rag_max_k:
            raise InvalidRequest(f"at most {settings.rag_max_k} tickets can be retrieved", loc=("body", "input", "k"))

    return limits


def _answerable(settings: Settings, options: ChainOptions) -> Callable[[Request], Awaitable[None]]:
    """On the streaming endpoints, refuse what the chain would refuse before the stream starts.

    Once a stream has started its status is 200 whatever happens: an unknown collection or a k
    above RAG_MAX_K would only show as an `error` event. Invoke and batch answer these themselves.
    """

    async def answerable(request: Request) -> None:
        if "/stream" not in request.url.path or request.method != "POST":
            return
        payload = await _json_body(request)
        try:
            data = RagInput.model_validate(payload.get("input") if isinstance(payload, dict) else None)
        except ValidationError:
            return  # LangServe answers 422
        check_limits(data, options)
        name = data.collection or settings.default_collection
        if not await run_in_threadpool(get_services(request).store.collection_exists, name=name):
            raise CollectionNotFound(f"collection '{name}' does not exist")

    return answerable


def _served_retriever(retriever: Runnable[Any, Any], settings: Settings) -> Runnable[Any, Any]:
    """The retriever as served: validated input, k within RAG_MAX_K, the collection authorized for the caller."""

    limits = _retriever_limits(settings)

    def retrieve(raw: RetrieverInput | dict[str, Any], config: Any) -> list[Document]:
        inputs = RetrieverInput.model_validate(raw) if isinstance(raw, dict) else raw
        limits(inputs)
        docs: list[Document] = retriever.invoke(
            inputs.query,
            config,
            collection=authorized_collection(inputs.collection, settings.default_collection),
            filters=inputs.filters,
            k=inputs.k,
        )
        return docs

    return RunnableLambda(retrieve, name="retrieve_tickets").with_types(
        input_type=RetrieverInput, output_type=list[Document]
    )


async def _json_body(request: Request) -> Any:
    """The body as JSON; a 422 when it is not (LangServe would answer bytes that are not UTF-8 with a 500)."""
    try:
        return await request.json()
    except ValueError:
        raise _invalid((), "json_invalid", "Invalid JSON body") from None


def _invalid(loc: tuple[str | int, ...], kind: str, message: str) -> RequestValidationError:
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


def _outputs_only(chain: Runnable[Any, Any], default_collection: str) -> Runnable[Any, Any]:
    """The chain as served: each input's collection authorized for the caller as it runs; the chain's steps in
    traces but not in stream_log / stream_events.

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
            data = item if isinstance(item, RagInput) else RagInput.model_validate(item)
            data = data.model_copy(update={"collection": authorized_collection(data.collection, default_collection)})
            chunks = cast(AsyncGenerator[Any, None], chain.astream(data, inner))  # astream is an async generator
            try:
                while True:
                    try:
                        chunk: Any = await asyncio.create_task(_next(chunks), context=context)
                    except StopAsyncIteration:
                        break
                    yield chunk
            finally:  # close the steps (and end their runs) also when a later step failed
                await asyncio.create_task(chunks.aclose(), context=context)

    # RunnableGenerator is typed for a one-argument function; it passes the config to one that takes it too.
    served_chain: Runnable[Any, Any] = RunnableGenerator(served, name="ticket_rag")  # type: ignore[arg-type]
    return served_chain.with_types(input_type=RagInput, output_type=RagOutput)


async def _next(chunks: AsyncGenerator[Any, None]) -> Any:
    """anext() as a coroutine, which asyncio.create_task needs (anext returns an awaitable, not a coroutine)."""
    return await anext(chunks)
