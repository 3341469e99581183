"""LangSmith tracing as a user turns it on: only LANGSMITH_* variables, the real langsmith client, a loopback collector.

langsmith and langchain read and cache their environment at import, so the service runs as
`ticket-rag serve` in a child process, with the Groq boundary faked at HTTP (tests/fakes/groq_server.py)
and the runs caught by tests/fakes/langsmith_collector.py. It runs with REDACT_PII=true, as a service
that traces real tickets would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.embeddings.test_redaction import EMAIL, PHONE
from tests.fakes.groq_server import FakeGroq, Reply
from tests.fakes.langsmith_collector import LangSmithCollector
from ticket_rag.runtime.weaviate import EmbeddedWeaviate, connect, free_port

LANGSMITH_KEY = "ls-test-key-xyz"
GROQ_KEY = "gsk-test-secret"
SECRETS = (LANGSMITH_KEY, GROQ_KEY)
PROJECT = "ticket-rag-test"
ANSWER_CHUNKS = ["Use", " the", " admin", " console", " [T1]."]
TICKET = {
    "title": "Password reset link expired",
    "description": "The reset link says it has expired.",
    "resolution": "Sent a fresh link",
    "status": "resolved",
}
QUESTION = {"input": {"question": "How do I reset my password?"}}
STEPS = [
    "normalise_question",
    "condense_question",
    "retrieve_tickets",
    "weigh_evidence",
    "drop_irrelevant",
    "format_context",
    "generate_answer",
]


@dataclass
class TracedService:
    url: str
    collector: LangSmithCollector
    groq: FakeGroq
    log: Path
    responses: list[httpx.Response]

    def invoke(self, request_id: str, body: dict[str, Any] = QUESTION, path: str = "/rag/invoke") -> httpx.Response:
        response = httpx.post(f"{self.url}{path}", json=body, headers={"X-Request-ID": request_id}, timeout=60)
        self.responses.append(response)
        return response


@pytest.fixture(scope="module")
def service(weaviate_server: EmbeddedWeaviate, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedService]:
    """`ticket-rag serve` with tracing on, over the session's Weaviate, a fake Groq and a loopback collector."""
    tmp = tmp_path_factory.mktemp("tracing")
    weaviate_class = f"Trace{uuid.uuid4().hex[:12]}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_", "GROQ_", "WEAVIATE_"))}
    with LangSmithCollector() as collector, FakeGroq() as groq:
        groq.default = Reply(chunks=ANSWER_CHUNKS)
        env |= {
            "LANGSMITH_TRACING": "true",
            "LANGSMITH_ENDPOINT": collector.url,
            "LANGSMITH_API_KEY": LANGSMITH_KEY,
            "LANGSMITH_PROJECT": PROJECT,
            "WEAVIATE_URL": weaviate_server.url,
            "WEAVIATE_GRPC_URL": f"127.0.0.1:{weaviate_server.grpc_port}",
            "WEAVIATE_CLASS": weaviate_class,
            "DATA_DIR": str(tmp / "data"),
            "PORT": str(port),
            "LLM_PROVIDER": "groq",
            "GROQ_API_KEY": GROQ_KEY,
            "GROQ_BASE_URL": groq.url,
            "LOG_JSON": "true",
            "REDACT_PII": "true",
        }
        log = tmp / "service.log"
        with log.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ticket_rag.tools.cli", "serve"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(proc, url, log)
            created = httpx.post(f"{url}/tickets/", json=TICKET, timeout=60)
            assert created.status_code == 201, created.text
            yield TracedService(url=url, collector=collector, groq=groq, log=log, responses=[created])
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with connect(url=weaviate_server.url, grpc_url=f"127.0.0.1:{weaviate_server.grpc_port}") as wv:
                wv.collections.delete(weaviate_class)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"service not ready in 180 s:\n{log.read_text()}")


