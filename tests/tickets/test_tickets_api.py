"""Tickets over REST against the real Weaviate and the real embedding model."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings

from server import create_app
from ticket_rag.settings import Settings

LOGIN = {
    "title": "Cannot log in after password reset",
    "description": "The reset link says it has expired.",
    "priority": "high",
}
PRINTER = {
    "title": "Printer jams on every page",
    "description": "The office printer on floor 2 jams.",
    "priority": "low",
}
INVOICE = {
    "title": "Invoice shows wrong VAT",
    "description": "VAT on invoice 2231 is 19% instead of 7%.",
    "category": "Billing",
}


class CountingEmbeddings(Embeddings):
    """The real model, counting how many texts it was asked to embed."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.documents = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.documents += len(texts)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def _create(client: TestClient, body: dict[str, object], **extra: object) -> dict[str, object]:
    response = client.post("/tickets/", json={**body, **extra})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_create_returns_the_ticket_with_id_and_defaults(client: TestClient) -> None:
    ticket = _create(client, LOGIN)
    assert uuid.UUID(str(ticket["id"]))
    assert ticket["title"] == LOGIN["title"]
    assert ticket["priority"] == "high"
    assert ticket["status"] == "open"
    assert ticket["collection"] == "default"
    assert ticket["created"] is True
    fetched = client.get(f"/tickets/{ticket['id']}").json()
    assert fetched["description"] == LOGIN["description"]
    assert fetched["created_at"] == ticket["created_at"]


def test_create_lists_similar_tickets_and_possible_duplicates(client: TestClient) -> None:
    first = _create(client, LOGIN)
    _create(client, PRINTER)
    duplicate = _create(
        client,
        {
            "title": "Can't log in after resetting my password",
            "description": "The password reset link says it expired.",
        },
    )
    assert duplicate["similar"][0]["ticket"]["id"] == first["id"]
    assert [hit["ticket"]["id"] for hit in duplicate["possible_duplicates"]] == [first["id"]]
    assert duplicate["possible_duplicates"][0]["similarity"] >= 0.85
    unrelated = _create(client, INVOICE)
    assert unrelated["possible_duplicates"] == []
    assert all(hit["similarity"] < 0.5 for hit in unrelated["similar"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"description": "no title"}, "title"),
        ({"title": "   ", "description": "blank title"}, "title"),
        ({"title": "t", "description": "d", "priority": "whenever"}, "priority"),
        ({"title": "t", "description": "d", "status": "done"}, "status"),
        ({"title": "x" * 301, "description": "d"}, "title"),
        ({"title": "t", "description": "a\x00b"}, "description"),
        ({"title": "t", "description": "d", "tags": ["ok"] * 21}, "tags"),
        ({"title": "t", "description": "d", "collection": "../etc"}, "collection"),
        ({"title": "t", "description": "d", "owner": "me"}, "owner"),
    ],
)
def test_invalid_ticket_is_422_naming_the_field(client: TestClient, body: dict[str, object], field: str) -> None:
    response = client.post("/tickets/", json=body)
    assert response.status_code == 422
    assert field in [str(part) for error in response.json()["detail"] for part in error["loc"]]
    assert client.get("/tickets/").json()["count"] == 0


def test_unicode_text_is_returned_byte_exact(client: TestClient) -> None:
    text = "Umlaute äöü, RTL \u202eabc\u202c, zero\u200bwidth, emoji \U0001f600, 中文"
    ticket = _create(client, {"title": "Unicode", "description": text})
    assert client.get(f"/tickets/{ticket['id']}").json()["description"] == text


def test_serialized_object_payload_stays_plain_text(client: TestClient) -> None:
    payload = '{"lc": 1, "type": "secret", "id": ["GROQ_API_KEY"]}'
    ticket = _create(client, {"title": "lc payload", "description": payload})
    assert client.get(f"/tickets/{ticket['id']}").json()["description"] == payload


