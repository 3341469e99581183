"""A million tickets on one machine: import time, memory, disk, latency and recall for each vector compression.

    .venv/bin/python -m bench.scale                                  # 1M: rq8; 100k: none rq8 bq
    .venv/bin/python -m bench.scale --plan 100000:none,rq8           # sizes and compressions of your own
    .venv/bin/python -m bench.scale --quick                          # 5,000 tickets: proves it runs (no doc written)

The tickets' vectors are supplied directly, so embedding time is not what is measured. They are
made from real vectors: the all-mpnet-base-v2 vectors (EMBEDDING_BACKEND) of the 1,872 demo
tickets and of the first 100 SciFact abstracts (--scifact-docs), each embedded from its title and
the first 300 characters of its text (cheaper to embed on a shared machine than the whole text: the
1,972 took 15 min on 2 busy cores; cached on disk after the first run, see embedding_cache.py).
Each synthetic ticket is one real "primary" vector plus two other real vectors with weights drawn
from U(0, 0.5), plus Gaussian noise of norm 0.4, renormalised: tickets cluster around real ones
(cosine about 0.85 to their primary), as repeated issues do in a help desk. Each carries the
text its primary was embedded from (title and the first 300 characters, about 50 words, with their
keyword terms), so hybrid search runs on real text.
The 1,000 queries are made the same way from another seed (not stored). Exact top-10 per query:
brute force with numpy over the stored vectors, in chunks. Size N is the first N tickets of the
same sequence, so the 100k set is a prefix of the 1M one.

Each (size, compression) gets a fresh embedded Weaviate with ticket-rag's own schema
(TicketStore.ensure_schema, one tenant), imported with gRPC batches of --batch tickets from
--writers threads; import time runs until Weaviate is idle again. Searches go through
TicketStore.search_by_vector (the service's path after the query is embedded). The results are
written between markers into docs/benchmarks.md (--output) and as JSON beside it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.run import DATASETS, ROOT, cpu_seconds, load, pct, settle

DIM = 768
CHUNK = 50_000
# Changes whenever synthetic() would make other vectors, so a cached exact top-10 is never stale.
GENERATOR = "primary + 2 x U(0, 0.5) others + noise 0.4, renormalised; chunks of 50,000"
BEGIN, END = "<!-- bench.scale: begin -->", "<!-- bench.scale: end -->"
DEFAULT_PLAN = ["1000000:rq8", "100000:none,rq8,bq"]


@dataclass(frozen=True)
class Base:
    """The real tickets and abstracts the synthetic ones are made from."""

    vectors: np.ndarray  # (B, 768) float32, unit length
    titles: list[str]
    descriptions: list[str]
    terms: list[dict[str, str]]
    embed_seconds: float


def load_base(settings: Any, scifact_docs: int, chars: int = 300) -> Base:
    """Real vectors of the demo tickets and of the first SciFact abstracts, embedded once (disk cache)."""
    from ticket_rag.embeddings.cache import CachedEmbeddings
    from ticket_rag.embeddings.model import build_embeddings
    from ticket_rag.tickets.keywords import KeywordAnalyzer
    from ticket_rag.tickets.schemas import TicketCreate
    from ticket_rag.tickets.store import embedded_text
    from ticket_rag.tools.evaluation import load_beir, ticket_from_doc
    from ticket_rag.tools.importer import PRESETS, map_row

    tickets: list[TicketCreate] = []
    with (DATASETS / "tickets" / "tobi_bueck_en_de.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                tickets.append(TicketCreate(**map_row(row, PRESETS["tobi_bueck"])))
            except ValueError:
                continue
    for doc in load_beir(DATASETS / "scifact").corpus[:scifact_docs]:
        mapped = ticket_from_doc(doc)
        if mapped.ticket is not None:
            tickets.append(mapped.ticket)
    cached = CachedEmbeddings.for_settings(build_embeddings(settings), settings)
    started = time.perf_counter()
    try:
        vectors = np.asarray(
            cached.embed_documents([embedded_text(t.title, t.description[:chars]) for t in tickets]), dtype=np.float32
        )
    finally:
        cached.cache.close()
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    analyzer = KeywordAnalyzer(settings.keyword_stemmer)
    return Base(
        vectors=vectors,
        titles=[t.title for t in tickets],
        descriptions=[t.description[:chars] for t in tickets],
        terms=[analyzer.properties(title=t.title, description=t.description[:chars]) for t in tickets],
        embed_seconds=time.perf_counter() - started,
    )


def synthetic(base: Base, start: int, count: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tickets start..start+count of the sequence for `seed`: (unit vectors, primary index of each)."""
    rng = np.random.default_rng([seed, start])
    b = len(base.vectors)
    primary = rng.integers(0, b, count)
    others = rng.integers(0, b, (count, 2))
    weights = rng.uniform(0.0, 0.5, (count, 2)).astype(np.float32)
    noise = rng.standard_normal((count, DIM), dtype=np.float32)
    noise *= 0.4 / np.linalg.norm(noise, axis=1, keepdims=True)
    v = (
        base.vectors[primary]
        + weights[:, :1] * base.vectors[others[:, 0]]
        + weights[:, 1:] * base.vectors[others[:, 1]]
        + noise
    )
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v, primary


