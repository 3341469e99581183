"""`ticket-rag import`: CSV or JSONL exports into a running service, in batches, resumable and idempotent.

Rows are mapped to tickets (a preset or --map field=column), validated locally with the API's own
schema, and sent to POST /tickets/bulk. Every ticket gets an external_id (the mapped column, or a
hash of its text), so a re-import updates instead of duplicating, and an interrupted import resumes
from its checkpoint.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from tqdm import tqdm

from ticket_rag.errors import ConfigError
from ticket_rag.tickets.schemas import TicketCreate

logger = logging.getLogger(__name__)

csv.field_size_limit(sys.maxsize)

SYNONYMS = {
    "priority": {"critical": "urgent", "highest": "urgent", "normal": "medium", "lowest": "low"},
    "status": {
        "pending customer response": "in_progress",
        "pending": "in_progress",
        "in progress": "in_progress",
        "solved": "resolved",
        "new": "open",
    },
}

# field -> column, or a list of columns (tags), or "=constant"
PRESETS: dict[str, dict[str, Any]] = {
    "tobi_bueck": {
        "title": "subject",
        "description": "body",
        "resolution": "answer",
        "priority": "priority",
        "category": "queue",
        "type": "type",
        "tags": ["tag_1", "tag_2", "tag_3", "tag_4", "tag_5", "tag_6", "tag_7", "tag_8"],
        "status": "=resolved",
    },
    "suraj520": {
        "external_id": "Ticket ID",
        "title": "Ticket Subject",
        "description": "Ticket Description",
        "resolution": "Resolution",
        "priority": "Ticket Priority",
        "status": "Ticket Status",
        "category": "Ticket Type",
        "tags": ["Product Purchased", "Ticket Channel"],
    },
}


@dataclass
class Row:
    line: int
    data: dict[str, Any]


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    # rows whose external_id a later row of the same batch repeats: the later row is stored (as across batches)
    superseded: int = 0
    failures: list[str] = field(default_factory=list)


def read_rows(path: Path, fmt: str | None = None) -> Iterator[Row]:
    """Rows of a CSV (header line first) or JSONL file, each with the line it starts on.

    A JSONL line that is not one JSON object the API would accept (invalid JSON, a key twice, NaN, nesting past
    the API's depth, an array) is a row that fails with its reason, and the others go on; a file that is not
    UTF-8 is a ConfigError naming what it looks like instead.
    """
    fmt = fmt or ("jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "csv")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        try:
            if fmt == "jsonl":
                for number, line in enumerate(fh, start=1):
                    if line.strip():
                        yield Row(number, _json_row(line))
                return
            reader = csv.DictReader(fh)
            start = reader.line_num + 1
            for record in reader:
                yield Row(start if start > 1 else 2, record)
                start = reader.line_num + 1
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 text ({_encoding_hint(path)}); save it as UTF-8 first") from exc


# The API refuses JSON nested deeper than this (ticket_rag/api/strict_json.py); a row nested deeper would only fail
# there, after the rows beside it in its batch were refused with it.
MAX_DEPTH = 32


def _json_row(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line, object_pairs_hook=_no_repeated_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        return {"__error__": f"invalid JSON: {exc.msg}"}
    except (ValueError, RecursionError) as exc:
        return {"__error__": f"invalid JSON: {exc}" if isinstance(exc, ValueError) else "invalid JSON: nested too deep"}
    if not isinstance(value, dict):
        return {"__error__": f"a line must be one JSON object, not {type(value).__name__}"}
    if _depth(value) > MAX_DEPTH:
        return {"__error__": f"invalid JSON: nested deeper than {MAX_DEPTH} levels"}
    return value


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    counts = Counter(k for k, _ in pairs)
    repeated = sorted(k for k, n in counts.items() if n > 1)
    if repeated:
        raise ValueError(f"key {repeated[0]!r} appears twice")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _encoding_hint(path: Path) -> str:
    head = path.read_bytes()[:4]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(head) >= 2 and 0 in head[:2]):
        return "it looks like UTF-16"
    return "perhaps Latin-1 or Windows-1252"


def parse_mapping(preset: str | None, pairs: list[str]) -> dict[str, Any]:
    """The field mapping: a preset, overridden by field=column pairs (tags=a+b for several columns)."""
    mapping: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    for pair in pairs:
        name, _, column = pair.partition("=")
        if not column or name not in TicketCreate.model_fields:
            raise ValueError(
                f"--map {pair!r}: expected FIELD=COLUMN with FIELD one of {', '.join(TicketCreate.model_fields)}"
            )
        mapping[name] = column.split("+") if name == "tags" else column
    if not mapping:
        mapping = {name: name for name in TicketCreate.model_fields}
    return mapping


def _value(row: Mapping[str, Any], spec: Any) -> Any:
    if isinstance(spec, list):
        return [str(row[c]).strip() for c in spec if row.get(c) not in (None, "")]
    if isinstance(spec, str) and spec.startswith("="):
        return spec[1:]
    return row.get(spec)


def map_row(row: Mapping[str, Any], mapping: Mapping[str, Any]) -> dict[str, Any]:
    """One source row as a TicketCreate payload (not yet validated)."""
    if "__error__" in row:
        raise ValueError(row["__error__"])
    out: dict[str, Any] = {}
    for name, spec in mapping.items():
        value = _value(row, spec)
        if value in (None, "", []):
            continue
        if isinstance(value, str):
            value = value.replace("\\n", "\n").strip()
            if name in SYNONYMS:
                value = value.lower()
                value = SYNONYMS[name].get(value, value)
        if name == "tags" and isinstance(value, str):
            value = [t.strip() for t in value.split(",") if t.strip()]
        if name == "external_id":
            value = str(value)
        out[name] = value
    if not out.get("title") and out.get("description"):
        first_line = str(out["description"]).strip().splitlines()[0]
        out["title"] = first_line[:120]
    if "tags" in out:
        out["tags"] = list(dict.fromkeys(t[:50] for t in out["tags"]))[:20]
    if not out.get("external_id"):
        digest = hashlib.sha256(f"{out.get('title', '')}\x00{out.get('description', '')}".encode()).hexdigest()
        out["external_id"] = f"sha256:{digest[:32]}"
    return out


def _error_text(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


class Importer:
    """Sends validated tickets to a running service's POST /tickets/bulk, checkpointing after each batch."""

    def __init__(
        self,
        *,
        url: str,
        collection: str | None,
        batch_size: int = 64,
        api_key: str | None = None,
        checkpoint_dir: Path,
        timeout: float = 300.0,
        retries: int = 5,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.collection = collection
        self.batch_size = batch_size
        self.checkpoint_dir = checkpoint_dir
        self.retries = retries

    def _checkpoint_path(self, path: Path) -> Path:
        key = hashlib.sha256(f"{path.resolve()}\x00{self.collection}".encode()).hexdigest()[:24]
        return self.checkpoint_dir / f"import-{key}.json"

    def run(
        self, path: Path, mapping: dict[str, Any], *, fmt: str | None = None, restart: bool = False
    ) -> ImportReport:
        """Import a file; rows already acknowledged by an earlier run of the same file are skipped."""
        file_hash = hashlib.sha256(path.read_bytes()).hexdigest()
        checkpoint = self._checkpoint_path(path)
        done_rows = 0
        if checkpoint.exists() and not restart:
            saved = json.loads(checkpoint.read_text())
            if saved.get("file_sha256") == file_hash:
                done_rows = int(saved["rows_done"])
        report = ImportReport()
        batch: list[tuple[int, dict[str, Any]]] = []
        index = 0
        with tqdm(desc=f"import {path.name}", unit="row", file=sys.stderr, disable=None) as bar:
            for index, row in enumerate(read_rows(path, fmt), start=1):
                report.rows += 1
                bar.update(1)
                if index <= done_rows:
                    report.skipped += 1
                    continue
                try:
                    ticket = TicketCreate.model_validate(map_row(row.data, mapping))
                except ValidationError as exc:
                    report.failures.append(f"line {row.line}: {_error_text(exc)}")
                    continue
                except ValueError as exc:
                    report.failures.append(f"line {row.line}: {exc}")
                    continue
                batch.append((row.line, ticket.model_dump(mode="json", exclude_none=True)))
                if len(batch) >= self.batch_size:
                    self._send(batch, report)
                    batch = []
                    self._save(checkpoint, file_hash, index)
            if batch:
                self._send(batch, report)
            self._save(checkpoint, file_hash, index)
        return report

    def _send(self, batch: list[tuple[int, dict[str, Any]]], report: ImportReport) -> None:
        # One bulk request may not name an external_id twice (422): the later row wins, as it does across batches
        # (an export with a row per update of a ticket; two rows without an id and the same title and description).
        ids = [payload.get("external_id") or f"\x00row {n}" for n, (_, payload) in enumerate(batch)]
        last = {external_id: n for n, external_id in enumerate(ids)}
        kept = [item for n, item in enumerate(batch) if last[ids[n]] == n]
        report.superseded += len(batch) - len(kept)
        body = {"tickets": [payload for _, payload in kept], "collection": self.collection}
        for attempt in range(self.retries + 1):
            try:
                response = self.http.post("/tickets/bulk", json=body)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise RuntimeError(f"the service at {self.http.base_url} did not answer: {exc}") from exc
            else:
                if response.status_code == 200:
                    result = response.json()
                    report.created += result["created"]
                    report.updated += result["updated"]
                    return
                lines = f"lines {batch[0][0]}-{batch[-1][0]}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    # the request itself is refused (a bad key, a collection that does not exist): a re-run would
                    # be refused the same way until the options or the file change
                    raise ConfigError(
                        f"import stopped at {lines}: the service refused them ({response.status_code}): "
                        f"{response.text[:300]}; fix the options or the file, then run the command again"
                    )
                if response.status_code not in (429, 502, 503, 504) or attempt == self.retries:
                    raise RuntimeError(f"{lines}: the service answered {response.status_code}: {response.text[:300]}")
            time.sleep(min(30.0, 0.5 * 2**attempt))

    def _save(self, checkpoint: Path, file_hash: str, rows_done: int) -> None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        tmp.write_text(json.dumps({"file_sha256": file_hash, "rows_done": rows_done}))
        tmp.replace(checkpoint)
