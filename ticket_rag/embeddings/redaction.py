"""Optional redaction of email addresses and phone numbers (REDACT_PII=true).

Applied to the text that is embedded, to search and RAG questions, to the ticket text the LLM
sees, and to everything sent to LangSmith; the stored ticket keeps its original text, so an agent
still sees whom to answer.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.embeddings import Embeddings

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# A run of 9 to 15 digits with the usual separators; shorter numbers (years, order ids, prices) stay.
_PHONE = re.compile(r"(?<![\w/.-])\+?\(?\d[\d\s().-]{7,}\d(?![\w/-])")


def _phone(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group(0))
    return "[phone]" if 9 <= digits <= 15 else match.group(0)


def redact(text: str) -> str:
    """The text with email addresses and phone numbers replaced by [email] and [phone]."""
    return _PHONE.sub(_phone, _EMAIL.sub("[email]", text))


def redact_tree(value: Any) -> Any:
    """JSON-like data with every string in it redacted: LangSmith's anonymizer for runs."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_tree(item) for item in value]
    return value


def keep(text: str) -> str:
    """No redaction."""
    return text


class RedactingEmbeddings(Embeddings):
    """Any Embeddings, fed redacted text: no email address or phone number shapes a vector."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.inner.embed_documents([redact(t) for t in texts])

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(redact(text))
