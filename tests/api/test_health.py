from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings

from server import create_app
from tests.conftest import make_settings
from ticket_rag.runtime.weaviate import EmbeddedWeaviate, free_port


def test_liveness_answers_without_io(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


def test_probes_may_use_head(client: TestClient) -> None:
    for path in ("/health", "/health/ready"):
        response = client.head(path)
        assert response.status_code == 200 and response.content == b"", path


def test_ready_when_weaviate_and_model_are_up(client: TestClient) -> None:
    response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "weaviate": "ok", "embeddings": "ok"}


def test_ready_names_weaviate_when_it_is_down_and_recovers(
    weaviate_binary: Path, embeddings: Embeddings, tmp_path: Path
) -> None:
    server = EmbeddedWeaviate(
        binary=weaviate_binary, data_dir=tmp_path / "wv", http_port=free_port(), grpc_port=free_port()
    )
    server.start()
    settings = make_settings(weaviate_url=server.url, weaviate_grpc_url=f"127.0.0.1:{server.grpc_port}")
    try:
        with TestClient(create_app(settings, embeddings=embeddings)) as client:
            assert client.get("/health/ready").status_code == 200
            server.stop()
            down = client.get("/health/ready")
            assert down.status_code == 503
            assert down.json()["weaviate"] == "unreachable"
            assert down.json()["embeddings"] == "ok"
            assert client.get("/health").status_code == 200
            restart = threading.Thread(
                target=server.start
            )  # a restart from a short-lived thread, as a supervisor would
            restart.start()
            restart.join()
            time.sleep(2)  # a child tied to the thread that forked it has been sent SIGTERM by now
            assert client.get("/health/ready").status_code == 200
            assert server.process is not None and server.process.poll() is None
    finally:
        server.stop()


def test_request_id_is_echoed_when_well_formed(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert client.get("/health", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"] != "bad id\n"
