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

# Starting values, not tuned on data; a nested cross-validation of L2 and the blend is in docs/triage.md.
KNN_K = 10
KNN_POWER = 4.0  # a neighbour's vote weighs similarity ** KNN_POWER
TFIDF_FEATURES = 3000  # the most frequent terms (document frequency >= 2) that become features
TFIDF_WEIGHT = 1.0  # the TF-IDF block's scale against the (unit-length) vector
L2 = 1e-4  # the penalty of the logistic regression, per example (nested CV, docs/triage.md)
ITERATIONS = 500


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

    def transform(self, documents: Sequence[str]) -> Sparse:
        """Sublinear TF-IDF rows, L2-normalised (an empty row for a text with no known term)."""
        indptr: list[int] = [0]
        indices: list[int] = []
        data: list[float] = []
        for text in documents:
            counts = Counter(t for t in text.split() if t in self.index)
            columns = [self.index[t] for t in counts]
            values = np.array([(1.0 + math.log(c)) for c in counts.values()], dtype=np.float32) * self.idf[columns]
            norm = float(np.linalg.norm(values)) if len(values) else 0.0
            indices.extend(columns)
            data.extend((values / norm).tolist() if norm else [])
            indptr.append(len(indices))
        return Sparse(
            indptr=np.array(indptr, dtype=np.int64),
            indices=np.array(indices, dtype=np.int64),
            data=np.array(data, dtype=np.float32),
            width=len(self.index),
        )


@dataclass(frozen=True)
class Sparse:
    """Rows in compressed sparse row form, with the two products the fit needs (numpy only)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    width: int

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def rows(self, selected: Sequence[int] | np.ndarray) -> Sparse:
        starts, ends = self.indptr[selected], self.indptr[np.asarray(selected) + 1]
        pick = (
            np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)])
            if len(starts)
            else np.array([], dtype=np.int64)
        )
        indptr = np.concatenate([[0], np.cumsum(ends - starts)])
        return Sparse(indptr=indptr, indices=self.indices[pick], data=self.data[pick], width=self.width)

    def _row_ids(self) -> np.ndarray:
        return np.repeat(np.arange(len(self)), np.diff(self.indptr))

    def dot(self, weights: np.ndarray) -> np.ndarray:
        """self @ weights."""
        out = np.zeros((len(self), weights.shape[1]), dtype=np.float32)
        return _segment_sums(out, self.data[:, None] * weights[self.indices], self.indptr)

    def tdot(self, values: np.ndarray) -> np.ndarray:
        """self.T @ values."""
        order = np.argsort(self.indices, kind="stable")
        columns = self.indices[order]
        starts = np.searchsorted(columns, np.arange(self.width + 1))
        out = np.zeros((self.width, values.shape[1]), dtype=np.float32)
        return _segment_sums(out, (self.data[:, None] * values[self._row_ids()])[order], starts)


def _segment_sums(out: np.ndarray, parts: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """out[i] = the sum of parts[bounds[i]:bounds[i + 1]] (np.add.reduceat, which mishandles empty segments)."""
    filled = np.flatnonzero(np.diff(bounds) > 0)
    if len(filled):
        out[filled] = np.add.reduceat(parts, bounds[filled], axis=0)
    return out


@dataclass(frozen=True)
class Design:
    """What the linear model sees: a dense block (the vector, then a constant 1) and an optional sparse TF-IDF block."""

    dense: np.ndarray
    sparse: Sparse | None = None

    def __len__(self) -> int:
        return len(self.dense)

    @property
    def width(self) -> int:
        return int(self.dense.shape[1]) + (self.sparse.width if self.sparse is not None else 0)

    def rows(self, selected: Sequence[int] | np.ndarray) -> Design:
        return Design(self.dense[selected], self.sparse.rows(selected) if self.sparse is not None else None)

    def dot(self, weights: np.ndarray) -> np.ndarray:
        d = self.dense.shape[1]
        out: np.ndarray = self.dense @ weights[:d]
        return out + self.sparse.dot(weights[d:]) if self.sparse is not None else out

    def tdot(self, values: np.ndarray) -> np.ndarray:
        top = self.dense.T @ values
        return np.vstack([top, self.sparse.tdot(values)]) if self.sparse is not None else top


def features(
    vectors: np.ndarray, terms: Sequence[str], vocabulary: Vocabulary | None, *, tfidf_weight: float
) -> Design:
    """The vector and a constant 1 (dense), and the weighted TF-IDF of the terms (sparse)."""
    dense = np.hstack([np.asarray(vectors, dtype=np.float32), np.ones((len(vectors), 1), dtype=np.float32)])
    sparse = None
    if vocabulary is not None and vocabulary.index and tfidf_weight > 0:
        tfidf = vocabulary.transform(terms)
        sparse = Sparse(indptr=tfidf.indptr, indices=tfidf.indices, data=tfidf.data * tfidf_weight, width=tfidf.width)
    return Design(dense, sparse)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def fit_softmax(
    x: Design, y: np.ndarray, classes: int, *, l2: float = L2, iterations: int = ITERATIONS, tolerance: float = 1e-4
) -> np.ndarray:
    """Multinomial logistic regression weights (features x classes) by Nesterov-accelerated gradient descent.

    The dense block is centred while fitting (far better conditioned, so far fewer steps), and the
    centring is folded back into the bias row, so the weights apply to x as given.
    """
    n = len(x)
    mean = x.dense.mean(axis=0)
    mean[-1] = 0.0  # the constant column (the bias) stays 1
    xc = Design(x.dense - mean, x.sparse)
    targets = np.zeros((n, classes), dtype=np.float32)
    targets[np.arange(n), y] = 1.0
    # The cross-entropy's gradient is Lipschitz with at most 0.5 * the largest eigenvalue of x'x / n (+ l2).
    probe = np.random.default_rng(0).standard_normal((x.width, 1)).astype(np.float32)
    for _ in range(15):
        probe = (xc.tdot(xc.dot(probe)) / n).astype(np.float32)
        probe /= np.linalg.norm(probe) + 1e-12
    top = float((probe.T @ xc.tdot(xc.dot(probe)))[0, 0] / n)
    step = 1.0 / (0.5 * top + l2)
    weights = np.zeros((x.width, classes), dtype=np.float32)
    previous = weights
    for t in range(1, iterations + 1):
        look = weights + (t - 1) / (t + 2) * (weights - previous)
        gradient = xc.tdot(softmax(xc.dot(look)) - targets) / n + l2 * look
        previous, weights = weights, (look - step * gradient).astype(np.float32)
        if float(np.abs(gradient).max()) < tolerance:
            break
    d = x.dense.shape[1]
    weights[d - 1] -= mean @ weights[:d]
    return weights


@dataclass(frozen=True)
class LinearModel:
    """One field's classes and the weights that score them."""

    classes: list[str]
    weights: np.ndarray

    def probabilities(self, x: Design) -> np.ndarray:
        return softmax(x.dot(self.weights))


def fit_linear(x: Design, labels: Sequence[str], *, l2: float = L2, iterations: int = ITERATIONS) -> LinearModel:
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


def tag_scores(
    similarities: Sequence[float], tags: Sequence[Sequence[str]], *, power: float = KNN_POWER
) -> dict[str, float]:
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
