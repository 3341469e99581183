"""`ticket-rag eval-answers`: the answers of the RAG chain exactly as served, measured.

The service is built by its own factory (server.create_app, passed in by the command) with the
configured LLM_PROVIDER, its lifespan starts a fresh embedded Weaviate (or uses WEAVIATE_URL), and
every question is streamed through `app.state.rag_chain`, the chain behind /rag, so the time to the
first answer chunk is what a /rag/stream client waits for (minus HTTP).

Two kinds of data:
- a BEIR folder: its corpus becomes tickets; each judged test query is asked twice, answerable (as is)
  and unanswerable (its judged documents excluded with the input's `exclude_tickets`, a Weaviate filter);
  the judged documents are the relevant tickets for citation precision and recall;
- a ticket CSV (the tobi_bueck layout): every Nth ticket is held out as a question (title and body),
  its real answer is the gold answer, the other tickets are the knowledge base. The baseline is the
  top retrieved ticket's resolution returned as it is.

`--fit-escalation` fits the evidence score's logistic model on the BEIR questions (answerable = 0,
unanswerable = 1), reports its 2-fold cross-validated AUC and precision/recall (folds by query, both
variants of a query in the same fold, threshold chosen on the training fold), and writes the model fitted
on all of them, with that provenance, to --evidence-model-out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import platform
import re
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from tqdm import tqdm

from chains.context import cited
from chains.evidence import FEATURES, EvidenceModel, fit_logistic, roc_auc
from ticket_rag.embeddings.cache import CachedEmbeddings
from ticket_rag.errors import ConfigError
from ticket_rag.runtime.weaviate import free_port
from ticket_rag.settings import Settings
from ticket_rag.tickets.keywords import KeywordAnalyzer
from ticket_rag.tickets.schemas import TicketCreate
from ticket_rag.tickets.store import build_ticket_store, ticket_uuid
from ticket_rag.tools import answer_metrics as am
from ticket_rag.tools.evaluation import BeirDataset, _ingest, load_beir, source_commit, write_report
from ticket_rag.tools.importer import PRESETS, map_row, read_rows

logger = logging.getLogger(__name__)

QUESTION_MAX = 2000  # RagInput's question limit
# A ticket question counts as answerable from the past tickets when the resolution of the top ticket retrieved is at
# least this close (cosine) to its real answer: the escalation label of the ticket mode, which has no judgements.
ANSWERABLE_GOLD = 0.8
_OFFLINE_NOTE = re.compile(r"Answered by the offline fallback model \([^)]*\); check the cited tickets\.")


@dataclass(frozen=True)
class Question:
    id: str
    mode: str  # answerable, unanswerable or ticket
    text: str
    relevant: frozenset[str] | None = None  # references of the judged tickets
    exclude: tuple[str, ...] = ()
    gold: str | None = None


@dataclass
class Corpus:
    """What the harness knows of every stored ticket, by reference: its full text and resolution."""

    text: dict[str, str] = field(default_factory=dict)
    resolution: dict[str, str] = field(default_factory=dict)

    def add(self, collection: str, ticket: TicketCreate) -> str:
        ref = cited(str(ticket_uuid(collection, ticket.external_id)))
        self.text[ref] = f"{ticket.title}\n{ticket.description}\n{ticket.resolution or ''}"
        self.resolution[ref] = ticket.resolution or ""
        return ref


# --- the questions ----------------------------------------------------------------------------------------


def hard_distractors(dataset: BeirDataset, query_ids: Sequence[str], per_query: int) -> BeirDataset:
    """The dataset cut to the queries' judged documents and each query's per_query best BM25 matches among the
    others: the documents most likely to crowd the top of a retrieval, so the cut keeps the hard part of the
    corpus (a random cut would make unanswerable questions easy to spot)."""
    analyzer = KeywordAnalyzer()
    index: dict[str, dict[int, int]] = {}
    lengths = []
    for n, doc in enumerate(dataset.corpus):
        terms = analyzer.terms(f"{doc.title} {doc.text}").split()
        lengths.append(len(terms))
        for term, count in Counter(terms).items():
            index.setdefault(term, {})[n] = count
    average = sum(lengths) / max(len(lengths), 1)
    total = len(dataset.corpus)
    keep: set[int] = set()
    position = {doc.id: n for n, doc in enumerate(dataset.corpus)}
    for query_id in query_ids:
        judged = {position[d] for d in dataset.qrels[query_id] if d in position}
        keep |= judged
        scores: dict[int, float] = {}
        for term in set(analyzer.terms(dataset.queries[query_id]).split()):
            postings = index.get(term, {})
            idf = math.log(1 + (total - len(postings) + 0.5) / (len(postings) + 0.5))
            for n, tf in postings.items():
                scores[n] = scores.get(n, 0.0) + idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * lengths[n] / average))
        ranked = [n for n, _ in sorted(scores.items(), key=lambda item: (-item[1], item[0])) if n not in judged]
        keep.update(ranked[:per_query])
    corpus = [doc for n, doc in enumerate(dataset.corpus) if n in keep]
    return BeirDataset(name=dataset.name, corpus=corpus, queries=dataset.queries, qrels=dataset.qrels)


def beir_questions(
    dataset_dir: Path, collection: str, limit: int | None, distractors: int | None = None
) -> tuple[BeirDataset, list[Question]]:
    """The BEIR dataset (cut to hard distractors when asked), and each judged query as an answerable and an
    unanswerable question."""
    dataset = load_beir(dataset_dir)
    if distractors is not None:
        dataset = hard_distractors(dataset, list(dataset.queries)[:limit], distractors)
    questions = []
    for query_id, text in list(dataset.queries.items())[:limit]:
        judged = [doc for doc, grade in dataset.qrels[query_id].items() if grade > 0]
        refs = frozenset(cited(str(ticket_uuid(collection, doc))) for doc in judged)
        ids = tuple(str(ticket_uuid(collection, doc)) for doc in judged)
        questions.append(Question(query_id, "answerable", text[:QUESTION_MAX], refs))
        questions.append(Question(query_id, "unanswerable", text[:QUESTION_MAX], refs, exclude=ids))
    return dataset, questions


def ticket_questions(
    path: Path, *, holdout_every: int, limit: int | None, holdout_offset: int = 0
) -> tuple[list[TicketCreate], list[Question]]:
    """The knowledge base (all but every Nth ticket) and the held-out tickets as questions with gold answers.

    The questions are the tickets at positions holdout_offset, holdout_offset + N, ...: the extractive
    answer was tuned on offset 5 and is reported on offset 0."""
    mapping = PRESETS["tobi_bueck"]
    base, questions = [], []
    for n, row in enumerate(read_rows(path)):
        try:
            ticket = TicketCreate(**map_row(row.data, mapping))
        except (ValueError, TypeError) as exc:
            logger.warning("line %d skipped: %s", row.line, exc)
            continue
        if n % holdout_every == holdout_offset and ticket.resolution:
            text = f"{ticket.title}\n{ticket.description}"[:QUESTION_MAX]
            questions.append(Question(f"line-{row.line}", "ticket", text, gold=ticket.resolution))
        else:
            base.append(ticket)
    return base, questions[:limit]


# --- asking -------------------------------------------------------------------------------------------------


async def ask(chain: Any, question: Question, collection: str) -> dict[str, Any]:
    """Stream one question through the chain; the answer, sources and metadata, and the times a client sees."""
    inputs: dict[str, Any] = {"question": question.text, "collection": collection}
    if question.exclude:
        inputs["exclude_tickets"] = list(question.exclude)
    answer, first = "", None
    sources: list[dict[str, Any]] = []
    metadata: dict[str, Any] = {}
    started = time.perf_counter()
    async for chunk in chain.astream(inputs, {"metadata": {"eval": True}}):
        if "answer" in chunk:
            first = first or time.perf_counter()
            answer += chunk["answer"]
        sources = chunk.get("sources", sources)
        metadata = chunk.get("metadata", metadata)
    ended = time.perf_counter()
    return {
        "answer": answer,
        "sources": sources,
        "metadata": metadata,
        "latency_s": ended - started,
        "first_chunk_s": (first or ended) - started,
    }


def score_answer(question: Question, out: Mapping[str, Any], corpus: Corpus) -> dict[str, Any]:
    """Every per-answer metric of one question."""
    meta = out["metadata"]
    answer = out["answer"]
    retrieved = [s["ref"].lower() for s in out["sources"]]
    escalated = bool(meta.get("escalated"))
    cites = am.cited_refs(answer)
    evidence = meta.get("evidence") or {}
    score = evidence.get("score")
    record: dict[str, Any] = {
        "id": question.id,
        "mode": question.mode,
        "kind": meta.get("answer_kind"),
        "escalated": escalated,
        "should_escalate": question.mode == "unanswerable",
        "evidence_score": score,
        # Higher means "more likely unanswerable"; without a score, the decision itself.
        "escalation_risk": 1 - score if score is not None else float(escalated),
        "features": evidence.get("features") or {},
        "retrieved": retrieved,
        "relevant": sorted(question.relevant) if question.relevant is not None else None,
        "cited": cites,
        "guard": meta.get("guard"),
        "refusal": not escalated and am.is_refusal(answer),
        "degenerate": _degenerate(answer, meta),
        "latency_s": round(out["latency_s"], 4),
        "first_chunk_s": round(out["first_chunk_s"], 4),
        "answer": answer[:1500],
    }
    relevant = set(question.relevant) if question.relevant is not None and question.mode == "answerable" else None
    record.update(am.citation_scores(cites, retrieved, relevant))
    if question.mode == "ticket":
        record["citation_precision"] = record["citation_validity"]  # no judgements: cited = retrieved
    if question.mode == "unanswerable":
        record["citation_precision"] = None  # nothing retrieved can be relevant: escalation measures these
    if escalated:
        record["grounding"], record["ungrounded"] = None, []  # the escalation notice quotes scores, not tickets
    else:
        # The service's own note under a local model's answer names the model file ("…-Q4_1"): not a claim.
        claims = _OFFLINE_NOTE.sub("", answer)
        record["grounding"], record["ungrounded"] = am.grounding_score(claims, [corpus.text.get(c, "") for c in cites])
    return record


def _degenerate(answer: str, meta: Mapping[str, Any]) -> str | None:
    """What the client got was degenerate: the text itself, or a generated answer the guard had to stop
    (a loop, the token cap) after part of it had streamed out."""
    guard = meta.get("guard")
    if guard and meta.get("answer_kind") == "generated":
        return f"{guard['kind']}: {guard['detail']} (stopped mid-stream)"
    if meta.get("answer_kind") in ("extractive", "listing"):
        return am.quoted_degenerate_reason(answer)
    return am.degenerate_reason(answer)


# --- escalation: cross-validated fit ------------------------------------------------------------------------


def _fit_evidence(rows: Sequence[Mapping[str, Any]]) -> EvidenceModel:
    """The evidence score (the chance that the question is answerable) fitted on these questions."""
    return fit_logistic([r["features"] for r in rows], [int(not r["should_escalate"]) for r in rows])


def _best_threshold(scores: Sequence[float], should: Sequence[bool]) -> float:
    """The evidence-score threshold (escalate below it) with the best F1 on these questions."""
    best, best_f1 = 0.5, -1.0
    for t in np.unique(np.round(scores, 4)):
        cut = float(t) + 1e-6
        esc = [s < cut for s in scores]
        f1 = am.escalation_scores(esc, should, [1 - s for s in scores])["f1"]
        if f1 > best_f1:
            best, best_f1 = cut, f1
    return round(best, 4)


def cross_validate_escalation(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """2-fold CV by query (even/odd position): fit and choose the threshold on one half, score the other."""
    rows = [r for r in records if r["mode"] in ("answerable", "unanswerable") and r["features"]]
    if len({r["mode"] for r in rows}) < 2:
        return None
    ids = list(dict.fromkeys(r["id"] for r in rows))
    folds = [set(ids[0::2]), set(ids[1::2])]
    held: list[tuple[float, bool, bool]] = []
    per_fold = []
    for test_ids in folds:
        train = [r for r in rows if r["id"] not in test_ids]
        test = [r for r in rows if r["id"] in test_ids]
        model = _fit_evidence(train)
        threshold = _best_threshold([model.score(r["features"]) for r in train], [r["should_escalate"] for r in train])
        scores = [model.score(r["features"]) for r in test]
        should = [r["should_escalate"] for r in test]
        fold = am.escalation_scores([s < threshold for s in scores], should, [1 - s for s in scores])
        per_fold.append({"trained_on": len(train), "tested_on": len(test), "threshold": threshold, **fold})
        held += [(s, y, s < threshold) for s, y in zip(scores, should, strict=True)]
    pooled = am.escalation_scores([h[2] for h in held], [h[1] for h in held], [1 - h[0] for h in held])
    top = [r["features"]["top_cosine"] for r in rows]
    should_all = [r["should_escalate"] for r in rows]
    baseline_auc = roc_auc([-t for t in top], [int(s) for s in should_all])
    single = {
        name: round(max(a := roc_auc([r["features"][name] for r in rows], [int(s) for s in should_all]), 1 - a), 4)
        for name in FEATURES
    }
    return {
        "folds": per_fold,
        "held_out": pooled,
        "top_cosine_auc": round(baseline_auc, 4),
        "single_feature_auc": single,
        "old_gate_min_similarity_0.25": am.escalation_scores([t < 0.25 for t in top], should_all, [-t for t in top]),
    }


def fit_escalation(records: Sequence[Mapping[str, Any]], provenance: dict[str, Any]) -> EvidenceModel:
    """The model fitted on every BEIR question, with the F1-best threshold, and where it came from."""
    rows = [r for r in records if r["mode"] in ("answerable", "unanswerable") and r["features"]]
    model = _fit_evidence(rows)
    threshold = _best_threshold([model.score(r["features"]) for r in rows], [r["should_escalate"] for r in rows])
    curve = am.threshold_curve([1 - model.score(r["features"]) for r in rows], [r["should_escalate"] for r in rows], 21)
    return EvidenceModel(
        model.weights,
        model.bias,
        model.means,
        model.scales,
        threshold,
        provenance={
            **provenance,
            "questions": len(rows),
            "threshold_rule": "best F1 of escalation on these questions",
            "curve_in_sample": curve,
        },
    )


# --- the run ------------------------------------------------------------------------------------------------


def _mode_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    latency = [r["latency_s"] for r in records]
    first = [r["first_chunk_s"] for r in records]
    answered = [r for r in records if not r["escalated"]]
    return {
        "questions": len(records),
        "escalated": sum(r["escalated"] for r in records),
        "kinds": dict(Counter(r["kind"] for r in records)),
        "citation_validity": am.mean_of(answered, "citation_validity"),
        "citation_precision": am.mean_of(answered, "citation_precision"),
        "citation_recall": am.mean_of(answered, "citation_recall"),
        "grounding": am.mean_of(answered, "grounding"),
        "answers_with_facts": sum(r["grounding"] is not None for r in answered),
        "degenerate": sum(r["degenerate"] is not None for r in records),
        "degenerate_rate": round(sum(r["degenerate"] is not None for r in records) / len(records), 4)
        if records
        else None,
        "guard_tripped": sum(r["guard"] is not None for r in records),
        "refusals": sum(r["refusal"] for r in records),
        "gold_similarity": am.mean_of(records, "gold_similarity"),
        "top_resolution_similarity": am.mean_of(records, "top_resolution_similarity"),
        # The same two on the questions that were answered (an escalation is not meant to resemble the gold).
        "gold_similarity_answered": am.mean_of(answered, "gold_similarity"),
        "top_resolution_similarity_answered": am.mean_of(answered, "top_resolution_similarity"),
        "latency_p50_ms": am.percentile_ms(latency, 50),
        "latency_p95_ms": am.percentile_ms(latency, 95),
        "first_chunk_p50_ms": am.percentile_ms(first, 50),
        "first_chunk_p95_ms": am.percentile_ms(first, 95),
    }


def _gold_similarity(
    records: list[dict[str, Any]], questions: Sequence[Question], corpus: Corpus, model: Embeddings
) -> None:
    """Cosine of each answer (and of the top ticket's resolution) to the gold answer."""
    pairs = [(r, q) for r, q in zip(records, questions, strict=True) if q.gold]
    if not pairs:
        return
    answers = [am.plain_text(r["answer"]) or "-" for r, _ in pairs]
    top = [corpus.resolution.get(r["retrieved"][0], "") if r["retrieved"] else "" for r, _ in pairs]
    vectors = np.asarray(model.embed_documents(answers + [t or "-" for t in top] + [q.gold or "" for _, q in pairs]))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    n = len(pairs)
    for i, (record, _) in enumerate(pairs):
        record["gold_similarity"] = round(float(vectors[i] @ vectors[2 * n + i]), 4)
        record["top_resolution_similarity"] = round(float(vectors[n + i] @ vectors[2 * n + i]), 4) if top[i] else 0.0


def run_answer_eval(
    *,
    settings: Settings,
    app_factory: Callable[..., Any],
    output_dir: Path,
    beir_dir: Path | None = None,
    tickets_csv: Path | None = None,
    limit: int | None = None,
    holdout_every: int = 10,
    holdout_offset: int = 0,
    distractors: int | None = None,
    fit: bool = False,
    evidence_model_out: Path | None = None,
    embeddings: Embeddings | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the service, load the data, ask every question, score, and write results.json and results.md."""
    if beir_dir is None and tickets_csv is None:
        raise ConfigError("give --beir DIR, --tickets CSV, or both")
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be at least 1")
    if holdout_every < 2:
        raise ConfigError("--holdout-every must be at least 2")
    if not 0 <= holdout_offset < holdout_every:
        raise ConfigError("--holdout-offset must be at least 0 and below --holdout-every")
    if tickets_csv is not None and not tickets_csv.is_file():
        raise ConfigError(f"--tickets {tickets_csv}: no such file")
    started_at = datetime.now(UTC)
    records: list[dict[str, Any]] = []
    datasets: dict[str, Any] = {}
    with ExitStack() as stack:
        if embeddings is None:
            from ticket_rag.embeddings.model import build_embeddings

            embeddings = build_embeddings(settings)
        cached = CachedEmbeddings.for_settings(embeddings, settings)
        stack.callback(cached.cache.close)
        if settings.weaviate_url is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ticket-rag-answers-")))
            settings = settings.model_copy(
                update={"data_dir": folder, "weaviate_http_port": free_port(), "weaviate_grpc_port": free_port()}
            )
        # The chain embeds with the plain model (no disk cache), so its timings are a cold service's.
        app = app_factory(settings, embeddings=embeddings)
        records = asyncio.run(
            _run(
                app,
                settings,
                cached,
                embeddings,
                beir_dir,
                tickets_csv,
                limit,
                (holdout_every, holdout_offset),
                distractors,
                datasets,
                progress,
            )
        )
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_mode.setdefault(r["mode"], []).append(r)
    beir = [r for r in records if r["mode"] in ("answerable", "unanswerable")]
    report: dict[str, Any] = {
        "provider": {"llm_provider": settings.llm_provider, **(records[0]["provider"] if records else {})},
        "datasets": datasets,
        "modes": {mode: _mode_summary(rs) for mode, rs in by_mode.items()},
        "escalation": None,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": _cpus(),
        },
        "commit": source_commit(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "questions": records,
    }
    if beir:
        escalation = am.escalation_scores(
            [r["escalated"] for r in beir], [r["should_escalate"] for r in beir], [r["escalation_risk"] for r in beir]
        )
        report["escalation"] = {
            "as_served": escalation,
            "threshold": next((r["threshold"] for r in records if r.get("threshold") is not None), None),
            "cross_validated": cross_validate_escalation(beir),
            "curve": am.threshold_curve([r["escalation_risk"] for r in beir], [r["should_escalate"] for r in beir]),
        }
        if fit:
            model = fit_escalation(
                beir,
                {
                    "dataset": datasets.get("beir", {}).get("name"),
                    "commit": report["commit"],
                    "fitted_at": report["finished_at"],
                    "command": "ticket-rag eval-answers --fit-escalation",
                    "cross_validated_auc": (report["escalation"]["cross_validated"] or {})
                    .get("held_out", {})
                    .get("auc"),
                },
            )
            report["escalation"]["fitted"] = model.to_json()
            if evidence_model_out is not None:
                evidence_model_out.write_text(json.dumps(model.to_json(), indent=2) + "\n", encoding="utf-8")
    report["ticket_escalation"] = ticket_escalation([r for r in records if r["mode"] == "ticket"])
    write_report(report, output_dir, markdown=markdown_answer_report)
    return report


def ticket_escalation(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Escalation on ticket questions against the label ANSWERABLE_GOLD gives: should a question escalate because
    the top retrieved ticket's resolution is not close to its real answer? (Sets each scored row's should_escalate.)"""
    rows = [r for r in rows if r.get("evidence_score") is not None and r.get("top_resolution_similarity") is not None]
    if not rows:
        return None
    for r in rows:
        r["should_escalate"] = r["top_resolution_similarity"] < ANSWERABLE_GOLD
    should = [r["should_escalate"] for r in rows]
    risk = [r["escalation_risk"] for r in rows]
    return {
        "label": f"top retrieved ticket's resolution has cosine < {ANSWERABLE_GOLD} to the real answer",
        "answerable": len(rows) - sum(should),
        "as_served": am.escalation_scores([r["escalated"] for r in rows], should, risk),
        "curve": am.threshold_curve(risk, should),
    }


def _cpus() -> int | None:
    import os

    return os.cpu_count()


async def _run(
    app: Any,
    settings: Settings,
    cached: CachedEmbeddings,
    model: Embeddings,
    beir_dir: Path | None,
    tickets_csv: Path | None,
    limit: int | None,
    holdout: tuple[int, int],
    distractors: int | None,
    datasets: dict[str, Any],
    progress: bool,
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    async with app.router.lifespan_context(app):
        store = build_ticket_store(settings=settings, client=app.state.services.store.client, embeddings=cached)
        chain = app.state.rag_chain
        jobs: list[tuple[str, list[Question], Corpus]] = []
        if beir_dir is not None:
            collection = f"answers-beir-{uuid.uuid4().hex[:8]}"
            dataset, questions = beir_questions(beir_dir, collection, limit, distractors)
            store.create_collection(name=collection)
            corpus = Corpus()
            ingest = await asyncio.to_thread(
                _ingest, store, dataset.corpus, collection=collection, batch_size=64, progress=progress, cached=cached
            )
            from ticket_rag.tools.evaluation import ticket_from_doc

            for doc in dataset.corpus:
                mapped = ticket_from_doc(doc)
                if mapped.ticket is not None:
                    corpus.add(collection, mapped.ticket)
            datasets["beir"] = {
                "name": dataset.name,
                "path": str(beir_dir),
                "documents": ingest["documents"],
                "queries": len(questions) // 2,
                "questions": len(questions),
                "corpus": "full"
                if distractors is None
                else f"judged documents + {distractors} best BM25 distractors per query",
            }
            jobs.append((collection, questions, corpus))
        if tickets_csv is not None:
            collection = f"answers-tickets-{uuid.uuid4().hex[:8]}"
            holdout_every, holdout_offset = holdout
            base, questions = ticket_questions(
                tickets_csv, holdout_every=holdout_every, limit=limit, holdout_offset=holdout_offset
            )
            store.create_collection(name=collection)
            corpus = Corpus()
            for start in range(0, len(base), 64):
                await asyncio.to_thread(store.upsert_many, tickets=base[start : start + 64], collection=collection)
            for ticket in base:
                corpus.add(collection, ticket)
            datasets["tickets"] = {
                "path": str(tickets_csv),
                "knowledge_base": len(base),
                "questions": len(questions),
                "holdout_every": holdout_every,
                "holdout_offset": holdout_offset,
            }
            jobs.append((collection, questions, corpus))
        for collection, questions, corpus in jobs:
            batch = []
            for question in tqdm(questions, desc="answers", unit="question", disable=not progress, mininterval=5):
                out = await ask(chain, question, collection)
                record = score_answer(question, out, corpus)
                meta = out["metadata"]
                record["threshold"] = (meta.get("evidence") or {}).get("threshold")
                record["provider"] = {"provider": meta.get("provider"), "model": meta.get("model")}
                batch.append(record)
            await asyncio.to_thread(_gold_similarity, batch, questions, corpus, cached)
            records += batch
            store.delete_collection(name=collection)
    return records


# --- the report -------------------------------------------------------------------------------------------------


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _scores(served: Mapping[str, Any]) -> str:
    """Escalation's precision, recall, F1 and AUC, as a phrase."""
    return (
        f"precision {_cell(served['precision'])}, recall {_cell(served['recall'])}, F1 {_cell(served['f1'])}, "
        f"AUC {_cell(served['auc'])}"
    )


def _curve_table(curve: Sequence[Mapping[str, float]]) -> list[str]:
    """Precision, recall and F1 of escalating below each threshold, as a table (with a blank line before)."""
    return [
        "",
        "| escalate below | precision | recall | F1 |",
        "| ---: | ---: | ---: | ---: |",
        *(f"| {p['threshold']:.2f} | {p['precision']:.3f} | {p['recall']:.3f} | {p['f1']:.3f} |" for p in curve),
    ]


def markdown_answer_report(report: Mapping[str, Any]) -> str:
    """The summary tables: one row per mode, then escalation."""
    provider = report["provider"]
    lines = [
        f"# Answer quality: LLM_PROVIDER={provider.get('llm_provider')} ({provider.get('provider') or 'no model'}"
        f"{', ' + provider['model'] if provider.get('model') else ''})",
        "",
        "| mode | questions | escalated | citation precision | citation recall | citation validity | grounding "
        "(answers with facts) "
        "| degenerate | refusals | guard tripped | answer-gold cosine | top-resolution-gold cosine | latency p50 / "
        "p95 ms | first chunk p50 / p95 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, m in report["modes"].items():
        lines.append(
            f"| {mode} | {m['questions']} | {m['escalated']} | {_cell(m['citation_precision'])} | "
            f"{_cell(m['citation_recall'])} "
            f"| {_cell(m['citation_validity'])} | {_cell(m['grounding'])} ({m['answers_with_facts']}) | "
            f"{m['degenerate']} "
            f"| {m['refusals']} | {m['guard_tripped']} | {_cell(m['gold_similarity'])} | "
            f"{_cell(m['top_resolution_similarity'])} "
            f"| {_cell(m['latency_p50_ms'], 0)} / {_cell(m['latency_p95_ms'], 0)} "
            f"| {_cell(m['first_chunk_p50_ms'], 0)} / {_cell(m['first_chunk_p95_ms'], 0)} |"
        )
    gold = [(mode, m) for mode, m in report["modes"].items() if m["gold_similarity"] is not None]
    for mode, m in gold:
        lines += [
            "",
            f"{mode}: answer-gold cosine {_cell(m['gold_similarity'])} against "
            f"{_cell(m['top_resolution_similarity'])} for "
            f"the top ticket's resolution returned as it is; on the {m['questions'] - m['escalated']} answered "
            "questions "
            f"{_cell(m['gold_similarity_answered'])} against {_cell(m['top_resolution_similarity_answered'])}.",
        ]
    tickets = report.get("ticket_escalation")
    if tickets:
        served = tickets["as_served"]
        lines += [
            "",
            f'Escalation of ticket questions, against the label "{tickets["label"]}" '
            f"({tickets['answerable']} of {served['questions']} answerable): {_scores(served)} "
            f"({served['escalated']} escalated).",
            *_curve_table(tickets["curve"]),
        ]
    esc = report.get("escalation")
    if esc:
        served = esc["as_served"]
        lines += [
            "",
            f"Escalation as served (threshold {_cell(esc['threshold'])}): {_scores(served)} "
            f"({served['escalated']} of {served['questions']} escalated; half the questions are unanswerable).",
        ]
        cv = esc.get("cross_validated")
        if cv:
            held = cv["held_out"]
            lines += [
                "",
                f"2-fold cross-validated (fit and threshold on one half of the queries, scored on the other): "
                f"AUC **{_cell(held['auc'])}**, precision {_cell(held['precision'])}, recall {_cell(held['recall'])}, "
                f"F1 {_cell(held['f1'])}; top cosine alone: AUC {_cell(cv['top_cosine_auc'])}; the old gate "
                f"(top cosine < 0.25): precision {_cell(cv['old_gate_min_similarity_0.25']['precision'])}, recall "
                f"{_cell(cv['old_gate_min_similarity_0.25']['recall'])}.",
                "",
                "Single-feature AUC: " + ", ".join(f"{k} {v:.3f}" for k, v in cv["single_feature_auc"].items()) + ".",
            ]
        lines += _curve_table(esc["curve"])
    machine = report["machine"]
    lines += [
        "",
        f"Commit {report['commit']}; {machine['platform']}, {machine['cpus']} CPUs; run {report['started_at']} to "
        f"{report['finished_at']}.",
        "",
    ]
    return "\n".join(lines)
