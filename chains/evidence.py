"""The evidence score: how likely the retrieved tickets answer the question, from more than the top cosine.

Features (all from one retrieval, no extra query):
- top_cosine: the best ticket's cosine to the question;
- margin: best minus second-best ticket cosine; gap_to_rest: best minus the mean of the others
  (an answering ticket stands out; without one the hits are a flat cluster of near-topics);
- best_sentence: the largest share of the question's words, weighted by rarity, that one sentence holds
  (an answer is usually one sentence; a near-topic ticket matches only as a whole); sentence_margin: the
  best sentence's share minus the best share in another ticket;
- coverage: share of the question's stemmed words found in the best ticket; rare_coverage: the same,
  each word weighted by how few of the retrieved tickets contain it (words every hit shares are the topic,
  words only one hit has are the specifics);
- agreement: 1 when the hybrid ranking's first ticket (vector and BM25 fused) is also the best by cosine.

A logistic model turns them into a probability; its weights and threshold are fitted by
`ticket-rag eval-answers --fit-escalation` (ticket_rag/tools/answer_eval.py) and committed in
chains/evidence_model.json with how they were chosen (docs/answers.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ticket_rag.errors import ConfigError
from ticket_rag.settings import Settings

FEATURES = (
    "top_cosine",
    "margin",
    "gap_to_rest",
    "best_sentence",
    "sentence_margin",
    "coverage",
    "rare_coverage",
    "agreement",
    "best_rare_coverage",
    "bigram_coverage",
    "best_bigram_coverage",
    "unexplained",
    "cosine_z",
    "question_terms",
)
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "evidence_model.json"


def evidence_features(
    *,
    similarities: Sequence[float],
    question_terms: set[str],
    ticket_terms: Sequence[set[str]],
    sentence_best: Mapping[int, float],
    question_sequence: Sequence[str] = (),
    ticket_sequences: Sequence[Sequence[str]] = (),
) -> dict[str, float]:
    """The features of one retrieval: hits in the retriever's (hybrid) order, their cosines and stemmed words,
    and the best sentence match of each ticket (by index)."""
    if not similarities:
        return dict.fromkeys(FEATURES, 0.0)
    order = sorted(range(len(similarities)), key=lambda i: -similarities[i])
    top = order[0]
    cos = [similarities[i] for i in order]
    second = cos[1] if len(cos) > 1 else 0.0
    rest = float(np.mean(cos[1:])) if len(cos) > 1 else 0.0
    sentences = sorted(sentence_best.items(), key=lambda item: -item[1])
    best_sentence = sentences[0][1] if sentences else 0.0
    other = next((v for i, v in sentences[1:] if i != sentences[0][0]), 0.0) if sentences else 0.0
    terms = question_terms
    found = ticket_terms[top] if ticket_terms else set()
    coverage = len(terms & found) / len(terms) if terms else 0.0
    n = len(ticket_terms)
    weights = {t: math.log(1 + n / (1 + sum(t in d for d in ticket_terms))) for t in terms}
    total = sum(weights.values())
    rare = sum(w for t, w in weights.items() if t in found) / total if total else 0.0
    per_ticket = [sum(w for t, w in weights.items() if t in d) / total if total else 0.0 for d in ticket_terms]
    union = set().union(*ticket_terms) if ticket_terms else set()
    unexplained = sum(w for t, w in weights.items() if t not in union) / total if total else 0.0
    pairs = set(zip(question_sequence, question_sequence[1:], strict=False))
    ticket_pairs = [set(zip(seq, seq[1:], strict=False)) for seq in ticket_sequences]
    bigram = [len(pairs & tp) / len(pairs) if pairs else 0.0 for tp in ticket_pairs]
    spread = float(np.std(cos)) if len(cos) > 1 else 0.0
    return {
        "top_cosine": cos[0],
        "margin": cos[0] - second,
        "gap_to_rest": cos[0] - rest,
        "best_sentence": best_sentence,
        "sentence_margin": best_sentence - other,
        "coverage": coverage,
        "rare_coverage": rare,
        "agreement": 1.0 if top == 0 else 0.0,
        "best_rare_coverage": max(per_ticket, default=0.0),
        "bigram_coverage": bigram[top] if bigram else 0.0,
        "best_bigram_coverage": max(bigram, default=0.0),
        "unexplained": unexplained,
        "cosine_z": (cos[0] - float(np.mean(cos))) / spread if spread > 0 else 0.0,
        "question_terms": math.log1p(len(terms)),
    }


@dataclass(frozen=True)
class EvidenceModel:
    """A standardised logistic model over FEATURES, and the probability below which the chain escalates."""

    weights: dict[str, float]
    bias: float
    means: dict[str, float]
    scales: dict[str, float]
    threshold: float
    provenance: dict[str, Any] = field(default_factory=dict)

    def score(self, features: Mapping[str, float]) -> float:
        """The probability that the retrieved tickets answer the question."""
        z = self.bias + sum(
            self.weights[name] * (features[name] - self.means[name]) / self.scales[name] for name in self.weights
        )
        return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "bias": self.bias,
            "means": self.means,
            "scales": self.scales,
            "threshold": self.threshold,
            "provenance": self.provenance,
        }


def load_evidence_model(path: Path = DEFAULT_MODEL_PATH) -> EvidenceModel:
    """The committed (or given) calibration; a missing or malformed file is a ValueError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return EvidenceModel(
            weights={k: float(v) for k, v in data["weights"].items() if k in FEATURES},
            bias=float(data["bias"]),
            means={k: float(v) for k, v in data["means"].items()},
            scales={k: float(v) or 1.0 for k, v in data["scales"].items()},
            threshold=float(data["threshold"]),
            provenance=dict(data.get("provenance") or {}),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"evidence model {path}: {exc}") from None


def fit_logistic(
    rows: Sequence[Mapping[str, float]], labels: Sequence[int], *, l2: float = 1.0, names: Sequence[str] = FEATURES
) -> EvidenceModel:
    """L2-regularised logistic regression by Newton's method on standardised features (threshold 0.5 for now)."""
    x = np.asarray([[row[n] for n in names] for row in rows], dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    means = x.mean(axis=0)
    scales = x.std(axis=0)
    scales[scales == 0] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - means) / scales])
    beta = np.zeros(z.shape[1])
    penalty = np.eye(z.shape[1]) * l2
    penalty[0, 0] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -40, 40)))
        gradient = z.T @ (p - y) + penalty @ beta
        hessian = (z.T * (p * (1 - p))) @ z + penalty
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return EvidenceModel(
        weights={n: float(w) for n, w in zip(names, beta[1:], strict=True)},
        bias=float(beta[0]),
        means={n: float(m) for n, m in zip(names, means, strict=True)},
        scales={n: float(s) for n, s in zip(names, scales, strict=True)},
        threshold=0.5,
    )


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: the chance a positive scores above a negative (ties count half)."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def evidence_options(settings: Settings) -> dict[str, Any]:
    """The ChainOptions fields of escalation: RAG_EVIDENCE_MODEL, RAG_ESCALATION_THRESHOLD, RAG_SUFFICIENCY_CHECK."""
    try:
        model = load_evidence_model(settings.rag_evidence_model)
    except ValueError as exc:
        raise ConfigError(f"RAG_EVIDENCE_MODEL: {exc}") from None
    return {
        "evidence_model": model,
        "escalation_threshold": settings.rag_escalation_threshold,
        "keyword_stemmer": settings.keyword_stemmer,
        "sufficiency_check": settings.rag_sufficiency_check,
    }
