"""`ticket-rag serve` as a user runs it: embedded Weaviate as a child, SIGTERM stops both, data survives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import ROOT
from ticket_rag.runtime.weaviate import connect, free_port, port_in_use


@contextmanager
def serve(data_dir: Path, ports: dict[str, int]) -> Iterator[subprocess.Popen[str]]:
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "PORT": str(ports["api"]),
        "WEAVIATE_HTTP_PORT": str(ports["http"]),
        "WEAVIATE_GRPC_PORT": str(ports["grpc"]),
        "LOG_JSON": "true",
    }
    env.pop("WEAVIATE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ticket_rag.tools.cli", "serve"],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{ports['api']}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("service not ready in 180 s")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_stops_weaviate_and_data_survives_restart(tmp_path: Path) -> None:
    ports = {"api": free_port(), "http": free_port(), "grpc": free_port()}
    weaviate_url = f"http://127.0.0.1:{ports['http']}"
    with serve(tmp_path, ports) as proc:
        with connect(url=weaviate_url, grpc_url=f"127.0.0.1:{ports['grpc']}") as wv:
            wv.collections.create("Survivor")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after shutdown
    assert not port_in_use(ports["http"]), "the child Weaviate outlived the service"

    with serve(tmp_path, ports):
        with connect(url=weaviate_url, grpc_url=f"127.0.0.1:{ports['grpc']}") as wv:
            assert wv.collections.exists("Survivor")
