"""The extractive answer's choice of sentences: the top-ranked ticket's whole resolution first, another
ticket's closest sentences only when no ticket is a near-duplicate, stock sentences once.
"""

from __future__ import annotations

from langchain_core.documents import Document

from chains.answers import Evidence, extractive_answer
from chains.extractive import NEAR_DUPLICATE, candidates, compose, rank, select
from ticket_rag.tickets.keywords import KeywordAnalyzer

VPN = (
    "The VPN tunnel dropped because the IKE lifetime was one hour. Raised the IKE lifetime to eight hours "
    "on the gateway. We appreciate your patience with us."
)


def _ticket(title: str, resolution: str, similarity: float, ticket_id: str = "") -> Document:
    return Document(
        page_content=f"{title} reported by a customer today.",
        metadata={"id": ticket_id or title, "title": title, "resolution": resolution, "similarity": similarity},
    )


def test_the_top_resolution_is_quoted_whole_and_a_shared_sentence_once() -> None:
    docs = [
        _ticket("VPN drops every hour", VPN, 0.6),
        _ticket("Printer offline", "Restarted the print spooler service. We appreciate your patience with us.", 0.5),
    ]
    ranked = rank("Why does my VPN drop every hour?", candidates(docs), KeywordAnalyzer(), [0.6, 0.5])
    lines = compose(select(ranked), ["#aaaaaaaa", "#bbbbbbbb"])
    vpn = [line for line in lines if line.endswith("[#aaaaaaaa]")]
    # The VPN ticket leads, with every sentence of its resolution in its own order.
    assert lines[1].startswith("- Resolution: The VPN tunnel dropped") and len(vpn) == 3
    assert "Raised the IKE lifetime to eight hours on the gateway." in vpn[1]
    assert sum("We appreciate your patience" in line for line in lines) == 1


def test_the_retrievers_top_ticket_leads_even_when_another_sentence_holds_more_of_the_question() -> None:
    docs = [
        _ticket("Cannot sign in", "Cleared the browser cache and the sign-in page loaded again.", 0.7),
        _ticket("Login trouble", "Reset the password of the login account for the user.", 0.6),
    ]
    question = "password reset for the login account"
    ranked = rank(question, candidates(docs), KeywordAnalyzer(), [0.7, 0.6])
    assert ranked[0].candidate.ticket == 1  # the second ticket's sentence holds more of the question's words
    lines = compose(select(ranked, more=0), ["#aaaaaaaa", "#bbbbbbbb"])
    assert lines[1:] == ["- Resolution: Cleared the browser cache and the sign-in page loaded again. [#aaaaaaaa]"]


def _evidence(docs: list[Document], question: str) -> Evidence:
    sims = [d.metadata["similarity"] for d in docs]
    ranked = rank(question, candidates(docs), KeywordAnalyzer(), sims)
    return Evidence(ranked=ranked, features={"top_cosine": max(sims)}, score=0.9, threshold=0.5, escalate=False)


KEEPALIVE = "The VPN tunnel dropped every hour until we set the client keepalive to 30 seconds."


def test_a_near_duplicate_is_answered_with_its_resolution_alone_otherwise_another_ticket_helps() -> None:
    question = "Why does my VPN tunnel drop every hour?"
    refs = ["#aaaaaaaa", "#bbbbbbbb"]
    near = [
        _ticket("VPN drops every hour", VPN, NEAR_DUPLICATE + 0.05, "a"),
        _ticket("VPN hourly", KEEPALIVE, 0.6, "b"),
    ]
    answer = extractive_answer(_evidence(near, question), near, near, refs)
    assert "[#aaaaaaaa]" in answer and "[#bbbbbbbb]" not in answer
    far = [_ticket("VPN drops every hour", VPN, 0.7, "a"), _ticket("VPN hourly", KEEPALIVE, 0.65, "b")]
    answer = extractive_answer(_evidence(far, question), far, far, refs)
    assert answer.splitlines()[1].endswith("[#aaaaaaaa]") and "keepalive to 30 seconds" in answer


def test_a_near_duplicate_leads_even_when_the_hybrid_ranking_put_another_ticket_first() -> None:
    docs = [
        _ticket("Printer offline", "Restarted the print spooler service on the print server.", 0.55, "p"),
        _ticket("VPN drops every hour", VPN, 0.92, "v"),
    ]
    answer = extractive_answer(_evidence(docs, "VPN tunnel drops every hour"), docs, docs, ["#aaaaaaaa", "#bbbbbbbb"])
    lines = answer.splitlines()[1:]
    assert lines and all(line.endswith("[#bbbbbbbb]") for line in lines)  # the near-duplicate alone
    # the kept tickets may be fewer than those retrieved: references follow the kept list
    kept = docs[1:]
    answer = extractive_answer(_evidence(docs, "VPN tunnel drops every hour"), docs, kept, ["#bbbbbbbb"])
    assert answer.splitlines()[1].startswith("- Resolution: The VPN tunnel dropped") and "[#aaaaaaaa]" not in answer
