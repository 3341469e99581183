"""Keyword (BM25) terms: words stemmed with Snowball, so "resetting passwords" finds "password reset".

Weaviate has no stemmer: its word tokenization splits text at anything that is not a letter or a
digit, lowercases it and drops the English stopwords. So the store keeps, beside each ticket's title
and description, their stemmed words (the properties title_terms and description_terms), and keyword
and hybrid search run BM25 on those, with the query stemmed the same way. The stored title and
description stay exactly as written.

Measured on SciFact (docs/quality.md): stemming lifts BM25 nDCG@10 from 0.64 to the published
Elasticsearch score (0.665), and hybrid search with it.
"""

from __future__ import annotations

import re
import threading

import Stemmer

# Weaviate's "en" stopword preset (adapters/repos/db/inverted/stopwords/presets.go, v1.39), dropped before
# stemming so that a stemmed stopword ("these" -> "these", "was" -> "wa") can never become a term.
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with".split()
)
# Letters and digits, as Weaviate's word tokenization splits (underscore is a separator there too).
_WORD = re.compile(r"[^\W_]+")
TITLE_TERMS = "title_terms"
DESCRIPTION_TERMS = "description_terms"


def keyword_properties(title_boost: float = 1.0) -> list[str]:
    """What BM25 searches: the stemmed title (weighted by KEYWORD_TITLE_BOOST) and description."""
    return [f"{TITLE_TERMS}^{title_boost:g}" if title_boost != 1 else TITLE_TERMS, DESCRIPTION_TERMS]


def stemmer_languages() -> list[str]:
    """The languages KEYWORD_STEMMER accepts: Snowball's algorithms, and none."""
    return ["none", *sorted(Stemmer.algorithms())]


class KeywordAnalyzer:
    """Turns text into the space-separated stemmed words that BM25 indexes and matches."""

    def __init__(self, language: str = "english") -> None:
        if language not in stemmer_languages():
            raise ValueError(f"unknown stemmer {language!r}; expected one of {', '.join(stemmer_languages())}")
        self.language = language
        self._local = threading.local()  # a PyStemmer stemmer is not safe to share between threads

    def _stem(self, words: list[str]) -> list[str]:
        if self.language == "none":
            return words
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = Stemmer.Stemmer(self.language)
        return list(stemmer.stemWords(words))

    def terms(self, text: str) -> str:
        """The text's words, lowercased, without stopwords, stemmed, joined by spaces."""
        words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
        return " ".join(self._stem(words))

    def properties(self, *, title: str, description: str) -> dict[str, str]:
        """The term properties stored beside a ticket's title and description."""
        return {TITLE_TERMS: self.terms(title), DESCRIPTION_TERMS: self.terms(description)}
