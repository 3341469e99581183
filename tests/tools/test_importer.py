"""`ticket-rag import` against a live service: the demo datasets, bad rows, re-imports and resumption."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import DATASETS, ROOT, LiveServer


def _sample(source: Path, target: Path, rows: int) -> Path:
    with source.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames
        picked = [row for _, row in zip(range(rows), reader, strict=False)]
    with target.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)  # type: ignore[arg-type]
        writer.writeheader()
        writer.writerows(picked)
    return target


def _import(server: LiveServer, path: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ticket_rag.tools.cli", "import", str(path), "--url", server.url, *args],
        cwd=ROOT,
        env={**os.environ, "DATA_DIR": str(data_dir), "LOG_JSON": "false"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _count(server: LiveServer, collection: str = "default") -> int:
    return int(httpx.get(f"{server.url}/collections/{collection}").json()["ticket_count"])


def test_import_demo_sample_then_reimport_changes_nothing(live_server: LiveServer, tmp_path: Path) -> None:
    sample = _sample(DATASETS / "tickets" / "tobi_bueck_en_de.csv", tmp_path / "tobi.csv", 24)
    first = _import(live_server, sample, tmp_path, "--preset", "tobi_bueck", "--batch-size", "8")
    assert first.returncode == 0, first.stderr
    assert "24 rows: 24 created, 0 updated, 0 failed" in first.stdout
    assert _count(live_server) == 24

    resumed = _import(live_server, sample, tmp_path, "--preset", "tobi_bueck")
    assert "24 already imported" in resumed.stdout
    again = _import(live_server, sample, tmp_path, "--preset", "tobi_bueck", "--restart")
    assert "0 created, 24 updated" in again.stdout
    assert _count(live_server) == 24

    ticket = httpx.get(f"{live_server.url}/tickets/", params={"limit": 200}).json()["data"][0]
    assert ticket["status"] == "resolved" and ticket["resolution"] and ticket["category"]
    assert "\\n" not in ticket["description"]


def test_bad_rows_are_reported_by_line_and_the_rest_is_imported(live_server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text(
        "id,subject,body,prio\n"
        "1,Login fails,Cannot sign in since Monday,high\n"
        '2,Printer,"multi-line\nbody that spans lines",whenever\n'
        "3,,,low\n"
        "4,VPN drops,The tunnel drops hourly,Critical\n",
        encoding="utf-8",
    )
    result = _import(
        live_server,
        path,
        tmp_path,
        "--map",
        "external_id=id",
        "--map",
        "title=subject",
        "--map",
        "description=body",
        "--map",
        "priority=prio",
    )
    assert result.returncode == 0, result.stderr
    assert "4 rows: 2 created, 0 updated, 2 failed" in result.stdout
    assert "failed line 3: priority:" in result.stderr
    assert "failed line 5: title:" in result.stderr or "failed line 5: description:" in result.stderr
    urgent = httpx.get(f"{live_server.url}/tickets/", params={"priority": "urgent"}).json()["data"]
    assert [t["external_id"] for t in urgent] == ["4"]


def test_jsonl_with_a_broken_line(live_server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "tickets.jsonl"
    path.write_text(
        json.dumps({"title": "A", "description": "first", "external_id": "a"})
        + "\n"
        + "{not json\n"
        + json.dumps({"title": "B", "description": "second", "tags": "x, y"})
        + "\n",
        encoding="utf-8",
    )
    result = _import(live_server, path, tmp_path)
    assert "3 rows: 2 created, 0 updated, 1 failed" in result.stdout
    assert "failed line 2: invalid JSON" in result.stderr
    tags = {t["title"]: t["tags"] for t in httpx.get(f"{live_server.url}/tickets/").json()["data"]}
    assert tags["B"] == ["x", "y"]


def test_an_interrupted_import_resumes_where_it_stopped(live_server: LiveServer, tmp_path: Path) -> None:
    sample = _sample(DATASETS / "tickets" / "suraj520.csv", tmp_path / "suraj.csv", 400)
    cmd = [
        sys.executable,
        "-m",
        "ticket_rag.tools.cli",
        "import",
        str(sample),
        "--url",
        live_server.url,
        "--preset",
        "suraj520",
        "--batch-size",
        "10",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "DATA_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoints = tmp_path / "imports"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        files = list(checkpoints.glob("import-*.json"))
        if files and json.loads(files[0].read_text())["rows_done"] >= 20:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done_before = json.loads(next(checkpoints.glob("import-*.json")).read_text())["rows_done"]
    # 400 rows in batches of 10 take far longer than stopping after 20: the import is always cut short.
    assert 20 <= done_before < 400, done_before
    result = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "DATA_DIR": str(tmp_path)}, capture_output=True, text=True, timeout=600
    )
    assert f"{done_before} already imported (resumed)" in result.stdout
    assert _count(live_server) == 400


def test_a_file_that_repeats_a_ticket_imports_with_the_last_row_kept(live_server: LiveServer, tmp_path: Path) -> None:
    # an export with a row per update of one ticket, and two identical rows without an id, in one bulk batch
    path = tmp_path / "repeats.csv"
    path.write_text(
        "id,subject,body,prio\n"
        "7,VPN drops,The tunnel drops hourly,low\n"
        ",Printer not working,Nothing prints,low\n"
        "7,VPN drops,The tunnel drops hourly,high\n"
        ",Printer not working,Nothing prints,low\n",
        encoding="utf-8",
    )
    mapping = [f"--map={pair}" for pair in ("external_id=id", "title=subject", "description=body", "priority=prio")]
    result = _import(live_server, path, tmp_path, *mapping)
    assert result.returncode == 0, result.stderr
    assert "4 rows: 2 created, 0 updated, 0 failed" in result.stdout
    assert "2 replaced by a later row with the same external id" in result.stdout
    assert _count(live_server) == 2
    vpn = httpx.get(f"{live_server.url}/tickets/", params={"priority": "high"}).json()["data"]
    assert [t["external_id"] for t in vpn] == ["7"]


def test_hostile_jsonl_lines_fail_one_by_one_and_the_rest_is_imported(live_server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "hostile.jsonl"
    good = [json.dumps({"title": f"Good {n}", "description": "A fine ticket.", "external_id": f"g{n}"}) for n in (1, 2)]
    path.write_text(
        "\n".join(
            [
                good[0],
                "[1, 2, 3]",
                '{"title": "dup", "title": "second", "description": "x"}',
                '{"title": "nan", "description": NaN}',
                '{"title": "deep", "description": "x", "tags": ' + "[" * 3000 + "]" * 3000 + "}",
                '{"title": "deepish", "description": "x", "extra": ' + "[" * 40 + "]" * 40 + "}",
                good[1],
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    result = _import(live_server, path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "7 rows: 2 created, 0 updated, 5 failed" in result.stdout, result.stdout + result.stderr
    for line, reason in [(2, "JSON object"), (3, "appears twice"), (4, "NaN"), (5, "nested"), (6, "nested deeper")]:
        assert f"failed line {line}: " in result.stderr and reason in result.stderr, (line, result.stderr)
    assert "Traceback" not in result.stderr
    assert _count(live_server) == 2


def test_a_file_that_is_not_utf8_is_named_as_such(live_server: LiveServer, tmp_path: Path) -> None:
    for name, data in [
        ("latin1.csv", "title,description\nCafé,Crème brûlée\n".encode("latin-1")),
        ("utf16.csv", "title,description\nA,B\n".encode("utf-16")),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        result = _import(live_server, path, tmp_path)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert "is not UTF-8" in result.stderr, result.stderr
    assert "UTF-16" in result.stderr


def test_a_refused_batch_says_to_fix_the_options_not_to_resume(live_server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("title,description\nA ticket,With a body\n", encoding="utf-8")
    result = _import(live_server, path, tmp_path, "--collection", "nosuchcollection")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "fix the options or the file" in result.stderr and "resume" not in result.stderr, result.stderr
