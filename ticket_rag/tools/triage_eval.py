"""`ticket-rag eval-triage FILE`: how well triage predicts queue, priority, type and tags, by k-fold.

The file is read with the importer's column mapping (a preset or --map field=column), each row
validated with the API's schema. Every ticket is embedded with the service's model (cached on disk)
and its keyword terms computed with the service's analyzer: exactly what the store keeps. Then, fold
by fold, the service's own classifier code (tickets/classifier.py) learns from the other folds and
predicts the held-out tickets, so every reported number is out-of-sample.

Per field: accuracy, macro-F1, the majority-class baseline, accuracy when only the 30/50/80% most
confident predictions are kept, expected calibration error, and the lowest confidence floor whose
kept predictions are 90% right (with the coverage it leaves), checked by choosing the floor on the
other folds and measuring it on the held-out one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from pydantic import ValidationError

from ticket_rag.embeddings.cache import CachedEmbeddings
from ticket_rag.errors import ConfigError
from ticket_rag.settings import Settings
from ticket_rag.tickets.keywords import KeywordAnalyzer
from ticket_rag.tickets.schemas import TicketCreate
from ticket_rag.tickets.store import embedded_text
from ticket_rag.tickets.triage import FIELDS, Prediction, TriageParams, floor_for, fold_of, out_of_fold, ticket_terms
from ticket_rag.tools.duplicates_eval import embed
from ticket_rag.tools.evaluation import source_commit
from ticket_rag.tools.importer import map_row, read_rows

logger = logging.getLogger(__name__)

COVERAGES = (0.3, 0.5, 0.8)
TARGET_ACCURACY = 0.9
METHODS = ("vote", "linear", "blend")


@dataclass(frozen=True)
class Labelled:
    """The tickets of a file as triage sees them: vectors, terms, and the labels the file has."""

    vectors: np.ndarray
    terms: list[str]
    labels: dict[str, list[str | None]]
    tags: list[list[str]]
    failures: list[str]


def load_labelled(
    path: Path, mapping: Mapping[str, Any], *, embeddings: Embeddings, analyzer: KeywordAnalyzer, fmt: str | None = None
) -> Labelled:
    """Read, map and validate the file's rows; embed them (cached); keep the fields the mapping labels."""
    tickets: list[TicketCreate] = []
    failures: list[str] = []
    for row in read_rows(path, fmt):
        try:
            tickets.append(TicketCreate.model_validate(map_row(row.data, mapping)))
        except (ValidationError, ValueError) as exc:
            failures.append(f"line {row.line}: {exc}".splitlines()[0])
    if not tickets:
        raise ConfigError(f"{path}: no row could be read as a ticket ({len(failures)} failed)")
    vectors = embed(embeddings, [embedded_text(t.title, t.description) for t in tickets])
    labels: dict[str, list[str | None]] = {}
    for field in FIELDS:
        if field in mapping:
            labels[field] = [_label(getattr(t, field)) for t in tickets]
    return Labelled(
        vectors=vectors,
        terms=[ticket_terms(analyzer, t.title, t.description) for t in tickets],
        labels=labels,
        tags=[list(t.tags) for t in tickets] if "tags" in mapping else [],
        failures=failures,
    )


