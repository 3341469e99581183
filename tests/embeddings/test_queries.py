"""Query cache and micro-batching, over the real model."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from tests.conftest import make_settings
from ticket_rag.embeddings.model import build_embeddings
from ticket_rag.embeddings.queries import QueryEmbeddings


class Counting(Embeddings):
    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.texts = 0
        self.calls = 0
        self.lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        with self.lock:
            self.calls += 1
            self.texts += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        raise AssertionError("QueryEmbeddings embeds queries through embed_documents, in batches")


def test_repeated_queries_come_from_the_cache(embeddings: Embeddings) -> None:
    counting = Counting(embeddings)
    queries = QueryEmbeddings(counting, cache_size=2)
    first = queries.embed_query("login fails")
    assert queries.embed_query("login fails") == first
    assert counting.texts == 1
    queries.embed_query("printer jam")
    queries.embed_query("vpn drops")  # evicts "login fails" (least recently used)
    queries.embed_query("login fails")
    assert counting.texts == 4
    np.testing.assert_allclose(first, embeddings.embed_query("login fails"), atol=1e-5)


@pytest.fixture(scope="module")
def fp32() -> Embeddings:
    """A backend whose vectors do not depend on their batch (int8's activation scales do, slightly)."""
    return build_embeddings(make_settings(embedding_backend="onnx-fp32"))


def test_concurrent_queries_share_forward_passes_and_get_their_own_vectors(fp32: Embeddings) -> None:
    embeddings = fp32
    counting = Counting(embeddings)
    queries = QueryEmbeddings(counting, cache_size=0)
    texts = [
        f"ticket about problem number {i} with the {['vpn', 'printer', 'invoice', 'login'][i % 4]}" for i in range(48)
    ]
    with ThreadPoolExecutor(16) as pool:
        vectors = list(pool.map(queries.embed_query, texts))
    expected = embeddings.embed_documents(texts)
    np.testing.assert_allclose(np.array(vectors), np.array(expected), atol=1e-4)
    assert counting.texts == 48
    assert counting.calls < 48, "no query shared a forward pass"


def test_a_failing_pass_fails_every_waiter(embeddings: Embeddings) -> None:
    class Broken(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            raise RuntimeError("model crashed")

        def embed_query(self, text: str) -> list[float]:
            raise RuntimeError("model crashed")

    queries = QueryEmbeddings(Broken())
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(queries.embed_query, f"q{i}") for i in range(8)]
        for future in futures:
            with pytest.raises(RuntimeError, match="model crashed"):
                future.result(timeout=30)
