"""Triage latency: POST /tickets/triage at 1 client over a 10,000-ticket collection, and the model fit behind it.

    .venv/bin/python -m bench.triage              # 10,000 tickets, 200 requests
    .venv/bin/python -m bench.triage --quick      # 500 tickets, 20 requests: proves it runs
    .venv/bin/python -m bench.triage --tickets 2000 --requests 100   # a smaller run

Starts its own Weaviate and the real service (bench/serve.py) on free loopback ports. The collection
is filled straight into Weaviate with random unit vectors, random labels (10 queues, 3 priorities,
4 types) and terms, as bench/run.py does for search: the request path (one embedding of the new
ticket, one vector search, the linear model's dot products) costs the same whatever the vectors
are. The requests are real support tickets (the demo file), each text used once, measured twice:
while the collection's first model fit runs in the background (it shares the CPU; answers come from
the vote), and once the fitted model answers. Prints a markdown table; docs/triage.md keeps the result.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.run import DATASETS, Service, load_rows, ms, pct, settle, timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tickets", type=int, default=None, help="collection size (default 10,000; --quick 500)")
    parser.add_argument("--requests", type=int, default=None, help="measured requests (default 200; --quick 20)")
    args = parser.parse_args()
    tickets, requests = (500, 20) if args.quick else (10_000, 200)
    tickets, requests = args.tickets or tickets, args.requests or requests

    from weaviate.classes.data import DataObject

    from ticket_rag.runtime.artifacts import ensure_weaviate_binary
    from ticket_rag.runtime.weaviate import EmbeddedWeaviate, connect, free_port
    from ticket_rag.settings import load_settings
    from ticket_rag.tools.evaluation import source_commit
    from ticket_rag.tools.importer import PRESETS, map_row

    settings = load_settings(_env_file=None, llm_provider="none")
    tmp = Path(tempfile.mkdtemp(prefix="ticket-rag-bench-triage-"))
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
        "WEAVIATE_CLASS": "BenchTriage",
        "RATE_LIMIT_PER_MINUTE": "0",
        "LLM_PROVIDER": "none",
        "LOG_LEVEL": "WARNING",
        "DATA_DIR": str(tmp / "data"),
    }
    service = Service(env)
    rows: list[tuple[str, str]] = []
    try:
        name = "triage"
        service.http.post("/collections", json={"name": name}).raise_for_status()
        # A long timeout and batches of 500: on a busy shared machine a 2,000-object insert can exceed the default.
        client = connect(url=weaviate.url, grpc_url=f"127.0.0.1:{weaviate.grpc_port}", timeout=120.0)
        client.connect()
        tenant = client.collections.use("BenchTriage").with_tenant(name)
        rng = np.random.default_rng(7)
        queues = [f"Queue {i}" for i in range(10)]
        words = [f"word{i}" for i in range(5000)]
        now = datetime.now(UTC)
        for start in range(0, tickets, 500):
            count = min(500, tickets - start)
            vectors = rng.normal(size=(count, 768)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            objects = []
            for i in range(count):
                terms = " ".join(rng.choice(words, 40))
                props = {
                    "title": f"Synthetic ticket {start + i}",
                    "description": f"Generated problem {start + i}",
                    "priority": str(rng.choice(["low", "medium", "high"])),
                    "status": "open",
                    "category": str(rng.choice(queues)),
                    "type": str(rng.choice(["Incident", "Request", "Problem", "Change"])),
                    "tags": [str(rng.choice(["IT", "Billing", "Network"]))],
                    "title_terms": terms[:60],
                    "description_terms": terms,
                    "created_at": now,
                    "updated_at": now,
                }
                objects.append(DataObject(properties=props, vector=vectors[i].tolist()))
            assert not tenant.data.insert_many(objects).has_errors
        client.close()
        settle(weaviate.process.pid) if weaviate.process else None

        source = load_rows(DATASETS / "tickets" / "tobi_bueck_en_de.csv", 2 * requests + 10)
        texts = [map_row(row, PRESETS["tobi_bueck"]) for row in source]
        bodies = [{"title": t["title"], "description": t["description"], "collection": name} for t in texts]

        def triage(body: dict[str, str]) -> tuple[float, str]:
            """One request: its latency and which model answered ("vote" while the first fit runs)."""
            started = time.perf_counter()
            response = service.http.post("/tickets/triage", json=body, timeout=3600)
            response.raise_for_status()
            return time.perf_counter() - started, response.json()["model"]

        def latency_row(label: str, latencies: list[float]) -> tuple[str, str]:
            return (
                f"{label} ({len(latencies)} requests)",
                f"p50 {ms(pct(latencies, 50))} / p95 {ms(pct(latencies, 95))} / p99 {ms(pct(latencies, 99))} ms",
            )

        # The first request starts the collection's model fit in the background and answers from the vote.
        fit_started = time.perf_counter()
        first, _ = triage(bodies[0])
        rows.append((f"first POST /tickets/triage of the collection ({tickets:,} tickets)", f"{ms(first)} ms"))
        half = len(bodies) // 2
        during = [triage(b) for b in bodies[1:half]]
        while triage(bodies[0])[1] == "vote":  # until the fitted model answers
            if time.perf_counter() - fit_started > 3600:
                raise SystemExit("the collection's model was not fitted within an hour: see the service's log")
            time.sleep(0.5)
        fitted = time.perf_counter() - fit_started
        voted = [t for t, model in during if model == "vote"]
        if voted:
            rows.append(latency_row("POST /tickets/triage while the first model fit runs in the background", voted))
        rows.append((f"the first model fit ({tickets:,} tickets, in the background)", f"{fitted:.1f} s"))
        for body in bodies[half : half + 10]:  # warm-up, not measured
            triage(body)
        latencies = [triage(b)[0] for b in bodies[half + 10 :]]
        rows.append(latency_row(f"POST /tickets/triage, {tickets:,} tickets, 1 client, model fitted", latencies))
        health = [timed(lambda: service.http.get("/health").raise_for_status()) for _ in range(100)]
        rows.append(("GET /health, the HTTP round trip alone, for comparison", f"p50 {ms(pct(health, 50))} ms"))
        searches = [
            timed(
                lambda b=b: service.http.post(
                    "/tickets/search",
                    json={"query": f"{b['title']} {b['description']}"[:2000], "collection": name, "limit": 10},
                ).raise_for_status()
            )
            for b in bodies[10:60]
        ]
        rows.append(
            (
                "POST /tickets/search (vector, limit 10) with the same texts, for comparison",
                f"p50 {ms(pct(searches, 50))} ms",
            )
        )
    finally:
        service.close()
        weaviate.stop()
    commit = source_commit() or "unknown"
    print(
        f"Triage benchmark at commit {commit} on {platform.machine()} ({os.cpu_count()} cores), "
        f"{datetime.now(UTC).isoformat(timespec='minutes')}, embedding backend {settings.embedding_backend}\n"
    )
    print("| measure | value |\n| --- | --- |")
    for measure, value in rows:
        print(f"| {measure} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
