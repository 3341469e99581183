"""Possible duplicates: which similar tickets to flag, why each matched, and agents' confirmations and rejections.

A ticket is flagged when its cosine similarity to the new one reaches DUPLICATE_THRESHOLD (chosen
on labelled duplicates by `ticket-rag eval-duplicates`, docs/triage.md). Each flag says why: the
similarity and the rarest stemmed words the two tickets share. An agent confirms a flag
(`duplicate_of` on the duplicate, listed in `duplicates` on the original) or rejects it
(`not_duplicates` on both, and the pair is not suggested again).
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ticket_rag.errors import InvalidRequest
from ticket_rag.tickets.classifier import Vocabulary
from ticket_rag.tickets.keywords import KeywordAnalyzer
from ticket_rag.tickets.schemas import DuplicateHit, SearchHit, TicketPublic
from ticket_rag.tickets.store import TicketStore

# The weight of the keyword signal in `cosine+keyword` (eval-duplicates); not used by the service's flag.
KEYWORD_WEIGHT = 0.5
SHARED_TERMS = 5  # rare shared words shown per flag


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
    """Record that ticket_id duplicates original_id: duplicate_of on the one, listed in duplicates on the other."""
    if ticket_id == original_id:
        raise InvalidRequest("ticket_id: a ticket cannot be a duplicate of itself")
    ticket = store.get(ticket_id=ticket_id, collection=collection)
    original = store.get(ticket_id=original_id, collection=collection)
    if original.duplicate_of == ticket_id:
        raise InvalidRequest(f"ticket_id: ticket {original_id} is already recorded as a duplicate of {ticket_id}")
    if ticket.duplicate_of is not None and ticket.duplicate_of != original_id:
        _set(
            store,
            collection,
            ticket.duplicate_of,
            duplicates=_without(store, collection, ticket.duplicate_of, ticket_id),
        )
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
    """
    if ticket_id == other_id:
        raise InvalidRequest("ticket_id: a ticket cannot be a duplicate of itself")
    ticket = store.get(ticket_id=ticket_id, collection=collection)
    other = store.get(ticket_id=other_id, collection=collection)
    for this, that in ((ticket, other), (other, ticket)):
        changes: dict[str, Any] = {"not_duplicates": _ids([*this.not_duplicates, that.id])}
        if this.duplicate_of == that.id:
            changes["duplicate_of"] = ""
        if that.id in this.duplicates:
            changes["duplicates"] = _ids(i for i in this.duplicates if i != that.id)
        _set(store, collection, this.id, **changes)
    return store.get(ticket_id=ticket_id, collection=collection)


def _ids(ids: Any) -> list[str]:
    return [str(i) for i in dict.fromkeys(ids)]


def _without(store: TicketStore, collection: str, ticket_id: uuid.UUID, remove: uuid.UUID) -> list[str]:
    return _ids(i for i in store.get(ticket_id=ticket_id, collection=collection).duplicates if i != remove)


def _set(store: TicketStore, collection: str, ticket_id: uuid.UUID, **links: Any) -> None:
    store.set_links(ticket_id=ticket_id, collection=collection, links=links)
