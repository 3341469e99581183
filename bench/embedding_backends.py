"""Embedding backends compared in one run: torch (sentence-transformers), ONNX Runtime fp32 and int8.

    nice -n 5 .venv/bin/python -m bench.embedding_backends            # 200 abstracts, 100 queries (~6 min on 2 cores)
    nice -n 5 .venv/bin/python -m bench.embedding_backends --quick    # 16 abstracts, 12 queries

All three embed the same SciFact texts (`title + " " + text`, cut at 384 tokens like the model).
Document throughput is measured in interleaved slices (a slice on torch, the same slice on each ONNX
variant, then the next slice), and single queries one at a time in turn across the backends, so a
neighbour's load falls on all three alike: the ratios are the result, absolute numbers are noise on a
shared machine. Writes a markdown table to stdout and to docs/benchmarks-embeddings.md (or --output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
BACKENDS = ("torch-fp32", "onnx-fp32", "onnx-int8")


def load_scifact(n_docs: int, n_queries: int) -> tuple[list[str], list[str]]:
    docs: list[str] = []
    with (DATASETS / "scifact" / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            docs.append(f"{doc.get('title', '')} {doc.get('text', '')}".strip())
            if len(docs) == n_docs:
                break
    queries: list[str] = []
    with (DATASETS / "scifact" / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            queries.append(json.loads(line)["text"])
            if len(queries) == n_queries:
                break
    return docs, queries


def machine() -> dict[str, str]:
    info = {"cpu": platform.processor() or "?", "cores": str(os.cpu_count()), "flags": ""}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    sockets = int(fields.get("Socket(s)", "1") or 1)
    per_socket = int(fields.get("Core(s) per socket", "0") or 0)
    info["cpu"] = fields.get("Model name", info["cpu"])
    info["cores"] = f"{sockets * per_socket} physical, {fields.get('CPU(s)', '?')} logical"
    flags = set(fields.get("Flags", "").split())
    info["flags"] = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags)
    return info


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--slices", type=int, default=5, help="document slices interleaved across the backends")
    parser.add_argument("--quick", action="store_true", help="16 abstracts and 12 queries: proves the script runs")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks-embeddings.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.docs, args.queries, args.slices = 16, 12, 2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime
    import sentence_transformers
    import torch

    from ticket_rag.embeddings.model import build_embeddings
    from ticket_rag.embeddings.onnx import (
        MANIFEST_FILE,
        _tokenizer,
        build_onnx_embeddings,
        onnx_cache_dir,
    )
    from ticket_rag.runtime.artifacts import ensure_default_model
    from ticket_rag.settings import DEFAULT_MODEL_SHA256, load_settings

    settings = load_settings(_env_file=None, llm_provider="none")
    model_dir = ensure_default_model(settings.cache_dir)
    docs, queries = load_scifact(args.docs, args.queries)
    tokenizer = _tokenizer(model_dir)
    doc_tokens = sum(len(e.ids) for e in tokenizer.encode_batch(docs))
    query_tokens = [len(e.ids) for e in tokenizer.encode_batch(queries)]

    export_seconds: dict[str, float] = {}
    backends: dict[str, Any] = {
        "torch-fp32": build_embeddings(settings.model_copy(update={"embedding_backend": "torch"}))
    }
    for variant in ("onnx-fp32", "onnx-int8"):
        target = onnx_cache_dir(settings.cache_dir, source_sha256=DEFAULT_MODEL_SHA256, variant=variant)  # type: ignore[arg-type]
        fresh = not (target / MANIFEST_FILE).is_file()
        took, backends[variant] = timed(
            lambda v=variant: build_onnx_embeddings(
                model_dir,
                settings.cache_dir,
                v,
                source_sha256=DEFAULT_MODEL_SHA256,
                batch_size=settings.embedding_batch_size,
            )
        )
        manifest = json.loads((target / MANIFEST_FILE).read_text())
        export_seconds[variant] = float(manifest.get("export_seconds", took))
        if fresh:
            sys.stderr.write(f"exported {variant} in {took:.0f} s\n")

    load_before = os.getloadavg()
    for backend in backends.values():  # warm-up: first-call allocations and kernel selection
        backend.embed_documents(docs[:2])
        backend.embed_query(queries[0])

    # Documents, in interleaved slices.
    doc_seconds = dict.fromkeys(BACKENDS, 0.0)
    doc_vectors: dict[str, list[list[float]]] = {name: [] for name in BACKENDS}
    bounds = np.linspace(0, len(docs), args.slices + 1).astype(int)
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        for name in BACKENDS:
            took, vectors = timed(lambda b=backends[name], s=start, e=end: b.embed_documents(docs[s:e]))
            doc_seconds[name] += took
            doc_vectors[name].extend(vectors)
        sys.stderr.write(
            f"documents {end}/{len(docs)}: " + ", ".join(f"{n} {doc_seconds[n]:.0f} s" for n in BACKENDS) + "\n"
        )

    # Single queries, one at a time, in turn.
    latencies: dict[str, list[float]] = {name: [] for name in BACKENDS}
    query_vectors: dict[str, list[list[float]]] = {name: [] for name in BACKENDS}
    for query in queries:
        for name in BACKENDS:
            took, vector = timed(lambda b=backends[name], q=query: b.embed_query(q))
            latencies[name].append(took)
            query_vectors[name].append(vector)

    # All queries in one call: the bulk path for short texts.
    batch_seconds = {name: timed(lambda b=backends[name]: b.embed_documents(queries))[0] for name in BACKENDS}
    load_after = os.getloadavg()

    reference_docs = np.array(doc_vectors["torch-fp32"])
    reference_queries = np.array(query_vectors["torch-fp32"])
    rows = []
    for name in BACKENDS:
        doc_cos = cosine_rows(np.array(doc_vectors[name]), reference_docs)
        query_cos = cosine_rows(np.array(query_vectors[name]), reference_queries)
        rows.append(
            {
                "backend": name,
                "docs_per_s": len(docs) / doc_seconds[name],
                "tokens_per_s": doc_tokens / doc_seconds[name],
                "speedup": doc_seconds["torch-fp32"] / doc_seconds[name],
                "p50_ms": float(np.percentile(latencies[name], 50)) * 1000,
                "p95_ms": float(np.percentile(latencies[name], 95)) * 1000,
                "queries_per_s": len(queries) / batch_seconds[name],
                "cos_docs": (float(doc_cos.mean()), float(doc_cos.min())),
                "cos_queries": (float(query_cos.mean()), float(query_cos.min())),
            }
        )

    cpu = machine()
    commit = (
        subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or "?"
    )
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    threads = getattr(backends["onnx-int8"], "threads", "?")
    lines = [
        "# Embedding backends: torch vs ONNX Runtime fp32 and int8",
        "",
        f'all-mpnet-base-v2 on the CPU; {len(docs)} SciFact abstracts (`title + " " + text`, '
        f"{doc_tokens / len(docs):.0f} tokens "
        f"on average after the cut at 384) and {len(queries)} SciFact queries ({np.mean(query_tokens):.0f} tokens on "
        "average). "
        "Produced by `nice -n 5 .venv/bin/python -m bench.embedding_backends`.",
        "",
        "| backend | docs/s | tokens/s | vs torch | query p50 | query p95 | queries/s (batched) | cosine to torch, "
        "docs (mean / min) | queries (mean / min) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['docs_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}x | "
            f"{r['p50_ms']:.1f} ms "
            f"| {r['p95_ms']:.1f} ms | {r['queries_per_s']:.1f} | {r['cos_docs'][0]:.4f} / {r['cos_docs'][1]:.4f} "
            f"| {r['cos_queries'][0]:.4f} / {r['cos_queries'][1]:.4f} |"
        )
    lines += [
        "",
        "- torch-fp32 is the service's `build_embeddings` with `EMBEDDING_BACKEND=torch` (sentence-transformers, "
        "batch size "
        f"{settings.embedding_batch_size}, {torch.get_num_threads()} torch threads); the ONNX backends are "
        f"`build_onnx_embeddings` (batches of at most {settings.embedding_batch_size} texts and 1,024 padded tokens, "
        f"{threads} intra-op threads, no spinning).",
        "- Documents were embedded in "
        f"{args.slices} interleaved slices, single queries one at a time in turn across the backends, so load from "
        "other processes falls on all three alike; compare the ratios, not the absolute numbers.",
        f"- One-time export into the cache: onnx-fp32 {export_seconds['onnx-fp32']:.0f} s, onnx-int8 "
        f"{export_seconds['onnx-int8']:.0f} s (trace, fuse, and for int8 calibrate and quantize).",
        f"- Machine: {cpu['cpu']}, {cpu['cores']} cores ({cpu['flags']}); load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after.",
        f"- Versions: torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}.",
        f"- Commit {commit}{' (with uncommitted changes)' if dirty else ''}, "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
    ]
    text = "\n".join(lines)
    sys.stdout.write(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
