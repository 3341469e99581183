"""The Weaviate-backed ticket store.

All tickets live in one Weaviate collection (settings.weaviate_class) with multi-tenancy on: each
ticket-rag collection is a Weaviate tenant. A tenant is its own shard (own vector index, own BM25
statistics, dropped in one call), so one help desk's tickets never leak into another's results,
and thousands of help desks cost thousands of shards, not thousands of schemas. See docs/collections.md.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import weaviate
from langchain_core.embeddings import Embeddings
from weaviate.classes.aggregate import Metrics
from weaviate.classes.config import (
    Configure,
    ConsistencyLevel,
    DataType,
    Property,
    ReplicationDeletionStrategy,
    Tokenization,
)
from weaviate.classes.query import Filter, HybridFusion, MetadataQuery, Sort
from weaviate.classes.tenants import Tenant
from weaviate.collections import Collection
from weaviate.collections.classes.aggregate import AggregateDate
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateBaseError,
    WeaviateClosedClientError,
    WeaviateConnectionError,
    WeaviateQueryError,
    WeaviateTimeoutError,
)

from ticket_rag.errors import (
    CollectionExists,
    CollectionNotFound,
    InvalidRequest,
    StoreUnavailable,
    TicketNotFound,
)
from ticket_rag.runtime.metrics import WEAVIATE_ERRORS
from ticket_rag.settings import Settings, setting_default
from ticket_rag.tickets.compression import index_config, warn_if_compression_differs
from ticket_rag.tickets.keywords import (
    DESCRIPTION_TERMS,
    TITLE_TERMS,
    KeywordAnalyzer,
    keyword_properties,
)
from ticket_rag.tickets.locks import TicketLocks
from ticket_rag.tickets.schemas import (
    SearchFilters,
    SearchHit,
    SearchMode,
    TicketCreate,
    TicketPublic,
    TicketUpdate,
)

logger = logging.getLogger(__name__)

# Weaviate answers no query past its QUERY_MAXIMUM_RESULTS (10,000 by default).
RESULT_LIMIT = 10_000
# external ids map to the same UUID in every deployment: uuid5(namespace, collection NUL external_id)
TICKET_NAMESPACE = uuid.UUID("5f0b7c1e-3f0e-4d5a-9a57-7e1c2b9d8a10")
EMBEDDED_FIELDS = ("title", "description")
_TEXT_FIELDS = ("title", "description", "priority", "status", "category", "type", "tags", "resolution", "external_id")
# Duplicate links an agent confirmed or rejected (ticket ids as text); set only by duplicates.py.
LINK_FIELDS = ("duplicate_of", "duplicates", "not_duplicates")
# A digest of the request that created a ticket under an Idempotency-Key: a retry must send the same request.
FINGERPRINT = "request_fingerprint"
# What a ticket is read back with (not its keyword terms).
_PUBLIC_PROPERTIES = [*_TEXT_FIELDS, "created_at", "updated_at", *LINK_FIELDS]
_TERM_PROPERTIES = (TITLE_TERMS, DESCRIPTION_TERMS)


def ticket_uuid(collection: str, external_id: str | None) -> uuid.UUID:
    """The ticket's id: deterministic for an external id (so re-imports update), random otherwise."""
    if external_id is None:
        return uuid.uuid4()
    return uuid.uuid5(TICKET_NAMESPACE, f"{collection}\x00{external_id}")


def idempotent_uuid(collection: str, caller: str | None, key: str, index: int = 0) -> uuid.UUID:
    """The id of the index-th ticket created under a client's Idempotency-Key: a retry writes the same ticket."""
    return uuid.uuid5(TICKET_NAMESPACE, f"idempotency\x00{collection}\x00{caller or ''}\x00{key}\x00{index}")


def embedded_text(title: str, description: str) -> str:
    """The text a ticket's vector is computed from."""
    return f"{title} {description}"


@dataclass(frozen=True)
class Page:
    tickets: list[TicketPublic]
    count: int


@dataclass(frozen=True)
class Upserted:
    ticket: TicketPublic
    created: bool


@dataclass(frozen=True)
class FirstAttempt:
    """A ticket stored under an Idempotency-Key, with the fingerprint of the request that stored it."""

    ticket: TicketPublic
    fingerprint: str | None  # None for tickets stored before fingerprints were kept


