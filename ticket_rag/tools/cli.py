"""The `ticket-rag` command: serve, setup, import, eval, eval-answers, eval-triage, eval-duplicates,
reindex, compress.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ticket_rag.errors import ConfigError
from ticket_rag.settings import Settings, load_settings

logger = logging.getLogger("ticket_rag")


def _prepare(settings: Settings) -> None:
    """Fetch and verify what the service needs before it starts: Weaviate, the embedding model, the local LLM."""
    from ticket_rag.embeddings.model import prepare_embeddings
    from ticket_rag.runtime.artifacts import ensure_weaviate_binary

    if settings.embedded_weaviate and settings.weaviate_binary is None:
        ensure_weaviate_binary(settings.cache_dir, settings.weaviate_version)
    if settings.embedded_weaviate and settings.weaviate_binary is not None and not settings.weaviate_binary.is_file():
        raise ConfigError(f"WEAVIATE_BINARY: no file at {settings.weaviate_binary}")
    prepare_embeddings(settings)
    from chains.llm import describe_llm
    from ticket_rag.runtime.local_llm_artifacts import ensure_smollm2

    info = describe_llm(settings)
    if info is not None and info.provider == "local":
        ensure_smollm2(settings.cache_dir)


def _check_ports(settings: Settings, host: str, port: int) -> None:
    from ticket_rag.runtime.weaviate import port_in_use

    wanted = [("PORT", port, host)]
    if settings.embedded_weaviate:
        wanted += [
            ("WEAVIATE_HTTP_PORT", settings.weaviate_http_port, "127.0.0.1"),
            ("WEAVIATE_GRPC_PORT", settings.weaviate_grpc_port, "127.0.0.1"),
        ]
    for name, number, where in wanted:
        if port_in_use(number, where):
            raise ConfigError(
                f"port {number} on {where} is taken: stop what runs there, or set {name} to a free port"
                + (" (or WEAVIATE_URL to use a Weaviate that already runs)" if name != "PORT" else "")
            )


def cmd_setup(args: argparse.Namespace, settings: Settings) -> int:
    _prepare(settings)
    logger.info("ready: the Weaviate binary and the embedding model are in %s", settings.cache_dir)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from server import create_app

    host = args.host or settings.host
    port = args.port or settings.port
    _check_ports(settings, host, port)
    _prepare(settings)
    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=20, **proxy_options(settings))
    return 0


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's X-Forwarded-For handling: off unless FORWARDED_ALLOW_IPS names the proxies.

    uvicorn otherwise trusts the header from loopback, so any local caller could choose the address that its
    rate limits and invalid-key lockout count against, and lock out another address's users.
    """
    if not settings.forwarded_allow_ips:
        logger.info(
            "X-Forwarded-For is ignored: every client is its connecting address. Behind a reverse proxy on this host, "
            "set FORWARDED_ALLOW_IPS to it, or all clients share one rate limit and one invalid-key lockout"
        )
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": settings.forwarded_allow_ips}


