"""Possible duplicates: which similar tickets to flag, why each matched, and agents' confirmations and rejections.

A ticket is flagged when its cosine similarity to the new one reaches DUPLICATE_THRESHOLD (chosen
on labelled duplicates by `ticket-rag eval-duplicates`, docs/triage.md). Each flag says why: the
similarity and the rarest stemmed words the two tickets share. An agent confirms a flag
(`duplicate_of` on the duplicate, listed in `duplicates` on the original) or rejects it
(`not_duplicates` on both, and the pair is not suggested again). A confirmation that would make a cycle
(A duplicates B, which duplicates A, directly or through others) is refused; deleting a ticket removes every
link to it (TicketStore.delete).
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ticket_rag.errors import InvalidRequest, TicketNotFound
from ticket_rag.tickets.classifier import Vocabulary
from ticket_rag.tickets.keywords import KeywordAnalyzer
from ticket_rag.tickets.schemas import DuplicateHit, SearchHit, TicketPublic
from ticket_rag.tickets.store import TicketStore

# The weight of the keyword signal in `cosine+keyword` (eval-duplicates); not used by the service's flag.
KEYWORD_WEIGHT = 0.5
SHARED_TERMS = 5  # rare shared words shown per flag
LOC = ("body", "ticket_id")  # where a refused confirmation or rejection points: the other ticket
MAX_CHAIN = 1000  # originals followed when looking for a cycle; links written before cycles were refused may loop


def _weights(terms: str, vocabulary: Vocabulary) -> dict[str, float]:
    counts = Counter(terms.split())
    return {t: (1.0 + math.log(c)) * vocabulary.idf_of(t) for t, c in counts.items()}


def keyword_similarity(terms_a: str, terms_b: str, vocabulary: Vocabulary) -> float:
    """Cosine of the two texts' sublinear TF-IDF vectors over their stemmed terms."""
    a, b = _weights(terms_a, vocabulary), _weights(terms_b, vocabulary)
    dot = sum(w * b[t] for t, w in a.items() if t in b)
    norm = math.sqrt(sum(w * w for w in a.values())) * math.sqrt(sum(w * w for w in b.values()))
    return dot / norm if norm else 0.0


def combined_score(cosine: np.ndarray, keyword: np.ndarray) -> np.ndarray:
    return cosine + KEYWORD_WEIGHT * keyword


def shared_rare_terms(
    terms_a: str, terms_b: str, vocabulary: Vocabulary | None, limit: int = SHARED_TERMS
) -> list[str]:
    """The stemmed words both texts use, rarest in the collection first (longest first without statistics)."""
    shared = set(terms_a.split()) & set(terms_b.split())
    if vocabulary is None:
        return sorted(shared, key=lambda t: (-len(t), t))[:limit]
    return sorted(shared, key=lambda t: (-vocabulary.idf_of(t), t))[:limit]


def explain(
    hits: Sequence[SearchHit],
    *,
    title: str,
    description: str,
    analyzer: KeywordAnalyzer,
    vocabulary: Vocabulary | None,
    threshold: float,
    exclude: Sequence[uuid.UUID] = (),
) -> list[DuplicateHit]:
    """The hits at or above the threshold (less those rejected), each with the reason it matched."""
    terms = f"{analyzer.terms(title)} {analyzer.terms(description)}"
    out = []
    for hit in hits:
        if hit.similarity < threshold or hit.ticket.id in exclude:
            continue
        other = f"{analyzer.terms(hit.ticket.title)} {analyzer.terms(hit.ticket.description)}"
        shared = shared_rare_terms(terms, other, vocabulary)
        why = f"cosine similarity {hit.similarity:.3f} >= {threshold:g}" + (
            f"; shares {', '.join(shared)}" if shared else ""
        )
        out.append(DuplicateHit(**hit.model_dump(), shared_terms=shared, why=why))
    return out