def chunks(base: Base, total: int, *, seed: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    for start in range(0, total, CHUNK):
        vectors, primary = synthetic(base, start, min(CHUNK, total - start), seed=seed)
        yield start, vectors, primary


def exact_top10(base: Base, total: int, queries: np.ndarray, cache_dir: Path) -> np.ndarray:
    """Exact top-10 ticket numbers per query (cosine on unit vectors), brute force in chunks; kept in cache_dir."""
    digest = hashlib.sha256(GENERATOR.encode() + base.vectors.tobytes() + queries.tobytes()).hexdigest()[:16]
    path = cache_dir / f"truth-{total}-{digest}.npy"
    if path.exists():
        return np.load(path)
    best_idx = np.zeros((len(queries), 0), dtype=np.int64)
    best_sim = np.zeros((len(queries), 0), dtype=np.float32)
    for start, vectors, _ in chunks(base, total, seed=1):
        sims = queries @ vectors.T
        top = np.argpartition(-sims, 10, axis=1)[:, :10]
        cand_sim = np.concatenate([best_sim, np.take_along_axis(sims, top, axis=1)], axis=1)
        cand_idx = np.concatenate([best_idx, top + start], axis=1)
        keep = np.argsort(-cand_sim, axis=1)[:, :10]
        best_sim, best_idx = np.take_along_axis(cand_sim, keep, axis=1), np.take_along_axis(cand_idx, keep, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, best_idx)
    return best_idx


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of a process, MiB: total, anonymous (heap: must be RAM) and file-backed (page cache), peak."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss": fields["VmRSS"], "anon": fields["RssAnon"], "file": fields["RssFile"], "peak": fields["VmHWM"]}


def confine(pid: int, limit_gib: float) -> Path:
    """Put a process in a memory cgroup of limit_gib (page cache included, as the kernel counts it); its folder.

    cgroup v1 (memory.limit_in_bytes) or v2 (memory.max); needs write access to /sys/fs/cgroup (root here).
    """
    limit = str(int(limit_gib * 2**30))
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        group, limit_file = v1 / f"ticket-rag-scale-{pid}", "memory.limit_in_bytes"
    else:
        root = Path("/sys/fs/cgroup")
        control = root / "cgroup.subtree_control"
        if not control.exists() or "memory" not in control.read_text().split():
            raise SystemExit("--memory-limit: no memory cgroup controller enabled for child groups on this machine")
        group, limit_file = root / f"ticket-rag-scale-{pid}", "memory.max"
    group.mkdir(exist_ok=True)
    try:
        (group / limit_file).write_text(limit)
        (group / "cgroup.procs").write_text(str(pid))
    except OSError:
        group.rmdir()
        raise
    return group


def cgroup_peak_mib(group: Path) -> float | None:
    """The most memory the cgroup ever charged (RSS and page cache), MiB."""
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        if (group / name).exists():
            return int((group / name).read_text().split()[0]) / 2**20
    return None


def disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run_one(
    *,
    base: Base,
    size: int,
    compression: str,
    queries: np.ndarray,
    query_titles: list[str],
    truth_for: Callable[[int], np.ndarray],
    settings: Any,
    workdir: Path,
    batch: int,
    writers: int,
    extra_env: dict[str, str],
    hnsw: dict[str, int],
    import_minutes: float | None = None,
    memory_limit: float | None = None,
) -> dict[str, Any]:
    """Import `size` tickets into a fresh Weaviate with this compression (fewer if import_minutes run out), measured."""
    from weaviate.classes.data import DataObject

    from ticket_rag.runtime.artifacts import ensure_weaviate_binary
    from ticket_rag.runtime.weaviate import EmbeddedWeaviate, connect, free_port
    from ticket_rag.tickets.store import TicketStore

    data = workdir / f"{size}-{compression}"
    if memory_limit:
        # The Go heap's soft limit, below the cgroup's hard one, so the collector works harder rather than the
        # kernel killing the process; the rest of the cgroup is page cache for the vectors and objects on disk.
        extra_env = {**extra_env, "GOMEMLIMIT": f"{int((memory_limit - 0.75) * 1024)}MiB"}
    weaviate = EmbeddedWeaviate(
        binary=ensure_weaviate_binary(settings.cache_dir, settings.weaviate_version),
        data_dir=data,
        http_port=free_port(),
        grpc_port=free_port(),
        extra_env=extra_env,
        startup_timeout=600,
    )
    weaviate.start()
    assert weaviate.process is not None
    pid = weaviate.process.pid
    group: Path | None = None
    client = None
    result: dict[str, Any] = {"size": size, "compression": compression}
    # Every variable of Weaviate's environment that differs from ticket-rag's own, GOMEMLIMIT included unless it
    # follows from the memory cap (then it is recorded beside the cap).
    given = {k: v for k, v in extra_env.items() if not (memory_limit and k == "GOMEMLIMIT")}
    if given:
        result["weaviate_env"] = given
    if memory_limit:
        result["memory_limit_gib"] = memory_limit
        result["gomemlimit"] = extra_env["GOMEMLIMIT"]
    try:
        group = confine(pid, memory_limit) if memory_limit else None
        client = connect(url=weaviate.url, grpc_url=f"127.0.0.1:{weaviate.grpc_port}", timeout=120)
        client.connect()
        store = TicketStore(client=client, embeddings=None, class_name="Ticket", compression=compression, **hnsw)  # type: ignore[arg-type]
        store.ensure_schema(default_collection="default")
        tenant = client.collections.use("Ticket").with_tenant("default")
        now = datetime.now(UTC)

        def objects(start: int, vectors: np.ndarray, primary: np.ndarray) -> list[Any]:
            out = []
            for i, (vec, p) in enumerate(zip(vectors, primary, strict=True)):
                props = {
                    "title": base.titles[p],
                    "description": base.descriptions[p],
                    **base.terms[p],
                    "tags": [],
                    "priority": "medium",
                    "status": "open",
                    "created_at": now,
                    "updated_at": now,
                }
                out.append(DataObject(properties=props, uuid=uuid.UUID(int=start + i + 1), vector=vec.tolist()))
            return out

        def send(objs: list[Any]) -> None:
            outcome = tenant.data.insert_many(objs)
            if outcome.has_errors:
                raise RuntimeError(
                    f"{len(outcome.errors)} tickets refused: {next(iter(outcome.errors.values())).message}"
                )

        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        done = 0
        with ThreadPoolExecutor(writers) as pool:
            pending: list[Any] = []
            for start, vectors, primary in chunks(base, size, seed=1):
                for s in range(0, len(vectors), batch):
                    pending.append(
                        pool.submit(send, objects(start + s, vectors[s : s + batch], primary[s : s + batch]))
                    )
                    while len(pending) > writers * 2:
                        pending.pop(0).result()
                done += len(vectors)
                print(
                    f"  {compression}: {done:,} sent, {time.perf_counter() - started:.0f} s, "
                    f"Weaviate RSS {memory_mib(pid)['rss']:.0f} MiB",
                    flush=True,
                )
                if import_minutes is not None and time.perf_counter() - started > import_minutes * 60 and done < size:
                    print(
                        f"  {compression}: import budget of {import_minutes:g} min spent: measuring at {done:,}",
                        flush=True,
                    )
                    result.update(planned_size=size, size=done)
                    break
            for f in pending:
                f.result()
        sent = time.perf_counter() - started
        settled = settle(pid, idle_share=0.1, timeout=300)
        imported = time.perf_counter() - started
        count = tenant.aggregate.over_all(total_count=True).total_count
        truth = truth_for(done)
        result.update(
            import_seconds=round(imported, 1),
            send_seconds=round(sent, 1),
            settle_seconds=round(settled, 1),
            import_cpu_seconds=round(cpu_seconds(pid) - cpu_before, 1),
            stored=count,
            tickets_per_second=round(done / imported, 1),
            after_import=memory_mib(pid),
        )

        def vector_search(i: int) -> list[int]:
            hits = store.search_by_vector(
                query_vector=queries[i].tolist(), collection="default", limit=10, mode="vector"
            )
            return [h.ticket.id.int - 1 for h in hits]

        def hybrid_search(i: int) -> None:
            store.search_by_vector(
                query_vector=queries[i].tolist(),
                query=query_titles[i],
                collection="default",
                limit=10,
                mode="hybrid",
                alpha=0.5,
            )

        for i in range(50):  # warm-up, not measured
            vector_search(i)
            hybrid_search(i)
        found: dict[int, list[int]] = {}

        def timed_vector(i: int) -> Callable[[], None]:
            def call() -> None:
                found[i] = vector_search(i)

            return call

        n = len(queries)
        lat1, _ = load([timed_vector(i) for i in range(n)], 1)
        recall = float(np.mean([len(set(found[i]) & set(truth[i].tolist())) / 10 for i in range(n)]))
        lat16, wall16 = load([timed_vector(i) for i in range(n)], 16)
        hyb1, _ = load([lambda i=i: hybrid_search(i) for i in range(n)], 1)
        hyb16, hwall16 = load([lambda i=i: hybrid_search(i) for i in range(n)], 16)
        result.update(
            recall_at_10=round(recall, 4),
            vector_1={"p50": pct(lat1, 50) * 1000, "p99": pct(lat1, 99) * 1000},
            vector_16={"p50": pct(lat16, 50) * 1000, "p99": pct(lat16, 99) * 1000, "qps": n / wall16},
            hybrid_1={"p50": pct(hyb1, 50) * 1000, "p99": pct(hyb1, 99) * 1000},
            hybrid_16={"p50": pct(hyb16, 50) * 1000, "p99": pct(hyb16, 99) * 1000, "qps": n / hwall16},
            after_search=memory_mib(pid),
        )
        if group is not None:
            result["cgroup_peak_mib"] = cgroup_peak_mib(group)
    finally:
        if client is not None:
            client.close()
        weaviate.stop(timeout=300)
        if group is not None:
            group.rmdir()  # empty once Weaviate has exited
    result["disk_mib"] = round(disk_mib(data / "weaviate"), 1)
    shutil.rmtree(data, ignore_errors=True)
    return result


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| tickets | compression | import | Weaviate RSS after import (anon / file) | peak RSS | disk | recall@10 "
        "| vector 1 client p50 / p99 | vector 16 clients p50 / p99, q/s "
        "| hybrid 1 client p50 / p99 | hybrid 16 clients p50 / p99, q/s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        a, s = r["after_import"], r["after_search"]
        v1, v16, h1, h16 = r["vector_1"], r["vector_16"], r["hybrid_1"], r["hybrid_16"]
        lines.append(
            f"| {r['size']:,}{' (of ' + format(r['planned_size'], ',') + ' planned)' if 'planned_size' in r else ''} "
            f"| {r['compression']}{_variant(r)} "
            f"| {r['import_seconds'] / 60:.1f} min ({r['tickets_per_second']:,.0f}/s) "
            f"| {a['rss']:,.0f} MiB ({a['anon']:,.0f} / {a['file']:,.0f}) | {max(a['peak'], s['peak']):,.0f} MiB "
            f"| {r['disk_mib']:,.0f} MiB | {r['recall_at_10']:.4f} "
            f"| {v1['p50']:.1f} / {v1['p99']:.1f} ms | {v16['p50']:.1f} / {v16['p99']:.1f} ms, {v16['qps']:.0f} "
            f"| {h1['p50']:.1f} / {h1['p99']:.1f} ms | {h16['p50']:.1f} / {h16['p99']:.1f} ms, {h16['qps']:.0f} |"
        )
    return lines


