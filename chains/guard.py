"""Degenerate output: repetition loops, answers cut at the token cap, and leftovers such as `[link removed]-12-12`.

One detector serves two callers: the chain (it stops a local model's generation the moment a loop
starts, and answers extractively instead) and the answer evaluation (it counts what reached a client).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

# The same unit of 8-300 characters three times in a row ("The answer is: The answer is: The answer is:"),
# or a short unit five times ("-12-12-12-12-12").
_LONG_LOOP = re.compile(r"(.{8,300}?)\1{2,}", re.S)
_SHORT_LOOP = re.compile(r"(\S.{1,6}?)\1{4,}", re.S)
# What a sanitised link leaves when a model keeps going after it.
_LEFTOVER = re.compile(
    r"\[link removed\][-\d/.]{2,}|(?:-\d{1,3}){3,}|\[(?:removed tag|link removed)\]\s*\[(?:removed tag|link removed)\]"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORDS = re.compile(r"\w+", re.U)
# Long text that compresses this well repeats itself (ordinary prose stays above 0.35).
_COMPRESSION_FLOOR = 0.22
_COMPRESSION_MIN_CHARS = 400


@dataclass(frozen=True)
class Degeneracy:
    """Why a text is not fit for a client."""

    kind: str  # repetition, truncated or leftover
    detail: str


def _repeated_sentence(text: str) -> str | None:
    seen: set[str] = set()
    for sentence in _SENTENCE_END.split(text):
        words = _WORDS.findall(sentence.lower())
        if len(words) < 4:
            continue
        key = " ".join(words)
        if key in seen:
            return sentence.strip()[:80]
        seen.add(key)
    return None


def find_loop(text: str) -> str | None:
    """The repeating unit when the text loops, else None."""
    for pattern in (_LONG_LOOP, _SHORT_LOOP):
        match = pattern.search(text)
        if match and match.group(1).strip():
            return match.group(1)[:80]
    sentence = _repeated_sentence(text)
    if sentence:
        return sentence
    if len(text) >= _COMPRESSION_MIN_CHARS:
        raw = text.encode("utf-8")
        if len(zlib.compress(raw, 9)) / len(raw) < _COMPRESSION_FLOOR:
            return "(the text compresses like a loop)"
    return None


def degeneracy(text: str, *, finish_reason: str | None = None) -> Degeneracy | None:
    """Why the answer is degenerate (a loop, cut at the token cap, link leftovers), or None when it is fit to show."""
    loop = find_loop(text)
    if loop is not None:
        return Degeneracy("repetition", f"repeats {loop!r}")
    leftover = _LEFTOVER.search(text)
    if leftover:
        return Degeneracy("leftover", f"leftover {leftover.group(0)[:40]!r}")
    if finish_reason == "length":
        return Degeneracy("truncated", "cut at the token cap")
    return None


class RepetitionGuard:
    """Watches a stream: `feed` returns a Degeneracy as soon as the text so far loops or leaves link debris."""

    def __init__(self, *, window: int = 1200) -> None:
        self.text = ""
        self.window = window

    def feed(self, chunk: str) -> Degeneracy | None:
        self.text += chunk
        return degeneracy(self.text[-self.window :])
