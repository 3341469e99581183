"""A disk cache of document embeddings, keyed by (model identity, sha256 of the text).

Embedding is the slow part of ingesting (all-mpnet-base-v2 on a CPU: about a second per abstract),
so a second ingest of the same texts with the same model should cost nothing. Vectors are stored
as float32 in one SQLite file per model under CACHE_DIR/embeddings/<model key>/, looked up in
batches; the file is safe to share between threads and processes (WAL, busy timeout).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

from ticket_rag.runtime.artifacts import MODEL_ALIASES, sha256_file
from ticket_rag.settings import DEFAULT_MODEL_SHA256, Settings

logger = logging.getLogger(__name__)

# SQLite's historical bound on host parameters per statement; newer builds allow more.
_LOOKUP_CHUNK = 900


def text_sha256(text: str) -> bytes:
    """The cache key of a text: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def model_key(settings: Settings, embeddings: Embeddings | None = None) -> str:
    """A folder name that changes whenever the vectors would: the weights' sha256 plus the encoding setup.

    The default model (and any local folder checked against EMBEDDING_SHA256) is identified by the
    sha256 of its model.safetensors; an unchecked local folder is hashed here; a hub id, which has no
    fixed weights, by its name. The encoding setup (max sequence length, normalisation) is part of
    the key, because changing it changes every vector.
    """
    name = settings.embedding_model
    path = Path(name).expanduser()
    if name in MODEL_ALIASES:
        weights = DEFAULT_MODEL_SHA256
    elif path.is_dir() and settings.embedding_sha256:
        weights = settings.embedding_sha256
    elif path.is_dir() and (path / "model.safetensors").is_file():
        weights = sha256_file(path / "model.safetensors")
    else:
        weights = "name-" + hashlib.sha256(name.encode()).hexdigest()
    encode = dict(getattr(embeddings, "encode_kwargs", None) or {})
    encode.pop("batch_size", None)  # changes speed, not vectors
    setup = {
        "max_seq_length": getattr(getattr(embeddings, "_client", None), "max_seq_length", None),
        "encode": encode,
        "query_encode": dict(getattr(embeddings, "query_encode_kwargs", None) or {}),
    }
    setup_digest = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{weights}-{setup_digest}"


@dataclass
class CacheStats:
    """What the cache saved: texts found, texts computed, and the seconds spent computing them."""

    hits: int = 0
    misses: int = 0
    compute_seconds: float = 0.0


class EmbeddingCache:
    """float32 vectors in one SQLite file, by (kind, sha256 of text)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vectors ("
            " kind TEXT NOT NULL, sha256 BLOB NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,"
            " PRIMARY KEY (kind, sha256)) WITHOUT ROWID"
        )

    def get_many(self, kind: str, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors among keys, in batched lookups."""
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for chunk in _chunks(unique, _LOOKUP_CHUNK):
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT sha256, dim, vector FROM vectors WHERE kind = ? AND sha256 IN ({marks})",
                    (kind, *chunk),
                ).fetchall()
                for key, dim, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.shape == (dim,):
                        found[key] = vector
        return found

    def put_many(self, kind: str, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        """Store vectors (as float32), in one transaction."""
        rows = [(kind, key, int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes()) for key, v in items]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM vectors").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedEmbeddings(Embeddings):
    """Embeddings that compute each distinct document text once per model, then read it from disk.

    Documents are cached; queries pass through unless cache_queries is set (they are cheap, and a
    service's stream of queries would only grow the file). A text's vector is the same float32
    values whether it was just computed or read back.
    """

    def __init__(self, inner: Embeddings, *, cache: EmbeddingCache, cache_queries: bool = False) -> None:
        self.inner = inner
        self.cache = cache
        self.cache_queries = cache_queries
        self.stats = CacheStats()
        self._stats_lock = threading.Lock()

    @classmethod
    def for_settings(cls, inner: Embeddings, settings: Settings, **kwargs: bool) -> CachedEmbeddings:
        """The cache of settings.embedding_model, in CACHE_DIR/embeddings/<model key>/vectors.sqlite."""
        key = model_key(settings, inner)
        cache = EmbeddingCache(settings.cache_dir / "embeddings" / key / "vectors.sqlite")
        logger.info("embedding cache %s", cache.path)
        return cls(inner, cache=cache, **kwargs)

    def _cached(
        self, kind: str, texts: list[str], compute: Callable[[list[str]], list[list[float]]]
    ) -> list[list[float]]:
        keys = [text_sha256(t) for t in texts]
        found = self.cache.get_many(kind, keys)
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        if missing:
            started = time.perf_counter()
            computed = compute(list(missing.values()))
            elapsed = time.perf_counter() - started
            fresh = [(k, np.asarray(v, dtype=np.float32)) for k, v in zip(missing, computed, strict=True)]
            self.cache.put_many(kind, fresh)
            found.update(fresh)
        else:
            elapsed = 0.0
        with self._stats_lock:
            self.stats.hits += len(texts) - len(missing)
            self.stats.misses += len(missing)
            self.stats.compute_seconds += elapsed
        return [found[k].tolist() for k in keys]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Vectors for documents: cached ones read in one lookup, the rest computed in one batch."""
        return self._cached("document", list(texts), self.inner.embed_documents)

    def embed_query(self, text: str) -> list[float]:
        """The query's vector (from the cache only when cache_queries is set)."""
        if not self.cache_queries:
            return self.inner.embed_query(text)
        return self._cached("query", [text], lambda ts: [self.inner.embed_query(ts[0])])[0]


def _chunks(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
