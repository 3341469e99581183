"""The benchmark suite: ingest, search, RAG and a naive reference, measured in one run, written as a table.

    .venv/bin/python -m bench.run                 # default sizes (under 15 minutes on 2 quiet cores)
    .venv/bin/python -m bench.run --quick         # tiny sizes: proves the suite works (CI)

It starts its own Weaviate and the real service (bench/serve.py, with an instant fake LLM) on free
loopback ports, and writes docs/benchmarks.md (or --output). Medians and ratios come from this one
run; absolute times on a shared machine are noise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, *, idle_share: float = 0.05, timeout: float = 60.0) -> float:
    """Wait until a process (Weaviate after a large insert: flushes, compactions) uses under idle_share of a core."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < idle_share:
            break
    return time.monotonic() - started


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Service:
    """bench/serve.py as a subprocess against the bench Weaviate."""

    def __init__(self, env: dict[str, str]) -> None:
        from ticket_rag.runtime.weaviate import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "serve.py"), str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the service did not start")
            time.sleep(0.5)
        self.http = httpx.Client(base_url=self.url, timeout=300)

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(60)


def load_rows(path: Path, limit: int) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [row for _, row in zip(range(limit), csv.DictReader(fh), strict=False)]


def scifact(limit_docs: int, limit_queries: int) -> tuple[list[dict[str, str]], list[str]]:
    docs = []
    with (DATASETS / "scifact" / "corpus.jsonl").open() as fh:
        for _, line in zip(range(limit_docs), fh, strict=False):
            doc = json.loads(line)
            docs.append(
                {
                    "title": doc["title"][:300] or doc["text"][:80],
                    "description": doc["text"][:20000] or doc["title"],
                    "external_id": doc["_id"],
                }
            )
    with (DATASETS / "scifact" / "queries.jsonl").open() as fh:
        queries = [json.loads(line)["text"] for line in fh][:limit_queries]
    return docs, queries


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def load(requests: list[Callable[[], Any]], clients: int) -> tuple[list[float], float]:
    """Run the calls with `clients` threads; per-call latencies and the wall time."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(call: Callable[[], Any]) -> None:
        took = timed(call)
        with lock:
            latencies.append(took)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, requests))
    return latencies, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to prove the suite runs")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    size = (
        dict(tickets=40, scifact=24, queries=12, collections=[300], naive=12, health_import=60, rag=4)
        if args.quick
        else dict(
            tickets=400, scifact=200, queries=100, collections=[10_000, 100_000], naive=60, health_import=2000, rag=30
        )
    )

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_weaviate import WeaviateVectorStore

    from ticket_rag.embeddings.model import build_embeddings
    from ticket_rag.runtime.artifacts import ensure_default_model, ensure_weaviate_binary
    from ticket_rag.runtime.weaviate import EmbeddedWeaviate, connect, free_port
    from ticket_rag.settings import load_settings
    from ticket_rag.tools.evaluation import source_commit
    from ticket_rag.tools.importer import PRESETS, map_row

    settings = load_settings(_env_file=None, llm_provider="none")
    results: dict[str, Any] = {}
    rows: list[tuple[str, str, str, str]] = []  # section, measure, value, comparison
    tmp = Path(tempfile.mkdtemp(prefix="ticket-rag-bench-"))
    weaviate = EmbeddedWeaviate(
        binary=ensure_weaviate_binary(settings.cache_dir, settings.weaviate_version),
        data_dir=tmp / "weaviate",
        http_port=free_port(),
        grpc_port=free_port(),
    )
    weaviate.start()
    env = {
        **os.environ,
        "WEAVIATE_URL": weaviate.url,
        "WEAVIATE_GRPC_URL": f"127.0.0.1:{weaviate.grpc_port}",
        "WEAVIATE_CLASS": "Bench",
        "RATE_LIMIT_PER_MINUTE": "0",
        "LLM_PROVIDER": "none",
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": str(tmp / "data"),
        "BULK_MAX_BATCH": "1000",
        "SEARCH_MAX_LIMIT": "100",
    }
    service = Service(env)
    encoder = build_embeddings(settings)
    try:
        # --- ingest -------------------------------------------------------------------------------
        mapping = dict(PRESETS["tobi_bueck"])
        source = load_rows(DATASETS / "tickets" / "tobi_bueck_en_de.csv", size["tickets"])
        sample = tmp / "tickets.csv"
        with sample.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(source[0]))
            writer.writeheader()
            writer.writerows(source)
        ticket_texts = [f"{t['title']} {t['description']}" for t in (map_row(r, mapping) for r in source)]
        raw_before = timed(lambda: encoder.embed_documents(ticket_texts))
        imported = timed(
            lambda: subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ticket_rag.tools.cli",
                    "import",
                    str(sample),
                    "--preset",
                    "tobi_bueck",
                    "--url",
                    service.url,
                    "--batch-size",
                    "64",
                ],
                cwd=ROOT,
                env={**env, "DATA_DIR": str(tmp / "import")},
                check=True,
                capture_output=True,
            )
        )
        raw_tickets = (
            raw_before + timed(lambda: encoder.embed_documents(ticket_texts))
        ) / 2  # before and after: drift cancels
        n = len(source)
        rows.append(
            (
                "ingest",
                f"support tickets via `ticket-rag import` ({n})",
                f"{n / imported:.1f} tickets/s",
                f"raw encoder {n / raw_tickets:.1f}/s, ratio {raw_tickets / imported:.2f}",
            )
        )

        docs, queries = scifact(size["scifact"], size["queries"])
        sci_texts = [f"{d['title']} {d['description']}" for d in docs]
        raw_before = timed(lambda: encoder.embed_documents(sci_texts))
        service.http.post("/collections", json={"name": "scifact"})

        def bulk() -> None:
            for start in range(0, len(docs), 64):
                service.http.post(
                    "/tickets/bulk", json={"collection": "scifact", "tickets": docs[start : start + 64]}
                ).raise_for_status()

        bulk_time = timed(bulk)
        raw_sci = (raw_before + timed(lambda: encoder.embed_documents(sci_texts))) / 2
        m = len(docs)
        rows.append(
            (
                "ingest",
                f"SciFact abstracts via POST /tickets/bulk ({m})",
                f"{m / bulk_time:.2f} docs/s",
                f"raw encoder {m / raw_sci:.2f}/s, ratio {raw_sci / bulk_time:.2f}",
            )
        )

        # --- search ------------------------------------------------------------------------------
        # Every query the service sees gets a tag (no query cache hits across runs); the raw encoder
        # gets the same shape.
        raw_query = [timed(lambda q=q, i=i: encoder.embed_query(f"{q} (r-{i})")) for i, q in enumerate(queries)]
        cpu_batch = time.process_time()
        batch_q = timed(lambda: encoder.embed_documents([f"{q} (b-{i})" for i, q in enumerate(queries)]))
        cpu_batch = (time.process_time() - cpu_batch) * 1000 / len(queries)
        rows.append(
            (
                "search",
                "raw query embedding (one at a time)",
                f"p50 {ms(pct(raw_query, 50))} ms",
                f"batched: {len(queries) / batch_q:.1f} queries/s, {cpu_batch:.1f} ms CPU each",
            )
        )
        client = connect(url=weaviate.url, grpc_url=f"127.0.0.1:{weaviate.grpc_port}")
        client.connect()
        rng = np.random.default_rng(7)

        def cpu_now() -> tuple[float, float, float]:
            """CPU seconds so far of the service, Weaviate and this process (the load generator)."""
            return (
                cpu_seconds(service.proc.pid),
                cpu_seconds(weaviate.process.pid) if weaviate.process else 0.0,
                time.process_time(),
            )

        for index, count in enumerate(size["collections"]):
            name = f"synthetic{count}"
            service.http.post("/collections", json={"name": name}).raise_for_status()
            tenant = client.collections.use("Bench").with_tenant(name)
            now = datetime.now(UTC)
            for start in range(0, count, 2000):
                vectors = rng.normal(size=(min(2000, count - start), 768)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                objects = [
                    {
                        "properties": {
                            "title": f"Synthetic ticket {start + i}",
                            "description": f"Generated problem {start + i}",
                            "priority": "medium",
                            "status": "open",
                            "tags": [],
                            "created_at": now,
                            "updated_at": now,
                        },
                        "vector": vectors[i].tolist(),
                    }
                    for i in range(len(vectors))
                ]
                from weaviate.classes.data import DataObject

                result = tenant.data.insert_many(
                    [DataObject(properties=o["properties"], vector=o["vector"]) for o in objects]
                )
                assert not result.has_errors
            settled = settle(weaviate.process.pid) if weaviate.process else 0.0
            for i in range(20):  # warm-up, not measured
                service.http.post(
                    "/tickets/search", json={"query": f"warm-up {name} {i}", "collection": name}
                ).raise_for_status()
            for clients in (1, 4, 16):
                unique = [f"{q} ({index}{clients}-{i})" for i, q in enumerate(queries * {1: 1, 4: 2, 16: 3}[clients])]
                calls = [
                    lambda q=q, name=name: service.http.post(
                        "/tickets/search", json={"query": q, "collection": name, "limit": 10}
                    ).raise_for_status()
                    for q in unique
                ]
                cpu_before = cpu_now()
                latencies, wall = load(calls, clients)
                cpu_ms = [
                    (after - before) * 1000 / len(calls) for before, after in zip(cpu_before, cpu_now(), strict=True)
                ]
                rows.append(
                    (
                        "search",
                        f"POST /tickets/search, {count:,} tickets, {clients} client(s)",
                        f"p50 {ms(pct(latencies, 50))} / p95 {ms(pct(latencies, 95))} / p99 {ms(pct(latencies, 99))} "
                        "ms",
                        f"{len(calls) / wall:.1f} req/s",
                    )
                )
            ceiling = (os.cpu_count() or 1) * 1000 / sum(cpu_ms)  # of the last (16-client) run
            cpu_row = (
                "search",
                f"CPU per request at 16 clients, {count:,} tickets",
                f"service {cpu_ms[0]:.1f} / Weaviate {cpu_ms[1]:.1f} / load generator {cpu_ms[2]:.1f} ms",
                f"{os.cpu_count()}-core ceiling {ceiling:.0f} req/s; measured {len(calls) / wall:.1f} "
                f"({len(calls) / wall / ceiling:.0%}); Weaviate settled {settled:.0f} s first",
            )
            repeated = [
                timed(
                    lambda name=name: service.http.post(
                        "/tickets/search", json={"query": queries[0], "collection": name}
                    )
                )
                for _ in range(20)
            ]
            rows.append(
                (
                    "search",
                    f"repeated identical query, {count:,} tickets",
                    f"p50 {ms(pct(repeated, 50))} ms",
                    "query cache",
                )
            )
            rows.append(cpu_row)

        # --- RAG -----------------------------------------------------------------------------------
        first_event, total = [], []
        for q in queries[: size["rag"]]:
            started = time.perf_counter()
            with service.http.stream(
                "POST", "/rag/stream", json={"input": {"question": f"{q} (rag)", "collection": "scifact"}}
            ) as response:
                seen_first = False
                for line in response.iter_lines():
                    if line.startswith("data:") and not seen_first:
                        first_event.append(time.perf_counter() - started)
                        seen_first = True
            total.append(time.perf_counter() - started)
        search_same = [
            timed(
                lambda q=q: service.http.post("/tickets/search", json={"query": f"{q} (rag2)", "collection": "scifact"})
            )
            for q in queries[: size["rag"]]
        ]
        rows.append(
            (
                "rag",
                "/rag/stream with an instant fake LLM: first event",
                f"p50 {ms(pct(first_event, 50))} ms",
                f"total p50 {ms(pct(total, 50))} ms; plain search p50 {ms(pct(search_same, 50))} ms",
            )
        )

        # --- nothing blocks the event loop ------------------------------------------------------------
        suraj = load_rows(DATASETS / "tickets" / "suraj520.csv", size["health_import"])
        big = tmp / "suraj.csv"
        with big.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(suraj[0]))
            writer.writeheader()
            writer.writerows(suraj)
        importer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ticket_rag.tools.cli",
                "import",
                str(big),
                "--preset",
                "suraj520",
                "--url",
                service.url,
            ],
            cwd=ROOT,
            env={**env, "DATA_DIR": str(tmp / "import2")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        health: list[float] = []
        deadline = time.monotonic() + (60 if not args.quick else 10)
        with httpx.Client(base_url=service.url, timeout=10) as probe:
            while importer.poll() is None and time.monotonic() < deadline:
                health.append(timed(lambda: probe.get("/health")))
                time.sleep(0.02)
        importer.kill()
        rows.append(
            (
                "service",
                f"GET /health during a {len(suraj):,}-ticket import ({len(health)} probes)",
                f"p50 {ms(pct(health, 50))} / p99 {ms(pct(health, 99))} ms",
                "target: p99 < 50 ms",
            )
        )
        rows.append(
            (
                "service",
                "peak RSS of the API process",
                f"{rss_peak_mb(service.proc.pid):.0f} MB",
                f"Weaviate {rss_peak_mb(weaviate.process.pid):.0f} MB" if weaviate.process else "",
            )
        )

        # --- naive reference: the design card's straightforward way ---------------------------------------
        naive_embeddings = HuggingFaceEmbeddings(model_name=str(ensure_default_model(settings.cache_dir)))
        store = WeaviateVectorStore(client=client, index_name="NaiveBench", text_key="text", embedding=naive_embeddings)
        naive_texts = ticket_texts[: size["naive"]]
        naive_ingest = timed(lambda: [store.add_texts([text]) for text in naive_texts])
        naive_search = [timed(lambda q=q: store.similarity_search_with_score(q, k=10)) for q in queries]
        ours_search = [
            timed(
                lambda q=q: service.http.post(
                    "/tickets/search", json={"query": f"{q} (ours)", "collection": "scifact", "limit": 10}
                )
            )
            for q in queries
        ]
        ours_ingest_rate = n / imported
        rows.append(
            (
                "naive",
                f"one ticket per add_texts call ({len(naive_texts)})",
                f"{len(naive_texts) / naive_ingest:.1f} tickets/s",
                f"ours {ours_ingest_rate:.1f}/s: {ours_ingest_rate / (len(naive_texts) / naive_ingest):.2f}x",
            )
        )
        rows.append(
            (
                "naive",
                "similarity_search_with_score (hybrid, alpha 0.75), 1 client",
                f"p50 {ms(pct(naive_search, 50))} ms",
                f"ours p50 {ms(pct(ours_search, 50))} ms: {pct(naive_search, 50) / pct(ours_search, 50):.2f}x",
            )
        )
        naive_16, naive_wall = load(
            [lambda q=q: store.similarity_search_with_score(f"{q} n16", k=10) for q in queries], 16
        )
        ours_16, ours_wall = load(
            [
                lambda q=q: service.http.post("/tickets/search", json={"query": f"{q} o16", "collection": "scifact"})
                for q in queries
            ],
            16,
        )
        rows.append(
            (
                "naive",
                "search throughput, 16 clients",
                f"{len(queries) / naive_wall:.1f} req/s",
                f"ours {len(queries) / ours_wall:.1f} req/s: {naive_wall / ours_wall:.2f}x",
            )
        )
        client.close()
    finally:
        service.close()
        weaviate.stop()

    commit = source_commit() or "?"
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    lines = [
        "# Benchmarks",
        "",
        f"Run: `.venv/bin/python -m bench.run{' --quick' if args.quick else ''}` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"commit {commit}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}; "
        f"embedding backend: {settings.embedding_backend} (EMBEDDING_BACKEND; the naive reference always runs "
        f"sentence-transformers on torch). Sizes: {json.dumps(size)}.",
        "",
        "| section | measure | result | comparison (same run) |",
        "| --- | --- | --- | --- |",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        Path(args.output).write_text(text)
    results["rows"] = rows
    return 0


if __name__ == "__main__":
    sys.exit(main())
