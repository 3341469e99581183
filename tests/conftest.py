"""Test harness: a real Weaviate (the same binary the service runs) and the real embedding model, per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings

from server import create_app
from ticket_rag.embeddings.model import build_embeddings
from ticket_rag.runtime.artifacts import ensure_weaviate_binary
from ticket_rag.runtime.weaviate import EmbeddedWeaviate, free_port
from ticket_rag.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"


def make_settings(**overrides: object) -> Settings:
    """Settings for tests: no .env file, plain-text logs, overrides on top."""
    base: dict[str, object] = {"_env_file": None, "log_json": False, "llm_provider": "none"}
    return load_settings(**{**base, **overrides})


@pytest.fixture(scope="session")
def weaviate_binary() -> Path:
    return ensure_weaviate_binary(make_settings().cache_dir, make_settings().weaviate_version)


@pytest.fixture(scope="session")
def weaviate_server(weaviate_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedWeaviate]:
    """One real Weaviate for the session, on free loopback ports, data in a temporary folder."""
    server = EmbeddedWeaviate(
        binary=weaviate_binary,
        data_dir=tmp_path_factory.mktemp("weaviate"),
        http_port=free_port(),
        grpc_port=free_port(),
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def embeddings() -> Embeddings:
    """The real all-mpnet-base-v2, loaded once."""
    return build_embeddings(make_settings())


@pytest.fixture()
def weaviate_class() -> str:
    """A Weaviate collection name of this test's own, so tests never see each other's data."""
    return f"Test{uuid.uuid4().hex[:12]}"


@pytest.fixture()
def settings(weaviate_server: EmbeddedWeaviate, weaviate_class: str, tmp_path: Path) -> Settings:
    return make_settings(
        weaviate_url=weaviate_server.url,
        weaviate_grpc_url=f"127.0.0.1:{weaviate_server.grpc_port}",
        weaviate_class=weaviate_class,
        data_dir=tmp_path / "data",
    )


@pytest.fixture()
def client(settings: Settings, embeddings: Embeddings) -> Iterator[TestClient]:
    """The whole app, lifespan included, over the session's Weaviate and model."""
    app = create_app(settings, embeddings=embeddings)
    with TestClient(app) as test_client:
        yield test_client
    _drop_class(settings)


def _drop_class(settings: Settings) -> None:
    from ticket_rag.runtime.weaviate import connect

    assert settings.weaviate_url is not None
    with connect(url=settings.weaviate_url, grpc_url=settings.weaviate_grpc_url) as wv:
        wv.collections.delete([settings.weaviate_class, f"{settings.weaviate_class}ApiKey"])


class LiveServer:
    """The app served by a real uvicorn on a loopback port, in a thread of the test process."""

    def __init__(self, app: object) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None))  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture()
def live_server(settings: Settings, embeddings: Embeddings) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings, embeddings=embeddings)) as server:
        yield server
    _drop_class(settings)