def _variant(r: dict[str, Any]) -> str:
    """How the run's Weaviate differed from the default one: a memory cap, more environment."""
    parts = [f"{k}={v}" for k, v in sorted(r.get("weaviate_env", {}).items())]
    if r.get("memory_limit_gib"):
        parts.append(f"Weaviate capped at {r['memory_limit_gib']:g} GiB")
    return "".join(f", {p}" for p in parts)


def _merged(earlier: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier rows not measured again, then this run's; sorted by size, then compression as planned."""

    def key(r: dict[str, Any]) -> tuple[int, str, str]:
        return r["size"], r["compression"], _variant(r)

    keys = {key(r) for r in new}
    return sorted([r for r in earlier if key(r) not in keys] + new, key=lambda r: r["size"])


def _loads(rows: list[dict[str, Any]]) -> str:
    """The machine's 5-minute load average at the end of each run, as a range (older records have none)."""
    loads = [r["run"]["load_average"] for r in rows if "load_average" in r.get("run", {})]
    return f" (5-minute load average {min(loads):g}-{max(loads):g} at the end of the runs)" if loads else ""


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--plan",
        nargs="+",
        default=None,
        metavar="SIZE:COMPRESSION,...",
        help=f"what to run (default: {' '.join(DEFAULT_PLAN)})",
    )
    parser.add_argument("--quick", action="store_true", help="5,000 tickets, none and rq8, 200 queries; writes nothing")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--scifact-docs", type=int, default=100, help="SciFact abstracts among the real base vectors")
    parser.add_argument("--batch", type=int, default=1000, help="tickets per gRPC batch")
    parser.add_argument(
        "--import-minutes",
        type=float,
        default=None,
        help="stop importing after this long (at a 50,000 boundary) and measure what is stored",
    )
    parser.add_argument("--writers", type=int, default=2, help="batches in flight at once")
    parser.add_argument(
        "--memory-limit",
        type=float,
        default=None,
        metavar="GIB",
        help="run Weaviate in a memory cgroup of this size (page cache included) with GOMEMLIMIT 0.75 GiB below it",
    )
    parser.add_argument("--async-indexing", action="store_true", help="Weaviate's ASYNC_INDEXING=true")
    parser.add_argument(
        "--weaviate-env",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="more environment for Weaviate, e.g. PERSISTENCE_LSM_ACCESS_STRATEGY=pread",
    )
    parser.add_argument("--ef-construction", type=int, default=None)
    parser.add_argument("--max-connections", type=int, default=None)
    parser.add_argument("--workdir", default=None, help="where the Weaviate data goes (default: a temporary folder)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="JSON",
        help="results of other runs (their benchmarks-scale.json) to keep in the table, unless measured again",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="measure nothing: write the table of the --merge files"
    )
    args = parser.parse_args()
    if args.quick:
        args.plan, args.queries, args.scifact_docs = ["5000:none,rq8"], 200, 100
    plan = [(int(size), comps.split(",")) for size, comps in (p.split(":") for p in (args.plan or DEFAULT_PLAN))]
    earlier = [r for path in args.merge for r in json.loads(Path(path).read_text())["results"]]
    if args.render_only:
        plan = []

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ticket_rag.settings import load_settings
    from ticket_rag.tools.evaluation import source_commit

    began = time.perf_counter()
    settings = load_settings(_env_file=None, llm_provider="none")
    command = " ".join(["python -m bench.scale", *sys.argv[1:]])
    if plan:
        base = load_base(settings, args.scifact_docs)
        print(
            f"base: {len(base.vectors)} real vectors ({base.embed_seconds:.0f} s to embed or read from the cache)",
            flush=True,
        )
        queries, query_primary = synthetic(base, 0, args.queries, seed=2)
        query_titles = [base.titles[p] for p in query_primary]
    extra_env = {"ASYNC_INDEXING": "true"} if args.async_indexing else {}
    for kv in args.weaviate_env:
        key, eq, value = kv.partition("=")
        if not eq or not key:
            parser.error(f"--weaviate-env {kv!r}: expected KEY=VALUE")
        extra_env[key] = value
    if args.memory_limit is not None and args.memory_limit <= 1:
        parser.error("--memory-limit: more than 1 GiB (GOMEMLIMIT is set 0.75 GiB below it)")
    if args.memory_limit and "GOMEMLIMIT" in extra_env:
        parser.error("--memory-limit sets GOMEMLIMIT itself: leave it out of --weaviate-env")
    hnsw = {
        k: v for k, v in (("ef_construction", args.ef_construction), ("max_connections", args.max_connections)) if v
    }
    options = f"batches of {args.batch}, {args.writers} writers" + (", ASYNC_INDEXING" if args.async_indexing else "")
    if hnsw:
        options += ", " + ", ".join(f"{k} {v}" for k, v in hnsw.items())
    if args.memory_limit:
        options += f", Weaviate in a {args.memory_limit:g} GiB memory cgroup"
    options += "".join(f", {kv}" for kv in args.weaviate_env)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ticket-rag-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out_json = Path(args.output).with_name("benchmarks-scale.json")
    results: list[dict[str, Any]] = []
    for size, compressions in plan:

        def truth_for(n: int, truths: dict[int, np.ndarray] = {}) -> np.ndarray:  # noqa: B006 (one cache per size)
            if n not in truths:
                started = time.perf_counter()
                truths[n] = exact_top10(base, n, queries, settings.cache_dir / "bench-scale")
                print(
                    f"{n:,}: exact top-10 of {len(queries)} queries in {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
            return truths[n]

        for compression in compressions:
            print(f"{size:,} tickets, {compression}:", flush=True)
            r = run_one(
                base=base,
                size=size,
                compression=compression,
                queries=queries,
                query_titles=query_titles,
                truth_for=truth_for,
                settings=settings,
                workdir=workdir,
                batch=args.batch,
                writers=args.writers,
                extra_env=extra_env,
                hnsw=hnsw,
                import_minutes=args.import_minutes,
                memory_limit=args.memory_limit,
            )
            print(json.dumps(r), flush=True)
            r["run"] = {
                "at": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
                "commit": source_commit() or "?",
                "command": command,
                "options": options,
                "base_vectors": len(base.vectors),
                "queries": len(queries),
                "load_average": round(os.getloadavg()[1], 1),
            }
            results.append(r)
            if not args.quick:
                out_json.write_text(json.dumps({"results": _merged(earlier, results)}, indent=1))
    total = time.perf_counter() - began
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    rows = _merged(earlier, results)
    runs = {(r["run"]["command"], r["run"]["at"][:10], r["run"]["commit"], r["run"]["options"]) for r in rows}
    section = "\n".join(
        [
            BEGIN,
            "## A million tickets: vector compression (`bench.scale`)",
            "",
            "Runs: "
            + "; ".join(f"`.venv/bin/{c}` ({at}, commit {commit}; {opts})" for c, at, commit, opts in sorted(runs))
            + f". Machine: {os.cpu_count()} cores ({cpu}), shared with other work{_loads(rows)}, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python "
            f"{platform.python_version()}, Weaviate {settings.weaviate_version}. How the vectors are made: the "
            "docstring "
            "of bench/scale.py. Import time runs until Weaviate is idle again; latencies are "
            "TicketStore.search_by_vector "
            "with the query vector given (10 results with their properties); recall@10 is against brute-force exact "
            "search "
            "over 1,000 queries. Each row's date and whole record: docs/benchmarks-scale.json.",
            "",
            *table(rows),
            END,
        ]
    )
    print(section)
    print(f"whole run {total / 60:.1f} min")
    if not args.quick:
        write_section(Path(args.output), section)
        out_json.write_text(
            json.dumps({"results": rows, "total_seconds": round(total, 1), "command": command}, indent=1)
        )
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
