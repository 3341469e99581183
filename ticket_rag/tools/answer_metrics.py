"""What `ticket-rag eval-answers` measures in one answer: citations, grounding, degenerate output, escalation.

Pure functions over the chain's output, so the harness and its fault tests share them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from chains.evidence import roc_auc
from chains.grounding import facts, ungrounded
from chains.guard import degeneracy

_CITED = re.compile(r"\[(#[0-9a-f]{8})\]", re.I)
_NOISE = re.compile(r"\[#[0-9a-f]{8}\]|^From past tickets:|^- (?:Resolution|Reported): ", re.M | re.I)


def cited_refs(answer: str) -> list[str]:
    """The ticket references an answer cites, in order, once each."""
    return list(dict.fromkeys(m.group(1).lower() for m in _CITED.finditer(answer)))


def citation_scores(
    cited: Sequence[str], retrieved: Sequence[str], relevant: set[str] | None
) -> dict[str, float | None]:
    """Precision: cited tickets that were retrieved (and relevant, when judgements exist). Recall: relevant
    retrieved tickets that are cited. Validity: cited tickets that were retrieved at all."""
    retrieved_set = set(retrieved)
    valid = [c for c in cited if c in retrieved_set]
    good = [c for c in valid if relevant is None or c in relevant]
    targets = retrieved_set if relevant is None else retrieved_set & relevant
    return {
        "citation_validity": len(valid) / len(cited) if cited else None,
        "citation_precision": len(good) / len(cited) if cited else None,
        "citation_recall": len(targets & set(cited)) / len(targets) if targets and relevant is not None else None,
    }


def grounding_score(answer: str, cited_texts: Iterable[str]) -> tuple[float | None, list[str]]:
    """Share of the answer's facts (numbers, versions, codes, identifiers, quotes) found in a cited ticket,
    and the ones that were not; None when the answer states no such fact."""
    found = facts(answer)
    if not found:
        return None, []
    missing = ungrounded(answer, cited_texts)
    return (len(found) - len(missing)) / len(found), missing


def degenerate_reason(answer: str) -> str | None:
    """Why this answer is degenerate as the client received it, else None."""
    problem = degeneracy(answer)
    return f"{problem.kind}: {problem.detail}" if problem else None


def quoted_degenerate_reason(answer: str) -> str | None:
    """The same, for an answer that quotes tickets (extractive, listing): each ticket's quoted text is checked
    on its own, so two tickets that share a stock sentence ("We appreciate your patience.") are not a loop,
    while a loop inside one ticket's quote, or link debris anywhere, still is."""
    by_ticket: dict[str, list[str]] = {}
    for line in answer.split("\n"):
        refs = cited_refs(line)
        by_ticket.setdefault(refs[0] if refs else "", []).append(line)
    for lines in by_ticket.values():
        reason = degenerate_reason("\n".join(lines))
        if reason:
            return reason
    return None


_REFUSAL = re.compile(
    r"\b(?:I(?:'m| am) (?:unable|not able)|I (?:can(?:no|')t|cannot|won't) (?:help|provide|answer|assist)|"
    r"as an AI\b|I do not have (?:access|information))",
    re.I,
)


def is_refusal(answer: str) -> bool:
    """The model declined to answer (without escalating): retrieved tickets went unused."""
    return bool(_REFUSAL.search(answer))


def plain_text(answer: str) -> str:
    """The answer without references and the extractive answer's labels, for comparing meaning."""
    return " ".join(_NOISE.sub(" ", answer).split())


def escalation_scores(escalated: Sequence[bool], should: Sequence[bool], risk: Sequence[float]) -> dict[str, Any]:
    """Escalation as a classifier of unanswerable questions: precision, recall, F1, and the AUC of the risk score."""
    tp = sum(e and s for e, s in zip(escalated, should, strict=True))
    fp = sum(e and not s for e, s in zip(escalated, should, strict=True))
    fn = sum(s and not e for e, s in zip(escalated, should, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc = roc_auc(list(risk), [int(s) for s in should])
    return {
        "escalated": sum(escalated),
        "questions": len(should),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "auc": None if math.isnan(auc) else round(auc, 4),
    }


def summarise(values: Iterable[float | None]) -> float | None:
    """The mean of the values that apply (None: no answer had one)."""
    present = [v for v in values if v is not None]
    return round(float(np.mean(present)), 4) if present else None


def percentile_ms(seconds: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(seconds, q)) * 1000, 1) if seconds else None


def threshold_curve(risk: Sequence[float], should: Sequence[bool], points: int = 11) -> list[dict[str, float]]:
    """Precision and recall of escalating when the evidence score is below each threshold."""
    rows = []
    for threshold in np.linspace(0.0, 1.0, points):
        escalated = [1 - r < threshold for r in risk]
        s = escalation_scores(escalated, should, risk)
        rows.append(
            {"threshold": round(float(threshold), 2), "precision": s["precision"], "recall": s["recall"], "f1": s["f1"]}
        )
    return rows


def mean_of(records: Sequence[Mapping[str, Any]], key: str) -> float | None:
    return summarise(r.get(key) for r in records)
