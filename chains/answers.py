"""The answers that need no trust in a model: the evidence gate, the extractive answer, the guarded local model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig

from chains.evidence import EvidenceModel, evidence_features
from chains.extractive import MORE_SENTENCES, NEAR_DUPLICATE, Ranked, candidates, compose, rank, select
from chains.grounding import ungrounded
from chains.guard import Degeneracy, RepetitionGuard, degeneracy
from chains.sanitize import plain_text
from ticket_rag.tickets.keywords import KeywordAnalyzer


@dataclass
class Evidence:
    """What the evidence gate saw and decided, for the answer, its metadata and the evaluation."""

    ranked: list[Ranked]
    features: dict[str, float]
    score: float | None
    threshold: float | None
    escalate: bool

    def public(self) -> dict[str, Any]:
        return {
            "score": None if self.score is None else round(self.score, 4),
            "threshold": self.threshold,
            "escalate": self.escalate,
            "features": {k: round(v, 4) for k, v in self.features.items()},
        }


def ticket_text(doc: Document) -> str:
    """Everything a ticket says: title, problem, resolution."""
    meta = doc.metadata
    return f"{meta.get('title') or ''}\n{doc.page_content}\n{meta.get('resolution') or ''}"


def weigh_evidence(
    *,
    question: str,
    docs: Sequence[Document],
    analyzer: KeywordAnalyzer,
    model: EvidenceModel | None,
    threshold: float | None,
) -> Evidence:
    """Rank the tickets' sentences against the question and score the evidence; escalate below the threshold."""
    similarities = [float(d.metadata["similarity"]) for d in docs]
    ranked = rank(question, candidates(docs), analyzer, similarities)
    best: dict[int, float] = {}
    for item in ranked:
        best[item.candidate.ticket] = max(best.get(item.candidate.ticket, 0.0), item.match)
    question_sequence = analyzer.terms(question).split()
    ticket_sequences = [analyzer.terms(ticket_text(d)).split() for d in docs]
    features = evidence_features(
        similarities=similarities,
        question_terms=set(question_sequence),
        ticket_terms=[set(seq) for seq in ticket_sequences],
        sentence_best=best,
        question_sequence=question_sequence,
        ticket_sequences=ticket_sequences,
    )
    if model is None or not docs:
        return Evidence(ranked, features, None, None, False)
    score = model.score(features)
    cut = model.threshold if threshold is None else threshold
    return Evidence(ranked, features, score, cut, score < cut)


def escalation_answer(evidence: Evidence, sources: Sequence[dict[str, Any]]) -> str:
    """Why the question goes to a human: the best evidence found and the threshold it missed."""
    lines = [
        "The past tickets do not answer this question confidently enough, so it should go to a human agent.",
        f"Evidence score {evidence.score:.2f}, below the escalation threshold {evidence.threshold:.2f}.",
    ]
    if sources:
        top = max(sources, key=lambda s: s["score"])
        lines.append(f"Closest ticket: [{top['ref']}] {plain_text(top['title'])} (similarity {top['score']:.2f}).")
    if evidence.ranked:
        item = evidence.ranked[0]
        lines.append(
            f"Closest sentence (holds {item.match:.0%} of the question's weighted words): {item.candidate.text}"
        )
    return "\n".join(lines)


def extractive_answer(
    evidence: Evidence, all_docs: Sequence[Document], kept: Sequence[Document], refs: Sequence[str]
) -> str:
    """The best sentences of the kept tickets, resolutions first, each with its ticket's reference."""
    index = {str(d.metadata["id"]): n for n, d in enumerate(kept)}
    ranked = []
    for item in evidence.ranked:
        new = index.get(str(all_docs[item.candidate.ticket].metadata["id"]))
        if new is not None:
            ranked.append(Ranked(_moved(item, new), item.match, item.score))
    # The closest kept ticket with a resolution, when it is a near-duplicate of the question, is the answer alone.
    resolved = {r.candidate.ticket for r in ranked if r.candidate.kind == "resolution"}
    cosine = {n: float(kept[n].metadata.get("similarity") or 0.0) for n in resolved}
    near = max(cosine, key=lambda n: (cosine[n], -n), default=None)
    if near is not None and cosine[near] >= NEAR_DUPLICATE:
        chosen = select(ranked, more=0, lead=near)
    else:
        chosen = select(ranked, more=MORE_SENTENCES)
    if not chosen:
        return "\n".join(
            ["The relevant past tickets, with no sentence that answers directly:"] + [f"- [{r}]" for r in refs]
        )
    return "\n".join(compose(chosen, refs))


def _moved(item: Ranked, ticket: int) -> Any:
    c = item.candidate
    return type(c)(c.text, ticket, c.kind, c.position)


async def guarded_local_answer(
    *,
    llm: BaseChatModel,
    messages: list[BaseMessage],
    config: RunnableConfig,
    clean: Callable[[str], str],
    context: Sequence[str],
) -> tuple[str, Degeneracy | None]:
    """The local model's whole answer, or the reason it must not be shown.

    Generation stops as soon as the text loops; an answer cut at the token cap, left with link debris, or
    stating numbers, versions or codes that no given ticket holds is refused too.
    """
    guard = RepetitionGuard()
    finish: str | None = None
    tripped: Degeneracy | None = None
    stream = llm.astream(messages, config)
    try:
        async for chunk in stream:
            finish = chunk.response_metadata.get("finish_reason") or finish
            tripped = guard.feed(str(chunk.content))
            if tripped:
                break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    text = clean(guard.text)
    problem = tripped or degeneracy(text, finish_reason=finish)
    if problem is None and not text.strip():
        problem = Degeneracy("empty", "no text")
    if problem is None and (invented := ungrounded(text, context)):
        problem = Degeneracy("ungrounded", f"states {invented[0]!r}, which no ticket holds")
    return text, problem
