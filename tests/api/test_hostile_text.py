"""Hostile text in every field a user types: refused with a 422 naming the field, or kept to the byte.

NUL and lone surrogates cannot be stored faithfully (Weaviate and UTF-8 refuse them), so they are refused;
zero-width characters and bidirectional overrides are text like any other and come back exactly as sent;
1 MB is far over every text cap (and under MAX_BODY_BYTES, so it reaches validation) and is refused.
Bodies are sent as a JSON client writes them: ASCII, with \\u escapes (a lone surrogate has no UTF-8 form).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

REFUSED = {"NUL": "a\x00b", "lone surrogate": "a\ud800b", "1 MB": "x" * 1_000_000}
KEPT = {
    "zero-width": "zero\u200bwidth\u200c joiner\u200d bom\ufeff word\u2060joiner",
    "bidi overrides": "invoice \u202eexe.pdf\u202c and \u2067isolate\u2069 \u200fmark",
}
TICKET = {"title": "Printer jams", "description": "The printer on floor 2 jams on every page."}


def _post(client: TestClient, path: str, body: dict[str, Any]) -> Any:
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


def _fields(response: Any) -> set[str]:
    return {str(part) for error in response.json()["detail"] for part in error["loc"]}


# Where each field is sent: (path, body with the text in it).
FIELDS = {
    "title": lambda text: ("/tickets/", {**TICKET, "title": text}),
    "description": lambda text: ("/tickets/", {**TICKET, "description": text}),
    "query": lambda text: ("/tickets/search", {"query": text}),
    "question": lambda text: ("/rag/invoke", {"input": {"question": text}}),
    "retriever query": lambda text: ("/retriever/invoke", {"input": {"query": text}}),
}


@pytest.mark.parametrize("text", REFUSED.values(), ids=REFUSED.keys())
@pytest.mark.parametrize("field", FIELDS)
def test_text_that_cannot_be_kept_is_a_422_naming_the_field(client: TestClient, field: str, text: str) -> None:
    path, body = FIELDS[field](text)
    response = _post(client, path, body)
    assert response.status_code == 422, response.text[:500]
    assert field.split()[-1] in _fields(response)
    assert client.get("/tickets/").json()["count"] == 0


@pytest.mark.parametrize("text", KEPT.values(), ids=KEPT.keys())
def test_invisible_and_bidi_characters_come_back_exactly(client: TestClient, text: str) -> None:
    created = _post(client, "/tickets/", {"title": f"title {text}", "description": f"description {text}"})
    assert created.status_code == 201, created.text
    stored = client.get(f"/tickets/{created.json()['id']}").json()
    assert (stored["title"], stored["description"]) == (f"title {text}", f"description {text}")

    search = _post(client, "/tickets/search", {"query": f"description {text}", "mode": "hybrid"})
    assert search.status_code == 200, search.text
    assert search.json()["query"] == f"description {text}"
    assert search.json()["results"][0]["ticket"]["description"] == f"description {text}"

    answer = _post(client, "/rag/invoke", {"input": {"question": f"description {text}"}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["output"]["sources"][0]["title"] == f"title {text}"
    retrieved = _post(client, "/retriever/invoke", {"input": {"query": f"title {text}"}})
    assert retrieved.status_code == 200, retrieved.text
    assert retrieved.json()["output"][0]["metadata"]["title"] == f"title {text}"
