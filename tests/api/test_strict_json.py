"""Bodies that are JSON only to Python's json module get one 422, on FastAPI's routes and LangServe's alike."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings

from server import create_app
from ticket_rag.api.strict_json import BOM, MAX_CONTAINERS, MAX_DEPTH, refusal, structure
from ticket_rag.settings import Settings

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


# Each variant as (REST body, /rag/invoke body, the reason the 422 names). json.loads(bytes), which FastAPI and
# LangServe call, strips a UTF-8 BOM and reads UTF-16 and UTF-32: each of these used to reach them unchecked.
DEEP_TAGS = '{"query": "x", "filters": {"tags": ' + "[" * 40 + "]" * 40 + "}}"
UNDECODABLE = {
    f"{encoding}{' + UTF-8 BOM' if bom else ''}": (
        (BOM if bom else b"") + '{"query": "vpn"}'.encode(encoding),
        (BOM if bom else b"") + '{"input": {"question": "vpn"}}'.encode(encoding),
        "not UTF-8",
    )
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")
    for bom in (False, True)
}
BOM_VARIANTS = {
    "BOM + NaN": (
        BOM + b'{"query":"vpn","collection":"acme","alpha":NaN,"mode":"hybrid"}',
        BOM + b'{"input": {"question": "vpn", "k": NaN}}',
        "NaN",
    ),
    "BOM + Infinity": (
        BOM + CASES["out of range"].encode(),
        BOM + b'{"input": {"question": "x", "k": 1e400}}',
        "range",
    ),
    "BOM + deep nesting": (BOM + DEEP_TAGS.encode(), BOM + DEEP_HISTORY.encode(), "nested deeper"),
    "BOM + duplicate key": (
        BOM + b'{"query": "x", "query": "y"}',
        BOM + CASES["appears twice"].encode(),
        "appears twice",
    ),
    "two BOMs": (BOM + BOM + b'{"query": "x"}', BOM + BOM + b'{"input": {"question": "x"}}', "byte order mark"),
    **UNDECODABLE,
}


@pytest.mark.parametrize("variant", list(BOM_VARIANTS))
def test_a_body_with_a_bom_or_in_utf16_or_utf32_is_checked_or_refused(variant: str) -> None:
    rest, rag, reason = BOM_VARIANTS[variant]
    for body in (rest, rag):
        assert reason in (refusal(body) or ""), (variant, body[:40])


def test_a_bom_before_strict_json_is_ignored() -> None:
    assert refusal(BOM + b'{"query": "x", "alpha": 0.5}') is None
    assert refusal(BOM + b"not json") is None  # left to the route, which gets it without the BOM
    assert refusal(BOM) is None


def test_every_bom_variant_is_a_422_on_rest_and_langserve_routes(settings: Settings, embeddings: Embeddings) -> None:
    """Each used to reach FastAPI or LangServe: a 500 (NaN, RecursionError) or a duplicate key accepted."""
    with TestClient(
        create_app(settings.model_copy(update={"rate_limit_per_minute": 0}), embeddings=embeddings)
    ) as client:
        _every_bom_variant_is_a_422(client)


def _every_bom_variant_is_a_422(client: TestClient) -> None:
    ticket = client.post("/tickets/", json={"title": "VPN drops", "description": "Every hour."}).json()
    json_type = {"Content-Type": "application/json"}
    for variant, (rest, rag, reason) in BOM_VARIANTS.items():
        for method, path, body in [
            ("POST", "/tickets/search", rest),
            ("POST", "/tickets/", rest),
            ("PATCH", f"/tickets/{ticket['id']}", rest),
            ("POST", "/rag/invoke", rag),
        ]:
            response = client.request(method, path, content=body, headers=json_type)
            assert response.status_code == 422, (variant, method, path, response.status_code, response.text)
            error = response.json()["detail"][0]
            assert error["loc"] == ["body"] and reason in error["msg"], (variant, path, error)
    deep_batch = BOM + ('{"inputs": [{"question": "x", "chat_history": ' + "[" * 40 + "]" * 40 + "}]}").encode()
    for endpoint in ("rag/batch", "rag/stream", "rag/stream_log", "rag/stream_events", "retriever/invoke"):
        body = deep_batch if endpoint.endswith("batch") else BOM + DEEP_HISTORY.encode()
        response = client.post(f"/{endpoint}", content=body, headers=json_type)
        assert response.status_code == 422 and "nested deeper" in response.text, (endpoint, response.text)
    deep_query = BOM + ('{"inputs": [{"query": "x", "filters": {"tags": ' + "[" * 40 + "]" * 40 + "}}]}").encode()
    response = client.post("/retriever/batch", content=deep_query, headers=json_type)
    assert response.status_code == 422 and "nested deeper" in response.text, response.text
    assert client.get("/tickets/").json()["count"] == 1  # nothing else was stored
    assert client.get(f"/tickets/{ticket['id']}").json()["title"] == "VPN drops"  # nor changed


def test_a_valid_body_after_a_bom_reaches_the_route_without_it(client: TestClient) -> None:
    json_type = {"Content-Type": "application/json"}
    created = client.post("/tickets/", content=BOM + b'{"title": "VPN drops", "description": "d"}', headers=json_type)
    assert created.status_code == 201, created.text
    assert client.get(f"/tickets/{created.json()['id']}").json()["title"] == "VPN drops"
    answered = client.post("/rag/invoke", content=BOM + b'{"input": {"question": "VPN drops"}}', headers=json_type)
    assert answered.status_code == 200, answered.text
    not_json = client.post("/tickets/search", content=BOM + b"{", headers=json_type)
    assert not_json.status_code == 422 and not_json.json()["detail"][0]["type"] == "json_invalid"


def _nested(rng: random.Random, level: int) -> Any:
    """Random JSON whose strings are full of what could confuse a byte-level count: brackets, quotes, backslashes."""
    kind = rng.randrange(5 if level < 40 else 3)
    if kind == 0:
        return "".join(rng.choice('[]{}"\\\\/ aé€😀\n') for _ in range(rng.randrange(8)))
    if kind == 1:
        return rng.choice([0, -1.5, True, None, 1e300])
    if kind == 2:
        return {}
    if kind == 3:
        return [_nested(rng, level + 1) for _ in range(rng.randrange(4))]
    return {f'{rng.random()}"[{{\\': _nested(rng, level + 1) for _ in range(rng.randrange(1, 4))}


def _reference_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    return 0


def _containers(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_containers(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_containers(v) for v in value)
    return 0


def test_the_byte_level_count_is_the_shape_of_the_parsed_json() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        value = _nested(rng, 0)
        for ascii_only in (True, False):
            text = json.dumps(value, ensure_ascii=ascii_only)
            parsed = json.loads(text)
            assert structure(text.encode()) == (_reference_depth(parsed), _containers(parsed)), text


def test_a_body_of_a_million_tiny_arrays_is_refused_before_any_parse(client: TestClient) -> None:
    """Each array is an allocation for the garbage collector to scan: 4 MB of them froze the service for seconds."""

    def arrays(count: int) -> bytes:  # the outer array and count - 1 inside it
        return ("[" + ",".join(["[]"] * (count - 1)) + "]").encode()

    assert refusal(arrays(MAX_CONTAINERS)) is None
    assert refusal(arrays(MAX_CONTAINERS + 1)) == f"JSON with more than {MAX_CONTAINERS:,} arrays and objects"
    body = "[" + ",".join(["[]"] * ((4 * 1024 * 1024 - 2) // 3)) + "]"
    response = client.post("/tickets/bulk", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"] == [{"type": "json_invalid", "loc": ["body"], "msg": refusal(body.encode())}]
    assert "more than 100,000 arrays and objects" in response.text


def test_a_422_echoes_a_small_input_but_not_a_big_one(client: TestClient) -> None:
    """Echoing a big body walked it in Python on the event loop (seconds for 4 MB) and sent it all back."""
    small = client.post("/tickets/search", json=[[]])
    assert small.status_code == 422 and small.json()["detail"][0]["input"] == [[]]
    big = client.post("/tickets/search", json=[[1, 2, 3]] * 20_000)
    assert big.status_code == 422 and len(big.content) < 1000, big.text[:200]
    error = big.json()["detail"][0]
    assert error["loc"] == ["body"] and error["type"] == "model_attributes_type" and "input" not in error
