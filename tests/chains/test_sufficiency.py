"""The structured sufficiency check before a Groq answer: the real ChatGroq client against the loopback Groq."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings

from chains.sufficiency import parse_sufficiency
from server import create_app
from tests.chains.test_rag_service import QUESTION, TICKET
from tests.fakes.groq_server import FakeGroq, Reply
from ticket_rag.settings import Settings


@pytest.fixture()
def checked(settings: Settings, embeddings: Embeddings, fake_groq: FakeGroq) -> Iterator[TestClient]:
    settings = settings.model_copy(
        update={
            "llm_provider": "groq",
            "groq_api_key": "gsk-test",
            "groq_base_url": fake_groq.url,
            "llm_max_retries": 0,
            "rag_escalation_threshold": 0.0,  # the evidence gate off: this is about the model's own verdict
        }
    )
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        assert client.post("/tickets/", json=TICKET).status_code == 201
        yield client


def test_a_negative_verdict_escalates_with_the_models_reason(checked: TestClient, fake_groq: FakeGroq) -> None:
    fake_groq.then(
        Reply(chunks=['{"answerable": false, "reason": "the ticket covers expired links, not lost accounts"}'])
    )
    output = checked.post("/rag/invoke", json=QUESTION).json()["output"]
    assert output["metadata"]["answer_kind"] == "escalation" and output["metadata"]["escalated"]
    assert "not lost accounts" in output["answer"] and "escalate" in output["answer"]
    assert output["metadata"]["sufficiency"] == {
        "answerable": False,
        "reason": "the ticket covers expired links, not lost accounts",
    }
    assert len(fake_groq.requests) == 1  # no answer was written
    prompt = fake_groq.requests[0].body["messages"][-1]["content"]
    assert "Password reset link expired" in prompt and '"answerable"' in prompt


def test_a_positive_verdict_lets_the_model_answer(checked: TestClient, fake_groq: FakeGroq) -> None:
    fake_groq.then(
        Reply(chunks=['```json\n{"answerable": true, "reason": "T1 says how"}\n```']),
        Reply(chunks=["Send a fresh reset link", " from the admin console [T1]."]),
    )
    output = checked.post("/rag/invoke", json=QUESTION).json()["output"]
    assert output["answer"].startswith("Send a fresh reset link from the admin console [#")
    assert output["metadata"]["sufficiency"]["answerable"] is True and len(fake_groq.requests) == 2


def test_no_usable_verdict_still_answers_and_says_so(checked: TestClient, fake_groq: FakeGroq) -> None:
    fake_groq.then(Reply(chunks=["Sure! The tickets look fine."]), Reply(chunks=["Use the admin console [T1]."]))
    output = checked.post("/rag/invoke", json=QUESTION).json()["output"]
    assert output["answer"].startswith("Use the admin console")
    assert output["metadata"]["sufficiency"] == {"answerable": None, "reason": "no usable verdict"}


def test_a_failing_check_is_the_same_503_as_a_failing_answer(checked: TestClient, fake_groq: FakeGroq) -> None:
    fake_groq.default = Reply(status=500)
    response = checked.post("/rag/invoke", json=QUESTION)
    assert response.status_code == 503


@pytest.mark.parametrize(
    ("text", "answerable"),
    [
        ('{"answerable": true, "reason": "x"}', True),
        ('Verdict: {"answerable": false}', False),
        ("no json", None),
        ('{"answerable": "maybe"}', None),
    ],
)
def test_verdicts_are_parsed_strictly(text: str, answerable: bool | None) -> None:
    verdict = parse_sufficiency(text)
    assert (verdict.answerable if verdict else None) is answerable
