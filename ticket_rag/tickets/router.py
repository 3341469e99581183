"""REST routes for tickets, collections and search. Plain `def` routes: the store's work runs in the thread pool."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from chains.schemas import RagOutput
from ticket_rag.api.deps import Admin, RagChainDep, Reader, SettingsDep, StoreDep, TriageDep, Writer
from ticket_rag.api.http_errors import error_responses, reject_above_cap
from ticket_rag.errors import CollectionNotFound, Forbidden, InvalidRequest
from ticket_rag.tickets.duplicates import explain as explain_duplicates
from ticket_rag.tickets.schemas import (
    COLLECTION_PATTERN,
    BulkItem,
    BulkRequest,
    BulkResult,
    CollectionCreate,
    CollectionPublic,
    CollectionsPublic,
    DateTime,
    Priority,
    SearchFilters,
    SearchRequest,
    SearchResults,
    ShortText,
    Status,
    Tag,
    TicketCreate,
    TicketCreated,
    TicketPublic,
    TicketsPublic,
    TicketUpdate,
)
from ticket_rag.tickets.store import TicketStore, embedded_text, idempotent_uuid

CollectionQuery = Annotated[
    str | None, Query(pattern=COLLECTION_PATTERN, description="Defaults to the default collection.")
]

# Every route needs a key and Weaviate; each ticket route works in a collection that may not exist.
tickets = APIRouter(prefix="/tickets", tags=["tickets"], responses=error_responses(401, 404, 429, 503))
collections = APIRouter(prefix="/collections", tags=["collections"], responses=error_responses(401, 429, 503))
# 400: FastAPI's answer to a body it cannot decode (bytes that are not UTF-8).
BODY_ERRORS = error_responses(400, 413)
WRITE_ERRORS = error_responses(400, 403, 413)


# Weaviate answers no query past its QUERY_MAXIMUM_RESULTS (10,000 by default): offset + limit stays within it.
RESULT_WINDOW = 10_000


def _filters(
    priority: Annotated[list[Priority] | None, Query()] = None,
    status_: Annotated[list[Status] | None, Query(alias="status")] = None,
    # The same types and list caps as SearchFilters, so a bad value is a 422 here, not an error building it.
    category: Annotated[list[ShortText] | None, Query(max_length=50)] = None,
    tags: Annotated[list[Tag] | None, Query(max_length=50)] = None,
    # the store's date range (schemas.DateTime): a date outside it is a 422 naming the parameter
    created_after: DateTime | None = None,
    created_before: DateTime | None = None,
) -> SearchFilters:
    return SearchFilters(
        priority=priority,
        status=status_,
        category=category,
        tags=tags,
        created_after=created_after,
        created_before=created_before,
    )


FiltersDep = Annotated[SearchFilters, Depends(_filters)]


# --- collections ------------------------------------------------------------------------------------


@collections.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CollectionPublic,
    responses=error_responses(400, 403, 409, 413),
)
def create_collection(body: CollectionCreate, store: StoreDep, who: Admin) -> CollectionPublic:
    """Create a collection: an isolated set of tickets (one help desk, product or customer)."""
    if not who.can_see(body.name):
        raise Forbidden(f"this API key may not create collection '{body.name}'")
    store.create_collection(name=body.name)
    return CollectionPublic(name=body.name, ticket_count=0)


@collections.get("", response_model=CollectionsPublic)
def list_collections(store: StoreDep, who: Reader) -> CollectionsPublic:
    """Every collection this key may see, by name."""
    names = [name for name in store.list_collections() if who.can_see(name)]
    return CollectionsPublic(data=[CollectionPublic(name=name) for name in names])


@collections.get("/{name}", response_model=CollectionPublic, responses=error_responses(404))
def get_collection(
    name: Annotated[str, Path(pattern=COLLECTION_PATTERN)], store: StoreDep, who: Reader, settings: SettingsDep
) -> CollectionPublic:
    """One collection with its ticket count."""
    name = who.collection(name, settings.default_collection)
    return CollectionPublic(name=name, ticket_count=store.count(collection=name))


@collections.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(403, 404))
def delete_collection(
    name: Annotated[str, Path(pattern=COLLECTION_PATTERN)], store: StoreDep, who: Admin, settings: SettingsDep
) -> Response:
    """Delete a collection and all of its tickets."""
    store.delete_collection(name=who.collection(name, settings.default_collection))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- tickets ------------------------------------------------------------------------------------


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="A unique key per create (a UUID, say): a retry with the same key and body returns the first "
        "result instead of storing the ticket again; the same key with another body is a 422. Tickets with an "
        "external_id are idempotent by it already.",
    ),
]
REPLAYED = "Idempotent-Replayed"


def _fingerprint(tickets: Sequence[TicketCreate], collections: Sequence[str]) -> str:
    """A digest of a whole validated request (each ticket with the collection it goes to), defaults filled in."""
    parts = [{**t.model_dump(mode="json"), "collection": name} for t, name in zip(tickets, collections, strict=True)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _first_attempt(
    store: TicketStore,
    *,
    collection: str,
    caller: str | None,
    key: str,
    tickets: dict[int, TicketCreate],
    fingerprint: str,
) -> tuple[dict[int, uuid.UUID], dict[uuid.UUID, TicketPublic]]:
    """Each ticket's id under an Idempotency-Key (by its index in the request), and those an earlier attempt stored.

    A key reused for another request (any field of any ticket different) is refused: answering with the first
    attempt's tickets would be wrong.
    """
    ids = {n: idempotent_uuid(collection, caller, key, n) for n, t in tickets.items() if t.external_id is None}
    stored = store.first_attempts(ids=list(ids.values()), collection=collection)
    for n, ticket_id in ids.items():
        before = stored.get(ticket_id)
        if before is None:
            continue
        # Tickets stored before fingerprints were kept can only be compared by their text.
        same = (
            before.fingerprint == fingerprint
            if before.fingerprint is not None
            else (before.ticket.title, before.ticket.description) == (tickets[n].title, tickets[n].description)
        )
        if not same:
            raise InvalidRequest(
                "this Idempotency-Key was used for a different request; send a new key",
                loc=("header", "Idempotency-Key"),
            )
    return ids, {ticket_id: first.ticket for ticket_id, first in stored.items()}


def _reject_repeated_external_ids(tickets: Sequence[TicketCreate], collections: Sequence[str]) -> None:
    """One request may not carry the same external_id twice for one collection: both would write one ticket."""
    seen: dict[tuple[str, str], int] = {}
    for index, (ticket, name) in enumerate(zip(tickets, collections, strict=True)):
        if ticket.external_id is None:
            continue
        first = seen.setdefault((name, ticket.external_id), index)
        if first != index:
            raise InvalidRequest(
                f"external_id '{ticket.external_id}' is already used by tickets[{first}] for collection '{name}'",
                loc=("body", "tickets", index, "external_id"),
            )


@tickets.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    response_model=TicketCreated,
    responses={200: {"description": "An existing ticket with the same external_id was updated."}, **WRITE_ERRORS},
)
def create_ticket(
    body: TicketCreate,
    store: StoreDep,
    settings: SettingsDep,
    response: Response,
    who: Writer,
    triage: TriageDep,
    idempotency_key: IdempotencyKey = None,
) -> TicketCreated:
    """Store a ticket with its embedding; return it with similar tickets, possible duplicates and triage suggestions."""
    collection = who.collection(body.collection, settings.default_collection)
    fingerprint = _fingerprint([body], [collection]) if idempotency_key else None
    ids, before = (
        _first_attempt(
            store,
            collection=collection,
            caller=who.key_id,
            key=idempotency_key,
            tickets={0: body},
            fingerprint=fingerprint,
        )
        if idempotency_key and fingerprint
        else ({}, {})
    )
    vector = store.embed([embedded_text(body.title, body.description)])[0]
    similar = (
        store.search_by_vector(query_vector=vector, collection=collection, limit=settings.similar_on_create + 1)
        if settings.similar_on_create
        else []
    )
    # Suggestions only: the stored ticket keeps what the client sent.
    suggestions = triage.suggest(
        title=body.title, description=body.description, collection=collection, vector=vector, wait=False
    )
    if 0 in ids and ids[0] in before:  # a retry of a create that was stored: its first result, nothing written
        ticket, created = before[ids[0]], True
        response.headers[REPLAYED] = "true"
    else:
        stored = store.upsert_many(
            tickets=[body],
            collection=collection,
            vectors=[vector],
            ids=[ids[0]] if ids else None,
            fingerprint=fingerprint,
        )[0]
        ticket, created = stored.ticket, stored.created
    similar = [hit for hit in similar if hit.ticket.id != ticket.id][: settings.similar_on_create]
    if not created:
        response.status_code = status.HTTP_200_OK
    return TicketCreated(
        **ticket.model_dump(),
        created=created,
        similar=similar,
        possible_duplicates=explain_duplicates(
            similar,
            title=body.title,
            description=body.description,
            analyzer=triage.analyzer,
            vocabulary=triage.vocabulary(collection),
            threshold=settings.duplicate_threshold,
            exclude=ticket.not_duplicates,
        ),
        triage=suggestions,
    )


@tickets.post("/bulk", response_model=BulkResult, responses=WRITE_ERRORS)
def bulk_create(
    body: BulkRequest,
    store: StoreDep,
    settings: SettingsDep,
    response: Response,
    who: Writer,
    idempotency_key: IdempotencyKey = None,
) -> BulkResult:
    """Store up to BULK_MAX_BATCH tickets in one embedding pass and one Weaviate batch; idempotent by external_id
    (or by the Idempotency-Key header for tickets without one)."""
    reject_above_cap("body", "tickets", len(body.tickets), settings.bulk_max_batch)
    # Every check comes before the first write, so a refused request has stored nothing: the collections (in the
    # key's scope), external ids, the collections (existing), the Idempotency-Key, then the one embedding pass.
    names = [who.collection(t.collection or body.collection, settings.default_collection) for t in body.tickets]
    _reject_repeated_external_ids(body.tickets, names)
    by_collection: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        by_collection.setdefault(name, []).append(index)
    for name in by_collection:
        if not store.collection_exists(name=name):
            raise CollectionNotFound(f"collection '{name}' does not exist")
    fingerprint = _fingerprint(body.tickets, names) if idempotency_key else None
    ids: dict[int, uuid.UUID] = {}
    before: dict[uuid.UUID, TicketPublic] = {}
    if idempotency_key and fingerprint:
        for name, indexes in by_collection.items():
            ids_here, before_here = _first_attempt(
                store,
                collection=name,
                caller=who.key_id,
                key=idempotency_key,
                tickets={i: body.tickets[i] for i in indexes},
                fingerprint=fingerprint,
            )
            ids.update(ids_here)
            before.update(before_here)
    todo = [i for i in range(len(body.tickets)) if ids.get(i) not in before]
    texts = [embedded_text(body.tickets[i].title, body.tickets[i].description) for i in todo]
    vectors = dict(zip(todo, store.embed(texts), strict=True)) if todo else {}
    items = [BulkItem(index=i, id=ids[i], created=True) for i in ids if ids[i] in before]
    replayed = bool(idempotency_key) and not todo
    # Weaviate has no transaction over several collections (tenants): a failure past this point (Weaviate down)
    # can leave the collections written before it; a retry with the same external ids or Idempotency-Key completes.
    for name, indexes in by_collection.items():
        write = [i for i in indexes if i in vectors]
        if not write:
            continue
        stored = store.upsert_many(
            tickets=[body.tickets[i] for i in write],
            collection=name,
            vectors=[vectors[i] for i in write],
            ids=[ids.get(i) or uuid.uuid4() for i in write],
            fingerprint=fingerprint,
        )
        items += [BulkItem(index=i, id=s.ticket.id, created=s.created) for i, s in zip(write, stored, strict=True)]
    if replayed:
        response.headers[REPLAYED] = "true"
    items.sort(key=lambda item: item.index)
    created = sum(1 for item in items if item.created)
    return BulkResult(created=created, updated=len(items) - created, items=items)


@tickets.get("/", response_model=TicketsPublic)
def list_tickets(
    store: StoreDep,
    settings: SettingsDep,
    filters: FiltersDep,
    who: Reader,
    collection: CollectionQuery = None,
    offset: Annotated[int, Query(ge=0, lt=RESULT_WINDOW)] = 0,
    limit: Annotated[int, Query(ge=1)] = 50,
) -> TicketsPublic:
    """A page of tickets, newest first, filtered by priority, status, category, tags and creation time."""
    reject_above_cap("query", "limit", limit, settings.page_max_size)
    reject_above_cap("query", "offset", offset, RESULT_WINDOW - limit)
    page = store.list_tickets(
        collection=who.collection(collection, settings.default_collection), filters=filters, offset=offset, limit=limit
    )
    return TicketsPublic(data=page.tickets, count=page.count, offset=offset, limit=limit)


@tickets.post("/search", response_model=SearchResults, responses=BODY_ERRORS)
def search_tickets(body: SearchRequest, store: StoreDep, settings: SettingsDep, who: Reader) -> SearchResults:
    """Rank tickets by a query: vector (cosine similarity), keyword (BM25) or hybrid (fused score)."""
    reject_above_cap("body", "limit", body.limit, settings.search_max_limit)
    collection = who.collection(body.collection, settings.default_collection)
    alpha = (body.alpha if body.alpha is not None else settings.hybrid_alpha) if body.mode == "hybrid" else None
    hits = store.search(
        query=body.query,
        collection=collection,
        mode=body.mode,
        limit=body.limit,
        filters=body.filters,
        alpha=alpha if alpha is not None else settings.hybrid_alpha,
    )
    return SearchResults(query=body.query, mode=body.mode, collection=collection, alpha=alpha, results=hits)


@tickets.get("/{ticket_id}", response_model=TicketPublic)
def get_ticket(
    ticket_id: uuid.UUID, store: StoreDep, settings: SettingsDep, who: Reader, collection: CollectionQuery = None
) -> Any:
    """One ticket."""
    return store.get(ticket_id=ticket_id, collection=who.collection(collection, settings.default_collection))


@tickets.get("/{ticket_id}/similar", response_model=SearchResults)
def similar_tickets(
    ticket_id: uuid.UUID,
    store: StoreDep,
    settings: SettingsDep,
    filters: FiltersDep,
    who: Reader,
    collection: CollectionQuery = None,
    limit: Annotated[int, Query(ge=1)] = 5,
) -> SearchResults:
    """Tickets most similar to this one (cosine similarity of their vectors), itself excluded."""
    reject_above_cap("query", "limit", limit, settings.search_max_limit)
    name = who.collection(collection, settings.default_collection)
    vector = store.get_vector(ticket_id=ticket_id, collection=name)
    hits = store.search_by_vector(query_vector=vector, collection=name, limit=limit, filters=filters, exclude=ticket_id)
    return SearchResults(query=str(ticket_id), mode="vector", collection=name, results=hits)


@tickets.patch("/{ticket_id}", response_model=TicketPublic, responses=WRITE_ERRORS)
def update_ticket(
    ticket_id: uuid.UUID,
    body: TicketUpdate,
    store: StoreDep,
    settings: SettingsDep,
    who: Writer,
    collection: CollectionQuery = None,
) -> TicketPublic:
    """Change some fields; the ticket is re-embedded only when its title or description changes."""
    name = who.collection(collection, settings.default_collection)
    return store.update(ticket_id=ticket_id, collection=name, changes=body)


@tickets.delete("/{ticket_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(403))
def delete_ticket(
    ticket_id: uuid.UUID, store: StoreDep, settings: SettingsDep, who: Writer, collection: CollectionQuery = None
) -> Response:
    """Delete a ticket: gone from every search, similar list and answer at once."""
    store.delete(ticket_id=ticket_id, collection=who.collection(collection, settings.default_collection))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@tickets.post("/{ticket_id}/suggest", response_model=RagOutput, responses=error_responses(504))
async def suggest_reply(
    ticket_id: uuid.UUID,
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    chain: RagChainDep,
    who: Reader,
    collection: CollectionQuery = None,
) -> Any:
    """Suggest a reply to this ticket from similar resolved or closed tickets, through the RAG chain."""
    name = who.collection(collection, settings.default_collection)
    ticket = await run_in_threadpool(store.get, ticket_id=ticket_id, collection=name)
    question = f"{ticket.title}\n\n{ticket.description}"[:2000]
    inputs = {
        "question": question,
        "collection": name,
        "filters": {"status": [Status.resolved.value, Status.closed.value]},
        "exclude_ticket": str(ticket_id),
    }
    metadata = {"request_id": getattr(request.state, "request_id", None), "route": "suggest"}
    return await chain.ainvoke(inputs, {"metadata": metadata, "run_name": "suggest_reply"})
