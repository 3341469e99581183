"""`ticket-rag eval-duplicates`: how well "possible duplicate" flags work, and where DUPLICATE_THRESHOLD should be.

Reads the labelled sets described in ../shared/datasets/README.md:
- pair files (`text_a`, `text_b`, `label`): GitBugs and AskUbuntu dev pairs;
- the ranking form: each GitBugs dev query against every other report of its own project (the
  realistic base rate: a handful of duplicates among ~1,800 reports).

Texts are embedded with the service's model and backend (cached on disk), so a score here is the
`similarity` POST /tickets/ compares with DUPLICATE_THRESHOLD. Besides the cosine alone, it scores
the cosine plus a keyword signal (the TF-IDF cosine of the stemmed terms, IDF from the project's
reports), which is what duplicates.py can add; whichever is used, the threshold is chosen by
k-fold cross-validation on the GitBugs dev pairs (the F1-best threshold of the other folds,
applied to the held-out fold) and then reported, unchanged, on every other set.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from ticket_rag.embeddings.cache import CachedEmbeddings
from ticket_rag.errors import ConfigError
from ticket_rag.settings import Settings
from ticket_rag.tickets.classifier import Vocabulary
from ticket_rag.tickets.duplicates import KEYWORD_WEIGHT, combined_score, keyword_similarity
from ticket_rag.tickets.keywords import KeywordAnalyzer
from ticket_rag.tools.evaluation import source_commit

logger = logging.getLogger(__name__)

csv.field_size_limit(sys.maxsize)
TEXT_MAX = 4000  # as the dev pairs were cut


@dataclass(frozen=True)
class Scored:
    """Scores (one per pair or candidate) and whether each is a true duplicate."""

    cosine: np.ndarray
    keyword: np.ndarray
    label: np.ndarray
    group: np.ndarray  # the query a candidate belongs to (ranking form), or the pair index
    # How many candidates each one stands for: 1, except the sampled non-duplicates of a sampled ranking form.
    weight: np.ndarray | None = None

    def score(self, signal: str) -> np.ndarray:
        return self.cosine if signal == "cosine" else combined_score(self.cosine, self.keyword)


def embed(embeddings: Embeddings, texts: Sequence[str], chunk: int = 128) -> np.ndarray:
    """Vectors in chunks, so the disk cache keeps what an interrupted run already computed."""
    parts = [embeddings.embed_documents(list(texts[i : i + chunk])) for i in range(0, len(texts), chunk)]
    return np.asarray([v for part in parts for v in part], dtype=np.float32)


def _collapse(text: str) -> str:
    return " ".join(text.split())[:TEXT_MAX]


def read_pairs(path: Path) -> list[tuple[str, str, int]]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    try:
        return [(_collapse(r["text_a"]), _collapse(r["text_b"]), int(r["label"])) for r in rows]
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: expected columns text_a, text_b, label (0 or 1): {exc}") from None


def score_pairs(pairs: Sequence[tuple[str, str, int]], embeddings: Embeddings, analyzer: KeywordAnalyzer) -> Scored:
    """Cosine and keyword similarity of each pair (IDF from all the file's texts)."""
    texts = list(dict.fromkeys(t for a, b, _ in pairs for t in (a, b)))
    vectors = dict(zip(texts, embed(embeddings, texts), strict=True))
    terms = {t: analyzer.terms(t) for t in texts}
    vocabulary = Vocabulary.build(list(terms.values()), size=0, min_df=1)
    cosine = np.array([float(vectors[a] @ vectors[b]) for a, b, _ in pairs])
    keyword = np.array([keyword_similarity(terms[a], terms[b], vocabulary) for a, b, _ in pairs])
    label = np.array([lab for _, _, lab in pairs])
    return Scored(cosine=cosine, keyword=keyword, label=label, group=np.arange(len(pairs)))


def score_ranking(
    dataset: Path, embeddings: Embeddings, analyzer: KeywordAnalyzer, *, sample: int | None = None
) -> tuple[Scored, dict[str, Any]]:
    """Every dev query against every other report of its project: one scored candidate per (query, report).

    With sample, only the queries, their duplicates and `sample` other reports per project (seeded)
    are embedded; each sampled non-duplicate then stands for (non-duplicates in the project) /
    (sampled ones), so precision and AP estimate the full project's base rate.
    """
    docs: dict[str, str] = {}
    with (dataset / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                docs[d["_id"]] = _collapse(f"{d.get('title') or ''} {d.get('text') or ''}")
    queries: dict[str, set[str]] = {}
    with (dataset / "dev_queries.tsv").open(encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            queries[r["query_id"]] = set(r["relevant_ids"].split())
    ids = list(docs)
    full_size = {p: sum(1 for i in ids if i.split("-", 1)[0] == p) for p in {i.split("-", 1)[0] for i in ids}}
    if sample is not None:
        needed = set(queries) | {r for relevant in queries.values() for r in relevant}
        rng = random.Random(0)
        kept = set(needed)
        for p in sorted(full_size):
            others = sorted(i for i in ids if i.split("-", 1)[0] == p and i not in needed)
            kept |= set(rng.sample(others, min(sample, len(others))))
        ids = [i for i in ids if i in kept]
    vectors = embed(embeddings, [docs[i] for i in ids])
    position = {doc_id: n for n, doc_id in enumerate(ids)}
    project = np.array([doc_id.split("-", 1)[0] for doc_id in ids])
    terms = [analyzer.terms(docs[i]) for i in ids]
    vocabularies = {
        p: Vocabulary.build([terms[n] for n in np.flatnonzero(project == p)], size=0, min_df=1) for p in set(project)
    }
    cos, kw, lab, grp, wt = [], [], [], [], []
    for g, (query, relevant) in enumerate(queries.items()):
        q = position[query]
        candidates = [n for n in np.flatnonzero(project == project[q]) if n != q]
        negatives = sum(1 for n in candidates if ids[n] not in relevant)
        negative_weight = (full_size[project[q]] - 1 - len(relevant)) / negatives if negatives else 1.0
        sims = vectors[candidates] @ vectors[q]
        vocabulary = vocabularies[project[q]]
        # The keyword signal only for the top 100 by cosine (what the service can afford); 0 below.
        top = set(np.argsort(-sims)[:100].tolist())
        for j, n in enumerate(candidates):
            cos.append(float(sims[j]))
            kw.append(keyword_similarity(terms[q], terms[n], vocabulary) if j in top else 0.0)
            lab.append(int(ids[n] in relevant))
            grp.append(g)
            wt.append(1.0 if ids[n] in relevant else negative_weight)
    info = {
        "queries": len(queries),
        "documents": len(ids),
        "corpus": sum(full_size.values()),
        "sample_per_project": sample,
        "candidates": len(cos),
        "duplicates": int(sum(lab)),
    }
    return Scored(np.array(cos), np.array(kw), np.array(lab), np.array(grp), np.array(wt)), info


# --- metrics --------------------------------------------------------------------------------------------


def average_precision(scores: np.ndarray, labels: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Mean of the precision at each true duplicate, ranking by score (each candidate counted `weight` times)."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] == 1
    if not hits.any():
        return 0.0
    counted = np.ones(len(order)) if weight is None else weight[order]
    precision = np.cumsum(hits) / np.cumsum(counted)
    return float(precision[hits].mean())


def prf(scores: np.ndarray, labels: np.ndarray, threshold: float, weight: np.ndarray | None = None) -> dict[str, float]:
    """Precision, recall and F1 of flagging at the threshold (false positives counted `weight` times)."""
    flagged = scores >= threshold
    counted = np.ones(len(scores)) if weight is None else weight
    tp = int((flagged & (labels == 1)).sum())
    fp = float(counted[flagged & (labels == 0)].sum())
    fn = int((~flagged & (labels == 1)).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "flagged": round(tp + fp)}


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold with the highest F1, placed halfway between the two scores it separates."""
    values = np.unique(scores)
    best, best_f1 = float(values[-1]), -1.0
    for low, high in zip(values[:-1], values[1:], strict=True):
        cut = (low + high) / 2
        f1 = prf(scores, labels, cut)["f1"]
        if f1 > best_f1:
            best, best_f1 = float(cut), f1
    return best


def cross_validate(scored: Scored, *, folds: int, seed: int = 0) -> dict[str, Any]:
    """Threshold chosen on k-1 folds (stratified), tested on the held-out fold; the counts pooled."""
    rng = random.Random(seed)
    fold = np.zeros(len(scored.label), dtype=np.int64)
    for value in (0, 1):
        members = list(np.flatnonzero(scored.label == value))
        rng.shuffle(members)
        for rank, index in enumerate(members):
            fold[index] = rank % folds
    out: dict[str, Any] = {}
    for signal in ("cosine", "cosine+keyword"):
        scores = scored.score(signal)
        tp = fp = fn = 0
        chosen = []
        for k in range(folds):
            train, test = fold != k, fold == k
            t = best_threshold(scores[train], scored.label[train])
            chosen.append(round(t, 4))
            flagged = scores[test] >= t
            tp += int((flagged & (scored.label[test] == 1)).sum())
            fp += int((flagged & (scored.label[test] == 0)).sum())
            fn += int((~flagged & (scored.label[test] == 1)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        out[signal] = {
            "fold_thresholds": chosen,
            "held_out": {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0},
            "threshold_on_all": best_threshold(scores, scored.label),
        }
    return out


def summarise(scored: Scored, *, threshold: float, signal: str, ranking: bool) -> dict[str, Any]:
    scores = scored.score(signal)
    w = scored.weight
    out: dict[str, Any] = {
        "average_precision": average_precision(scores, scored.label, w),
        **prf(scores, scored.label, threshold, w),
    }
    if ranking:
        aps = [
            average_precision(
                scores[scored.group == g], scored.label[scored.group == g], None if w is None else w[scored.group == g]
            )
            for g in np.unique(scored.group)
        ]
        out["mean_average_precision"] = float(np.mean(aps))
        # Recall of the duplicates among each query's top 5 (what POST /tickets/ shows as similar).
        found = total = 0
        for g in np.unique(scored.group):
            members = np.flatnonzero(scored.group == g)
            top = members[np.argsort(-scores[members])[:5]]
            found += int(scored.label[top].sum())
            total += int(scored.label[members].sum())
        out["recall_at_5"] = found / total if total else 0.0
    return out


def run_duplicates_eval(
    *,
    dataset_dir: Path,
    settings: Settings,
    pairs: Path | None = None,
    embeddings: Embeddings | None = None,
    folds: int = 5,
    ranking: bool = True,
    ranking_sample: int | None = None,
) -> dict[str, Any]:
    """Score every labelled set, choose the threshold by cross-validation on GitBugs pairs, report both signals.

    With `pairs` (a team's own labelled pairs, the same TSV format) only that file is scored and the threshold is
    chosen on it."""
    gitbugs, askubuntu = dataset_dir / "gitbugs", dataset_dir / "askubuntu"
    if pairs is not None and not pairs.is_file():
        raise ConfigError(f"--pairs {pairs}: no such file")
    if pairs is None and not (gitbugs / "dev_pairs.tsv").is_file():
        raise ConfigError(f"--dataset {dataset_dir}: no gitbugs/dev_pairs.tsv (the threshold is chosen on it)")
    if folds < 2:
        raise ConfigError("--folds must be at least 2")
    started = datetime.now(UTC)
    if embeddings is None:
        from ticket_rag.embeddings.model import build_embeddings

        embeddings = build_embeddings(settings)
    cached = CachedEmbeddings.for_settings(embeddings, settings)
    analyzer = KeywordAnalyzer(settings.keyword_stemmer)
    chosen_on = pairs.name if pairs is not None else "gitbugs pairs"
    try:
        if pairs is not None:
            sets = {chosen_on: score_pairs(read_pairs(pairs), cached, analyzer)}
            ranking = False
        else:
            sets = {chosen_on: score_pairs(read_pairs(gitbugs / "dev_pairs.tsv"), cached, analyzer)}
        if pairs is None and (askubuntu / "dev_pairs.tsv").is_file():
            sets["askubuntu pairs"] = score_pairs(read_pairs(askubuntu / "dev_pairs.tsv"), cached, analyzer)
        ranking_info = None
        if ranking and (gitbugs / "corpus.jsonl").is_file() and (gitbugs / "dev_queries.tsv").is_file():
            sets["gitbugs ranking"], ranking_info = score_ranking(gitbugs, cached, analyzer, sample=ranking_sample)
    finally:
        cached.cache.close()
    if int(sets[chosen_on].label.sum()) < folds or int((1 - sets[chosen_on].label).sum()) < folds:
        raise ConfigError(f"{chosen_on}: needs at least {folds} duplicates and {folds} non-duplicates (--folds)")
    selection = cross_validate(sets[chosen_on], folds=folds)
    results: dict[str, Any] = {}
    for signal in ("cosine", "cosine+keyword"):
        chosen = selection[signal]["threshold_on_all"]
        results[signal] = {
            name: {
                "at_configured": summarise(
                    s, threshold=settings.duplicate_threshold, signal=signal, ranking="ranking" in name
                ),
                "at_chosen": summarise(s, threshold=chosen, signal=signal, ranking="ranking" in name),
            }
            for name, s in sets.items()
        }
    return {
        "dataset": str(pairs if pairs is not None else dataset_dir),
        "chosen_on": chosen_on,
        "sizes": {name: {"items": int(len(s.label)), "duplicates": int(s.label.sum())} for name, s in sets.items()},
        "ranking": ranking_info,
        "model": {"name": settings.embedding_model, "backend": settings.embedding_backend},
        "configured_threshold": settings.duplicate_threshold,
        "keyword_weight": KEYWORD_WEIGHT,
        "selection": selection,
        "results": results,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": source_commit(),
    }


def markdown_report(report: Mapping[str, Any]) -> str:
    """The results as markdown tables."""

    def f(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = [
        "# Duplicate detection",
        "",
        f"Model `{report['model']['name']}` ({report['model']['backend']}); configured DUPLICATE_THRESHOLD "
        f"{report['configured_threshold']:g}. Signals: `cosine` (what POST /tickets/ compares), `cosine+keyword` "
        f"(cosine + {report['keyword_weight']:g} x TF-IDF cosine of the stemmed terms).",
        "",
        f"Threshold chosen by cross-validation on {report.get('chosen_on', 'gitbugs pairs')} "
        "(F1-best threshold of the other folds, tested on the held-out fold); set DUPLICATE_THRESHOLD to the last "
        "column:",
        "",
        "| signal | fold thresholds | held-out P | held-out R | held-out F1 | threshold on all pairs |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for signal, sel in report["selection"].items():
        h = sel["held_out"]
        lines.append(
            f"| {signal} | {', '.join(f'{t:.3f}' for t in sel['fold_thresholds'])} "
            f"| {f(h['precision'])} | {f(h['recall'])} "
            f"| {f(h['f1'])} | {sel['threshold_on_all']:.3f} |"
        )
    lines += [
        "",
        "| signal | set | threshold | AP | MAP | P | R | F1 | flagged | recall@5 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for signal, sets in report["results"].items():
        for name, r in sets.items():
            for which, threshold in (
                ("at_configured", report["configured_threshold"]),
                ("at_chosen", report["selection"][signal]["threshold_on_all"]),
            ):
                m = r[which]
                lines.append(
                    f"| {signal} | {name} | {threshold:.3f} | {f(m['average_precision'])} "
                    f"| {f(m.get('mean_average_precision', '—'))} | {f(m['precision'])} | {f(m['recall'])} "
                    f"| {f(m['f1'])} | {m['flagged']} | {f(m.get('recall_at_5', '—'))} |"
                )
    sizes = "; ".join(
        f"{name}: {s['items']} items, {s['duplicates']} duplicates" for name, s in report["sizes"].items()
    )
    commit = f" at commit {report['commit']}" if report.get("commit") else ""
    lines += ["", f"Sizes: {sizes}."]
    info = report.get("ranking") or {}
    if info.get("sample_per_project"):
        lines += [
            "",
            f"Ranking form on a sample: every query and duplicate plus {info['sample_per_project']} seeded random "
            f"reports per project ({info['documents']} of {info['corpus']} reports embedded); each sampled "
            "non-duplicate counts for the project's non-duplicates it stands for, so precision, AP and `flagged` "
            "estimate the whole corpus; recall@5 "
            "does not (fewer reports compete for the top 5), so it is optimistic.",
        ]
    lines += ["", f"Run {report['started_at']} to {report['finished_at']}{commit}.", ""]
    return "\n".join(lines)
