"""Collections (isolation) and bulk import, against the real Weaviate."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings

from tests.conftest import _drop_class
from ticket_rag.settings import Settings

TICKET = {"title": "Cannot log in", "description": "The password reset link has expired."}


def test_collection_lifecycle(client: TestClient) -> None:
    assert client.post("/collections", json={"name": "acme"}).status_code == 201
    duplicate = client.post("/collections", json={"name": "acme"})
    assert duplicate.status_code == 409 and "acme" in duplicate.json()["detail"]
    assert {c["name"] for c in client.get("/collections").json()["data"]} == {"default", "acme"}
    client.post("/tickets/", json={**TICKET, "collection": "acme"})
    assert client.get("/collections/acme").json() == {"name": "acme", "ticket_count": 1}
    assert client.delete("/collections/acme").status_code == 204
    assert client.get("/collections/acme").status_code == 404
    assert client.delete("/collections/acme").status_code == 404
    assert client.post("/tickets/", json={**TICKET, "collection": "acme"}).status_code == 404
    assert client.post("/collections", json={"name": "bad name!"}).status_code == 422


def test_collections_are_isolated(client: TestClient) -> None:
    client.post("/collections", json={"name": "alpha"})
    client.post("/collections", json={"name": "beta"})
    in_alpha = client.post("/tickets/", json={**TICKET, "collection": "alpha"}).json()
    assert in_alpha["collection"] == "alpha"
    beta_hits = client.post("/tickets/search", json={"query": "password reset", "collection": "beta"}).json()
    assert beta_hits["results"] == []
    assert client.get(f"/tickets/{in_alpha['id']}", params={"collection": "beta"}).status_code == 404
    assert client.get(f"/tickets/{in_alpha['id']}").status_code == 404  # not in the default collection either
    assert client.get(f"/tickets/{in_alpha['id']}", params={"collection": "alpha"}).status_code == 200
    created_in_beta = client.post("/tickets/", json={**TICKET, "collection": "beta"}).json()
    assert created_in_beta["similar"] == []  # similar tickets come from the same collection only


def test_bulk_stores_all_in_one_call_and_is_idempotent(client: TestClient) -> None:
    tickets = [
        {"title": f"Ticket {i}", "description": f"Problem number {i}", "external_id": f"X-{i}"} for i in range(30)
    ]
    first = client.post("/tickets/bulk", json={"tickets": tickets})
    assert first.status_code == 200
    assert (first.json()["created"], first.json()["updated"]) == (30, 0)
    assert [item["index"] for item in first.json()["items"]] == list(range(30))
    again = client.post("/tickets/bulk", json={"tickets": tickets})
    assert (again.json()["created"], again.json()["updated"]) == (0, 30)
    assert [i["id"] for i in again.json()["items"]] == [i["id"] for i in first.json()["items"]]
    assert client.get("/tickets/").json()["count"] == 30


def test_bulk_is_capped_and_validated_as_a_whole(client: TestClient, settings: Settings) -> None:
    too_many = [TICKET] * (settings.bulk_max_batch + 1)
    response = client.post("/tickets/bulk", json={"tickets": too_many})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "tickets"]
    bad = client.post("/tickets/bulk", json={"tickets": [TICKET, {"title": "no description"}]})
    assert bad.status_code == 422
    assert ["body", "tickets", 1, "description"] == bad.json()["detail"][0]["loc"]
    assert client.get("/tickets/").json()["count"] == 0  # nothing half-written
    assert client.post("/tickets/bulk", json={"tickets": []}).status_code == 422


def test_bulk_into_several_collections(client: TestClient) -> None:
    client.post("/collections", json={"name": "one"})
    response = client.post(
        "/tickets/bulk",
        json={"collection": "one", "tickets": [TICKET, {**TICKET, "title": "Elsewhere", "collection": "default"}]},
    )
    assert response.status_code == 200
    assert client.get("/collections/one").json()["ticket_count"] == 1
    assert client.get("/collections/default").json()["ticket_count"] == 1


def test_a_changed_replication_factor_is_reported_not_applied(
    client: TestClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """An existing collection keeps its factor (changing it moves shards); the start-up log says so."""
    from ticket_rag.runtime.weaviate import connect
    from ticket_rag.tickets.store import TicketStore

    assert settings.weaviate_url is not None
    with connect(url=settings.weaviate_url, grpc_url=settings.weaviate_grpc_url) as wv:
        store = TicketStore(
            client=wv,
            embeddings=client.app.state.services.embeddings,
            class_name=settings.weaviate_class,
            replication_factor=3,
        )
        with caplog.at_level("WARNING", logger="ticket_rag.tickets.store"):
            store.ensure_schema(default_collection="default")
        assert wv.collections.use(settings.weaviate_class).config.get().replication_config.factor == 1
    assert "keeps replication factor 1; WEAVIATE_REPLICATION_FACTOR=3" in caplog.text


@pytest.mark.parametrize("level", ["ONE", "ALL"])
def test_the_rag_retriever_reads_at_the_configured_consistency(
    settings: Settings, embeddings: Embeddings, level: str
) -> None:
    """langchain-weaviate has no consistency setting; its searches must still honour WEAVIATE_CONSISTENCY."""
    from weaviate.classes.config import ConsistencyLevel

    from server import create_app

    with TestClient(
        create_app(settings.model_copy(update={"weaviate_consistency": level}), embeddings=embeddings)
    ) as client:
        assert client.app.state.services.vectorstore._collection.consistency_level == ConsistencyLevel(level)
        client.post("/tickets/", json=TICKET)
        response = client.post("/retriever/invoke", json={"input": {"query": "password reset link"}})
        assert response.status_code == 200 and len(response.json()["output"]) == 1
    _drop_class(settings)


def test_bulk_with_an_external_id_twice_in_one_collection_is_422_naming_the_second(client: TestClient) -> None:
    client.post("/collections", json={"name": "acme"})
    twice = [
        {"title": "Bulk X1", "description": "a", "external_id": "EXT-dup-1"},
        {"title": "Bulk X2", "description": "b", "external_id": "EXT-dup-1"},
    ]
    response = client.post("/tickets/bulk", json={"collection": "acme", "tickets": twice})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "tickets", 1, "external_id"]
    assert client.get("/collections/acme").json()["ticket_count"] == 0
    # the default collection named or left out is the same collection
    same = client.post("/tickets/bulk", json={"tickets": [twice[0], {**twice[1], "collection": "default"}]})
    assert same.status_code == 422 and same.json()["detail"][0]["loc"] == ["body", "tickets", 1, "external_id"]
    # one external id in two collections is two tickets
    apart = client.post(
        "/tickets/bulk", json={"collection": "acme", "tickets": [twice[0], {**twice[1], "collection": "default"}]}
    )
    assert apart.status_code == 200, apart.text
    assert apart.json()["created"] == 2


def test_bulk_across_collections_checks_every_collection_before_writing(client: TestClient) -> None:
    client.post("/collections", json={"name": "acme"})
    body = {
        "tickets": [
            {"title": "Partial bulk ok", "description": "x", "collection": "acme"},
            {"title": "y", "description": "y", "collection": "nosuchcoll"},
        ]
    }
    response = client.post("/tickets/bulk", json=body)
    assert response.status_code == 404
    assert "collection 'nosuchcoll' does not exist" in response.json()["detail"]
    assert client.get("/collections/acme").json()["ticket_count"] == 0


def test_bulk_across_collections_checks_the_idempotency_key_in_all_before_writing(client: TestClient) -> None:
    client.post("/collections", json={"name": "acme"})
    key = {"Idempotency-Key": "bulk-across-1"}
    first = client.post("/tickets/bulk", json={"tickets": [TICKET, {**TICKET, "title": "Second"}]}, headers=key)
    assert first.status_code == 200
    # the key's second ticket in the default collection was another one: refused before acme is written
    body = {"tickets": [{**TICKET, "collection": "acme"}, {**TICKET, "title": "Another"}]}
    reused = client.post("/tickets/bulk", json=body, headers=key)
    assert reused.status_code == 422 and reused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert client.get("/collections/acme").json()["ticket_count"] == 0
