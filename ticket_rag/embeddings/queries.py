"""Query embeddings under load: an LRU cache for repeated queries, and micro-batching of concurrent ones.

On a CPU a forward pass over 16 short queries costs little more than over one, so queries that
arrive while the model is busy are embedded together in the next pass. Nothing waits on a timer:
at low load a query goes straight to the model, and batches form only when queries queue up.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future

from langchain_core.embeddings import Embeddings


class QueryEmbeddings(Embeddings):
    """Wraps a symmetric model (queries and documents embed alike, as all-mpnet-base-v2 does)."""

    def __init__(self, inner: Embeddings, *, cache_size: int = 4096, max_batch: int = 32) -> None:
        self.inner = inner
        self.cache_size = cache_size
        self.max_batch = max_batch
        self._cache: OrderedDict[str, tuple[float, ...]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._pending: list[tuple[str, Future[tuple[float, ...]]]] = []
        self._busy = False
        self._turn = threading.Condition()
        self.batches = 0  # forward passes run for queries (for benchmarks and tests)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        with self._cache_lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return list(hit)
        future: Future[tuple[float, ...]] = Future()
        with self._turn:
            self._pending.append((text, future))
        while not future.done():
            with self._turn:
                if future.done():
                    break
                if self._busy:  # another thread runs a pass; ours may be in the next one
                    self._turn.wait(timeout=0.05)
                    continue
                self._busy = True
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self._run(batch)
        vector = future.result()
        self._remember(text, vector)
        return list(vector)

    def _run(self, batch: list[tuple[str, Future[tuple[float, ...]]]]) -> None:
        try:
            vectors = self.inner.embed_documents([text for text, _ in batch])
            self.batches += 1
            for (_, future), vector in zip(batch, vectors, strict=True):
                future.set_result(tuple(vector))
        except BaseException as exc:  # every waiter learns of the failure, none hangs
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        finally:
            with self._turn:
                self._busy = False
                self._turn.notify_all()

    def _remember(self, text: str, vector: tuple[float, ...]) -> None:
        if self.cache_size <= 0:
            return
        with self._cache_lock:
            self._cache[text] = vector
            self._cache.move_to_end(text)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