def confirm(store: TicketStore, *, ticket_id: uuid.UUID, original_id: uuid.UUID, collection: str) -> TicketPublic:
    """Record that ticket_id duplicates original_id: duplicate_of on the one, listed in duplicates on the other.

    Refused when the original is already, through its own originals, a duplicate of this ticket (a cycle). The
    collection's links lock makes the check and the writes one step: concurrent confirms onto one original all stay
    listed, and two confirms that would close a cycle together cannot both pass (locks.py; one process only).
    """
    if ticket_id == original_id:
        raise InvalidRequest("a ticket cannot be a duplicate of itself", loc=LOC)
    with store.locks.links(collection):
        ticket = store.get(ticket_id=ticket_id, collection=collection)
        original = store.get(ticket_id=original_id, collection=collection)
        chain = _originals(store, collection, original)
        if ticket_id in chain:
            cycle = " -> ".join(str(i) for i in [ticket_id, *chain[: chain.index(ticket_id) + 1]])
            raise InvalidRequest(
                f"ticket {original_id} is already a duplicate of ticket {ticket_id}; confirming would make a cycle "
                f"of duplicates: {cycle}",
                loc=LOC,
            )
        previous = ticket.duplicate_of if ticket.duplicate_of not in (None, original_id) else None
        with store.locks.tickets(collection, [ticket_id, original_id, *([previous] if previous else [])]):
            # An old original deleted meanwhile has no list to leave.
            old = store.get_many(ids=[previous], collection=collection).get(previous) if previous else None
            if old is not None:
                _set(store, collection, old.id, duplicates=_ids(i for i in old.duplicates if i != ticket_id))
            _set(
                store,
                collection,
                original_id,
                duplicates=_ids([*original.duplicates, ticket_id]),
                not_duplicates=_ids(i for i in original.not_duplicates if i != ticket_id),
            )
            _set(
                store,
                collection,
                ticket_id,
                duplicate_of=str(original_id),
                not_duplicates=_ids(i for i in ticket.not_duplicates if i != original_id),
            )
            return store.get(ticket_id=ticket_id, collection=collection)


def reject(store: TicketStore, *, ticket_id: uuid.UUID, other_id: uuid.UUID, collection: str) -> TicketPublic:
    """Record that the two tickets are not duplicates (undoing a confirmation between them); neither is
    suggested again.

    A link to a ticket that no longer exists is removed instead; TicketNotFound when there is no such ticket and
    no link to it.
    """
    if ticket_id == other_id:
        raise InvalidRequest("a ticket cannot be a duplicate of itself", loc=LOC)
    with store.locks.links(collection):
        ticket = store.get(ticket_id=ticket_id, collection=collection)
        other = store.get_many(ids=[other_id], collection=collection).get(other_id)
        with store.locks.tickets(collection, [ticket_id, other_id]):
            if other is None:
                if other_id not in (ticket.duplicate_of, *ticket.duplicates, *ticket.not_duplicates):
                    raise TicketNotFound(f"ticket {other_id} not found in collection '{collection}'")
                _set(store, collection, ticket_id, **_unlinked(ticket, other_id))
                return store.get(ticket_id=ticket_id, collection=collection)
            for this, that in ((ticket, other), (other, ticket)):
                changes = _unlinked(this, that.id)
                changes["not_duplicates"] = _ids([*this.not_duplicates, that.id])
                _set(store, collection, this.id, **changes)
            return store.get(ticket_id=ticket_id, collection=collection)


def _originals(store: TicketStore, collection: str, ticket: TicketPublic) -> list[uuid.UUID]:
    """The ticket and its original, that one's original and so on, as far as they exist."""
    chain = [ticket.id]
    while ticket.duplicate_of is not None and ticket.duplicate_of not in chain and len(chain) < MAX_CHAIN:
        found = store.get_many(ids=[ticket.duplicate_of], collection=collection).get(ticket.duplicate_of)
        if found is None:
            break
        ticket = found
        chain.append(ticket.id)
    return chain


def _unlinked(ticket: TicketPublic, other_id: uuid.UUID) -> dict[str, Any]:
    """The link changes that remove a confirmation between the ticket and other_id (either way)."""
    changes: dict[str, Any] = {}
    if ticket.duplicate_of == other_id:
        changes["duplicate_of"] = ""
    if other_id in ticket.duplicates:
        changes["duplicates"] = _ids(i for i in ticket.duplicates if i != other_id)
    if other_id in ticket.not_duplicates:
        changes["not_duplicates"] = _ids(i for i in ticket.not_duplicates if i != other_id)
    return changes


def _ids(ids: Any) -> list[str]:
    return [str(i) for i in dict.fromkeys(ids)]


def _set(store: TicketStore, collection: str, ticket_id: uuid.UUID, **links: Any) -> None:
    if links:
        store.set_links(ticket_id=ticket_id, collection=collection, links=links)
