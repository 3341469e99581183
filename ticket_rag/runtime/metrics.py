"""Prometheus metrics: HTTP traffic, embeddings, Weaviate errors, the LLM, rate limiting."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.embeddings import Embeddings
from langchain_core.outputs import LLMResult
from prometheus_client import Counter, Histogram

from ticket_rag.errors import EmbeddingUnavailable

T = TypeVar("T")
logger = logging.getLogger(__name__)

REQUESTS = Counter("ticket_rag_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "ticket_rag_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
EMBED_SECONDS = Histogram("ticket_rag_embedding_seconds", "Time per embedding call", ["kind"])
EMBED_BATCH = Histogram(
    "ticket_rag_embedding_batch_size",
    "Texts per embedding call",
    ["kind"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
EMBED_ERRORS = Counter("ticket_rag_embedding_errors_total", "Embedding calls that failed", ["kind"])
WEAVIATE_ERRORS = Counter("ticket_rag_weaviate_errors_total", "Weaviate calls that failed", ["kind"])
LLM_SECONDS = Histogram(
    "ticket_rag_llm_seconds", "LLM call latency", ["model"], buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)
)
LLM_TOKENS = Counter("ticket_rag_llm_tokens_total", "LLM tokens", ["model", "direction"])
LLM_ERRORS = Counter("ticket_rag_llm_errors_total", "LLM calls that failed", ["model", "error"])
WEAVIATE_RESTARTS = Counter(
    "ticket_rag_weaviate_restarts_total", "Times the embedded Weaviate was restarted after it died"
)
RATE_LIMITED = Counter("ticket_rag_rate_limited_total", "Requests refused by the rate limiter")


class InstrumentedEmbeddings(Embeddings):
    """Any Embeddings, timed and counted; a failure of the model becomes EmbeddingUnavailable (503) and is
    remembered for /health/ready until the next call succeeds."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.last_error: str | None = None

    def _call(self, kind: str, count: int, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            EMBED_ERRORS.labels(kind).inc()
            logger.warning("the embedding model failed: %s: %s", type(exc).__name__, str(exc)[:500])
            self.last_error = type(
                exc
            ).__name__  # /health/ready is unauthenticated: the type only, the message is logged
            raise EmbeddingUnavailable(f"the embedding model failed ({type(exc).__name__}); try again shortly") from exc
        finally:
            EMBED_SECONDS.labels(kind).observe(time.perf_counter() - started)
            EMBED_BATCH.labels(kind).observe(count)
        self.last_error = None
        return result

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._call("documents", len(texts), lambda: self.inner.embed_documents(texts))

    def embed_query(self, text: str) -> list[float]:
        return self._call("query", 1, lambda: self.inner.embed_query(text))


class LLMMetrics(BaseCallbackHandler):
    """Latency, tokens and errors of every chat-model call."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started: dict[UUID, float] = {}

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.started[run_id] = time.perf_counter()

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        started = self.started.pop(run_id, None)
        if started is not None:
            LLM_SECONDS.labels(self.model).observe(time.perf_counter() - started)
        for generations in response.generations:
            for generation in generations:
                usage = getattr(getattr(generation, "message", None), "usage_metadata", None) or {}
                LLM_TOKENS.labels(self.model, "input").inc(usage.get("input_tokens", 0))
                LLM_TOKENS.labels(self.model, "output").inc(usage.get("output_tokens", 0))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.started.pop(run_id, None)
        LLM_ERRORS.labels(self.model, type(error).__name__).inc()
