"""Checkable facts in an answer (numbers, versions, error codes, identifiers, quoted strings) and
whether the cited tickets hold them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_REF = re.compile(r"\[#[0-9a-f]{8}\]|#[0-9a-f]{8}\b|\[T\d+\]", re.I)
_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.M)
_QUOTED = re.compile(r"[\"“„«]([^\"”“«»\n]{3,80})[\"”“»]")
_PATTERNS = (
    re.compile(r"\b0x[0-9a-f]+\b", re.I),  # hex codes
    re.compile(r"\b[A-Z][A-Z0-9]*[_-]?\d{2,}[A-Z0-9_-]*\b"),  # error codes: E1234, ERR_502, KB4023057
    re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b"),  # constants: ERR_CONNECTION_RESET
    re.compile(r"\bv?\d+(?:\.\d+){1,3}\b"),  # versions, decimals, IP-like
    re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?%?(?![\w.])"),  # numbers
    re.compile(r"\b[a-z]+[A-Z][A-Za-z0-9]*\b|\b[a-z0-9]+(?:_[a-z0-9]+)+\b"),  # identifiers: camelCase, snake_case
)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def facts(answer: str) -> list[str]:
    """The answer's checkable facts, in order, without duplicates; citations and list numbering are not facts."""
    text = _LIST_MARKER.sub(" ", _REF.sub(" ", answer))
    found: list[str] = []
    for match in _QUOTED.finditer(text):
        found.append(match.group(1).strip())
    text = _QUOTED.sub(" ", text)
    for pattern in _PATTERNS:
        for match in pattern.finditer(text):
            fact = match.group(0).strip(",.")
            found.append(fact[1:] if re.match(r"v\d", fact) else fact)
        text = pattern.sub(" ", text)
    return list(dict.fromkeys(f for f in found if f))


def ungrounded(answer: str, sources: Iterable[str]) -> list[str]:
    """The answer's facts that appear in none of the given ticket texts."""
    haystack = _norm(" \n ".join(sources))
    return [fact for fact in facts(answer) if _norm(fact) not in haystack]
