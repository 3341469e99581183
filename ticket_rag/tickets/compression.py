"""Vector compression of the ticket collection (VECTOR_COMPRESSION): the Weaviate quantizer each name stands for.

Weaviate keeps every ticket's full float32 vector on disk either way; compression changes what the
HNSW index holds in memory and searches with (docs/scaling.md):

- ``rq8``: rotational quantization, 8 bits a dimension (768 B instead of 3,072 B), no training;
  the candidates are re-scored with the full vectors (RQ's rescore limit, 20 by default).
- ``rq1``: rotational quantization, 1 bit a dimension (about 32x smaller), re-scores 512 candidates by default.
- ``bq``: binary quantization, 1 bit a dimension, no rotation.
- ``pq``: product quantization; it trains per tenant once a tenant holds its training limit (100,000
  tickets by default), and only a Weaviate with ``ASYNC_INDEXING=true`` does that on its own; every
  smaller tenant stays uncompressed.
- ``none``: the full vectors in memory (explicitly, so a server's ``DEFAULT_QUANTIZATION`` does not apply).

The compression of a collection that already exists can only be *turned on*, in place, from
``none`` (Weaviate compresses the vectors of every loaded tenant in the background, and the rest as
they load); Weaviate refuses to turn it off or to switch methods, and changing either needs a new
collection and a re-import. ``enable_compression`` is that one allowed step.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal, get_args

import weaviate
from weaviate.classes.config import Configure, Reconfigure, VectorDistances
from weaviate.collections.classes.config import BQConfig, PQConfig, RQConfig, SQConfig

logger = logging.getLogger(__name__)

Compression = Literal["none", "rq8", "rq1", "bq", "pq"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
VECTOR_NAME = "default"


class CompressionChangeRefused(Exception):
    """The collection's compression cannot be changed in place to the one asked for; the message says what to do."""


def index_config(
    compression: str,
    *,
    rescore_limit: int | None = None,
    ef_construction: int | None = None,
    max_connections: int | None = None,
) -> Any:
    """The HNSW index configuration (cosine) for a new collection with this compression."""
    return Configure.VectorIndex.hnsw(
        distance_metric=VectorDistances.COSINE,
        ef_construction=ef_construction,
        max_connections=max_connections,
        quantizer=_quantizer(compression, rescore_limit),
    )


def _quantizer(compression: str, rescore_limit: int | None, *, update: bool = False) -> Any:
    """Weaviate's quantizer config for a setting: for a new collection, or (update) for one that exists."""
    q = (Reconfigure if update else Configure).VectorIndex.Quantizer
    if compression == "none" and not update:
        return Configure.VectorIndex.Quantizer.none()
    if compression in ("rq8", "rq1"):
        return q.rq(bits=int(compression[2:]), rescore_limit=rescore_limit)
    if compression == "bq":
        return q.bq(rescore_limit=rescore_limit)
    if compression == "pq":
        return q.pq()
    raise ValueError(f"unknown vector compression {compression!r}: one of {', '.join(COMPRESSIONS)}")


def current_compression(client: weaviate.WeaviateClient, class_name: str) -> str:
    """The compression an existing collection was created or last updated with (sq for a scalar
    quantizer set elsewhere).
    """
    config = client.collections.use(class_name).config.get()
    vectors = config.vector_config or {}
    index = vectors[VECTOR_NAME].vector_index_config if VECTOR_NAME in vectors else config.vector_index_config
    quantizer = getattr(index, "quantizer", None)
    if isinstance(quantizer, RQConfig):
        return f"rq{quantizer.bits or 8}"
    if isinstance(quantizer, BQConfig):
        return "bq"
    if isinstance(quantizer, PQConfig):
        return "pq"
    if isinstance(quantizer, SQConfig):
        return "sq"
    return "none"


def enable_compression(
    client: weaviate.WeaviateClient, class_name: str, compression: str, *, rescore_limit: int | None = None
) -> bool:
    """Turn compression on for a collection that holds tickets; False if it already has this compression.

    Raises CompressionChangeRefused for what Weaviate cannot do in place (off again, or another method).
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown vector compression {compression!r}: one of {', '.join(COMPRESSIONS)}")
    have = current_compression(client, class_name)
    if have == compression:
        return False
    if have != "none":
        raise CompressionChangeRefused(
            f"Weaviate collection {class_name} is compressed with {have}; Weaviate cannot turn compression off or "
            f"switch to {compression} in place: create a new collection (another WEAVIATE_CLASS) with "
            f"VECTOR_COMPRESSION={compression} and import the tickets again (docs/scaling.md)"
        )
    if compression == "none":
        return False
    client.collections.use(class_name).config.update(
        vector_config=Reconfigure.Vectors.update(
            name=VECTOR_NAME,
            vector_index_config=Reconfigure.VectorIndex.hnsw(
                quantizer=_quantizer(compression, rescore_limit, update=True)
            ),
        )
    )
    logger.info("turned on %s vector compression for Weaviate collection %s", compression, class_name)
    return True


def uncompressed_tenants(client: weaviate.WeaviateClient, class_name: str) -> list[str]:
    """Tenants loaded on some node whose vector index is not compressed (yet): empty once compression has finished."""
    nodes = client.cluster.nodes(collection=class_name, output="verbose")
    return sorted({s.name for n in nodes for s in (n.shards or []) if s.loaded is not False and not s.compressed})


def wait_until_compressed(client: weaviate.WeaviateClient, class_name: str, *, timeout: float) -> list[str]:
    """Wait until every loaded tenant's index is compressed; the tenants still uncompressed at the timeout."""
    deadline = time.monotonic() + timeout
    while (left := uncompressed_tenants(client, class_name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def warn_if_compression_differs(client: weaviate.WeaviateClient, class_name: str, compression: str) -> None:
    """Log once at start-up when an existing collection keeps another compression than VECTOR_COMPRESSION."""
    have = current_compression(client, class_name)
    if have != compression:
        how = "run `ticket-rag compress`" if have == "none" else "create a new collection and re-import"
        logger.warning(
            "Weaviate collection %s keeps vector compression %s; VECTOR_COMPRESSION=%s applies only to collections "
            "created from now on (%s; docs/scaling.md)",
            class_name,
            have,
            compression,
            how,
        )
