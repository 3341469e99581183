"""Ticket, collection and search schemas: Create / Update / Public families."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


def clean_text(value: str) -> str:
    """Strip outer whitespace; refuse text that cannot be stored faithfully (NUL, lone surrogates)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value.strip()


def not_blank(value: str) -> str:
    if not value or all(unicodedata.category(c) in ("Zs", "Cf", "Cc") for c in value):
        raise ValueError("must not be empty or whitespace")
    return value


Title = Annotated[str, StringConstraints(max_length=300), AfterValidator(clean_text), AfterValidator(not_blank)]
LongText = Annotated[str, StringConstraints(max_length=20_000), AfterValidator(clean_text)]
Description = Annotated[LongText, AfterValidator(not_blank)]
ShortText = Annotated[str, StringConstraints(max_length=100), AfterValidator(clean_text)]
Tag = Annotated[
    str, StringConstraints(min_length=1, max_length=50), AfterValidator(clean_text), AfterValidator(not_blank)
]
ExternalId = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(clean_text), AfterValidator(not_blank)
]
CollectionName = Annotated[str, StringConstraints(pattern=COLLECTION_PATTERN)]

# What a user asks with: a search query, a RAG question, a retriever query.
QueryText = Annotated[str, StringConstraints(max_length=2000), AfterValidator(clean_text), AfterValidator(not_blank)]

# Weaviate keeps a date as int64 nanoseconds (1677-09-21 to 2262-04-11): past either end a date is stored, sorted
# and compared as some other date. Tickets are far inside 1900-2200, with room for any time zone at either end;
# a date outside is a typo or a placeholder ("9999-12-31" for "no limit"), refused with a 422 naming the field.
EARLIEST_DATE = datetime(1900, 1, 1, tzinfo=UTC)
LATEST_DATE = datetime(2200, 1, 1, tzinfo=UTC)  # exclusive


def in_date_range(value: datetime) -> datetime:
    """Refuse a date Weaviate cannot keep faithfully; the value itself is kept as given (naive or aware)."""
    aware = value if value.utcoffset() is not None else value.replace(tzinfo=UTC)  # naive is UTC, as stored
    if not EARLIEST_DATE <= aware < LATEST_DATE:
        raise ValueError("must be from 1900-01-01T00:00:00Z up to (not including) 2200-01-01T00:00:00Z")
    return value


# Every date the API accepts: ticket dates and the date filters of search, listing, RAG and the retriever.
DateTime = Annotated[datetime, AfterValidator(in_date_range)]


class Priority(str, Enum):
    low = "low"
    medium = "medium"
    high = "high"
    urgent = "urgent"


class Status(str, Enum):
    open = "open"
    in_progress = "in_progress"
    resolved = "resolved"
    closed = "closed"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TicketBase(_Strict):
    title: Title = Field(examples=["Cannot log in after password reset"])
    description: Description = Field(
        examples=["Since this morning the login page says 'invalid credentials' although I reset my password."]
    )
    priority: Priority = Priority.medium
    status: Status = Status.open
    category: ShortText | None = Field(None, examples=["Account"])
    type: ShortText | None = Field(
        None, description="The kind of ticket (Incident, Request, ...).", examples=["Incident"]
    )
    tags: list[Tag] = Field(default_factory=list, max_length=20, examples=[["login", "password"]])
    resolution: LongText | None = Field(None, examples=["Cleared the stale session cookie; login works again."])


class TicketCreate(TicketBase):
    external_id: ExternalId | None = Field(None, description="The ticket's id in the help desk it came from.")
    collection: CollectionName | None = Field(None, description="Defaults to the service's default collection.")
    created_at: DateTime | None = Field(None, description="When the ticket was opened; defaults to now.")


class TicketUpdate(_Strict):
    """Only the fields sent change. Category, type and resolution can be cleared with null; the others cannot."""

    # A default of None means "not sent"; an explicit null is still refused by the field's type (pydantic does not
    # validate defaults). mypy cannot see that idiom, hence the ignores.
    title: Title = Field(None)  # type: ignore[assignment]
    description: Description = Field(None)  # type: ignore[assignment]
    priority: Priority = Field(None)  # type: ignore[assignment]
    status: Status = Field(None)  # type: ignore[assignment]
    category: ShortText | None = None
    type: ShortText | None = None
    tags: list[Tag] = Field(None, max_length=20, description="[] removes every tag.")  # type: ignore[arg-type]
    resolution: LongText | None = None


class TicketPublic(TicketBase):
    id: uuid.UUID
    collection: str
    external_id: str | None = None
    created_at: datetime
    updated_at: datetime
    duplicate_of: uuid.UUID | None = Field(None, description="The ticket an agent confirmed this one duplicates.")
    duplicates: list[uuid.UUID] = Field(
        default_factory=list, description="Tickets confirmed as duplicates of this one."
    )
    not_duplicates: list[uuid.UUID] = Field(
        default_factory=list, description="Tickets an agent rejected as duplicates of this one (no longer suggested)."
    )


