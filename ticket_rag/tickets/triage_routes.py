"""Routes for triage suggestions and duplicate review; the logic is in triage.py and duplicates.py."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError

from ticket_rag.api.deps import Reader, SettingsDep, StoreDep, TriageDep, Writer
from ticket_rag.api.http_errors import error_responses, reject_above_cap
from ticket_rag.tickets import duplicates
from ticket_rag.tickets.router import BODY_ERRORS, WRITE_ERRORS, CollectionQuery
from ticket_rag.tickets.schemas import DuplicateHit, DuplicateLink, TicketPublic, Triage, TriageRequest

router = APIRouter(prefix="/tickets", tags=["tickets"], responses=error_responses(401, 404, 429, 503))


@router.post("/triage", response_model=Triage, responses=BODY_ERRORS)
def triage_ticket(body: TriageRequest, settings: SettingsDep, triage: TriageDep, who: Reader) -> Triage:
    """Suggest queue (category), priority, type and tags for a ticket from the collection's labelled
    tickets; stores nothing.
    """
    collection = who.collection(body.collection, settings.default_collection)
    # The first request over a collection does not wait for its model: the vote of the nearest labelled tickets answers
    # at once while the model is fitted in the background (minutes for 10,000 tickets on two cores). Only with
    # TRIAGE_REFRESH_SECONDS=0 (refit on every call, for tests) is the fit done in line.
    return triage.suggest(
        title=body.title,
        description=body.description,
        collection=collection,
        min_confidence=body.min_confidence,
        wait=False,
    )


@router.get("/{ticket_id}/duplicates", response_model=list[DuplicateHit])
def possible_duplicates(
    ticket_id: uuid.UUID,
    store: StoreDep,
    settings: SettingsDep,
    triage: TriageDep,
    who: Reader,
    collection: CollectionQuery = None,
    limit: Annotated[int, Query(ge=1)] = 10,
) -> list[DuplicateHit]:
    """Tickets that may duplicate this one (similarity >= DUPLICATE_THRESHOLD, rejected ones left out),
    each with why.
    """
    reject_above_cap("query", "limit", limit, settings.search_max_limit)
    name = who.collection(collection, settings.default_collection)
    ticket = store.get(ticket_id=ticket_id, collection=name)
    vector = store.get_vector(ticket_id=ticket_id, collection=name)
    hits = store.search_by_vector(query_vector=vector, collection=name, limit=limit, exclude=ticket_id)
    return duplicates.explain(
        hits,
        title=ticket.title,
        description=ticket.description,
        analyzer=triage.analyzer,
        vocabulary=triage.vocabulary(name),
        threshold=settings.duplicate_threshold,
        exclude=ticket.not_duplicates,
    )


def _other(ticket_id: uuid.UUID, body: DuplicateLink) -> uuid.UUID:
    if body.ticket_id == ticket_id:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "ticket_id"),
                    "msg": "must be another ticket than the one in the path",
                    "input": str(body.ticket_id),
                }
            ]
        )
    return body.ticket_id


@router.post("/{ticket_id}/duplicate-of", response_model=TicketPublic, responses=WRITE_ERRORS)
def confirm_duplicate(
    ticket_id: uuid.UUID,
    body: DuplicateLink,
    store: StoreDep,
    settings: SettingsDep,
    who: Writer,
    collection: CollectionQuery = None,
) -> TicketPublic:
    """Confirm that this ticket duplicates body.ticket_id: the two are linked (duplicate_of here, duplicates there)."""
    name = who.collection(collection, settings.default_collection)
    return duplicates.confirm(store, ticket_id=ticket_id, original_id=_other(ticket_id, body), collection=name)


@router.post("/{ticket_id}/not-duplicate-of", response_model=TicketPublic, responses=WRITE_ERRORS)
def reject_duplicate(
    ticket_id: uuid.UUID,
    body: DuplicateLink,
    store: StoreDep,
    settings: SettingsDep,
    who: Writer,
    collection: CollectionQuery = None,
) -> TicketPublic:
    """Reject a suggested duplicate: recorded on both tickets (a confirmed link between them is
    undone), not suggested again.
    """
    name = who.collection(collection, settings.default_collection)
    return duplicates.reject(store, ticket_id=ticket_id, other_id=_other(ticket_id, body), collection=name)
