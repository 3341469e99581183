"""Schemathesis against the OpenAPI document the service serves: no 5xx, and every response as documented.

The real app runs under uvicorn (tests/conftest.LiveServer) over the session's Weaviate and the real
model, with LLM_PROVIDER=none. Each operation gets a few examples, valid (positive) and invalid
(negative), from schemathesis' examples, coverage and fuzzing phases; half of the ticket ids name a
ticket that exists, so the success paths are checked too. What the fuzzer found once is pinned in
test_what_the_fuzzer_found_stays_fixed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from langchain_core.embeddings import Embeddings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server import create_app
from tests.conftest import LiveServer, _drop_class, make_settings
from ticket_rag.runtime.weaviate import EmbeddedWeaviate
from ticket_rag.tickets.store import ticket_uuid

EXAMPLES = 15  # per operation; about three minutes for all 33 operations on two cores
SEED = {"title": "Password reset link expired", "description": "The reset link says it expired.", "external_id": "seed"}
SEED_ID = str(ticket_uuid("default", "seed"))

# What the service promises: never a 5xx, and only documented status codes, media types, headers and bodies.
# Not negative_data_rejection: pydantic's lax mode accepts some values JSON Schema calls invalid (a number for
# a date-time, read as a Unix time), and LangServe ignores `kwargs` whatever its type; leniency, not a fault.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# LangServe documents its server-sent-event endpoints as application/json (its docs routes return
# EventSourceResponse, which FastAPI does not describe); their media type is checked here instead.
STREAMS = {"/rag/stream", "/rag/stream_log", "/rag/stream_events"}


# The document is built by the same create_app as the served one (test_the_served_document_is_the_one_fuzzed
# checks that), so the operations are known when pytest collects: one test per operation. schemathesis'
# own fixture-based loader cannot be used: it sets a node attribute pytest 9 no longer has.
schema = schemathesis.openapi.from_dict(create_app(make_settings()).openapi())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> st.SearchStrategy[Any]:
    """Random ticket ids only reach the 404 path; half of them name the seeded ticket instead."""
    if not path_parameters or "ticket_id" not in path_parameters:
        return st.just(path_parameters)
    return st.sampled_from([path_parameters, {**path_parameters, "ticket_id": SEED_ID}])


@pytest.fixture(scope="module")
def service(
    weaviate_server: EmbeddedWeaviate, embeddings: Embeddings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """The app under uvicorn, with its own Weaviate collection for the whole module."""
    settings = make_settings(
        weaviate_url=weaviate_server.url,
        weaviate_grpc_url=f"127.0.0.1:{weaviate_server.grpc_port}",
        weaviate_class=f"Fuzz{uuid.uuid4().hex[:12]}",
        data_dir=tmp_path_factory.mktemp("fuzz"),
        rate_limit_per_minute=0,  # the fuzzer is one fast client; 429s would hide the handlers behind them
    )
    with LiveServer(create_app(settings, embeddings=embeddings)) as server:
        yield server
    _drop_class(settings)


@pytest.fixture()
def seeded(service: LiveServer) -> LiveServer:
    """The service with the seed ticket as it was (an earlier operation may have changed or deleted it)."""
    httpx.post(f"{service.url}/tickets/", json=SEED, timeout=60).raise_for_status()
    return service


def test_the_served_document_is_the_one_fuzzed(service: LiveServer) -> None:
    assert httpx.get(f"{service.url}/openapi.json").json() == schema.raw_schema


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_never_fails_and_answers_as_documented(case: schemathesis.Case, seeded: LiveServer) -> None:
    stream = case.operation.path in STREAMS
    response = case.call(base_url=seeded.url, timeout=60)
    case.validate_response(response, checks=[c for c in CHECKS if not (stream and c is content_type_conformance)])
    if stream and response.status_code == 200:
        assert response.headers["content-type"][0].startswith("text/event-stream")


def _json(body: str) -> dict[str, Any]:
    return {"content": body, "headers": {"Content-Type": "application/json"}}


@pytest.mark.parametrize(
    ("method", "path", "request_args", "status", "loc"),
    [
        # Query values the query parameters let through but SearchFilters refused: 500.
        ("GET", "/tickets/?tags=", {}, 422, ["query", "tags", 0]),
        ("GET", "/tickets/?" + "&".join(["category=a"] * 51), {}, 422, ["query", "category"]),
        # Null for a field a ticket cannot be without: stored, then a 500.
        ("PATCH", f"/tickets/{SEED_ID}", {"json": {"description": None}}, 422, ["body", "description"]),
        ("PATCH", f"/tickets/{SEED_ID}", {"json": {"tags": None}}, 422, ["body", "tags"]),
        # Past Weaviate's QUERY_MAXIMUM_RESULTS: 503, as if Weaviate were down.
        ("GET", "/tickets/?offset=9999&limit=50", {}, 422, ["query", "offset"]),
        # LangServe bodies it lets through into a 500.
        ("POST", "/rag/invoke", {"json": {"input": {"question": "x"}, "config": None}}, 422, ["body", "config"]),
        ("POST", "/rag/batch", {"json": {"inputs": None}}, 422, ["body", "inputs"]),
        (
            "POST",
            "/rag/batch",
            {"json": {"inputs": [{"question": "ok"}, {"question": ""}]}},
            422,
            ["body", "inputs", 1, "question"],
        ),
        ("POST", "/retriever/batch", {"json": {"inputs": [{"query": "x", "k": 0}]}}, 422, ["body", "inputs", 0, "k"]),
        (
            "POST",
            "/rag/batch",
            {"content": b"\xff\xfe", "headers": {"Content-Type": "application/json"}},
            422,
            ["body"],
        ),
        ("POST", "/rag/invoke", _json("{"), 422, ["body"]),
        # 422s whose detail was a string, not the documented list.
        ("POST", "/rag/batch", {"json": {"inputs": [{"question": "x"}] * 2, "config": []}}, 422, ["body"]),
        ("POST", "/rag/invoke", {"json": {"input": {"question": "x", "k": 21}}}, 422, ["body", "input", "k"]),
        # Streams that answered 200, then broke off after an `error` event.
        ("POST", "/rag/stream", {"json": {"input": {"question": "x", "k": 21}}}, 422, ["body", "input", "k"]),
        ("POST", "/rag/stream_log", {"json": {"input": {"question": "x", "collection": "nowhere"}}}, 404, None),
    ],
)
def test_what_the_fuzzer_found_stays_fixed(
    seeded: LiveServer, method: str, path: str, request_args: dict[str, Any], status: int, loc: list[Any] | None
) -> None:
    response = httpx.request(method, seeded.url + path, timeout=60, **request_args)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    if loc is None:
        assert isinstance(detail, str)
    else:
        assert any(error["loc"] == loc and error["msg"] for error in detail), detail
