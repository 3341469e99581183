"""The extractive answer: the retrieved tickets' own sentences that best answer the question, each with its reference.

Nothing is generated, so nothing can be invented: every sentence is a ticket's text, verbatim apart from
whitespace. Sentences are ranked by how much of the question's rarer words they hold (no model call, so the
first line streams within milliseconds of retrieval), helped by their ticket's similarity; the best ones
are quoted, resolutions only when there are any. Deterministic: the same tickets and question give the same answer.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.documents import Document

from chains.sanitize import plain_text
from ticket_rag.tickets.keywords import KeywordAnalyzer

# A sentence ends at . ! ? followed by space and a capital, digit or quote; ticket text also has literal "\n".
_SPLIT = re.compile(r"(?:\\n|\n)+|(?<=[.!?])\s+(?=[\"'(\[A-ZÄÖÜ0-9])")
# Salutations, sign-offs and courtesy lines carry no answer.
_COURTESY = re.compile(
    r"^(dear|hello|hi|greetings|best regards|kind regards|regards|sincerely|thanks|thank you,|cheers|"
    r"sehr geehrte|liebe|hallo|guten tag|mit freundlichen|viele grüße|beste grüße|freundliche grüße)\b",
    re.I,
)
_PLACEHOLDER = re.compile(r"<[^>]{1,40}>|\[[^\]]{1,40}\]|\{[a-z_]{2,40}\}")
MIN_WORDS = 4
MAX_CHARS = 400
RESOLUTION_BONUS = 0.05
# How much the ticket's own cosine to the question counts beside the sentence's word match.
TICKET_WEIGHT = 0.2
# Further sentences must score within this of the best one, so that weak tickets are not cited.
KEEP_WITHIN = 0.08
# Lead with the whole resolution of the best-ranked retrieved ticket that has one: the reply to the most similar
# problem. A ticket that is a near-duplicate of the question (cosine at least NEAR_DUPLICATE) leads instead, alone;
# otherwise at most MORE_SENTENCES close sentences of one other ticket follow. Chosen on the demo tickets at
# offset 5 (docs/answers.md, where the figures are).
WHOLE_RESOLUTION = True
NEAR_DUPLICATE = 0.85
MORE_SENTENCES = 2


@dataclass(frozen=True)
class Candidate:
    """One sentence of one retrieved ticket."""

    text: str
    ticket: int  # index into the retrieved documents
    kind: str  # resolution or problem
    position: int  # order within the ticket


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    match: float  # weighted share of the question's words in the sentence
    score: float


def split_sentences(text: str) -> list[str]:
    """A ticket's text as sentences, whitespace collapsed; salutations, placeholders-only and fragments dropped."""
    out = []
    for part in _SPLIT.split(text or ""):
        sentence = " ".join(part.split())
        words = sentence.split()
        if len(words) < MIN_WORDS or _COURTESY.match(sentence) or _PLACEHOLDER.fullmatch(sentence):
            continue
        if len(sentence) > MAX_CHARS:
            continue  # a run-on block (a log, a table) rather than a sentence
        out.append(sentence)
    return out


def candidates(docs: Sequence[Document], *, per_ticket: int = 8) -> list[Candidate]:
    """Each ticket's resolution sentences, then its title and problem sentences, at most per_ticket of each."""
    found = []
    for index, doc in enumerate(docs):
        # ticket text is untrusted: what an answer may quote has no links, markup or citation-like brackets
        resolution = split_sentences(plain_text(doc.metadata.get("resolution") or ""))[:per_ticket]
        found += [Candidate(s, index, "resolution", n) for n, s in enumerate(resolution)]
        problem = split_sentences(plain_text(doc.page_content))[:per_ticket]
        found += [Candidate(s, index, "problem", n) for n, s in enumerate(problem)]
    return found


