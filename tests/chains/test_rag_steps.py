"""The chain's steps one at a time, without Weaviate or a model: each is a method of RagSteps over a plain state."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from langchain_core.documents import Document

from chains.prompts import load_prompts
from chains.rag import ChainOptions, RagState, RagSteps
from chains.retrieval import TicketRetriever
from ticket_rag.errors import InvalidRequest
from ticket_rag.settings import Settings

ROOT_PROMPTS = load_prompts(Settings.model_fields["prompts_dir"].default)


def _steps(**options: Any) -> RagSteps:
    retriever = TicketRetriever(vectorstore=lambda: None)  # type: ignore[arg-type, return-value]
    return RagSteps(
        retriever=retriever,
        llm=None,
        prompts=ROOT_PROMPTS,
        options=ChainOptions(**options),
        collection_exists=lambda name: True,
    )


def _doc(similarity: float, title: str = "t") -> Document:
    return Document(page_content="d", metadata={"id": str(uuid.uuid4()), "title": title, "similarity": similarity})


def test_the_question_is_cleaned_and_every_excluded_ticket_kept() -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    state = _steps().normalise(
        {
            "question": "  Reset\u200b my\x07 pass\uff57ord \n please ",
            "exclude_ticket": str(one),
            "exclude_tickets": [str(two)],
        }
    )
    # NFKC folds the full-width w; control and format characters (BEL, zero-width space) become spaces, collapsed
    assert state["question"] == "Reset my password please"
    assert state["exclude"] == [one, two]
    assert state["k"] == Settings.model_fields["rag_k"].default  # the chain's default is the setting's


def test_a_k_over_the_cap_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidRequest) as refused:
        _steps(max_k=3).normalise({"question": "vpn", "k": 4})
    assert refused.value.loc == ("body", "input", "k")


def test_tickets_below_the_similarity_floor_are_never_used() -> None:
    steps = _steps(min_similarity=0.3)
    state: RagState = {"docs": [_doc(0.9, "kept"), _doc(0.29, "dropped"), _doc(0.31, "kept too")]}
    out = steps.keep_relevant(state)
    assert [d.metadata["title"] for d in out["docs"]] == ["kept", "kept too"]
    assert out["dropped"] == 1
    assert len(out["all_docs"]) == 3  # the extractive answer may still weigh what was retrieved


def test_without_tickets_the_answer_says_to_escalate_and_cites_nothing() -> None:
    steps = _steps()
    state = steps.normalise({"question": "printer on fire"})
    state.update(standalone_question=state["question"], docs=[], retrieve_ms=0.0)
    state = steps.build_context(steps.keep_relevant(steps.weigh(state)))

    async def run() -> list[Any]:
        async def one() -> Any:
            yield state

        return [chunk async for chunk in steps.answer(one(), {})]

    chunks = asyncio.run(run())
    assert chunks[0] == {"sources": []}
    assert "escalate" in chunks[1]["answer"]
    assert chunks[-1]["metadata"]["escalated"] is True
    assert chunks[-1]["metadata"]["answer_kind"] == "no_tickets"