def _mapped_file(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The file to read and its column mapping (--preset, --map), for import and eval-triage."""
    from ticket_rag.tools.importer import parse_mapping

    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(f"no file at {path}")
    try:
        return path, parse_mapping(args.preset, args.map or [])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:

    from ticket_rag.tools.importer import Importer

    path, mapping = _mapped_file(args)
    importer = Importer(
        url=args.url or f"http://{settings.host}:{settings.port}",
        collection=args.collection,
        batch_size=args.batch_size,
        api_key=args.api_key,
        checkpoint_dir=settings.data_dir / "imports",
    )
    try:
        report = importer.run(path, mapping, fmt=args.format, restart=args.restart)
    except RuntimeError as exc:
        print(f"ticket-rag: import stopped: {exc}; run the same command again to resume", file=sys.stderr)
        return 1
    for failure in report.failures:
        print(f"failed {failure}", file=sys.stderr)
    print(
        f"{report.rows} rows: {report.created} created, {report.updated} updated, "
        f"{len(report.failures)} failed, {report.skipped} already imported (resumed), "
        f"{report.superseded} replaced by a later row with the same external id"
    )
    return 0


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from ticket_rag.tools.evaluation import markdown_report, parse_mode, run_eval

    try:
        modes = [parse_mode(m, default_alpha=settings.hybrid_alpha) for m in args.modes] if args.modes else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    report = run_eval(
        dataset_dir=Path(args.dataset),
        output_dir=Path(args.output),
        settings=settings,
        modes=modes,
        limit_queries=args.limit_queries,
        collection=args.collection,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        batch_size=args.batch_size,
    )
    print(markdown_report(report))
    return 0


def cmd_eval_triage(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from ticket_rag.tools.evaluation import write_report
    from ticket_rag.tools.triage_eval import markdown_report, run_triage_eval

    path, mapping = _mapped_file(args)
    report = run_triage_eval(path=path, mapping=mapping, settings=settings, folds=args.folds, fmt=args.format)
    if args.output:
        write_report(report, Path(args.output), markdown=markdown_report)
    print(markdown_report(report))
    return 0


def cmd_eval_duplicates(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from ticket_rag.tools.duplicates_eval import markdown_report, run_duplicates_eval
    from ticket_rag.tools.evaluation import write_report

    report = run_duplicates_eval(
        dataset_dir=Path(args.dataset),
        settings=settings,
        pairs=Path(args.pairs) if args.pairs else None,
        folds=args.folds,
        ranking=not args.pairs_only,
        ranking_sample=args.ranking_sample,
    )
    if args.output:
        write_report(report, Path(args.output), markdown=markdown_report)
    print(markdown_report(report))
    return 0


def cmd_eval_answers(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from server import create_app
    from ticket_rag.tools.answer_eval import markdown_answer_report, run_answer_eval

    report = run_answer_eval(
        settings=settings,
        app_factory=create_app,
        output_dir=Path(args.output),
        beir_dir=Path(args.beir) if args.beir else None,
        tickets_csv=Path(args.tickets) if args.tickets else None,
        limit=args.limit,
        holdout_every=args.holdout_every,
        holdout_offset=args.holdout_offset,
        distractors=args.distractors,
        fit=args.fit_escalation,
        evidence_model_out=Path(args.evidence_model_out) if args.evidence_model_out else None,
    )
    print(markdown_answer_report(report))
    return 0


def cmd_reindex(args: argparse.Namespace, settings: Settings) -> int:
    """Recompute the keyword terms of stored tickets (after an upgrade, or after KEYWORD_STEMMER changed)."""
    from ticket_rag.errors import CollectionNotFound, StoreUnavailable
    from ticket_rag.runtime.weaviate import build_weaviate
    from ticket_rag.tickets.keywords import KeywordAnalyzer
    from ticket_rag.tickets.store import add_missing_term_properties, reindex_keywords

    client, embedded = build_weaviate(settings)
    try:
        if not client.collections.exists(settings.weaviate_class):
            raise ConfigError(f"no Weaviate collection {settings.weaviate_class}: nothing to reindex")
        add_missing_term_properties(client, settings.weaviate_class)
        names = args.collection or sorted(client.collections.use(settings.weaviate_class).tenants.get())
        analyzer = KeywordAnalyzer(settings.keyword_stemmer)
        for name in names:
            try:
                count = reindex_keywords(client, class_name=settings.weaviate_class, analyzer=analyzer, collection=name)
            except (CollectionNotFound, StoreUnavailable) as exc:
                raise ConfigError(f"reindex of {name} stopped: {exc}") from None
            print(f"{name}: {count} tickets reindexed ({settings.keyword_stemmer} stemming)")
    finally:
        client.close()
        if embedded is not None:
            embedded.stop()
    return 0


def cmd_compress(args: argparse.Namespace, settings: Settings) -> int:
    """Turn on VECTOR_COMPRESSION for the Weaviate collection that already holds the tickets (in place)."""
    from ticket_rag.runtime.weaviate import build_weaviate
    from ticket_rag.tickets.compression import (
        CompressionChangeRefused,
        current_compression,
        enable_compression,
        wait_until_compressed,
    )

    client, embedded = build_weaviate(settings)
    try:
        if not client.collections.exists(settings.weaviate_class):
            raise ConfigError(
                f"no Weaviate collection {settings.weaviate_class}: a new one is created with VECTOR_COMPRESSION"
            )
        before = current_compression(client, settings.weaviate_class)
        try:
            changed = enable_compression(
                client,
                settings.weaviate_class,
                settings.vector_compression,
                rescore_limit=settings.vector_rescore_limit,
            )
        except CompressionChangeRefused as exc:
            raise ConfigError(str(exc)) from None
        if changed:
            print(
                f"{settings.weaviate_class}: vector compression {before} -> {settings.vector_compression}; "
                "compressing the stored vectors (searches keep working meanwhile)",
                flush=True,
            )
            left = wait_until_compressed(client, settings.weaviate_class, timeout=args.wait)
            if left:
                print(
                    f"still compressing after {args.wait:.0f} s: {', '.join(left)} (Weaviate goes on in the background)"
                )
            else:
                print("every loaded collection is compressed; the others are compressed when they next load")
        else:
            print(f"{settings.weaviate_class}: already {before}; nothing to do")
    finally:
        client.close()
        if embedded is not None:
            embedded.stop()
    return 0


def _serve_parser(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the API (embedded Weaviate unless WEAVIATE_URL is set)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=cmd_serve)


def _setup_parser(sub: Any) -> None:
    setup = sub.add_parser("setup", help="build/fetch and verify the Weaviate binary and the model weights")
    setup.set_defaults(func=cmd_setup)


def _import_parser(sub: Any) -> None:
    imp = sub.add_parser("import", help="import a CSV or JSONL export into a running service")
    imp.add_argument("file")
    imp.add_argument("--collection", default=None, help="target collection (default: the service's default)")
    imp.add_argument("--preset", choices=["tobi_bueck", "suraj520"], default=None, help="a known dataset's mapping")
    imp.add_argument("--map", action="append", metavar="FIELD=COLUMN", help="map a ticket field to a column; tags=a+b")
    imp.add_argument("--format", choices=["csv", "jsonl"], default=None, help="default: from the file name")
    imp.add_argument("--url", default=None, help="the service (default: http://HOST:PORT from the settings)")
    imp.add_argument("--api-key", default=None)
    imp.add_argument("--batch-size", type=int, default=64)
    imp.add_argument("--restart", action="store_true", help="ignore the checkpoint of an earlier run")
    imp.set_defaults(func=cmd_import)


def _eval_parser(sub: Any) -> None:
    ev = sub.add_parser("eval", help="retrieval quality on a BEIR-format dataset, through the service's own store")
    ev.add_argument("--dataset", required=True, help="a folder with corpus.jsonl, queries.jsonl and qrels/test.tsv")
    ev.add_argument("--output", required=True, help="the folder for results.json and results.md")
    ev.add_argument(
        "--modes",
        nargs="+",
        default=None,
        metavar="MODE",
        help="vector, keyword, hybrid:ALPHA (default: vector keyword hybrid:0.3 hybrid:0.5 hybrid:0.7)",
    )
    ev.add_argument("--limit-queries", type=int, default=None, metavar="N", help="only the first N judged queries")
    ev.add_argument(
        "--collection",
        default=None,
        help="ingest into this collection and keep it (default: a fresh one, dropped at the end)",
    )
    ev.add_argument("--data-dir", default=None, help="the embedded Weaviate's data folder (default: a temporary one)")
    ev.add_argument("--batch-size", type=int, default=64, help="documents per upsert_many call")
    ev.set_defaults(func=cmd_eval)


def _eval_triage_parser(sub: Any) -> None:
    tr = sub.add_parser(
        "eval-triage", help="k-fold quality of queue, priority, type and tag suggestions on a labelled file"
    )
    tr.add_argument("file", help="CSV or JSONL, mapped like `import`")
    tr.add_argument("--preset", choices=["tobi_bueck", "suraj520"], default=None, help="a known dataset's mapping")
    tr.add_argument("--map", action="append", metavar="FIELD=COLUMN", help="map a ticket field to a column; tags=a+b")
    tr.add_argument("--format", choices=["csv", "jsonl"], default=None, help="default: from the file name")
    tr.add_argument("--folds", type=int, default=5)
    tr.add_argument("--output", default=None, help="a folder for results.json and results.md")
    tr.set_defaults(func=cmd_eval_triage)


def _eval_duplicates_parser(sub: Any) -> None:
    du = sub.add_parser(
        "eval-duplicates", help="duplicate detection on labelled pairs and queries (DUPLICATE_THRESHOLD)"
    )
    du.add_argument(
        "--dataset",
        default="../shared/datasets/duplicates",
        help="a folder with gitbugs/ (corpus.jsonl, dev_queries.tsv, dev_pairs.tsv) and/or askubuntu/dev_pairs.tsv",
    )
    du.add_argument(
        "--pairs",
        default=None,
        metavar="TSV",
        help="your own labelled pairs (text_a, text_b, label 1/0): choose the threshold on them instead",
    )
    du.add_argument("--folds", type=int, default=5, help="folds for choosing the threshold by cross-validation")
    du.add_argument("--pairs-only", action="store_true", help="skip the ranking form (embeds the whole GitBugs corpus)")
    du.add_argument(
        "--ranking-sample",
        type=int,
        default=None,
        metavar="N",
        help="rank against N sampled reports per project (plus every query and duplicate), non-duplicates reweighted",
    )
    du.add_argument("--output", default=None, help="a folder for results.json and results.md")
    du.set_defaults(func=cmd_eval_duplicates)


def _eval_answers_parser(sub: Any) -> None:
    ea = sub.add_parser("eval-answers", help="answer quality of the RAG chain as served (the configured LLM_PROVIDER)")
    ea.add_argument(
        "--beir", default=None, metavar="DIR", help="a BEIR folder: each judged query asked answerable and unanswerable"
    )
    ea.add_argument(
        "--tickets",
        default=None,
        metavar="CSV",
        help="a ticket CSV (tobi_bueck columns): held-out tickets as questions",
    )
    ea.add_argument("--output", required=True, help="the folder for results.json and results.md")
    ea.add_argument(
        "--limit", type=int, default=None, metavar="N", help="only the first N queries / held-out tickets of each"
    )
    ea.add_argument("--holdout-every", type=int, default=10, metavar="N", help="every Nth ticket is a question (10)")
    ea.add_argument(
        "--holdout-offset",
        type=int,
        default=0,
        metavar="R",
        help="questions are the tickets at R, R+N, ... (0; tune on another R, report on 0)",
    )
    ea.add_argument(
        "--distractors",
        type=int,
        default=None,
        metavar="N",
        help="ingest only the asked queries' judged documents and each one's N best BM25 matches (default: the whole "
        "corpus)",
    )
    ea.add_argument(
        "--fit-escalation", action="store_true", help="fit the evidence score on the BEIR questions (2-fold CV)"
    )
    ea.add_argument(
        "--evidence-model-out", default=None, metavar="JSON", help="where --fit-escalation writes the model"
    )
    ea.set_defaults(func=cmd_eval_answers)


def _reindex_parser(sub: Any) -> None:
    rx = sub.add_parser(
        "reindex",
        help="recompute stored tickets' keyword terms (stop an embedded-mode service first; vectors are kept)",
    )
    rx.add_argument(
        "--collection", action="append", default=None, help="only this collection (repeatable; default: all)"
    )
    rx.set_defaults(func=cmd_reindex)


def _compress_parser(sub: Any) -> None:
    cp = sub.add_parser(
        "compress",
        help="turn on VECTOR_COMPRESSION for the collection that holds the tickets (in place; stop an embedded-mode "
        "service first)",
    )
    cp.add_argument(
        "--wait", type=float, default=3600, help="seconds to wait for the compression to finish (default 3600)"
    )
    cp.set_defaults(func=cmd_compress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ticket-rag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _setup_parser(sub)
    _import_parser(sub)
    _eval_parser(sub)
    _eval_triage_parser(sub)
    _eval_duplicates_parser(sub)
    _eval_answers_parser(sub)
    _reindex_parser(sub)
    _compress_parser(sub)
    return parser


def _export_tracing_env(env_file: str = ".env") -> None:
    """LangSmith reads its own variables from the process environment; let `.env` set them too."""
    import os

    from dotenv import dotenv_values

    for key, value in dotenv_values(env_file).items():
        if key.startswith(("LANGSMITH_", "LANGCHAIN_")) and value is not None:
            os.environ.setdefault(key, value)


def main(argv: Sequence[str] | None = None) -> int:
    from ticket_rag.api.observability import configure_logging

    args = build_parser().parse_args(argv)
    _export_tracing_env()
    try:
        settings = load_settings()
        configure_logging(level=settings.log_level, json_lines=settings.log_json)
        return int(args.func(args, settings))
    except ConfigError as exc:
        print(f"ticket-rag: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
