"""`ticket-rag eval`: retrieval quality on a BEIR-format dataset, measured through the service's own code.

The corpus is ingested as tickets into a fresh collection with TicketStore.upsert_many (the path of
POST /tickets/bulk), every judged query is run through TicketStore.search in each mode, and the
rankings are scored the way BEIR and MTEB score them (trec_eval nDCG@10 with graded gain, Recall@k,
MRR@10). Document embeddings are cached on disk, so a second run costs only the queries.

How a BEIR document becomes a ticket. MTEB embeds `title + " " + text`; the store embeds
`title + " " + description`. So title -> title and text -> description, external_id = the BEIR
_id (re-ingesting the same collection updates instead of duplicating). When that does not pass
TicketCreate's validation, the document's full text `(title + " " + text).strip()` is split at
one whitespace into a title of at most 300 characters and a non-blank description, so the
embedded text stays exactly the same:
- empty title: the text's first word becomes the title, the rest the description;
- title over 300 characters: cut at its last space within 300, the remainder of the title moves to
  the front of the description;
- empty text: the title's last word becomes the description.
Only the BM25 weighting can change there (title words weigh KEYWORD_TITLE_BOOST, 1 by default, as much as
description words). When no such
split exists, a one-word document uses its word as both title and description, and a first word
over 300 characters is cut at 300 (the embedded text then differs); a description over 20,000
characters is truncated (far beyond the model's 384 tokens, so only BM25 sees the difference);
NUL characters become spaces; a document with no text at all is skipped. Each document mapped in
any of these ways is listed, with the reason, under ingest.altered in results.json.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from pydantic import ValidationError
from tqdm import tqdm

from ticket_rag.embeddings.cache import CachedEmbeddings
from ticket_rag.errors import ConfigError
from ticket_rag.runtime.weaviate import build_weaviate, free_port
from ticket_rag.settings import Settings, setting_default
from ticket_rag.tickets.schemas import (
    COLLECTION_PATTERN,
    SearchMode,
    TicketCreate,
    not_blank,
)
from ticket_rag.tickets.store import TicketStore, build_ticket_store, embedded_text

logger = logging.getLogger(__name__)

TITLE_MAX = 300
DESCRIPTION_MAX = 20_000
DEPTH = 100  # hits fetched per query: enough for Recall@100
DEFAULT_MODES = ("vector", "keyword", "hybrid:0.3", "hybrid:0.5", "hybrid:0.7")
METRICS = ("ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10")

# Published scores on the same test split, shown beside ours (by dataset folder name).
PUBLISHED: dict[str, list[dict[str, Any]]] = {
    "scifact": [
        {"name": "all-mpnet-base-v2, exact search (MTEB)", "ndcg_at_10": 0.6557, "recall_at_100": 0.9417},
        {"name": "BM25, Elasticsearch multi-field (BEIR paper)", "ndcg_at_10": 0.665, "recall_at_100": 0.908},
    ],
}


# --- metrics (trec_eval / pytrec_eval conventions: a judgement > 0 is relevant, its grade is its gain) -----


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain: gain at rank r (1-based) divided by log2(r + 1)."""
    return sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, start=1))