def finished_trace(
    collector: LangSmithCollector, request_id: str, timeout: float = 30
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The root run carrying this request id, and every run of its trace, once all of them have ended."""
    deadline = time.monotonic() + timeout
    while True:
        runs = collector.snapshot()
        roots = [
            r for r in runs.values() if not r.get("parent_run_id") and _metadata(r).get("request_id") == request_id
        ]
        if len(roots) == 1 and roots[0].get("end_time"):
            tree = [r for r in runs.values() if r.get("trace_id") == roots[0]["id"]]
            if all(r.get("end_time") for r in tree):
                return roots[0], sorted(tree, key=lambda r: r["dotted_order"])
        if time.monotonic() > deadline:
            seen = [(r.get("name"), _metadata(r).get("request_id"), bool(r.get("end_time"))) for r in runs.values()]
            raise AssertionError(f"no finished trace for request {request_id} in {timeout} s; runs seen: {seen}")
        time.sleep(0.2)


def finished_runs(collector: LangSmithCollector, run_ids: list[str], timeout: float = 30) -> list[dict[str, Any]]:
    """These runs, once all of them have arrived and ended."""
    deadline = time.monotonic() + timeout
    while True:
        runs = collector.snapshot()
        if all(runs.get(i, {}).get("end_time") for i in run_ids):
            return [runs[i] for i in run_ids]
        if time.monotonic() > deadline:
            raise AssertionError(f"runs {run_ids} not all finished in {timeout} s; runs seen: {list(runs)}")
        time.sleep(0.2)


def _run_ids(response: httpx.Response) -> list[str]:
    """The run ids LangServe reports: in the body's metadata, or the stream's first `metadata` event."""
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [block.split("\n") for block in response.text.split("\n\n") if block.startswith("event: metadata")]
        return [json.loads(lines[1].removeprefix("data: "))["run_id"] for lines in events]
    metadata = response.json()["metadata"]
    return metadata.get("run_ids") or [metadata["run_id"]]


def _metadata(run: dict[str, Any]) -> dict[str, Any]:
    return (run.get("extra") or {}).get("metadata") or {}


def _children(tree: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in tree if r.get("parent_run_id") == parent["id"]]


def test_rag_invoke_arrives_as_a_tree_of_named_steps_with_the_request_id(service: TracedService) -> None:
    response = service.invoke("trace-test-123")
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "trace-test-123"
    output = response.json()["output"]
    answer = output["answer"]
    assert answer.startswith("Use the admin console")

    root, tree = finished_trace(service.collector, "trace-test-123")
    assert service.collector.errors == []
    assert root["name"] == "ticket_rag"
    assert root["session_name"] == PROJECT
    assert root["trace_id"] == root["id"]
    assert root["id"] == response.json()["metadata"]["run_id"], "the response's run_id finds the trace"
    assert (output["metadata"]["request_id"], output["metadata"]["run_id"]) == ("trace-test-123", root["id"])
    assert root["outputs"]["answer"] == answer

    # the served wrapper (see ticket_rag.api.langserve_routes._outputs_only), then the chain
    [pipeline] = _children(tree, root)
    assert pipeline["name"] == "rag_pipeline"
    steps = _children(tree, pipeline)
    assert [r["name"] for r in steps] == STEPS
    by_name = {r["name"]: r for r in steps}
    [retriever] = _children(tree, by_name["retrieve_tickets"])
    assert (retriever["name"], retriever["run_type"]) == ("weaviate_retriever", "retriever")
    assert TICKET["description"] in json.dumps(retriever["outputs"])
    # With Groq, the model first says whether the tickets answer at all (RAG_SUFFICIENCY_CHECK), then writes.
    check, chat = _children(tree, by_name["generate_answer"])
    assert (check["name"], check["run_type"]) == ("sufficiency_check", "llm")
    assert (chat["name"], chat["run_type"]) == ("ChatGroq", "llm")
    assert "".join(ANSWER_CHUNKS) in json.dumps(chat["outputs"])
    assert len(tree) == 2 + len(STEPS) + 3, [r["name"] for r in tree]

    parents = {r["id"]: r for r in tree}
    for run in tree:
        assert run["trace_id"] == root["id"]
        assert run["dotted_order"].endswith("Z" + run["id"])
        if run is not root:
            parent = parents[run["parent_run_id"]]
            assert run["dotted_order"].startswith(parent["dotted_order"] + ".")
        assert _metadata(run)["request_id"] == "trace-test-123", run["name"]

    lines = [json.loads(line) for line in service.log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == "trace-test-123" and line.get("path") == "/rag/invoke" for line in lines)


@pytest.mark.parametrize(
    ("path", "body", "name"),
    [
        ("/rag/stream", QUESTION, "ticket_rag"),
        ("/rag/batch", {"inputs": [QUESTION["input"], QUESTION["input"]]}, "ticket_rag"),
        ("/retriever/invoke", {"input": {"query": "password reset"}}, "retrieve_tickets"),
    ],
)
def test_every_endpoint_traces_under_the_runnables_name_with_the_request_id(
    service: TracedService, path: str, body: dict[str, Any], name: str
) -> None:
    request_id = "endpoint" + path.replace("/", "-")
    response = service.invoke(request_id, body, path)
    assert response.status_code == 200, response.text
    roots = finished_runs(service.collector, _run_ids(response))
    assert len(roots) == len(body.get("inputs", [None]))
    for root in roots:
        assert (root["name"], root.get("parent_run_id")) == (name, None)
        assert _metadata(root)["request_id"] == request_id


def test_requests_do_not_wait_for_an_unreachable_collector(service: TracedService) -> None:
    started = time.perf_counter()
    assert service.invoke("collector-up").status_code == 200
    budget = time.perf_counter() - started + 3  # generous: the tracing thread must add nothing noticeable

    def timed_invoke(request_id: str) -> None:
        started = time.perf_counter()
        response = service.invoke(request_id)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text
        assert response.json()["output"]["answer"].startswith("Use the admin console")
        assert elapsed < budget, f"{request_id}: {elapsed:.2f} s, more than {budget:.2f} s"

    service.collector.stop()  # the port is closed: every send from the tracing thread is refused
    try:
        for n in range(3):
            timed_invoke(f"collector-down-{n}")
        # The client retries for a while, then gives up with a warning: wait for it, so the sends really failed.
        failures = _wait_for_log(service.log, "Failed to send", timeout=60)
        assert all(secret not in line for line in failures for secret in SECRETS)
        timed_invoke("collector-down-after-failures")
    finally:
        service.collector.start()

    service.invoke("collector-back")
    finished_trace(service.collector, "collector-back")  # tracing picks up again once the collector is back


def _wait_for_log(log: Path, text: str, timeout: float) -> list[str]:
    """The service's log lines containing text, once there is at least one."""
    deadline = time.monotonic() + timeout
    while not (lines := [line for line in log.read_text().splitlines() if text in line]):
        assert time.monotonic() < deadline, f"no log line with {text!r} in {timeout} s"
        time.sleep(0.5)
    return lines


def test_api_keys_never_reach_the_collector_the_responses_or_the_logs(service: TracedService) -> None:
    assert service.invoke("secrets-ok").status_code == 200
    service.groq.then(Reply(status=401))  # an error run, with its exception text, is traced too
    failed = service.invoke("secrets-error")
    assert failed.status_code == 503, failed.text
    _, ok_tree = finished_trace(service.collector, "secrets-ok")
    error_root, _ = finished_trace(service.collector, "secrets-error")
    assert error_root["error"]
    [chat] = [r for r in ok_tree if r["name"] == "ChatGroq"]
    # Where a key would leak first: the chat model's constructor arguments, traced as a reference to the variable.
    assert chat["serialized"]["kwargs"]["groq_api_key"] == {"lc": 1, "type": "secret", "id": ["GROQ_API_KEY"]}

    for received in service.collector.received:
        body = received.body.decode("utf-8", "replace")
        headers = {k: v for k, v in received.headers.items() if k != "x-api-key"}
        for secret in SECRETS:
            assert secret not in body, f"{secret} in the body of {received.method} {received.path}"
            assert secret not in json.dumps(headers), f"{secret} in a header of {received.method} {received.path}"
    assert {r.headers.get("x-api-key") for r in service.collector.received} == {LANGSMITH_KEY}

    for response in service.responses:
        for secret in SECRETS:
            assert secret not in response.text
            assert secret not in json.dumps(dict(response.headers))

    log = service.log.read_text()
    assert '"request_id": "secrets-error"' in log
    for secret in SECRETS:
        assert secret not in log


def test_emails_and_phone_numbers_reach_langsmith_only_redacted(service: TracedService) -> None:
    ticket = {
        "title": f"Refund for {EMAIL}",
        "description": f"Please refund order 2231; call me on {PHONE}.",
        "resolution": f"Refund sent to {EMAIL}.",
        "status": "resolved",
    }
    created = httpx.post(f"{service.url}/tickets/", json=ticket, timeout=60)
    assert created.status_code == 201, created.text
    question = {"input": {"question": f"Was the refund for {EMAIL} sent? They wait on {PHONE}."}}
    response = service.invoke("pii-redacted", question)
    assert response.status_code == 200, response.text

    [source] = [s for s in response.json()["output"]["sources"] if s["id"] == created.json()["id"]]
    assert (source["title"], source["resolution"]) == (ticket["title"], ticket["resolution"])  # the stored text
    assert PHONE in source["snippet"]

    _, tree = finished_trace(service.collector, "pii-redacted")
    by_name = {run["name"]: run for run in tree}
    assert "[email]" in json.dumps(by_name["ticket_rag"]["inputs"]) and "[phone]" in json.dumps(
        by_name["ticket_rag"]["inputs"]
    )
    assert "[email]" in json.dumps(by_name["weaviate_retriever"]["outputs"])
    for received in service.collector.received:  # everything that left the process for LangSmith
        body = received.body.decode("utf-8", "replace")
        assert EMAIL not in body and "123-4567" not in body, f"{received.method} {received.path}"
