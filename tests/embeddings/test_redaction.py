"""REDACT_PII: no email address or phone number reaches the embedding model or the LLM; stored text is kept."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage

from server import create_app
from ticket_rag.embeddings.redaction import redact
from ticket_rag.settings import Settings

EMAIL, PHONE = "carrollallison@example.com", "+1 (555) 123-4567"
TICKET = {
    "title": "Refund not received",
    "description": f"Please refund order 2231 to {EMAIL}; call me on {PHONE}.",
    "resolution": f"Refund sent; confirmed by phone {PHONE}.",
    "status": "resolved",
}


class Spy(Embeddings):
    def __init__(self, inner: Embeddings) -> None:
        self.inner, self.seen = inner, []  # type: ignore[var-annotated]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.seen += texts
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self.seen.append(text)
        return self.inner.embed_query(text)


class Recording(FakeListChatModel):
    prompts: list[str] = []

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.prompts.append(" ".join(str(m.content) for m in messages))
        return super()._call(messages, *args, **kwargs)

    async def _astream(self, messages: list[BaseMessage], *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        self.prompts.append(" ".join(str(m.content) for m in messages))
        async for chunk in super()._astream(messages, *args, **kwargs):
            yield chunk


def test_redact_replaces_emails_and_phone_numbers_only() -> None:
    assert redact(f"Mail {EMAIL} or call {PHONE}.") == "Mail [email] or call [phone]."
    assert redact("Order 2231 on 2024-05-01 cost 19.99, version 1.39.3, ZIP 71701") == (
        "Order 2231 on 2024-05-01 cost 19.99, version 1.39.3, ZIP 71701"
    )


def test_pii_never_reaches_the_model_or_the_llm(settings: Settings, embeddings: Embeddings) -> None:
    spy = Spy(embeddings)
    llm = Recording(responses=["Refund sent [T1]."] * 5, prompts=[])
    settings = settings.model_copy(update={"redact_pii": True})
    with TestClient(create_app(settings, embeddings=spy, llm=llm)) as client:
        ticket = client.post("/tickets/", json=TICKET).json()
        client.post("/tickets/search", json={"query": f"refund for {EMAIL}"})
        output = client.post("/rag/invoke", json={"input": {"question": f"Did {EMAIL} get the refund?"}}).json()[
            "output"
        ]
        stored = client.get(f"/tickets/{ticket['id']}").json()
    assert spy.seen and all(EMAIL not in text and "555" not in text for text in spy.seen)
    assert llm.prompts and all(EMAIL not in p and "555" not in p for p in llm.prompts)
    assert "[email]" in llm.prompts[0] and "[phone]" in llm.prompts[0]
    assert stored["description"] == TICKET["description"]  # the agent still sees whom to answer
    assert output["sources"][0]["id"] == ticket["id"]
