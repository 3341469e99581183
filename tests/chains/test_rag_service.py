"""The RAG service end to end: the real ChatGroq client against a loopback Groq, and RemoteRunnable over uvicorn."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langserve import RemoteRunnable

from server import create_app
from tests.conftest import LiveServer
from tests.fakes.groq_server import FakeGroq, Reply
from ticket_rag.settings import Settings

TICKET = {
    "title": "Password reset link expired",
    "description": "The emailed password reset link says it has expired.",
    "resolution": "Sent a fresh reset link from the admin console.",
    "status": "resolved",
}
QUESTION = {"input": {"question": "How do I reset my password?"}}
SECRET = "gsk-test-secret-do-not-leak"


@pytest.fixture()
def groq_client(settings: Settings, embeddings: Embeddings, fake_groq: FakeGroq) -> Iterator[TestClient]:
    settings = settings.model_copy(
        update={
            "llm_provider": "groq",
            "groq_api_key": SECRET,
            "groq_base_url": fake_groq.url,
            "llm_timeout": 2.0,
            "llm_max_retries": 1,
            # One model call per question: these tests are about the Groq boundary (tests/chains/test_sufficiency.py
            # covers the check that precedes the answer).
            "rag_sufficiency_check": False,
        }
    )
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        assert client.post("/tickets/", json=TICKET).status_code == 201
        yield client


def test_groq_answers_with_citations(groq_client: TestClient, fake_groq: FakeGroq) -> None:
    fake_groq.then(Reply(chunks=["Send", " a fresh", " reset link", " [T1]."]))
    response = groq_client.post("/rag/invoke", json=QUESTION)
    assert response.status_code == 200
    output = response.json()["output"]
    assert output["answer"] == f"Send a fresh reset link [{output['sources'][0]['ref']}]."
    assert output["metadata"]["provider"] == "groq" and output["metadata"]["offline_fallback"] is False
    sent = fake_groq.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.body["messages"][0]["role"] == "system"
    assert '<ticket ref="T1"' in sent.body["messages"][1]["content"]
    assert SECRET not in response.text


def test_groq_rate_limit_becomes_503_with_retry_after(groq_client: TestClient, fake_groq: FakeGroq) -> None:
    fake_groq.default = Reply(status=429, headers={"retry-after": "0"})
    response = groq_client.post("/rag/invoke", json=QUESTION)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"  # Groq's own (0 s, at least 1), not the service's default of 5
    assert "rate-limited" in response.json()["detail"]
    assert len(fake_groq.requests) == 2  # one try and LLM_MAX_RETRIES=1 retry
    # CRUD and search are unaffected by the LLM being down
    assert groq_client.post("/tickets/search", json={"query": "password"}).status_code == 200
    assert groq_client.post("/tickets/", json={**TICKET, "title": "Another"}).status_code == 201


def test_groq_server_error_becomes_503(groq_client: TestClient, fake_groq: FakeGroq) -> None:
    fake_groq.default = Reply(status=500)
    response = groq_client.post("/rag/invoke", json=QUESTION)
    assert response.status_code == 503
    assert response.json() == {"detail": "the language model is unavailable; try again shortly"}


def test_slow_groq_becomes_504_within_the_deadline(groq_client: TestClient, fake_groq: FakeGroq) -> None:
    fake_groq.default = Reply(delay=10)
    started = time.monotonic()
    response = groq_client.post("/rag/invoke", json=QUESTION)
    assert response.status_code == 504
    assert time.monotonic() - started < 9  # two attempts of LLM_TIMEOUT=2 s, not the 10 s the server takes


def test_groq_failure_after_retry_recovers(groq_client: TestClient, fake_groq: FakeGroq) -> None:
    fake_groq.then(Reply(status=429, headers={"retry-after": "0"}), Reply(chunks=["Fine", " [T1]."]))
    response = groq_client.post("/rag/invoke", json=QUESTION)
    assert response.status_code == 200
    assert response.json()["output"]["answer"].startswith("Fine")


def test_remote_runnable_keeps_sources_over_the_wire(settings: Settings, embeddings: Embeddings) -> None:
    llm = FakeListChatModel(responses=["Use the admin console [T1]."] * 3)
    with LiveServer(create_app(settings, embeddings=embeddings, llm=llm)) as server:
        httpx.post(f"{server.url}/tickets/", json=TICKET).raise_for_status()
        remote = RemoteRunnable(f"{server.url}/rag/")
        output = remote.invoke({"question": "How do I reset my password?"})
        assert output["sources"][0]["title"] == TICKET["title"]
        assert output["answer"] == f"Use the admin console [{output['sources'][0]['ref']}]."

        chunks = list(remote.stream({"question": "How do I reset my password?"}))
        assert list(chunks[0]) == ["sources"] and chunks[0]["sources"][0]["title"] == TICKET["title"]
        assert "".join(c.get("answer", "") for c in chunks) == output["answer"]
        assert "metadata" in chunks[-1]

        batch = remote.batch([{"question": "reset password"}, {"question": "expired link"}])
        assert all(b["sources"] for b in batch)

        docs = RemoteRunnable(f"{server.url}/retriever/").invoke({"query": "reset my password", "k": 1})
        assert docs[0].metadata["title"] == TICKET["title"]