def test_list_filters_and_pages(client: TestClient) -> None:
    _create(client, LOGIN, status="resolved", tags=["login", "password"], created_at="2024-01-10T00:00:00Z")
    _create(client, PRINTER, category="Hardware", created_at="2024-03-01T00:00:00Z")
    _create(client, INVOICE, priority="urgent", created_at="2024-05-01T00:00:00Z")

    def titles(**params: object) -> list[str]:
        response = client.get("/tickets/", params=params)
        assert response.status_code == 200, response.text
        return [t["title"] for t in response.json()["data"]]

    assert titles() == [INVOICE["title"], PRINTER["title"], LOGIN["title"]]  # newest first
    assert titles(priority=["high", "urgent"]) == [INVOICE["title"], LOGIN["title"]]
    assert titles(status="resolved") == [LOGIN["title"]]
    assert titles(category="Hardware") == [PRINTER["title"]]
    assert titles(tags="password") == [LOGIN["title"]]
    assert titles(created_after="2024-02-01T00:00:00Z", created_before="2024-04-01T00:00:00Z") == [PRINTER["title"]]
    page = client.get("/tickets/", params={"limit": 2, "offset": 2}).json()
    assert [t["title"] for t in page["data"]] == [LOGIN["title"]]
    assert page["count"] == 3
    assert client.get("/tickets/", params={"priority": "soon"}).status_code == 422
    too_big = client.get("/tickets/", params={"limit": 10**9})
    assert too_big.status_code == 422 and too_big.json()["detail"][0]["loc"] == ["query", "limit"]


def test_patch_of_priority_does_not_re_embed_but_description_does(settings: Settings, embeddings: Embeddings) -> None:
    counting = CountingEmbeddings(embeddings)
    with TestClient(create_app(settings, embeddings=counting)) as client:
        ticket = _create(client, LOGIN)
        store = client.app.state.services.store  # type: ignore[attr-defined]
        ticket_id = uuid.UUID(str(ticket["id"]))
        before = np.array(store.get_vector(ticket_id=ticket_id, collection="default"))

        embedded = counting.documents
        response = client.patch(f"/tickets/{ticket_id}", json={"priority": "urgent", "status": "in_progress"})
        assert response.status_code == 200
        assert response.json()["priority"] == "urgent"
        assert response.json()["updated_at"] > ticket["updated_at"]
        assert counting.documents == embedded
        np.testing.assert_array_equal(store.get_vector(ticket_id=ticket_id, collection="default"), before)

        response = client.patch(f"/tickets/{ticket_id}", json={"description": "The printer in room 4 is out of toner."})
        assert response.status_code == 200
        assert counting.documents == embedded + 1
        after = np.array(store.get_vector(ticket_id=ticket_id, collection="default"))
        assert float(after @ before) < 0.9
        hits = client.post("/tickets/search", json={"query": "printer toner"}).json()["results"]
        assert hits[0]["ticket"]["id"] == str(ticket_id)
        assert client.get(f"/tickets/{ticket_id}").json()["priority"] == "urgent"
        assert client.patch(f"/tickets/{ticket_id}", json={"priority": "later"}).status_code == 422
        assert client.patch(f"/tickets/{uuid.uuid4()}", json={"priority": "low"}).status_code == 404


def test_deleted_ticket_never_appears_again(client: TestClient) -> None:
    gone = _create(client, LOGIN)
    kept = _create(client, {"title": "Password reset email never arrives", "description": "No reset email."})
    assert client.delete(f"/tickets/{gone['id']}").status_code == 204
    assert client.get(f"/tickets/{gone['id']}").status_code == 404
    assert client.delete(f"/tickets/{gone['id']}").status_code == 404
    for mode in ("vector", "keyword", "hybrid"):
        hits = client.post("/tickets/search", json={"query": "log in password reset", "mode": mode, "limit": 10})
        assert gone["id"] not in [h["ticket"]["id"] for h in hits.json()["results"]], mode
    similar = client.get(f"/tickets/{kept['id']}/similar").json()["results"]
    assert gone["id"] not in [h["ticket"]["id"] for h in similar]
    assert client.get("/tickets/").json()["count"] == 1


def test_same_external_id_updates_instead_of_duplicating(client: TestClient) -> None:
    first = _create(client, LOGIN, external_id="ZD-1001")
    again = client.post("/tickets/", json={**LOGIN, "external_id": "ZD-1001", "status": "resolved"})
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert again.json()["created"] is False
    assert again.json()["created_at"] == first["created_at"]
    assert client.get("/tickets/").json()["count"] == 1
    assert client.get(f"/tickets/{first['id']}").json()["status"] == "resolved"
    # the same external id in another collection is another ticket
    client.post("/collections", json={"name": "other"})
    other = _create(client, LOGIN, external_id="ZD-1001", collection="other")
    assert other["id"] != first["id"]


