"""Faults injected for real on loopback: Weaviate stopped, hung (SIGSTOP) and killed (SIGKILL) under the service."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from server import create_app
from tests.conftest import LiveServer, make_settings
from ticket_rag.runtime.weaviate import EmbeddedWeaviate, free_port
from ticket_rag.settings import Settings

TICKET = {
    "title": "Password reset link expired",
    "description": "The reset link says it has expired.",
    "status": "resolved",
}


@pytest.fixture()
def own_weaviate(weaviate_binary: Path, tmp_path: Path) -> Iterator[EmbeddedWeaviate]:
    """A Weaviate of this test's own, so it can be stopped, hung and killed."""
    server = EmbeddedWeaviate(
        binary=weaviate_binary, data_dir=tmp_path / "wv", http_port=free_port(), grpc_port=free_port()
    )
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def _client(server: EmbeddedWeaviate, embeddings: Embeddings, **overrides: object) -> TestClient:
    settings = make_settings(
        weaviate_url=server.url, weaviate_grpc_url=f"127.0.0.1:{server.grpc_port}", weaviate_timeout=2.0, **overrides
    )
    llm = FakeListChatModel(responses=["Send a fresh link [T1]."] * 100)
    return TestClient(create_app(settings, embeddings=embeddings, llm=llm))


def test_stopped_weaviate_gives_fast_503s_and_the_service_recovers(
    own_weaviate: EmbeddedWeaviate, embeddings: Embeddings
) -> None:
    with _client(own_weaviate, embeddings) as client:
        ticket = client.post("/tickets/", json=TICKET).json()
        own_weaviate.stop()

        for method, path, body in [
            ("POST", "/tickets/search", {"query": "password"}),
            ("POST", "/tickets/", TICKET),
            ("GET", f"/tickets/{ticket['id']}", None),
            ("POST", "/rag/invoke", {"input": {"question": "reset password"}}),
        ]:
            started = time.monotonic()
            response = client.request(method, path, json=body)
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert response.headers["retry-after"]
            assert time.monotonic() - started < 5, path
        started = time.monotonic()
        assert client.get("/health").status_code == 200
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["weaviate"] == "unreachable"
        assert time.monotonic() - started < 5

        own_weaviate.start()
        deadline = time.monotonic() + 30
        while client.post("/tickets/search", json={"query": "password"}).status_code != 200:
            assert time.monotonic() < deadline, "the service did not recover"
            time.sleep(0.5)
        assert client.get(f"/tickets/{ticket['id']}").status_code == 200
        assert client.get("/health/ready").status_code == 200