_KEYWORD_PART = re.compile(r"Result Set keyword,bm25\)[^:]*: original score ([-0-9.eE+]+)")


def _hybrid_keyword_score(explain: str | None) -> float | None:
    """The BM25 part of a hybrid hit, read from Weaviate's score explanation (None when it matched no keyword)."""
    match = _KEYWORD_PART.search(explain or "")
    return float(match.group(1)) if match else None


def _is_missing_tenant(exc: Exception) -> bool:
    text = str(exc).lower()
    return "tenant" in text and ("not found" in text or "does not exist" in text or "not exist" in text)


class TicketStore:
    """Tickets and collections in Weaviate, with their vectors from the embedding model."""

    def __init__(
        self,
        *,
        client: weaviate.WeaviateClient,
        embeddings: Embeddings,
        class_name: str,
        replication_factor: int = 1,
        consistency: str = "QUORUM",
        analyzer: KeywordAnalyzer | None = None,
        title_boost: float = 1.0,
        compression: str = "none",
        rescore_limit: int | None = None,
        ef_construction: int | None = None,
        max_connections: int | None = None,
    ) -> None:
        self.client = client
        self.embeddings = embeddings
        self.class_name = class_name
        self.analyzer = analyzer or KeywordAnalyzer()
        # BM25 runs on the stemmed terms; the title's weight against the description's (KEYWORD_TITLE_BOOST).
        self.keyword_properties = keyword_properties(title_boost)
        self.replication_factor = replication_factor
        self.consistency = ConsistencyLevel(consistency)
        # The vector index's compression for a collection created here (VECTOR_COMPRESSION, compression.py).
        self.compression = compression
        self.rescore_limit = rescore_limit
        # HNSW build parameters (Weaviate's defaults when None); fixed once the collection exists.
        self.hnsw = {"ef_construction": ef_construction, "max_connections": max_connections}
        # Serialize read-modify-write per ticket and duplicate links per collection, in this process (locks.py).
        self.locks = TicketLocks()

    # --- schema and collections ------------------------------------------------------------------

    def ensure_schema(self, *, default_collection: str) -> None:
        """Create the Weaviate collection (and the default tenant) if they do not exist yet."""
        with weaviate_errors():
            if not self.client.collections.exists(self.class_name):
                self.client.collections.create(
                    self.class_name,
                    description="ticket-rag support tickets; one tenant per ticket-rag collection",
                    vector_config=Configure.Vectors.self_provided(
                        vector_index_config=index_config(
                            self.compression, rescore_limit=self.rescore_limit, **self.hnsw
                        ),
                    ),
                    multi_tenancy_config=Configure.multi_tenancy(
                        enabled=True, auto_tenant_creation=False, auto_tenant_activation=True
                    ),
                    inverted_index_config=Configure.inverted_index(index_null_state=True),
                    # Each tenant is one shard, so the shard count is not ours to set (docs/scaling.md). Async
                    # replication is on by default for a factor > 1 since Weaviate 1.38. When a replica missed a
                    # delete or a write, the later one wins: a ticket deleted while a node was down stays deleted
                    # when it returns, and one re-imported (same external_id, same id) after a delete stays too
                    # (DeleteOnConflict would delete it again; NoAutomatedResolution leaves stale copies).
                    replication_config=Configure.replication(
                        factor=self.replication_factor,
                        deletion_strategy=ReplicationDeletionStrategy.TIME_BASED_RESOLUTION,
                    ),
                    properties=[
                        Property(name="title", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
                        Property(name="description", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
                        *_term_properties(),
                        Property(name="resolution", data_type=DataType.TEXT, index_searchable=False),
                        _exact("priority"),
                        _exact("status"),
                        _exact("category"),
                        *_added_properties(),
                        _exact("tags", DataType.TEXT_ARRAY),
                        _exact("external_id"),
                        Property(name="created_at", data_type=DataType.DATE, index_range_filters=True),
                        Property(name="updated_at", data_type=DataType.DATE),
                    ],
                )
                logger.info("created Weaviate collection %s", self.class_name)
            else:
                warn_if_replication_differs(self.client, self.class_name, self.replication_factor)
                warn_if_compression_differs(self.client, self.class_name, self.compression)
                if add_missing_term_properties(self.client, self.class_name):
                    logger.warning(
                        "added keyword term properties to Weaviate collection %s: keyword and hybrid search find the "
                        "tickets stored before only after `ticket-rag reindex`",
                        self.class_name,
                    )
            if not self._collection.tenants.exists(default_collection):
                self._collection.tenants.create([Tenant(name=default_collection)])

    @property
    def _collection(self) -> Collection[Any, Any]:
        return self.client.collections.use(self.class_name).with_consistency_level(self.consistency)

    def _tenant(self, collection: str) -> Collection[Any, Any]:
        return self._collection.with_tenant(collection)

    def create_collection(self, *, name: str) -> None:
        """Create an empty collection; CollectionExists if the name is taken."""
        with weaviate_errors():
            if self._collection.tenants.exists(name):
                raise CollectionExists(f"collection '{name}' already exists")
            self._collection.tenants.create([Tenant(name=name)])

    def list_collections(self) -> list[str]:
        with weaviate_errors():
            return sorted(self._collection.tenants.get())

    def collection_exists(self, *, name: str) -> bool:
        with weaviate_errors():
            return bool(self._collection.tenants.exists(name))

    def count(self, *, collection: str, filters: SearchFilters | None = None) -> int:
        """Tickets in a collection that match the filters."""
        with weaviate_errors(collection):
            result = self._tenant(collection).aggregate.over_all(
                total_count=True, filters=weaviate_filter(filters) if filters else None
            )
        return int(result.total_count or 0)

    def labels_version(self, *, collection: str) -> tuple[int, str]:
        """What changes whenever a ticket is added, edited or deleted: the count and the latest updated_at."""
        with weaviate_errors(collection):
            result = self._tenant(collection).aggregate.over_all(
                total_count=True, return_metrics=Metrics("updated_at").date_(maximum=True)
            )
        updated = result.properties.get("updated_at")
        latest = updated.maximum if isinstance(updated, AggregateDate) else None
        return int(result.total_count or 0), str(latest)

    def iterate_labels(self, *, collection: str) -> Iterator[tuple[uuid.UUID, dict[str, Any], list[float]]]:
        """Every ticket's labels (category, priority, type, tags), keyword terms and vector, for fitting triage."""
        properties = ["category", "priority", "type", "tags", *_TERM_PROPERTIES]
        with weaviate_errors(collection):
            for obj in self._tenant(collection).iterator(include_vector=True, return_properties=properties):
                yield obj.uuid, obj.properties, cast(list[float], obj.vector["default"])

    def delete_collection(self, *, name: str) -> None:
        """Drop a collection and every ticket in it."""
        with weaviate_errors():
            if not self._collection.tenants.exists(name):
                raise CollectionNotFound(f"collection '{name}' does not exist")
            self._collection.tenants.remove([name])

    # --- tickets -------------------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors for ticket texts, in one batched forward pass."""
        return self.embeddings.embed_documents(list(texts))

    def upsert(self, *, ticket: TicketCreate, collection: str, vector: list[float] | None = None) -> Upserted:
        """Store one ticket (insert, or replace the ticket with the same external_id)."""
        return self.upsert_many(tickets=[ticket], collection=collection, vectors=[vector] if vector else None)[0]

    def upsert_many(
        self,
        *,
        tickets: Sequence[TicketCreate],
        collection: str,
        vectors: Sequence[list[float]] | None = None,
        ids: Sequence[uuid.UUID] | None = None,
        fingerprint: str | None = None,
    ) -> list[Upserted]:
        """Store tickets with one embedding pass and one gRPC batch; all or nothing per call.

        A ticket's id comes from its external_id; without one, from `ids` when given (idempotent creates, which
        keep the request's `fingerprint`), else a new random id.
        """
        if vectors is None:
            vectors = self.embed([embedded_text(t.title, t.description) for t in tickets])
        keyed = [not t.external_id and ids is not None for t in tickets]
        ids = [
            ticket_uuid(collection, t.external_id) if t.external_id or ids is None else ids[n]
            for n, t in enumerate(tickets)
        ]
        # A replaced ticket keeps its links: read and rewritten under its lock, so no confirmation in between is lost.
        with self.locks.tickets(collection, ids):
            if fingerprint is not None:
                # The router checked the key before embedding; two attempts with one key and different bodies at the
                # same time both passed that check, so the later one is refused here (within this process).
                keyed_ids = [i for i, is_keyed in zip(ids, keyed, strict=True) if is_keyed]
                for first in self.first_attempts(ids=keyed_ids, collection=collection).values():
                    if first.fingerprint not in (None, fingerprint):
                        raise InvalidRequest(
                            "this Idempotency-Key was used for a different request; send a new key",
                            loc=("header", "Idempotency-Key"),
                        )
            now = datetime.now(UTC)
            existing = self._kept_of([i for i, t in zip(ids, tickets, strict=True) if t.external_id], collection)
            objects, results = [], []
            for ticket_id, ticket, vector, is_keyed in zip(ids, tickets, vectors, keyed, strict=True):
                kept = existing.get(ticket_id, {})
                created_at = ticket.created_at or kept.get("created_at") or now
                props = _properties(ticket.model_dump(exclude={"collection", "created_at"}))
                # A re-import replaces the ticket's fields but keeps the duplicate links agents confirmed or rejected.
                props.update({k: v for k, v in kept.items() if k in LINK_FIELDS and v})
                props.update(created_at=_aware(created_at), updated_at=now)
                public = _public(ticket_id, collection, props)
                props.update(self.analyzer.properties(title=ticket.title, description=ticket.description))
                if fingerprint is not None and is_keyed:
                    props[FINGERPRINT] = fingerprint
                objects.append(weaviate.classes.data.DataObject(properties=props, uuid=ticket_id, vector=vector))
                results.append(Upserted(ticket=public, created=ticket_id not in existing))
            with weaviate_errors(collection):
                _replace(self._tenant(collection), objects)
        return results

    def _kept_of(self, ids: list[uuid.UUID], collection: str) -> dict[uuid.UUID, dict[str, Any]]:
        """What a replaced ticket keeps: its creation time and its duplicate links."""
        if not ids:
            return {}
        with weaviate_errors(collection):
            found = self._tenant(collection).query.fetch_objects(
                filters=Filter.by_id().contains_any(ids), limit=len(ids), return_properties=["created_at", *LINK_FIELDS]
            )
        return {o.uuid: o.properties for o in found.objects}

    def get_many(self, *, ids: Sequence[uuid.UUID], collection: str) -> dict[uuid.UUID, TicketPublic]:
        """The tickets among these ids that exist in this collection."""
        if not ids:
            return {}
        with weaviate_errors(collection):
            found = self._tenant(collection).query.fetch_objects(
                filters=Filter.by_id().contains_any(list(ids)), limit=len(ids), return_properties=_PUBLIC_PROPERTIES
            )
        return {o.uuid: _public(o.uuid, collection, o.properties) for o in found.objects}

    def first_attempts(self, *, ids: Sequence[uuid.UUID], collection: str) -> dict[uuid.UUID, FirstAttempt]:
        """The tickets among these Idempotency-Key ids that exist, each with the fingerprint of its request."""
        if not ids:
            return {}
        with weaviate_errors(collection):
            found = self._tenant(collection).query.fetch_objects(
                filters=Filter.by_id().contains_any(list(ids)),
                limit=len(ids),
                return_properties=[*_PUBLIC_PROPERTIES, FINGERPRINT],
            )
        return {
            o.uuid: FirstAttempt(
                ticket=_public(o.uuid, collection, o.properties), fingerprint=o.properties.get(FINGERPRINT)
            )
            for o in found.objects
        }

    def get(self, *, ticket_id: uuid.UUID, collection: str) -> TicketPublic:
        """One ticket; TicketNotFound if it is not in this collection."""
        obj = self._get_object(ticket_id, collection, include_vector=False)
        return _public(obj.uuid, collection, obj.properties)

    def get_vector(self, *, ticket_id: uuid.UUID, collection: str) -> list[float]:
        obj = self._get_object(ticket_id, collection, include_vector=True)
        return list(obj.vector["default"])

    def _get_object(self, ticket_id: uuid.UUID, collection: str, *, include_vector: bool) -> Any:
        with weaviate_errors(collection):
            obj = self._tenant(collection).query.fetch_object_by_id(
                ticket_id, include_vector=include_vector, return_properties=_PUBLIC_PROPERTIES
            )
        if obj is None:
            raise TicketNotFound(f"ticket {ticket_id} not found in collection '{collection}'")
        return obj

    def update(self, *, ticket_id: uuid.UUID, collection: str, changes: TicketUpdate) -> TicketPublic:
        """Apply a partial update; re-embed only when the embedded text changes."""
        # Read, merge and write under the ticket's lock: two PATCHes of title and description at once would
        # otherwise each compute the keyword terms and the vector from a merge that misses the other's change.
        # The embedding (tens of ms) is computed before the lock is taken, from a first read, and used only if the
        # text it was computed from is still the text the merge under the lock gives; else it is computed again.
        patch = changes.model_dump(exclude_unset=True)
        embedded: tuple[str, list[float]] | None = None
        if "title" in patch or "description" in patch:
            first = self.get(ticket_id=ticket_id, collection=collection)
            guess = first.model_copy(update=patch)
            text = embedded_text(guess.title, guess.description)
            if text != embedded_text(first.title, first.description):
                embedded = (text, self.embed([text])[0])
        with self.locks.tickets(collection, [ticket_id]):
            current = self.get(ticket_id=ticket_id, collection=collection)
            merged = current.model_copy(update=patch)
            merged_text = embedded_text(merged.title, merged.description)
            vector = None  # unless the embedded text changes
            if merged_text != embedded_text(current.title, current.description):
                vector = embedded[1] if embedded and embedded[0] == merged_text else self.embed([merged_text])[0]
            now = datetime.now(UTC)
            props = _properties(patch)
            props["updated_at"] = now
            if "title" in patch or "description" in patch:
                props.update(self.analyzer.properties(title=merged.title, description=merged.description))
            with weaviate_errors(collection, ticket_id=ticket_id):
                self._tenant(collection).data.update(uuid=ticket_id, properties=props, vector=vector)
        return merged.model_copy(update={"updated_at": now})

    def set_links(self, *, ticket_id: uuid.UUID, collection: str, links: dict[str, Any]) -> None:
        """Write only duplicate links (LINK_FIELDS; "" clears duplicate_of): text, vector and updated_at stay.

        The caller holds the collection's links lock and this ticket's lock (duplicates.py).
        """
        if not set(links) <= set(LINK_FIELDS):
            raise ValueError(f"not a link field: {sorted(set(links) - set(LINK_FIELDS))}")
        with weaviate_errors(collection, ticket_id=ticket_id):
            self._tenant(collection).data.update(uuid=ticket_id, properties=links)

    def delete(self, *, ticket_id: uuid.UUID, collection: str) -> None:
        """Delete a ticket and every duplicate link to it; it is gone from every search at once."""
        with self.locks.links(collection):
            linked = self._linked_to(ticket_id, collection)
            with self.locks.tickets(collection, [ticket_id, *linked]):
                with weaviate_errors(collection):
                    result = self._tenant(collection).data.delete_many(where=Filter.by_id().equal(ticket_id))
                if not result.successful:
                    raise TicketNotFound(f"ticket {ticket_id} not found in collection '{collection}'")
                # After the delete: should this fail, a link to a missing ticket is skipped when it is relinked or
                # unlinked (duplicates.py), whereas links removed from a ticket that was not deleted would be lost.
                gone = str(ticket_id)
                for other_id, links in linked.items():
                    changes: dict[str, Any] = {
                        name: [i for i in links.get(name) or [] if i != gone]
                        for name in ("duplicates", "not_duplicates")
                        if gone in (links.get(name) or [])
                    }
                    if links.get("duplicate_of") == gone:
                        changes["duplicate_of"] = ""
                    try:
                        self.set_links(ticket_id=other_id, collection=collection, links=changes)
                    except TicketNotFound:
                        continue  # deleted meanwhile (by another replica): no link left to remove

    def _linked_to(self, ticket_id: uuid.UUID, collection: str) -> dict[uuid.UUID, dict[str, Any]]:
        """The links of every ticket that names this one as its original, a duplicate or a rejected duplicate."""
        target = str(ticket_id)
        where = Filter.any_of(
            [
                Filter.by_property("duplicate_of").equal(target),
                Filter.by_property("duplicates").contains_any([target]),
                Filter.by_property("not_duplicates").contains_any([target]),
            ]
        )
        with weaviate_errors(collection):
            found = self._tenant(collection).query.fetch_objects(
                filters=where, limit=RESULT_LIMIT, return_properties=list(LINK_FIELDS)
            )
        return {o.uuid: o.properties for o in found.objects if o.uuid != ticket_id}

    def list_tickets(self, *, collection: str, filters: SearchFilters, offset: int, limit: int) -> Page:
        """A page of tickets, newest first, and how many match in all."""
        with weaviate_errors(collection):
            result = self._tenant(collection).query.fetch_objects(
                filters=weaviate_filter(filters),
                offset=offset,
                limit=limit,
                sort=Sort.by_property("created_at", ascending=False),
                return_properties=_PUBLIC_PROPERTIES,
            )
        tickets = [_public(o.uuid, collection, o.properties) for o in result.objects]
        return Page(tickets=tickets, count=self.count(collection=collection, filters=filters))

    # --- search ------------------------------------------------------------------------------------

    def search(
        self,
        *,
        query: str,
        collection: str,
        mode: SearchMode,
        limit: int,
        filters: SearchFilters | None = None,
        alpha: float = setting_default("rag_alpha"),
        query_vector: list[float] | None = None,
    ) -> list[SearchHit]:
        """Ranked tickets for a query. Every hit carries its cosine similarity to the query."""
        if query_vector is None:
            query_vector = self.embeddings.embed_query(query)
        return self.search_by_vector(
            query_vector=query_vector,
            query=query,
            collection=collection,
            mode=mode,
            limit=limit,
            filters=filters,
            alpha=alpha,
        )

    def search_by_vector(
        self,
        *,
        query_vector: list[float],
        collection: str,
        limit: int,
        mode: SearchMode = "vector",
        query: str = "",
        filters: SearchFilters | None = None,
        alpha: float = setting_default("rag_alpha"),
        exclude: uuid.UUID | None = None,
    ) -> list[SearchHit]:
        """The search itself, for callers that already hold the query vector."""
        where = weaviate_filter(filters, exclude=exclude)
        tenant = self._tenant(collection)
        terms = self.analyzer.terms(query) if mode != "vector" else ""
        with weaviate_errors(collection):
            if mode == "vector":
                result = tenant.query.near_vector(
                    near_vector=query_vector,
                    limit=limit,
                    filters=where,
                    return_metadata=MetadataQuery(distance=True),
                    return_properties=_PUBLIC_PROPERTIES,
                )
            elif mode == "keyword":
                if not terms:  # only stopwords or punctuation: no keyword can match
                    return []
                result = tenant.query.bm25(
                    query=terms,
                    query_properties=self.keyword_properties,
                    limit=limit,
                    filters=where,
                    include_vector=True,
                    return_metadata=MetadataQuery(score=True),
                    return_properties=_PUBLIC_PROPERTIES,
                )
            else:
                result = tenant.query.hybrid(
                    query=terms,
                    vector=query_vector,
                    alpha=alpha,
                    fusion_type=HybridFusion.RELATIVE_SCORE,
                    query_properties=self.keyword_properties,
                    limit=limit,
                    filters=where,
                    include_vector=True,
                    return_metadata=MetadataQuery(score=True, explain_score=True),
                    return_properties=_PUBLIC_PROPERTIES,
                )
        qv = np.asarray(query_vector, dtype=np.float32)
        hits = []
        for obj in result.objects:
            ticket = _public(obj.uuid, collection, obj.properties)
            if mode == "vector":
                similarity = 1.0 - float(obj.metadata.distance or 0.0)
                score = similarity
            else:
                similarity = float(np.dot(qv, np.asarray(obj.vector["default"], dtype=np.float32)))
                score = float(obj.metadata.score or 0.0)
            explain = (obj.metadata.explain_score or "").strip() or None if mode == "hybrid" else None
            keyword = score if mode == "keyword" else _hybrid_keyword_score(explain)
            hits.append(
                SearchHit(
                    ticket=ticket,
                    score=round(score, 6),
                    similarity=round(similarity, 6),
                    keyword_score=round(keyword, 6) if keyword is not None else None,
                    explain=explain,
                )
            )
        return hits

    # --- helpers ------------------------------------------------------------------------------------


def build_ticket_store(*, settings: Settings, client: weaviate.WeaviateClient, embeddings: Embeddings) -> TicketStore:
    """The ticket store as the settings configure it."""
    return TicketStore(
        client=client,
        embeddings=embeddings,
        class_name=settings.weaviate_class,
        replication_factor=settings.weaviate_replication_factor,
        consistency=settings.weaviate_consistency,
        analyzer=KeywordAnalyzer(settings.keyword_stemmer),
        title_boost=settings.keyword_title_boost,
        compression=settings.vector_compression,
        rescore_limit=settings.vector_rescore_limit,
    )


def add_missing_term_properties(client: weaviate.WeaviateClient, class_name: str) -> bool:
    """Give a collection created by an older version the properties added since; True if keyword terms were added."""
    collection = client.collections.use(class_name)
    have = {p.name for p in collection.config.get().properties}
    missing = [p for p in _term_properties() if p.name not in have]
    # The type and the duplicate links need no reindex: tickets stored before simply have none.
    for prop in [*missing, *(p for p in _added_properties() if p.name not in have)]:
        collection.config.add_property(prop)
    return bool(missing)


def reindex_keywords(
    client: weaviate.WeaviateClient,
    *,
    class_name: str,
    analyzer: KeywordAnalyzer,
    collection: str,
    batch_size: int = 500,
) -> int:
    """Recompute the keyword terms of every ticket in a collection, keeping its vector; returns how many.

    For tickets stored before keyword terms existed (call add_missing_term_properties first), or
    after KEYWORD_STEMMER changed. Each batch rewrites whole tickets, so run it while nothing else
    writes to the collection.
    """
    tenant = client.collections.use(class_name).with_tenant(collection)
    done, batch = 0, []
    with weaviate_errors(collection):
        for obj in tenant.iterator(include_vector=True, return_properties=[*_PUBLIC_PROPERTIES, FINGERPRINT]):
            props = {k: v for k, v in obj.properties.items() if v is not None}
            title, description = str(props.get("title", "")), str(props.get("description", ""))
            props.update(analyzer.properties(title=title, description=description))
            vector = cast(list[float], obj.vector["default"])
            batch.append(weaviate.classes.data.DataObject(properties=props, uuid=obj.uuid, vector=vector))
            if len(batch) >= batch_size:
                done += _replace(tenant, batch)
                batch = []
        if batch:
            done += _replace(tenant, batch)
    return done


def _replace(tenant: Collection[Any, Any], objects: list[Any]) -> int:
    """Insert (or replace, by id) the objects in one gRPC batch; all must succeed."""
    outcome = tenant.data.insert_many(objects)
    if outcome.has_errors:
        first = next(iter(outcome.errors.values()))
        raise StoreUnavailable(f"Weaviate refused {len(outcome.errors)} of {len(objects)} tickets: {first.message}")
    return len(objects)


def _exact(name: str, data_type: DataType = DataType.TEXT) -> Property:
    """A property matched whole (filters, exact values), never searched by words."""
    return Property(name=name, data_type=data_type, tokenization=Tokenization.FIELD, index_searchable=False)


def _added_properties() -> list[Property]:
    """Properties added after the first release: the ticket type, the duplicate links, the request fingerprint."""
    return [
        _exact("type"),
        _exact("duplicate_of"),
        _exact("duplicates", DataType.TEXT_ARRAY),
        _exact("not_duplicates", DataType.TEXT_ARRAY),
        Property(name=FINGERPRINT, data_type=DataType.TEXT, index_filterable=False, index_searchable=False),
    ]


def _term_properties() -> list[Property]:
    """The stemmed words of title and description, for BM25 only (keywords.py)."""
    return [
        Property(
            name=name,
            data_type=DataType.TEXT,
            tokenization=Tokenization.WORD,
            index_filterable=False,
            skip_vectorization=True,
        )
        for name in _TERM_PROPERTIES
    ]


def warn_if_replication_differs(client: weaviate.WeaviateClient, class_name: str, factor: int) -> None:
    """Log once at start-up when an existing collection keeps another replication factor than
    WEAVIATE_REPLICATION_FACTOR.

    Weaviate fixes the factor when a collection is created; ticket-rag does not change it on a live
    collection (that moves every shard), so the operator must (docs/scaling.md).
    """
    actual = client.collections.use(class_name).config.get().replication_config.factor
    if actual != factor:
        logger.warning(
            "Weaviate collection %s keeps replication factor %d; WEAVIATE_REPLICATION_FACTOR=%d applies only to "
            "collections created from now on (docs/scaling.md)",
            class_name,
            actual,
            factor,
        )


@contextmanager
def weaviate_errors(collection: str | None = None, *, ticket_id: uuid.UUID | None = None) -> Iterator[None]:
    """Turn Weaviate's exceptions (and langchain-weaviate's ValueError wrapping) into domain errors.

    With `ticket_id`, a 404 from Weaviate (an update of a ticket deleted meanwhile, say) is TicketNotFound.
    """
    try:
        yield
    except (WeaviateConnectionError, WeaviateTimeoutError, WeaviateClosedClientError) as exc:
        WEAVIATE_ERRORS.labels(type(exc).__name__).inc()
        raise StoreUnavailable("the vector database is unavailable; try again shortly") from exc
    except (WeaviateQueryError, UnexpectedStatusCodeError) as exc:
        WEAVIATE_ERRORS.labels(type(exc).__name__).inc()
        if collection is not None and _is_missing_tenant(exc):
            raise CollectionNotFound(f"collection '{collection}' does not exist") from exc
        status = getattr(exc, "status_code", None)
        if status == 404 and ticket_id is not None and collection is not None:
            raise TicketNotFound(f"ticket {ticket_id} not found in collection '{collection}'") from exc
        if status is not None and 400 <= status < 500 and status != 429:
            logger.warning("Weaviate rejected a request: %s", exc)
            raise InvalidRequest("the request could not be executed against the vector database") from exc
        raise StoreUnavailable("the vector database failed to answer; try again shortly") from exc
    except (WeaviateBaseError, ValueError) as exc:
        if isinstance(exc, ValueError) and not str(exc).startswith("Error during query"):
            raise
        if collection is not None and _is_missing_tenant(exc):
            raise CollectionNotFound(f"collection '{collection}' does not exist") from exc
        raise StoreUnavailable("the vector database failed to answer; try again shortly") from exc


def weaviate_filter(filters: SearchFilters | None, *, exclude: uuid.UUID | Sequence[uuid.UUID] | None = None) -> Any:
    """SearchFilters as one Weaviate filter (None when there is nothing to filter on)."""
    parts = []
    if filters is not None:
        if filters.priority:
            parts.append(Filter.by_property("priority").contains_any([p.value for p in filters.priority]))
        if filters.status:
            parts.append(Filter.by_property("status").contains_any([s.value for s in filters.status]))
        if filters.category:
            parts.append(Filter.by_property("category").contains_any(list(filters.category)))
        if filters.tags:
            parts.append(Filter.by_property("tags").contains_any(list(filters.tags)))
        if filters.created_after:
            parts.append(Filter.by_property("created_at").greater_or_equal(_aware(filters.created_after)))
        if filters.created_before:
            parts.append(Filter.by_property("created_at").less_than(_aware(filters.created_before)))
    for ticket_id in [exclude] if isinstance(exclude, uuid.UUID) else exclude or []:
        parts.append(Filter.by_id().not_equal(ticket_id))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Filter.all_of(parts)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _properties(fields: dict[str, Any]) -> dict[str, Any]:
    """Ticket fields as Weaviate properties (enums as their values)."""
    props = {}
    for key, value in fields.items():
        if key not in _TEXT_FIELDS:
            continue
        props[key] = value.value if hasattr(value, "value") else value
    return props


def _public(ticket_id: uuid.UUID, collection: str, props: dict[str, Any]) -> TicketPublic:
    return TicketPublic(
        id=ticket_id,
        collection=collection,
        title=props["title"],
        description=props["description"],
        priority=props.get("priority") or "medium",
        status=props.get("status") or "open",
        category=props.get("category"),
        type=props.get("type"),
        tags=props.get("tags") or [],
        resolution=props.get("resolution"),
        external_id=props.get("external_id"),
        created_at=props["created_at"],
        updated_at=props["updated_at"],
        duplicate_of=props.get("duplicate_of") or None,
        duplicates=props.get("duplicates") or [],
        not_duplicates=props.get("not_duplicates") or [],
    )