@pytest.fixture()
def search_client(client: TestClient) -> Iterator[TestClient]:
    _create(client, LOGIN, status="resolved", tags=["login"])
    _create(client, PRINTER, category="Hardware")
    _create(client, INVOICE, priority="urgent")
    _create(client, {"title": "VPN disconnects every hour", "description": "The VPN client drops the tunnel."})
    yield client


def test_vector_search_ranks_by_cosine_similarity(search_client: TestClient, embeddings: Embeddings) -> None:
    response = search_client.post("/tickets/search", json={"query": "login issues", "limit": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["mode"] == "vector"
    hits = body["results"]
    assert len(hits) == 3
    assert hits[0]["ticket"]["title"] == LOGIN["title"]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    expected = float(
        np.dot(
            embeddings.embed_query("login issues"),
            embeddings.embed_documents([f"{LOGIN['title']} {LOGIN['description']}"])[0],
        )
    )
    assert hits[0]["similarity"] == pytest.approx(expected, abs=1e-4)
    assert hits[0]["score"] == hits[0]["similarity"]


def test_keyword_search_matches_terms(search_client: TestClient) -> None:
    hits = search_client.post("/tickets/search", json={"query": "VAT invoice", "mode": "keyword"}).json()["results"]
    assert hits[0]["ticket"]["title"] == INVOICE["title"]
    assert hits[0]["keyword_score"] == hits[0]["score"] > 0
    assert len(hits) == 1  # BM25 returns only tickets that contain a query term


def test_hybrid_search_fuses_and_explains(search_client: TestClient) -> None:
    response = search_client.post("/tickets/search", json={"query": "VPN tunnel drops", "mode": "hybrid", "alpha": 0.5})
    body = response.json()
    assert body["alpha"] == 0.5
    top = body["results"][0]
    assert top["ticket"]["title"].startswith("VPN")
    assert 0 < top["score"] <= 1
    assert top["keyword_score"] is not None and top["keyword_score"] > 0
    assert "bm25" in top["explain"] and "vector" in top["explain"]
    vector_only = search_client.post(
        "/tickets/search", json={"query": "VPN tunnel drops", "mode": "hybrid", "alpha": 1}
    ).json()
    plain = search_client.post("/tickets/search", json={"query": "VPN tunnel drops"}).json()
    assert [h["ticket"]["id"] for h in vector_only["results"]] == [h["ticket"]["id"] for h in plain["results"]]


def test_search_filters_apply_inside_weaviate(search_client: TestClient) -> None:
    def search(**filters: object) -> list[str]:
        body = {"query": "problem", "limit": 10, "filters": filters}
        response = search_client.post("/tickets/search", json=body)
        assert response.status_code == 200, response.text
        return sorted(h["ticket"]["title"] for h in response.json()["results"])

    assert search(priority=["urgent"]) == [INVOICE["title"]]
    assert search(status=["resolved"]) == [LOGIN["title"]]
    assert search(category=["Hardware"]) == [PRINTER["title"]]
    assert search(tags=["login"]) == [LOGIN["title"]]
    assert search(created_before="2000-01-01T00:00:00Z") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": " \t\n "}, "query"),
        ({"query": "x", "limit": 0}, "limit"),
        ({"query": "x", "limit": 10**9}, "limit"),
        ({"query": "x", "mode": "fuzzy"}, "mode"),
        ({"query": "x", "alpha": 2}, "alpha"),
        ({"query": "x", "filters": {"priority": ["asap"]}}, "priority"),
        ({"query": "x", "filters": {"colour": ["red"]}}, "colour"),
    ],
)
def test_bad_search_is_422_naming_the_field(client: TestClient, body: dict[str, object], field: str) -> None:
    response = client.post("/tickets/search", json=body)
    assert response.status_code == 422
    assert field in [str(part) for error in response.json()["detail"] for part in error["loc"]]


def test_search_in_unknown_collection_is_404_naming_it(client: TestClient) -> None:
    response = client.post("/tickets/search", json={"query": "x", "collection": "nope"})
    assert response.status_code == 404
    assert "collection 'nope'" in response.json()["detail"]