def test_hung_weaviate_gives_503_within_the_deadline(own_weaviate: EmbeddedWeaviate, embeddings: Embeddings) -> None:
    with _client(own_weaviate, embeddings) as client:
        client.post("/tickets/", json=TICKET)
        assert own_weaviate.process is not None
        os.kill(own_weaviate.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            response = client.post("/tickets/search", json={"query": "password"})
            elapsed = time.monotonic() - started
            assert response.status_code == 503, response.text
            assert elapsed < 8, f"took {elapsed:.1f} s with WEAVIATE_TIMEOUT=2"
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            assert client.get("/health/ready").status_code == 503
            assert time.monotonic() - started < 5
        finally:
            os.kill(own_weaviate.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while client.post("/tickets/search", json={"query": "password"}).status_code != 200:
            assert time.monotonic() < deadline, "the service did not recover"
            time.sleep(0.5)


def test_a_deleted_ticket_stays_deleted_across_a_restart(
    own_weaviate: EmbeddedWeaviate, embeddings: Embeddings
) -> None:
    with _client(own_weaviate, embeddings) as client:
        gone = client.post("/tickets/", json=TICKET).json()
        kept = client.post("/tickets/", json={**TICKET, "title": "Reset email never arrives"}).json()
        assert client.delete(f"/tickets/{gone['id']}").status_code == 204
        own_weaviate.stop()
        own_weaviate.start()
        deadline = time.monotonic() + 30
        while (
            response := client.post("/tickets/search", json={"query": "password reset", "limit": 10})
        ).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert [h["ticket"]["id"] for h in response.json()["results"]] == [kept["id"]]
        assert client.get(f"/tickets/{gone['id']}").status_code == 404
        sources = client.post("/rag/invoke", json={"input": {"question": "password reset"}}).json()["output"]["sources"]
        assert [s["id"] for s in sources] == [kept["id"]]


@pytest.mark.slow
def test_acknowledged_tickets_survive_repeated_sigkill_during_import(
    own_weaviate: EmbeddedWeaviate, embeddings: Embeddings
) -> None:
    """Clients import with retries while Weaviate is SIGKILLed and restarted: every 2xx'd ticket is there, once."""
    settings = make_settings(
        weaviate_url=own_weaviate.url, weaviate_grpc_url=f"127.0.0.1:{own_weaviate.grpc_port}", weaviate_timeout=3.0
    )
    batches = [
        [
            {"title": f"Ticket {b}-{i}", "description": f"Problem {b}-{i} with the VPN", "external_id": f"ext-{b}-{i}"}
            for i in range(25)
        ]
        for b in range(96)
    ]
    acknowledged: set[str] = set()
    failures: list[int] = []
    stop = threading.Event()

    def importer(server: LiveServer, mine: list[list[dict[str, str]]]) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for batch in mine:
                for _ in range(60):
                    if chaos_errors:
                        return  # retry the same batch (same external ids) until it is acknowledged
                    try:
                        response = http.post("/tickets/bulk", json={"tickets": batch})
                    except httpx.HTTPError:
                        response = None
                    if response is not None and response.status_code == 200:
                        acknowledged.update(t["external_id"] for t in batch)
                        break
                    if response is not None:
                        failures.append(response.status_code)
                    time.sleep(0.5)

    chaos_errors: list[BaseException] = []
    kills: list[int] = []  # tickets acknowledged at each kill

    def killer() -> None:
        try:
            for _ in range(3):
                if stop.wait(4):
                    return
                process = own_weaviate.process
                assert process is not None
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                kills.append(len(acknowledged))
                own_weaviate.stop()
                own_weaviate.start()
        except BaseException as exc:  # the test fails on it below, instead of hanging
            chaos_errors.append(exc)
            stop.set()

    with LiveServer(create_app(settings, embeddings=embeddings)) as server:
        workers = [threading.Thread(target=importer, args=(server, batches[k::2])) for k in range(2)]
        chaos = threading.Thread(target=killer)
        for thread in (*workers, chaos):
            thread.start()
        for thread in workers:
            thread.join(timeout=900)
        stop.set()
        chaos.join()
        assert not chaos_errors, chaos_errors
        assert len(kills) == 3 and kills[-1] < 96 * 25, f"killed at {kills} acknowledged tickets: not during the import"
        assert len(acknowledged) == 96 * 25, f"{len(acknowledged)} acknowledged; failures {failures[:10]}"
        assert set(failures) <= {503, 504}, failures
        # the last restart may still be loading its shards: the service answers 503 until Weaviate is ready
        deadline = time.monotonic() + 60
        while (counted := httpx.get(f"{server.url}/collections/default")).status_code == 503:
            assert time.monotonic() < deadline, "Weaviate did not come back within 60 s of its last restart"
            time.sleep(0.5)
        assert counted.json()["ticket_count"] == 96 * 25
        seen: set[str] = set()
        offset = 0
        while page := httpx.get(f"{server.url}/tickets/", params={"limit": 200, "offset": offset}).json()["data"]:
            seen.update(t["external_id"] for t in page)
            offset += 200
        assert seen == acknowledged


class BreakableEmbeddings(Embeddings):
    """The real model, until the test breaks it: what an ONNX Runtime or tokenizer failure at run time looks like."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.broken = False

    def _check(self) -> None:
        if self.broken:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned")

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self._check()
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        self._check()
        return self.inner.embed_query(text)


def test_a_failing_model_gives_503_stores_nothing_and_readiness_says_why(
    settings: Settings, embeddings: Embeddings
) -> None:
    model = BreakableEmbeddings(embeddings)
    llm = FakeListChatModel(responses=["Send a fresh link [T1]."] * 10)
    with TestClient(create_app(settings, embeddings=model, llm=llm)) as client:
        assert client.post("/tickets/", json=TICKET).status_code == 201
        model.broken = True
        refused = [
            client.post("/tickets/", json={**TICKET, "title": "VPN drops every hour"}),
            client.post("/tickets/bulk", json={"tickets": [{**TICKET, "title": "Printer offline"}]}),
            client.post("/tickets/search", json={"query": "monitor flickers"}),
            client.post("/rag/invoke", json={"input": {"question": "why does the monitor flicker?"}}),
        ]
        for response in refused:
            assert response.status_code == 503, (response.request.url, response.text)
            assert response.headers["retry-after"]
        assert "embedding model" in refused[0].json()["detail"]
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["embeddings"] == "failing: RuntimeError"  # the type only: readiness is unauthenticated
        assert ready.json()["weaviate"] == "ok"
        assert client.get("/collections/default").json()["ticket_count"] == 1  # nothing stored without its vector
        assert "ticket_rag_embedding_errors_total" in client.get("/metrics").text

        model.broken = False  # the model recovers: so does the service, by itself
        assert client.post("/tickets/", json={**TICKET, "title": "VPN drops every hour"}).status_code == 201
        assert client.get("/health/ready").status_code == 200
        assert client.get("/collections/default").json()["ticket_count"] == 2


def _embedded_settings(weaviate_binary: Path, tmp_path: Path) -> Settings:
    """A service that runs its own Weaviate as a child process (no WEAVIATE_URL), as `make run` does."""
    return make_settings(
        weaviate_binary=weaviate_binary,
        data_dir=tmp_path / "data",
        weaviate_timeout=2.0,
        weaviate_http_port=free_port(),
        weaviate_grpc_port=free_port(),
        rate_limit_per_minute=0,
    )


def _wait_until_ready(get: Any, deadline: float) -> None:
    while get("/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the service did not get its Weaviate back in time"
        time.sleep(0.1)


def test_the_service_restarts_its_embedded_weaviate_after_a_kill(
    weaviate_binary: Path, embeddings: Embeddings, tmp_path: Path
) -> None:
    with TestClient(create_app(_embedded_settings(weaviate_binary, tmp_path), embeddings=embeddings)) as client:
        ticket = client.post("/tickets/", json=TICKET).json()
        supervisor = client.app.state.services.supervisor  # type: ignore[attr-defined]
        killed = supervisor.server.process
        os.kill(killed.pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while (ready := client.get("/health/ready")).status_code == 200:  # until the supervisor notices
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ready.json()["weaviate"] == "unreachable" or ready.json()["weaviate"].startswith("restarting")
        assert client.get(f"/tickets/{ticket['id']}").status_code == 503
        _wait_until_ready(client.get, deadline)
        assert supervisor.restarts == 1 and killed.poll() == -signal.SIGKILL  # reaped, not left defunct
        assert client.get(f"/tickets/{ticket['id']}").json()["title"] == TICKET["title"]
        assert client.post("/tickets/", json={**TICKET, "title": "After the restart"}).status_code == 201


@pytest.mark.slow
def test_twenty_kills_of_the_embedded_weaviate_during_an_import_lose_and_duplicate_nothing(
    weaviate_binary: Path, embeddings: Embeddings, tmp_path: Path
) -> None:
    """4 clients create tickets (no external_id: an Idempotency-Key each, retried until acknowledged) while the
    service's own Weaviate is SIGKILLed 20 times; the service brings it back each time by itself."""
    acknowledged: list[str] = []
    statuses: list[int] = []
    recoveries: list[float] = []
    done = threading.Event()

    def client_loop(server: LiveServer, worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            n = 0
            while not done.is_set():
                title, key = f"Import {worker}-{n}", str(uuid.uuid4())
                body = {"title": title, "description": f"VPN drops for user {worker}-{n} every hour"}
                for _ in range(600):  # until acknowledged: a client that gave up would not know if it was stored
                    try:
                        response = http.post("/tickets/", json=body, headers={"Idempotency-Key": key})
                    except httpx.HTTPError:
                        time.sleep(0.2)
                        continue
                    statuses.append(response.status_code)
                    if response.status_code == 201:
                        acknowledged.append(title)
                        break
                    time.sleep(0.2)
                n += 1

    with LiveServer(create_app(_embedded_settings(weaviate_binary, tmp_path), embeddings=embeddings)) as server:
        supervisor = server.server.config.app.state.services.supervisor  # type: ignore[attr-defined]
        workers = [threading.Thread(target=client_loop, args=(server, w)) for w in range(4)]
        for thread in workers:
            thread.start()
        get = httpx.Client(base_url=server.url, timeout=10).get
        try:
            for _ in range(20):
                time.sleep(1.5)  # let the import run between kills
                before = len(acknowledged)
                killed = time.monotonic()
                os.kill(supervisor.server.process.pid, signal.SIGKILL)
                time.sleep(0.6)  # the supervisor looks every 0.5 s
                _wait_until_ready(get, killed + 120)
                recoveries.append(time.monotonic() - killed)
                assert len(acknowledged) >= before
        finally:
            done.set()
            for thread in workers:
                thread.join(timeout=120)
        assert supervisor.restarts == 20
        titles: list[str] = []
        offset = 0
        while page := get("/tickets/", params={"limit": 200, "offset": offset}).json()["data"]:
            titles += [t["title"] for t in page]
            offset += 200
    recoveries.sort()
    sys.stderr.write(
        f"\n20 kills: recovery median {recoveries[10]:.2f} s, max {recoveries[-1]:.2f} s; "
        f"{len(acknowledged)} tickets acknowledged, {len(titles)} stored, statuses {sorted(set(statuses))}\n"
    )
    assert len(acknowledged) > 100, "the import hardly ran between the kills"
    assert len(titles) == len(set(titles)), "a retried create was stored twice"
    assert set(acknowledged) <= set(titles), "an acknowledged ticket was lost"
    assert set(statuses) <= {201, 503, 504}, statuses