def rank(
    question: str, found: Sequence[Candidate], analyzer: KeywordAnalyzer, similarities: Sequence[float]
) -> list[Ranked]:
    """Candidates by score, best first; ties keep ticket order.

    match: the share of the question's stemmed words a sentence holds, each word weighted by its rarity
    among the candidate sentences (BM25's idf), so a sentence that has the question's specific words beats
    one that shares only the topic. score: match, plus a little of the ticket's cosine to the question and
    the resolution bonus.
    """
    if not found:
        return []
    wanted = set(analyzer.terms(question).split())
    held = [set(analyzer.terms(c.text).split()) & wanted for c in found]
    df = Counter(t for terms in held for t in terms)
    n = len(found)
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in wanted}
    total = sum(idf.values()) or 1.0
    ranked = []
    for c, terms in zip(found, held, strict=True):
        match = sum(idf[t] for t in terms) / total
        bonus = RESOLUTION_BONUS if c.kind == "resolution" else 0.0
        ranked.append(Ranked(c, match, match + TICKET_WEIGHT * similarities[c.ticket] + bonus))
    return sorted(ranked, key=lambda r: (-round(r.score, 6), r.candidate.ticket, r.candidate.position))


def select(
    ranked: Sequence[Ranked],
    *,
    max_sentences: int = 3,
    max_tickets: int = 2,
    whole_resolution: bool = WHOLE_RESOLUTION,
    more: int = MORE_SENTENCES,
    lead: int | None = None,
) -> list[Ranked]:
    """The sentences to quote, best evidence first.

    When any ticket has a resolution, only resolutions are quoted (the question is usually a problem like
    the ones reported, so problem sentences would match best and answer nothing), and the best-ranked
    ticket with a resolution leads with all of it, in its own order: a resolution is a reply written for a
    problem like this one, and cut to its best-matching sentences it loses the steps between them (`lead`
    names another ticket to lead, if it has a resolution). Then up to `more` sentences close to the best from
    one other ticket.
    Without resolutions: the best sentence and up to max_sentences - 1 more close to it, from at most
    max_tickets tickets.
    """
    resolutions = [r for r in ranked if r.candidate.kind == "resolution"]
    if resolutions and whole_resolution:
        with_resolution = {r.candidate.ticket for r in resolutions}
        lead = lead if lead in with_resolution else min(with_resolution)
        best = resolutions[0].score
        chosen = sorted((r for r in resolutions if r.candidate.ticket == lead), key=lambda r: r.candidate.position)
        # Tickets often share stock sentences ("We appreciate your patience."): each is quoted once.
        quoted = {_key(r.candidate.text) for r in chosen}
        others = [
            r
            for r in resolutions
            if r.candidate.ticket != lead and r.score >= best - KEEP_WITHIN and _key(r.candidate.text) not in quoted
        ]
        if others:
            second = others[0].candidate.ticket
            chosen += sorted(
                [r for r in others if r.candidate.ticket == second][:more], key=lambda r: r.candidate.position
            )
        return chosen
    if resolutions:
        ranked = resolutions
    if not ranked:
        return []
    best = ranked[0].score
    chosen = []
    tickets: list[int] = []
    for item in ranked:
        if len(chosen) == max_sentences or item.score < best - KEEP_WITHIN:
            break
        if item.candidate.ticket not in tickets:
            if len(tickets) == max_tickets:
                continue
            tickets.append(item.candidate.ticket)
        chosen.append(item)
    # Resolutions first, then in ticket order, then in the ticket's own order: reads like the tickets do.
    return sorted(
        chosen,
        key=lambda r: (r.candidate.kind != "resolution", tickets.index(r.candidate.ticket), r.candidate.position),
    )


def _key(sentence: str) -> str:
    return " ".join(re.findall(r"\w+", sentence.lower()))


def compose(chosen: Sequence[Ranked], refs: Sequence[str]) -> list[str]:
    """The answer's lines: a heading, then each sentence with its ticket reference."""
    lines = ["From past tickets:"]
    for item in chosen:
        label = "Resolution" if item.candidate.kind == "resolution" else "Reported"
        lines.append(f"- {label}: {item.candidate.text} [{refs[item.candidate.ticket]}]")
    return lines