def test_similar_excludes_the_ticket_and_applies_filters(search_client: TestClient) -> None:
    login = search_client.post("/tickets/search", json={"query": "log in"}).json()["results"][0]["ticket"]
    other = _create(search_client, {"title": "Login page rejects my new password", "description": "After reset."})
    hits = search_client.get(f"/tickets/{login['id']}/similar").json()["results"]
    assert login["id"] not in [h["ticket"]["id"] for h in hits]
    assert hits[0]["ticket"]["id"] == other["id"]
    filtered = search_client.get(f"/tickets/{login['id']}/similar", params={"priority": "urgent"}).json()["results"]
    assert [h["ticket"]["title"] for h in filtered] == [INVOICE["title"]]
    assert search_client.get(f"/tickets/{uuid.uuid4()}/similar").status_code == 404
    assert search_client.get(f"/tickets/{login['id']}/similar", params={"limit": 0}).status_code == 422


def test_a_retried_create_with_an_idempotency_key_stores_one_ticket(client: TestClient) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post("/tickets/", json=LOGIN, headers=key)
    again = client.post("/tickets/", json=LOGIN, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.json()["created"] is True
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert client.get("/tickets/").json()["count"] == 1
    # a new key is a new ticket; the same text without a key is too (a ticket may be reported twice)
    assert (
        client.post("/tickets/", json=LOGIN, headers={"Idempotency-Key": str(uuid.uuid4())}).json()["id"]
        != first.json()["id"]
    )
    assert client.post("/tickets/", json=LOGIN).status_code == 201
    assert client.get("/tickets/").json()["count"] == 3


def test_an_idempotency_key_reused_for_another_ticket_is_refused(client: TestClient) -> None:
    key = {"Idempotency-Key": "order-1"}
    assert client.post("/tickets/", json=LOGIN, headers=key).status_code == 201
    reused = client.post("/tickets/", json=PRINTER, headers=key)
    assert reused.status_code == 422 and reused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert client.post("/tickets/", json=LOGIN, headers={"Idempotency-Key": "bad key with spaces"}).status_code == 422
    assert client.get("/tickets/").json()["count"] == 1


def test_an_idempotency_key_reused_with_other_field_values_is_refused(client: TestClient) -> None:
    key = {"Idempotency-Key": "idem-fields-1"}
    body = {"title": "Idem test", "description": "idem desc", "priority": "low"}
    first = client.post("/tickets/", json=body, headers=key)
    assert first.status_code == 201
    changed = {**body, "priority": "urgent", "category": "Security", "status": "closed"}
    reused = client.post("/tickets/", json=changed, headers=key)
    assert reused.status_code == 422, reused.text
    assert reused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert "idempotent-replayed" not in reused.headers
    stored = client.get(f"/tickets/{first.json()['id']}").json()
    assert (stored["priority"], stored["status"], stored["category"]) == ("low", "open", None)
    # the same request again is a replay, even after the ticket was edited meanwhile
    assert client.patch(f"/tickets/{first.json()['id']}", json={"status": "resolved"}).status_code == 200
    again = client.post("/tickets/", json={**body, "priority": "low"}, headers=key)
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    bulk_key = {"Idempotency-Key": "idem-fields-bulk-1"}
    assert client.post("/tickets/bulk", json={"tickets": [body]}, headers=bulk_key).status_code == 200
    bulk_reused = client.post("/tickets/bulk", json={"tickets": [{**body, "tags": ["vpn"]}]}, headers=bulk_key)
    assert bulk_reused.status_code == 422 and bulk_reused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert client.get("/tickets/").json()["count"] == 2


def test_a_retried_bulk_with_an_idempotency_key_stores_each_ticket_once(client: TestClient) -> None:
    body = {"tickets": [LOGIN, PRINTER, {**INVOICE, "external_id": "inv-1"}]}
    key = {"Idempotency-Key": "import-2026-12-03-part-1"}
    first = client.post("/tickets/bulk", json=body, headers=key)
    again = client.post("/tickets/bulk", json=body, headers=key)
    assert first.status_code == again.status_code == 200
    assert [i["id"] for i in again.json()["items"]] == [i["id"] for i in first.json()["items"]]
    assert first.json()["created"] == 3
    assert client.get("/tickets/").json()["count"] == 3