def ndcg_at_k(ranking: Sequence[str], judgements: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k with the relevance grade as gain; the ideal ranking is the judgements sorted by grade."""
    gains = [max(judgements.get(doc_id, 0), 0) for doc_id in ranking[:k]]
    ideal = dcg(sorted((g for g in judgements.values() if g > 0), reverse=True)[:k])
    return dcg(gains) / ideal if ideal > 0 else 0.0


def recall_at_k(ranking: Sequence[str], judgements: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the first k."""
    relevant = {doc_id for doc_id, grade in judgements.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def mrr_at_k(ranking: Sequence[str], judgements: Mapping[str, int], k: int = 10) -> float:
    """1 / rank of the first relevant document within the first k, else 0."""
    for rank, doc_id in enumerate(ranking[:k], start=1):
        if judgements.get(doc_id, 0) > 0:
            return 1.0 / rank
    return 0.0


def score_ranking(ranking: Sequence[str], judgements: Mapping[str, int]) -> dict[str, float]:
    """Every reported metric for one query."""
    return {
        "ndcg_at_10": ndcg_at_k(ranking, judgements, 10),
        "recall_at_10": recall_at_k(ranking, judgements, 10),
        "recall_at_100": recall_at_k(ranking, judgements, 100),
        "mrr_at_10": mrr_at_k(ranking, judgements, 10),
    }


# --- the dataset ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BeirDoc:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class BeirDataset:
    name: str
    corpus: list[BeirDoc]
    queries: dict[str, str]  # judged queries only, in queries.jsonl order
    qrels: dict[str, dict[str, int]]


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    raise ConfigError(f"{path}:{number}: not a JSON line") from None


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """A BEIR qrels TSV (`query-id corpus-id score`, optional header, LF or CRLF) as query -> doc -> grade."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for number, line in enumerate(fh, start=1):
            parts = line.rstrip("\r\n").split("\t")
            if number == 1 and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if not any(p.strip() for p in parts):
                continue
            if len(parts) != 3:
                raise ConfigError(f"{path}:{number}: expected query-id, corpus-id and score separated by tabs")
            query_id, doc_id, score = (p.strip() for p in parts)
            try:
                grade = int(float(score))
            except ValueError:
                raise ConfigError(f"{path}:{number}: score {score!r} is not a number") from None
            qrels.setdefault(query_id, {})[doc_id] = grade
    return qrels


def load_beir(path: Path, *, split: str = "test") -> BeirDataset:
    """corpus.jsonl, queries.jsonl and qrels/<split>.tsv; only queries with a relevant judgement are kept."""
    files = {
        "corpus": path / "corpus.jsonl",
        "queries": path / "queries.jsonl",
        "qrels": path / "qrels" / f"{split}.tsv",
    }
    for what, file in files.items():
        if not file.is_file():
            raise ConfigError(f"--dataset {path}: no {what} file at {file} (expected the BEIR layout)")
    corpus = [
        BeirDoc(str(d["_id"]), str(d.get("title") or ""), str(d.get("text") or "")) for d in _jsonl(files["corpus"])
    ]
    qrels = {q: j for q, j in read_qrels(files["qrels"]).items() if any(g > 0 for g in j.values())}
    queries = {str(q["_id"]): str(q.get("text") or "") for q in _jsonl(files["queries"])}
    missing = [q for q in qrels if q not in queries]
    if missing:
        logger.warning(
            "%d judged queries are not in queries.jsonl and are left out (e.g. %s)", len(missing), missing[0]
        )
    judged = {q: text for q, text in queries.items() if q in qrels}
    return BeirDataset(name=path.resolve().name, corpus=corpus, queries=judged, qrels={q: qrels[q] for q in judged})


# --- documents as tickets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mapped:
    ticket: TicketCreate | None
    note: str | None = None  # why the ticket differs from the plain title/text mapping


def _blank(value: str) -> bool:
    try:
        not_blank(value)
    except ValueError:
        return True
    return False


def _storable(value: str) -> str:
    return value.replace("\x00", " ").encode("utf-8", "replace").decode("utf-8").strip()


def _split(full: str, prefer: int) -> tuple[str, str] | None:
    """full split at one whitespace into (title <= TITLE_MAX, non-blank description), nearest to prefer."""
    best: tuple[int, str, str] | None = None
    for i in range(1, min(len(full), TITLE_MAX + 1)):
        if not full[i].isspace():
            continue
        title, description = full[:i].strip(), full[i + 1 :].strip()
        if _blank(title) or _blank(description) or len(title) > TITLE_MAX:
            continue
        if best is None or abs(i - prefer) < best[0]:
            best = (abs(i - prefer), title, description)
    return (best[1], best[2]) if best else None


def ticket_from_doc(doc: BeirDoc) -> Mapped:
    """The ticket for a BEIR document, embedding `(title + " " + text).strip()` wherever TicketCreate allows."""
    title, text = _storable(doc.title), _storable(doc.text)
    notes = ["NUL or invalid characters replaced"] if (title, text) != (doc.title.strip(), doc.text.strip()) else []
    full = f"{title} {text}".strip()
    if _blank(full):
        return Mapped(None, "no text: skipped")
    if not _blank(title) and len(title) <= TITLE_MAX and not _blank(text):
        parts: tuple[str, str] = (title, text)
    elif (found := _split(full, prefer=len(title))) is not None:
        parts = found
        notes.append(
            "empty title: split the text"
            if _blank(title)
            else "empty text: split the title"
            if _blank(text)
            else "title over 300 characters: its end moved to the description"
        )
    elif len(full) <= TITLE_MAX:
        parts = (full, full)
        notes.append("one word: used as title and description (embedded text doubled)")
    else:
        parts = (full[:TITLE_MAX], full[TITLE_MAX:])
        notes.append("first word over 300 characters: cut inside it (embedded text gains a space)")
    description = parts[1]
    if len(description) > DESCRIPTION_MAX:
        description = description[:DESCRIPTION_MAX]
        notes.append("description truncated to 20,000 characters (beyond the model's window; BM25 loses the tail)")
    try:
        ticket = TicketCreate(title=parts[0], description=description, external_id=doc.id)
    except ValidationError as exc:
        return Mapped(None, f"not a valid ticket: {exc.errors()[0]['msg']}")
    embedded = embedded_text(ticket.title, ticket.description)
    if embedded != full and embedded.split() == full.split():
        notes.append("whitespace at the split normalised (same words)")
    return Mapped(ticket, "; ".join(notes) or None)


# --- modes -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    label: str
    mode: SearchMode
    alpha: float = setting_default("rag_alpha")


def parse_mode(text: str, *, default_alpha: float = setting_default("rag_alpha")) -> Mode:
    """`vector`, `keyword` (or `bm25`), `hybrid` or `hybrid:ALPHA` (1 = pure vector, 0 = pure keyword)."""
    name, _, alpha_text = text.strip().lower().partition(":")
    if name == "vector" and not alpha_text:
        return Mode("vector", "vector")
    if name in ("keyword", "bm25") and not alpha_text:
        return Mode("keyword", "keyword")
    if name == "hybrid":
        try:
            alpha = float(alpha_text) if alpha_text else default_alpha
        except ValueError:
            alpha = -1.0
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"--modes {text}: the hybrid alpha must be a number from 0 to 1")
        return Mode(f"hybrid:{alpha:g}", "hybrid", alpha)
    raise ValueError(f"--modes {text}: expected vector, keyword, hybrid or hybrid:ALPHA")


# --- the run ---------------------------------------------------------------------------------------------


@dataclass
class ModeResult:
    mode: str
    alpha: float | None
    queries: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    query_p50_ms: float = 0.0
    query_p95_ms: float = 0.0
    # nDCG@10 of each query, by query id: for paired comparisons between runs and for choosing alpha.
    per_query_ndcg_at_10: dict[str, float] = field(default_factory=dict)


def cross_validate_alpha(results: Sequence[ModeResult]) -> dict[str, Any] | None:
    """Choose the hybrid alpha on half of the queries and score it on the other half, both ways round.

    Queries are split by position (even, odd). Choosing alpha on the same queries that report it
    would flatter the result; the held-out score is what a new set of queries can expect.
    """
    hybrids = [r for r in results if r.alpha is not None and r.per_query_ndcg_at_10]
    if len(hybrids) < 2:
        return None
    ids = list(hybrids[0].per_query_ndcg_at_10)
    folds = [ids[0::2], ids[1::2]]
    chosen, held_out = [], []
    for test, train in (folds, folds[::-1]):
        best = max(hybrids, key=lambda r: _mean([r.per_query_ndcg_at_10[q] for q in train]))
        scores = [best.per_query_ndcg_at_10[q] for q in test]
        chosen.append(
            {
                "alpha": best.alpha,
                "chosen_on": len(train),
                "tested_on": len(test),
                "ndcg_at_10": round(_mean(scores), 4),
            }
        )
        held_out += scores
    return {"folds": chosen, "held_out_ndcg_at_10": round(_mean(held_out), 4)}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def _ms(seconds: Sequence[float], q: float) -> float:
    return round(float(np.percentile(seconds, q)) * 1000, 2) if seconds else 0.0


def source_commit() -> str | None:
    """The checkout's commit (with `+changes` when the work tree differs), or None outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _collection_name(dataset: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", dataset).strip("-_")[:40] or "dataset"
    return f"eval-{slug}-{uuid.uuid4().hex[:8]}"


def run_eval(
    *,
    dataset_dir: Path,
    output_dir: Path,
    settings: Settings,
    embeddings: Embeddings | None = None,
    modes: Sequence[Mode] | None = None,
    limit_queries: int | None = None,
    collection: str | None = None,
    data_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Ingest a BEIR dataset into a fresh collection, search every judged query in every mode, write the report."""
    if collection is not None and not re.match(COLLECTION_PATTERN, collection):
        raise ConfigError(f"--collection {collection}: must match {COLLECTION_PATTERN}")
    if limit_queries is not None and limit_queries < 1:
        raise ConfigError("--limit-queries must be at least 1")
    modes = list(modes or [parse_mode(m, default_alpha=settings.hybrid_alpha) for m in DEFAULT_MODES])
    dataset = load_beir(dataset_dir)
    queries = list(dataset.queries.items())[:limit_queries]
    if not queries:
        raise ConfigError(f"--dataset {dataset_dir}: no query has a relevant judgement in qrels/test.tsv")
    started_at = datetime.now(UTC)

    with ExitStack() as stack:
        if embeddings is None:
            from ticket_rag.embeddings.model import build_embeddings

            embeddings = build_embeddings(settings)
        cached = CachedEmbeddings.for_settings(embeddings, settings)
        stack.callback(cached.cache.close)
        if settings.weaviate_url is None:
            folder = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ticket-rag-eval-")))
            settings = settings.model_copy(
                update={"data_dir": folder, "weaviate_http_port": free_port(), "weaviate_grpc_port": free_port()}
            )
        client, embedded = build_weaviate(settings)
        if embedded is not None:
            stack.callback(embedded.stop)
        stack.callback(client.close)
        store = build_ticket_store(settings=settings, client=client, embeddings=cached)
        store.ensure_schema(default_collection=settings.default_collection)

        name = collection or _collection_name(dataset.name)
        if collection is not None and store.collection_exists(name=name):
            logger.info("reusing collection %s: tickets with the same external_id are updated", name)
        else:
            store.create_collection(name=name)
        if collection is None:
            stack.callback(store.delete_collection, name=name)

        ingest = _ingest(
            store, dataset.corpus, collection=name, batch_size=batch_size, progress=progress, cached=cached
        )
        stored = store.count(collection=name)
        if stored != ingest["documents"]:
            logger.warning(
                "collection %s holds %d tickets, %d documents were ingested", name, stored, ingest["documents"]
            )
        results, embed_seconds = _search(
            store, cached, queries, dataset.qrels, collection=name, modes=modes, progress=progress
        )

    report: dict[str, Any] = {
        "dataset": {
            "name": dataset.name,
            "path": str(dataset_dir),
            "split": "test",
            "documents": len(dataset.corpus),
            "judged_queries": len(dataset.queries),
            "queries_evaluated": len(queries),
            "judgements": sum(len(j) for j in dataset.qrels.values()),
        },
        "model": {
            "name": settings.embedding_model,
            "backend": settings.embedding_backend,
            "cache_key": cached.cache.path.parent.name,
        },
        "keyword": {"stemmer": settings.keyword_stemmer, "title_boost": settings.keyword_title_boost},
        "weaviate": {
            "server": settings.weaviate_url or "embedded",
            "class": settings.weaviate_class,
            "collection": name,
            "collection_kept": collection is not None,
            "tickets_stored": stored,
        },
        "ingest": ingest,
        "search": {"depth": DEPTH, "embed_query_p50_ms": _ms(embed_seconds, 50)},
        "modes": {r.mode: asdict(r) for r in results},
        "alpha_selection": cross_validate_alpha(results),
        "published": PUBLISHED.get(dataset.name.lower(), []) if limit_queries is None else [],
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": source_commit(),
    }
    write_report(report, output_dir)
    return report


def _ingest(
    store: TicketStore,
    corpus: Sequence[BeirDoc],
    *,
    collection: str,
    batch_size: int,
    progress: bool,
    cached: CachedEmbeddings,
) -> dict[str, Any]:
    """Documents as tickets through TicketStore.upsert_many, batch by batch (the path of POST /tickets/bulk)."""
    hits, misses, compute = cached.stats.hits, cached.stats.misses, cached.stats.compute_seconds
    altered: list[dict[str, str]] = []
    documents = 0
    started = time.perf_counter()
    with tqdm(total=len(corpus), desc="ingest", unit="doc", disable=not progress, mininterval=2) as bar:
        for start in range(0, len(corpus), batch_size):
            batch = corpus[start : start + batch_size]
            tickets = []
            for doc in batch:
                mapped = ticket_from_doc(doc)
                if mapped.note:
                    altered.append({"id": doc.id, "note": mapped.note})
                if mapped.ticket is not None:
                    tickets.append(mapped.ticket)
            if tickets:
                store.upsert_many(tickets=tickets, collection=collection)
                documents += len(tickets)
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    if altered:
        logger.warning("%d documents could not be mapped as plain title/text; see the report", len(altered))
    return {
        "documents": documents,
        "seconds": round(seconds, 2),
        "docs_per_second": round(documents / seconds, 2) if seconds > 0 else None,
        "embedded": cached.stats.misses - misses,
        "from_cache": cached.stats.hits - hits,
        "embedding_seconds": round(cached.stats.compute_seconds - compute, 2),
        "batch_size": batch_size,
        "altered": altered,
    }


def _search(
    store: TicketStore,
    embeddings: Embeddings,
    queries: Sequence[tuple[str, str]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    collection: str,
    modes: Sequence[Mode],
    progress: bool,
) -> tuple[list[ModeResult], list[float]]:
    """Every query through TicketStore.search in every mode (the query embedded once, as the service
    does per request).
    """
    per_query: dict[str, list[dict[str, float]]] = {m.label: [] for m in modes}
    seconds: dict[str, list[float]] = {m.label: [] for m in modes}
    embed_seconds: list[float] = []
    with tqdm(total=len(queries), desc="search", unit="query", disable=not progress, mininterval=2) as bar:
        for query_id, text in queries:
            started = time.perf_counter()
            vector = embeddings.embed_query(text)
            embed_seconds.append(time.perf_counter() - started)
            for mode in modes:
                started = time.perf_counter()
                hits = store.search(
                    query=text,
                    collection=collection,
                    mode=mode.mode,
                    limit=DEPTH,
                    alpha=mode.alpha,
                    query_vector=vector,
                )
                seconds[mode.label].append(time.perf_counter() - started)
                ranking = [h.ticket.external_id or "" for h in hits]
                per_query[mode.label].append(score_ranking(ranking, qrels[query_id]))
            bar.update(1)
    results = []
    for mode in modes:
        scores = per_query[mode.label]
        results.append(
            ModeResult(
                mode=mode.label,
                alpha=mode.alpha if mode.mode == "hybrid" else None,
                queries=len(scores),
                metrics={m: round(_mean([s[m] for s in scores]), 4) for m in METRICS},
                query_p50_ms=_ms(seconds[mode.label], 50),
                query_p95_ms=_ms(seconds[mode.label], 95),
                per_query_ndcg_at_10={q: round(s["ndcg_at_10"], 6) for (q, _), s in zip(queries, scores, strict=True)},
            )
        )
    return results, embed_seconds


# --- the report ------------------------------------------------------------------------------------------


def markdown_report(report: Mapping[str, Any]) -> str:
    """The results as a markdown table, published scores as reference rows."""
    ds, ing = report["dataset"], report["ingest"]

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "—"

    lines = [
        f"# Retrieval quality: {ds['name']}",
        "",
        f"{ds['queries_evaluated']} of {ds['judged_queries']} judged test queries, {ds['documents']} documents; "
        f"model `{report['model']['name']}`; top {report['search']['depth']} hits per query from TicketStore.search.",
        "",
        "| mode | nDCG@10 | Recall@10 | Recall@100 | MRR@10 | query p50 ms | query p95 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in report["modes"].values():
        m = result["metrics"]
        lines.append(
            f"| {result['mode']} | {cell(m['ndcg_at_10'])} | {cell(m['recall_at_10'])} | {cell(m['recall_at_100'])} "
            f"| {cell(m['mrr_at_10'])} | {result['query_p50_ms']:.1f} | {result['query_p95_ms']:.1f} |"
        )
    for ref in report["published"]:
        lines.append(
            f"| *reference: {ref['name']}* | {cell(ref.get('ndcg_at_10'))} | {cell(ref.get('recall_at_10'))} "
            f"| {cell(ref.get('recall_at_100'))} | {cell(ref.get('mrr_at_10'))} | — | — |"
        )
    lines += [
        "",
        f"Ingest: {ing['documents']} documents in {ing['seconds']:.1f} s ({ing['docs_per_second']} docs/s); "
        f"{ing['embedded']} embedded ({ing['embedding_seconds']:.1f} s), {ing['from_cache']} from the embedding cache. "
        f"Query embedding p50: {report['search']['embed_query_p50_ms']:.1f} ms (not in the per-mode times).",
        "",
        "Hybrid is Weaviate's relative-score fusion; `hybrid:0.7` weighs the vector part 0.7. Query times are "
        "TicketStore.search round trips with the query vector already computed.",
    ]
    selection = report.get("alpha_selection")
    if selection:
        folds = "; ".join(
            f"chosen on {f['chosen_on']} queries: alpha {f['alpha']:g}, "
            f"nDCG@10 {f['ndcg_at_10']:.4f} on the other {f['tested_on']}"
            for f in selection["folds"]
        )
        lines += [
            "",
            f"Alpha by 2-fold cross-validation over the queries ({folds}): held-out nDCG@10 "
            f"**{selection['held_out_ndcg_at_10']:.4f}**.",
        ]
    model, keyword = report["model"], report.get("keyword") or {}
    lines += [
        "",
        f"Embedding backend `{model.get('backend', 'torch')}`; keyword stemmer `{keyword.get('stemmer', 'none')}`, "
        f"title boost {keyword.get('title_boost', 2)}.",
    ]
    if ing["altered"]:
        lines += ["", f"{len(ing['altered'])} documents were not mapped as plain title/text; see `results.json`."]
    commit = f" at commit {report['commit']}" if report.get("commit") else ""
    lines += ["", f"Run {report['started_at']} to {report['finished_at']}{commit}.", ""]
    return "\n".join(lines)


def write_report(
    report: Mapping[str, Any], output_dir: Path, *, markdown: Callable[[Mapping[str, Any]], str] | None = None
) -> tuple[Path, Path]:
    """results.json and results.md (markdown_report, or the given renderer) in output_dir."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / "results.json", output_dir / "results.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text((markdown or markdown_report)(report), encoding="utf-8")
    return json_path, md_path
