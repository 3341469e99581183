"""Bodies that are JSON only to Python's json module get one 422, on FastAPI's routes and LangServe's alike."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from ticket_rag.api.strict_json import MAX_DEPTH, refusal

DEEP_HISTORY = '{"input": {"question": "x", "chat_history": ' + "[" * 1000 + "]" * 1000 + "}}"
CASES = {
    "NaN": '{"query": "x", "mode": "hybrid", "alpha": NaN}',
    "Infinity": '{"title": -Infinity, "description": "d"}',
    "out of range": '{"query": "x", "limit": 1e400}',
    "4,300 digits": '{"query": "x", "limit": ' + "9" * 5000 + "}",
    "appears twice": '{"input": {"question": "x", "collection": "a", "collection": "b"}}',
    "nested deeper": DEEP_HISTORY,
}


@pytest.mark.parametrize("reason", list(CASES))
def test_refusal_names_the_reason(reason: str) -> None:
    found = refusal(CASES[reason].encode())
    assert found is not None and reason in found


def test_strict_json_and_non_json_pass() -> None:
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    for body in ('{"query": "x", "limit": 5, "alpha": 0.5}', nested, "{", "not json", '"\\ud800"'):
        assert refusal(body.encode()) is None, body
    assert refusal(("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)).encode()) is not None
    assert "not UTF-8" in (refusal(b"\xff\xfe{\x00}\x00") or "")  # UTF-16 that Python's json would read
    assert "not UTF-8" in (refusal("{}".encode("utf-32")) or "")


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/tickets/search", "NaN"),
        ("/tickets/", "Infinity"),
        ("/tickets/search", "out of range"),
        ("/tickets/search", "4,300 digits"),
        ("/rag/invoke", "appears twice"),
        ("/rag/invoke", "nested deeper"),
        ("/retriever/invoke", "nested deeper"),
        ("/rag/stream", "NaN"),
        ("/rag/batch", "nested deeper"),
    ],
)
def test_hostile_json_is_a_422_naming_the_body_never_a_500(client: TestClient, path: str, reason: str) -> None:
    response = client.post(path, content=CASES[reason], headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body"] and reason in error["msg"]
    assert client.get("/tickets/").json()["count"] == 0  # nothing was stored


def test_a_valid_body_still_reaches_the_route_whole(client: TestClient) -> None:
    body = '{"title": "Printer jams", "description": "' + "paper " * 2000 + '"}'
    response = client.post("/tickets/", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 201
    assert client.get(f"/tickets/{response.json()['id']}").json()["description"].count("paper") == 2000


def test_utf16_without_a_byte_order_mark_is_refused_too() -> None:
    """ASCII text in UTF-16 without a BOM is valid UTF-8 (with NULs), and json.loads(bytes) would read it as UTF-16."""
    assert "not UTF-8" in (refusal('{"query": "x"}'.encode("utf-16-le")) or "")
    assert "not UTF-8" in (refusal('{"query": "x"}'.encode("utf-16-be")) or "")