def _label(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


# --- metrics -------------------------------------------------------------------------------------------


def macro_f1(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """The unweighted mean of each true class's F1."""
    scores = []
    for label in sorted(set(truth)):
        tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p == label)
        fp = sum(1 for t, p in zip(truth, predicted, strict=True) if t != label and p == label)
        fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p != label)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their size."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high) if low > 0 else (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def accuracy_at_coverage(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """Accuracy of the most confident `coverage` share of predictions."""
    keep = max(1, int(round(coverage * len(confidence))))
    order = np.argsort(-confidence, kind="stable")[:keep]
    return float(correct[order].mean())


def field_metrics(truth: list[str | None], predictions: list[Prediction | None], folds: np.ndarray) -> dict[str, Any]:
    """Every reported number for one field and method, over the tickets that have the label."""
    rows = [i for i, t in enumerate(truth) if t is not None and predictions[i] is not None]
    true = [str(truth[i]) for i in rows]
    predicted = [str(predictions[i].value) for i in rows]  # type: ignore[union-attr]
    confidence = np.array([predictions[i].confidence for i in rows])  # type: ignore[union-attr]
    correct = np.array([t == p for t, p in zip(true, predicted, strict=True)], dtype=np.float64)
    fold = folds[rows]
    # Majority baseline: the most common label of the other folds, for each held-out fold.
    majority_hits = 0
    for k in np.unique(fold):
        others = [t for t, f in zip(true, fold, strict=True) if f != k]
        common = max(set(others), key=others.count)
        majority_hits += sum(1 for t, f in zip(true, fold, strict=True) if f == k and t == common)
    held_out = []
    for k in np.unique(fold):
        chosen = floor_for(confidence[fold != k], correct[fold != k], TARGET_ACCURACY)
        if chosen is None:
            continue
        kept = (fold == k) & (confidence >= chosen)
        held_out.append((kept.sum(), correct[kept].sum(), (fold == k).sum()))
    floor = floor_for(confidence, correct, TARGET_ACCURACY)
    kept_share = float((confidence >= floor).mean()) if floor is not None else 0.0
    return {
        "tickets": len(rows),
        "classes": len(set(true)),
        "accuracy": float(correct.mean()),
        "macro_f1": macro_f1(true, predicted),
        "majority_accuracy": majority_hits / len(rows),
        "accuracy_at_coverage": {f"{int(c * 100)}%": accuracy_at_coverage(confidence, correct, c) for c in COVERAGES},
        "ece": expected_calibration_error(confidence, correct),
        "floor_for_90": floor,
        "coverage_at_floor": kept_share,
        "held_out_floor_check": {
            "accuracy": float(sum(h for _, h, _ in held_out) / max(sum(k for k, _, _ in held_out), 1))
            if held_out
            else None,
            "coverage": float(sum(k for k, _, _ in held_out) / max(sum(n for _, _, n in held_out), 1))
            if held_out
            else 0.0,
        },
    }


def tag_metrics(tags: list[list[str]], predictions: list[Prediction | None], floors: Sequence[float]) -> dict[str, Any]:
    """Micro precision, recall and F1 of the tags suggested at each score floor."""
    out = {}
    for floor in floors:
        tp = fp = fn = 0
        for truth, prediction in zip(tags, predictions, strict=True):
            suggested = {t for t, s in (prediction.scores if prediction else {}).items() if s >= floor}
            tp += len(suggested & set(truth))
            fp += len(suggested - set(truth))
            fn += len(set(truth) - suggested)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        out[f"{floor:g}"] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
    return out


def run_triage_eval(
    *,
    path: Path,
    mapping: Mapping[str, Any],
    settings: Settings,
    embeddings: Embeddings | None = None,
    folds: int = 5,
    fmt: str | None = None,
    params: TriageParams | None = None,
) -> dict[str, Any]:
    """k-fold triage quality on a labelled file; the report as a dict (results.json)."""
    if folds < 2:
        raise ConfigError("--folds must be at least 2")
    params = params or TriageParams.from_settings(settings)
    started = datetime.now(UTC)
    if embeddings is None:
        from ticket_rag.embeddings.model import build_embeddings

        embeddings = build_embeddings(settings)
    cached = CachedEmbeddings.for_settings(embeddings, settings)
    try:
        data = load_labelled(
            path, mapping, embeddings=cached, analyzer=KeywordAnalyzer(settings.keyword_stemmer), fmt=fmt
        )
    finally:
        cached.cache.close()
    if not data.labels and not data.tags:
        raise ConfigError("the mapping labels none of category, priority, type or tags: nothing to evaluate")
    oof = out_of_fold(
        vectors=data.vectors,
        terms=data.terms,
        labels=data.labels,
        tags=data.tags,
        folds=folds,
        params=params,
        methods=METHODS,
    )
    fold = fold_of(len(data.terms), folds)
    fields: dict[str, Any] = {}
    for field, truth in data.labels.items():
        fields[field] = {method: field_metrics(truth, oof[field][method], fold) for method in METHODS}
    report: dict[str, Any] = {
        "file": str(path),
        "tickets": len(data.terms),
        "failed_rows": len(data.failures),
        "folds": folds,
        "model": {"name": settings.embedding_model, "backend": settings.embedding_backend},
        "params": params.as_dict(),
        "fields": fields,
        "tags": tag_metrics(data.tags, oof["tags"]["vote"], (0.3, 0.5, 0.7)) if data.tags else None,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": source_commit(),
    }
    return report


def markdown_report(report: Mapping[str, Any]) -> str:
    """The per-field tables of a triage report."""

    def pct(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else "—"

    lines = [
        f"# Triage quality: {Path(report['file']).name}",
        "",
        f"{report['tickets']} tickets ({report['failed_rows']} rows not readable), {report['folds']}-fold "
        "cross-validation; "
        f"model `{report['model']['name']}` ({report['model']['backend']}). `vote`: similarity-weighted vote of the "
        f"{report['params']['k']} nearest tickets; `linear`: logistic regression on the vector + TF-IDF of the "
        "stemmed terms; "
        f"`blend`: their average weighted {report['params']['blend_vote']:g} for the vote.",
        "",
        "| field | method | accuracy | macro-F1 | majority | acc@30% | acc@50% | acc@80% | ECE | floor for 90% | "
        "coverage there | held-out acc / cov |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for field, methods in report["fields"].items():
        for method, m in methods.items():
            at = m["accuracy_at_coverage"]
            check = m["held_out_floor_check"]
            lines.append(
                f"| {field} | {method} | {pct(m['accuracy'])} | {pct(m['macro_f1'])} | {pct(m['majority_accuracy'])} "
                f"| {pct(at['30%'])} | {pct(at['50%'])} | {pct(at['80%'])} | {pct(m['ece'])} | "
                f"{pct(m['floor_for_90'])} "
                f"| {pct(m['coverage_at_floor'])} | {pct(check['accuracy'])} / {pct(check['coverage'])} |"
            )
    if report.get("tags"):
        lines += [
            "",
            "Tags (vote of the nearest tickets; a tag is suggested when its weighted share reaches the floor):",
            "",
            "| tag floor | precision | recall | F1 |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for floor, m in report["tags"].items():
            lines.append(f"| {floor} | {pct(m['precision'])} | {pct(m['recall'])} | {pct(m['f1'])} |")
    commit = f" at commit {report['commit']}" if report.get("commit") else ""
    lines += ["", f"Run {report['started_at']} to {report['finished_at']}{commit}.", ""]
    return "\n".join(lines)
