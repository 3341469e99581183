"""The arithmetic of triage, in numpy only: a similarity-weighted vote of neighbours, and a linear model.

Both work on what the store already keeps for every ticket: its L2-normalised vector and its
stemmed keyword terms (keywords.py). The linear model is a multinomial logistic regression over the
vector joined with a TF-IDF of the terms (the vocabulary built from the collection itself), fitted
by accelerated gradient descent with an L2 penalty. Fitting 10,000 tickets takes seconds, so the
service refits a collection's model whenever its labels change, without any training service.
The evaluation (ticket_rag/triage_eval.py) and the service call the same functions.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Tuned by k-fold cross-validation on the demo tickets (docs/triage.md); kept as named defaults.
KNN_K = 10
KNN_POWER = 4.0  # a neighbour's vote weighs similarity ** KNN_POWER
TFIDF_FEATURES = 3000  # the most frequent terms (document frequency >= 2) that become features
TFIDF_WEIGHT = 1.0  # the TF-IDF block's scale against the (unit-length) vector
L2 = 1e-3  # the penalty of the logistic regression, per example
ITERATIONS = 300


@dataclass(frozen=True)
class Vocabulary:
    """Terms and their inverse document frequencies, from one collection's tickets."""

    index: dict[str, int]
    idf: np.ndarray
    document_frequency: dict[str, int]
    documents: int

    @classmethod
    def build(cls, documents: Sequence[str], *, size: int = TFIDF_FEATURES, min_df: int = 2) -> Vocabulary:
        """The `size` terms that occur in the most documents (at least min_df of them)."""
        df: Counter[str] = Counter()
        for text in documents:
            df.update(set(text.split()))
        kept = sorted((t for t, c in df.items() if c >= min_df), key=lambda t: (-df[t], t))[:size]
        n = max(len(documents), 1)
        idf = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in kept], dtype=np.float32)
        return cls(index={t: i for i, t in enumerate(kept)}, idf=idf, document_frequency=dict(df), documents=n)

    def idf_of(self, term: str) -> float:
        """Inverse document frequency of any term (unseen terms are the rarest)."""
        return math.log((1 + self.documents) / (1 + self.document_frequency.get(term, 0))) + 1.0

    def transform(self, documents: Sequence[str]) -> np.ndarray:
        """Sublinear TF-IDF rows, L2-normalised (a row of zeros for a text with no known term)."""
        out = np.zeros((len(documents), len(self.index)), dtype=np.float32)
        for row, text in enumerate(documents):
            counts = Counter(t for t in text.split() if t in self.index)
            for term, count in counts.items():
                out[row, self.index[term]] = 1.0 + math.log(count)
        out *= self.idf
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def features(vectors: np.ndarray, terms: Sequence[str], vocabulary: Vocabulary | None, *, tfidf_weight: float) -> np.ndarray:
    """What the linear model sees: the vector, then the weighted TF-IDF of the terms, then a constant 1."""
    parts = [np.asarray(vectors, dtype=np.float32)]
    if vocabulary is not None and vocabulary.index and tfidf_weight > 0:
        parts.append(tfidf_weight * vocabulary.transform(terms))
    parts.append(np.ones((len(parts[0]), 1), dtype=np.float32))
    return np.hstack(parts)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def fit_softmax(
    x: np.ndarray, y: np.ndarray, classes: int, *, l2: float = L2, iterations: int = ITERATIONS, tolerance: float = 1e-4
) -> np.ndarray:
    """Multinomial logistic regression weights (features x classes) by Nesterov-accelerated gradient descent.

    The last column of x must be the constant 1 (the bias). The features are centred while fitting
    (it makes the problem far better conditioned, so far fewer steps are needed), and the centring
    is folded back into the bias row, so the weights apply to x as given.
    """
    n, d = x.shape
    mean = x.mean(axis=0)
    mean[-1] = 0.0
    xc = x - mean
    targets = np.zeros((n, classes), dtype=np.float32)
    targets[np.arange(n), y] = 1.0
    # The cross-entropy's gradient is Lipschitz with at most 0.5 * the largest eigenvalue of x'x / n (+ l2).
    probe = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    for _ in range(15):
        probe = xc.T @ (xc @ probe) / n
        probe /= np.linalg.norm(probe) + 1e-12
    top = float(probe @ (xc.T @ (xc @ probe)) / n)
    step = 1.0 / (0.5 * top + l2)
    weights = np.zeros((d, classes), dtype=np.float32)
    previous = weights
    for t in range(1, iterations + 1):
        look = weights + (t - 1) / (t + 2) * (weights - previous)
        gradient = xc.T @ (softmax(xc @ look) - targets) / n + l2 * look
        previous, weights = weights, (look - step * gradient).astype(np.float32)
        if float(np.abs(gradient).max()) < tolerance:
            break
    weights[-1] -= mean @ weights
    return weights


@dataclass(frozen=True)
class LinearModel:
    """One field's classes and the weights that score them."""

    classes: list[str]
    weights: np.ndarray

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return softmax(x @ self.weights)


def fit_linear(x: np.ndarray, labels: Sequence[str], *, l2: float = L2, iterations: int = ITERATIONS) -> LinearModel:
    """A linear model of one field from feature rows and their labels."""
    classes = sorted(set(labels))
    lookup = {c: i for i, c in enumerate(classes)}
    y = np.array([lookup[label] for label in labels], dtype=np.int64)
    return LinearModel(classes=classes, weights=fit_softmax(x, y, len(classes), l2=l2, iterations=iterations))


def vote(similarities: Sequence[float], labels: Sequence[str | None], *, power: float = KNN_POWER) -> dict[str, float]:
    """Similarity-weighted vote shares of the labelled neighbours (unlabelled ones do not vote)."""
    totals: dict[str, float] = {}
    for similarity, label in zip(similarities, labels, strict=True):
        if label is None:
            continue
        totals[label] = totals.get(label, 0.0) + max(float(similarity), 0.0) ** power
    mass = sum(totals.values())
    if mass <= 0:
        return {}
    return {label: weight / mass for label, weight in sorted(totals.items(), key=lambda kv: -kv[1])}


def tag_scores(similarities: Sequence[float], tags: Sequence[Sequence[str]], *, power: float = KNN_POWER) -> dict[str, float]:
    """For each tag among the neighbours, the similarity-weighted share of neighbours that carry it."""
    weights = [max(float(s), 0.0) ** power for s in similarities]
    mass = sum(weights)
    if mass <= 0:
        return {}
    totals: dict[str, float] = {}
    for weight, ticket_tags in zip(weights, tags, strict=True):
        for tag in set(ticket_tags):
            totals[tag] = totals.get(tag, 0.0) + weight
    return {tag: w / mass for tag, w in sorted(totals.items(), key=lambda kv: -kv[1])}
