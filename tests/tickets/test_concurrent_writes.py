"""Edits and deletes of one ticket sent at the same time, against the real Weaviate and the real embedding model."""

from __future__ import annotations

import uuid
from functools import partial

import numpy as np
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings

from tests.tickets.concurrent import at_once
from ticket_rag.tickets.store import embedded_text


def _create(client: TestClient, title: str, description: str) -> str:
    response = client.post("/tickets/", json={"title": title, "description": description})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _keyword_hits(client: TestClient, query: str) -> list[str]:
    response = client.post("/tickets/search", json={"query": query, "mode": "keyword", "limit": 10})
    assert response.status_code == 200, response.text
    return [hit["ticket"]["id"] for hit in response.json()["results"]]


def test_concurrent_patches_of_title_and_description_keep_text_terms_and_vector_in_step(
    client: TestClient, embeddings: Embeddings
) -> None:
    store = client.app.state.services.store  # type: ignore[attr-defined]
    for n in range(3):
        ticket = _create(client, f"Printer offline {n}", "The office printer shows offline.")
        title, description = f"zebracorn{n} title", f"quokkafish{n} description"
        patched = at_once(
            partial(client.patch, f"/tickets/{ticket}", json={"title": title}),
            partial(client.patch, f"/tickets/{ticket}", json={"description": description}),
        )
        assert [r.status_code for r in patched] == [200, 200], [r.text for r in patched]
        stored = client.get(f"/tickets/{ticket}").json()
        assert (stored["title"], stored["description"]) == (title, description)
        assert ticket in _keyword_hits(client, f"zebracorn{n}")
        assert ticket in _keyword_hits(client, f"quokkafish{n}")
        vector = store.get_vector(ticket_id=uuid.UUID(ticket), collection="default")
        expected = embeddings.embed_documents([embedded_text(title, description)])[0]
        np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_a_patch_and_a_delete_at_once_end_deleted_without_a_fieldless_422(client: TestClient) -> None:
    long_description = " ".join(f"word{i} of a long report about the failing mail relay" for i in range(300))
    for n in range(3):
        ticket = _create(client, f"Mail relay down {n}", "Mail is not delivered.")
        patch, delete = at_once(
            partial(client.patch, f"/tickets/{ticket}", json={"description": long_description}),
            partial(client.delete, f"/tickets/{ticket}"),
        )
        assert patch.status_code in (200, 404), patch.text
        assert delete.status_code == 204, delete.text
        if patch.status_code == 404:
            assert ticket in patch.json()["detail"]
        assert client.get(f"/tickets/{ticket}").status_code == 404
        assert ticket not in _keyword_hits(client, "relay")


def test_one_idempotency_key_with_two_bodies_at_once_stores_one_and_refuses_the_other(client: TestClient) -> None:
    for n in range(3):
        key = {"Idempotency-Key": f"race-{n}"}
        bodies = [
            {"title": f"Refund request {n}", "description": "Charged twice this month.", "priority": "low"},
            {"title": f"Refund request {n}", "description": "Charged twice this month.", "priority": "urgent"},
        ]
        answers = at_once(*(partial(client.post, "/tickets/", json=body, headers=key) for body in bodies))
        codes = sorted(r.status_code for r in answers)
        assert codes == [201, 422], [r.text for r in answers]
        refused = next(r for r in answers if r.status_code == 422)
        assert refused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        kept = next(r for r in answers if r.status_code == 201).json()
        assert client.get(f"/tickets/{kept['id']}").json()["priority"] == kept["priority"]
