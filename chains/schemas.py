"""What the RAG chain takes and returns, as LangServe and the playground show it."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from ticket_rag.tickets.schemas import CollectionName, QueryText, SearchFilters, clean_text


def without_nulls(schema: Any) -> Any:
    """A JSON schema with `anyOf: [X, null]` folded into X: LangServe's playground cannot render nullable fields."""
    if isinstance(schema, list):
        return [without_nulls(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: without_nulls(value) for key, value in schema.items()}
    options = schema.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        others = [option for option in options if option != {"type": "null"}]
        if len(others) == 1:
            del schema["anyOf"]
            schema = {**others[0], **schema}
            if schema.get("default", 0) is None:
                del schema["default"]
    return schema


class PlaygroundSchema(BaseModel):
    """A model whose JSON schema the LangServe playground can render."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return without_nulls(super().model_json_schema(*args, **kwargs))  # type: ignore[no-any-return]


class ChatTurn(BaseModel):
    role: Literal["human", "ai"]
    content: Annotated[str, StringConstraints(max_length=4000), AfterValidator(clean_text)]


class RagInput(PlaygroundSchema):
    """What the chain takes: a question, and optionally where to look and the conversation so far."""

    # A misspelt field (`colection`) is refused, not silently answered from the default collection.
    model_config = ConfigDict(extra="forbid")

    question: QueryText = Field(examples=["How do I reset my password?"])
    collection: CollectionName | None = Field(None, description="Defaults to the default collection.")
    filters: SearchFilters | None = None
    chat_history: list[ChatTurn] = Field(default_factory=list, max_length=200)
    k: int | None = Field(None, ge=1, le=100, description="Tickets to retrieve; capped by RAG_MAX_K.")
    exclude_ticket: uuid.UUID | None = Field(None, description="A ticket never to use (the one being answered).")
    exclude_tickets: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=100,
        description="More tickets never to use (for example, ones known to be outdated).",
    )


class Source(BaseModel):
    ref: str = Field(description="How the answer cites this ticket, e.g. #1a2b3c4d.")
    id: str
    title: str
    status: str | None = None
    priority: str | None = None
    score: float = Field(description="Cosine similarity of the question and the ticket.")
    snippet: str
    resolution: str | None = None


class RagOutput(PlaygroundSchema):
    answer: str
    sources: list[Source]
    metadata: dict[str, Any]