class SearchHit(BaseModel):
    ticket: TicketPublic
    score: float = Field(description="The ranking score of the mode: cosine similarity, BM25, or the fused score.")
    similarity: float = Field(description="Cosine similarity of the query (or ticket) and this ticket, in every mode.")
    keyword_score: float | None = Field(None, description="BM25 score of this ticket (keyword and hybrid modes).")
    explain: str | None = Field(None, description="Hybrid mode: how the vector and keyword parts contributed.")


class DuplicateHit(SearchHit):
    shared_terms: list[str] = Field(description="The rarest (stemmed) words both tickets use.")
    why: str = Field(
        description="Why it was flagged: the similarity against DUPLICATE_THRESHOLD and the shared rare words."
    )


class TicketCreated(TicketPublic):
    created: bool = Field(description="False when an existing ticket with the same external_id was updated.")
    similar: list[SearchHit]
    possible_duplicates: list[DuplicateHit]
    triage: Triage | None = Field(
        None, description="Suggested queue, priority, type and tags; never applied to the ticket."
    )


class TriageRequest(_Strict):
    title: Title = Field(examples=["Cannot log in after password reset"])
    description: Description = Field(examples=["The reset link says it expired."])
    collection: CollectionName | None = Field(None, description="Defaults to the service's default collection.")
    min_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Withhold predictions below this confidence "
        "(default: each field's floor chosen from the collection).",
    )


class Evidence(BaseModel):
    id: uuid.UUID
    title: str
    similarity: float
    value: str | None = Field(description="This neighbour's label for the field.")


class FieldSuggestion(BaseModel):
    value: str | None = Field(description="The suggestion, or null when triage abstains.")
    confidence: float | None = Field(description="The model's probability of the suggested value.")
    floor: float | None = Field(description="The confidence below which this field abstains.")
    reason: str | None = Field(None, description="Why it abstained.")
    alternatives: dict[str, float] = Field(default_factory=dict, description="The next most likely values.")
    evidence: list[Evidence] = Field(default_factory=list, description="The similar labelled tickets it rests on.")


class TagSuggestion(BaseModel):
    tag: str
    confidence: float = Field(description="The similarity-weighted share of the nearest tickets that carry it.")


class Triage(BaseModel):
    collection: str
    language: str | None = Field(description="The ticket's language (ISO 639-1), from a small n-gram detector.")
    model: str = Field(description="'linear+vote' once the collection's model is fitted, 'vote' until then.")
    labelled_tickets: int = Field(description="Labelled tickets the model was fitted on.")
    fields: dict[str, FieldSuggestion] = Field(
        description="category (queue), priority and type: those the collection labels."
    )
    tags: list[TagSuggestion] = Field(default_factory=list)


class DuplicateLink(_Strict):
    ticket_id: uuid.UUID = Field(
        description="The other ticket: the original (confirm) or the wrongly suggested one (reject)."
    )


class TicketsPublic(BaseModel):
    data: list[TicketPublic]
    count: int = Field(description="Tickets matching the filters, over all pages.")
    offset: int
    limit: int


class SearchFilters(_Strict):
    priority: list[Priority] | None = None
    status: list[Status] | None = None
    category: list[ShortText] | None = Field(None, max_length=50)
    tags: list[Tag] | None = Field(None, max_length=50, description="Tickets with any of these tags.")
    created_after: DateTime | None = None
    created_before: DateTime | None = None


SearchMode = Literal["vector", "keyword", "hybrid"]


class SearchRequest(_Strict):
    query: QueryText = Field(examples=["login issues"])
    limit: int = Field(5, ge=1, description="Results to return; capped by SEARCH_MAX_LIMIT.")
    collection: CollectionName | None = None
    mode: SearchMode = "vector"
    alpha: float | None = Field(None, ge=0, le=1, description="Hybrid only: 1 is pure vector, 0 pure keyword.")
    filters: SearchFilters = Field(default_factory=SearchFilters)


class SearchResults(BaseModel):
    query: str
    mode: SearchMode
    collection: str
    alpha: float | None = None
    results: list[SearchHit]


class BulkRequest(_Strict):
    tickets: list[TicketCreate] = Field(min_length=1)
    collection: CollectionName | None = Field(None, description="For tickets that name none.")


class BulkItem(BaseModel):
    index: int = Field(description="The ticket's position in the request.")
    id: uuid.UUID
    created: bool = Field(description="False when an existing ticket with the same external_id was updated.")


class BulkResult(BaseModel):
    """A bulk write is all or nothing: every ticket is stored, or the request fails and none is."""

    created: int
    updated: int
    items: list[BulkItem]


class CollectionCreate(_Strict):
    name: CollectionName = Field(examples=["acme-helpdesk"])


class CollectionPublic(BaseModel):
    name: str
    ticket_count: int | None = None


class CollectionsPublic(BaseModel):
    data: list[CollectionPublic]
