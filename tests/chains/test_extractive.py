"""The extractive answer's choice of sentences: the best-matching ticket's whole resolution first,
stock sentences once.
"""

from __future__ import annotations

from langchain_core.documents import Document

from chains.extractive import candidates, compose, rank, select
from ticket_rag.tickets.keywords import KeywordAnalyzer


def _ticket(title: str, resolution: str, similarity: float) -> Document:
    return Document(
        page_content=f"{title} reported by a customer today.",
        metadata={"title": title, "resolution": resolution, "similarity": similarity},
    )


def test_the_best_matching_resolution_is_quoted_whole_and_a_shared_sentence_once() -> None:
    docs = [
        _ticket("Printer offline", "Restarted the print spooler service. We appreciate your patience with us.", 0.6),
        _ticket(
            "VPN drops every hour",
            "The VPN tunnel dropped because the IKE lifetime was one hour. Raised the IKE lifetime to eight hours "
            "on the gateway. We appreciate your patience with us.",
            0.5,
        ),
    ]
    ranked = rank("Why does my VPN drop every hour?", candidates(docs), KeywordAnalyzer(), [0.6, 0.5])
    lines = compose(select(ranked), ["#aaaaaaaa", "#bbbbbbbb"])
    vpn = [line for line in lines if line.endswith("[#bbbbbbbb]")]
    # The VPN ticket leads, with every sentence of its resolution in its own order.
    assert lines[1].startswith("- Resolution: The VPN tunnel dropped") and len(vpn) == 3
    assert "Raised the IKE lifetime to eight hours on the gateway." in vpn[1]
    assert sum("We appreciate your patience" in line for line in lines) <= 1
