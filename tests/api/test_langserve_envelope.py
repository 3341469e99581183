"""LangServe's envelope: what a client sends beside its input is refused with a named field, never dropped silently."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from server import create_app
from ticket_rag.settings import Settings


@pytest.fixture()
def client(settings: Settings, embeddings: Embeddings) -> Iterator[TestClient]:
    llm = FakeListChatModel(responses=["Use a fresh link."] * 20)
    with TestClient(create_app(settings.model_copy(update={"rag_max_k": 8}), embeddings=embeddings, llm=llm)) as c:
        c.post("/tickets/", json={"title": "VPN drops hourly", "description": "The VPN client disconnects every hour."})
        yield c


def _loc(response: Any) -> list[Any]:
    assert response.status_code == 422, response.text
    return list(response.json()["detail"][0]["loc"])


def test_configurable_fields_cannot_change_the_run(client: TestClient) -> None:
    # ignored, not refused: a RemoteRunnable inside a LangGraph graph sends its caller's configurable fields
    body = {"input": {"question": "vpn"}, "config": {"configurable": {"collection": "other", "k": 1000}}}
    response = client.post("/rag/invoke", json=body)
    assert response.status_code == 200, response.text
    retrieval = response.json()["output"]["metadata"]["retrieval"]
    assert retrieval["collection"] == "default" and retrieval["k"] == 5
    batch = {"inputs": [{"question": "a"}, {"question": "b"}], "config": [{}, "not an object"]}
    assert _loc(client.post("/rag/batch", json=batch)) == ["body", "config", 1]


def test_keyword_arguments_are_refused(client: TestClient) -> None:
    body = {"input": {"query": "vpn"}, "kwargs": {"k": 1000}}
    assert _loc(client.post("/retriever/invoke", json=body)) == ["body", "kwargs"]


def test_a_batch_item_over_a_cap_is_named_by_its_index(client: TestClient) -> None:
    rag = client.post("/rag/batch", json={"inputs": [{"question": "a"}, {"question": "b", "k": 9}]})
    assert _loc(rag) == ["body", "inputs", 1, "k"]
    retriever = client.post("/retriever/batch", json={"inputs": [{"query": "a", "k": 9}]})
    assert _loc(retriever) == ["body", "inputs", 0, "k"]


def test_what_remote_runnable_sends_still_works(client: TestClient) -> None:
    # RemoteRunnable sends its config (tags, metadata, an empty configurable) and empty kwargs
    body = {"input": {"question": "vpn"}, "config": {"tags": ["ui"], "metadata": {}, "configurable": {}}, "kwargs": {}}
    response = client.post("/rag/invoke", json=body)
    assert response.status_code == 200, response.text
    batch = client.post("/rag/batch", json={"inputs": [{"question": "vpn", "k": 8}], "config": {}, "kwargs": {}})
    assert batch.status_code == 200, batch.text


def test_an_invalid_input_names_its_field_under_body_input(client: TestClient) -> None:
    history = {"input": {"question": "vpn", "chat_history": [{"role": "wizard", "content": "hi"}]}}
    for route in ("/rag/invoke", "/rag/stream", "/rag/stream_log"):
        assert _loc(client.post(route, json=history))[:4] == ["body", "input", "chat_history", 0], route
    assert _loc(client.post("/retriever/invoke", json={"input": {"query": ""}})) == ["body", "input", "query"]
