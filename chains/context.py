"""Retrieved tickets as the model sees them (delimited, inert data) and as the client sees them (sources)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from langchain_core.documents import Document

from chains.sanitize import plain_text
from chains.schemas import ChatTurn, Source
from ticket_rag.embeddings.redaction import keep


def history_text(history: list[ChatTurn]) -> str:
    return "\n".join(f"{'Agent' if t.role == 'human' else 'Assistant'}: {t.content}" for t in history)


def cited(ticket_id: str) -> str:
    """The reference an answer uses for a ticket."""
    return "#" + ticket_id.replace("-", "")[:8]


def snippet(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


_DELIMITERS = re.compile(r"</?\s*tickets?\b[^>]*>", re.I)


def as_data(text: str, limit: int, redact: Callable[[str], str] = keep) -> str:
    """Ticket text as inert data: our delimiters neutralised, shortened (and redacted when asked)."""
    return snippet(_DELIMITERS.sub("[removed tag]", redact(text)), limit)


def format_context(docs: list[Document], *, limit: int, redact: Callable[[str], str] = keep) -> str:
    """Each ticket in its own delimited block with its reference, status and resolution."""
    blocks = []
    for n, doc in enumerate(docs, start=1):
        meta = doc.metadata
        lines = [
            f'<ticket ref="T{n}" status="{meta.get("status") or "unknown"}" '
            f'priority="{meta.get("priority") or "unknown"}">',
            f"Title: {as_data(meta.get('title') or '', 300, redact)}",
            f"Problem: {as_data(doc.page_content, limit, redact)}",
        ]
        if meta.get("resolution"):
            lines.append(f"Resolution: {as_data(meta['resolution'], limit, redact)}")
        lines.append("</ticket>")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def to_sources(docs: list[Document]) -> list[dict[str, Any]]:
    return [
        Source(
            ref=cited(str(doc.metadata["id"])),
            id=str(doc.metadata["id"]),
            title=doc.metadata.get("title") or "",
            status=doc.metadata.get("status"),
            priority=doc.metadata.get("priority"),
            score=doc.metadata["similarity"],
            snippet=snippet(doc.page_content, 240),
            resolution=snippet(doc.metadata["resolution"], 600) if doc.metadata.get("resolution") else None,
        ).model_dump()
        for doc in docs
    ]


def listing(sources: list[dict[str, Any]]) -> str:
    """The answer when generation is off (LLM_PROVIDER=none): the tickets and how they were resolved."""
    lines = ["Generation is off; the most relevant past tickets:"]
    for n, s in enumerate(sources, start=1):
        line = f"{n}. [{s['ref']}] {plain_text(s['title'])} ({s['status'] or 'unknown'})"
        if s.get("resolution"):
            line += f": {plain_text(s['resolution'])}"
        lines.append(line)
    return "\n".join(lines)
