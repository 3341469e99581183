"""Dates outside what Weaviate keeps (int64 nanoseconds) are refused with a 422 naming the field, wherever accepted.

Weaviate stored 1500-01-01 as a date that sorted newest, and compared 2262-04-11T23:47:17Z (one second past its
range) as a date before every ticket: the filters inverted. The API takes dates from 1900 up to 2200.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from chains.schemas import RagInput
from ticket_rag.api.langserve_routes import RetrieverInput
from ticket_rag.tickets.schemas import BulkRequest, SearchFilters, SearchRequest, TicketCreate

OUT_OF_RANGE = [
    "2262-04-11T23:47:17Z",  # one second past Weaviate's last date
    "9999-12-31T00:00:00Z",  # "no upper limit"
    "1500-01-01T00:00:00Z",
    "1677-09-21T00:12:44Z",  # inside Weaviate's range, outside the API's
    "1899-12-31T23:59:59Z",
    "2200-01-01T00:00:00Z",
    "2199-12-31T23:30:00-01:00",  # 2200-01-01T00:30Z
    "1900-01-01T00:30:00+01:00",  # 1899-12-31T23:30Z
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
]
TICKET = {"title": "VPN drops", "description": "The VPN drops every hour."}

# Every schema the API reads a date from, and where in it the date goes.
SCHEMAS: list[tuple[type[BaseModel], dict[str, Any], tuple[str | int, ...]]] = [
    (TicketCreate, {**TICKET, "created_at": None}, ("created_at",)),
    (BulkRequest, {"tickets": [TICKET, {**TICKET, "created_at": None}]}, ("tickets", 1, "created_at")),
    (SearchFilters, {"created_after": None}, ("created_after",)),
    (SearchFilters, {"created_before": None}, ("created_before",)),
    (SearchRequest, {"query": "vpn", "filters": {"created_before": None}}, ("filters", "created_before")),
    (RagInput, {"question": "vpn", "filters": {"created_after": None}}, ("filters", "created_after")),
    (RetrieverInput, {"query": "vpn", "filters": {"created_before": None}}, ("filters", "created_before")),
]


def _with(body: Any, loc: tuple[str | int, ...], value: Any) -> Any:
    """A copy of body with the value at loc replaced."""
    if not loc:
        return value
    copy = list(body) if isinstance(body, list) else dict(body)
    copy[loc[0]] = _with(body[loc[0]], loc[1:], value)  # type: ignore[index]
    return copy


@pytest.mark.parametrize(("schema", "body", "loc"), SCHEMAS, ids=lambda x: getattr(x, "__name__", None))
def test_every_date_the_api_reads_is_refused_out_of_range_naming_its_field(
    schema: type[BaseModel], body: dict[str, Any], loc: tuple[str | int, ...]
) -> None:
    for value in OUT_OF_RANGE:
        with pytest.raises(ValidationError) as caught:
            schema.model_validate(_with(body, loc, value))
        assert [e["loc"] for e in caught.value.errors()] == [loc], value
        assert "1900" in caught.value.errors()[0]["msg"]


@pytest.mark.parametrize(("schema", "body", "loc"), SCHEMAS, ids=lambda x: getattr(x, "__name__", None))
def test_dates_in_range_are_kept_as_given_naive_or_aware(
    schema: type[BaseModel], body: dict[str, Any], loc: tuple[str | int, ...]
) -> None:
    plus_two = timezone(timedelta(hours=2))
    for value, expected in [
        ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10)),  # naive stays naive (the store reads it as UTC)
        ("2024-05-01T10:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=plus_two)),
        ("1900-01-01T00:00:00Z", datetime(1900, 1, 1, tzinfo=UTC)),
        ("2199-12-31T23:59:59Z", datetime(2199, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ]:
        parsed: Any = schema.model_validate(_with(body, loc, value))
        for part in loc:
            parsed = parsed[part] if isinstance(part, int) else getattr(parsed, part)
        assert parsed == expected and parsed.utcoffset() == expected.utcoffset(), value


def test_out_of_range_dates_are_a_422_on_every_route(client: TestClient) -> None:
    ticket = client.post("/tickets/", json={**TICKET, "created_at": "2024-03-01T00:00:00Z"}).json()
    bad = "9999-12-31T00:00:00Z"
    cases: list[tuple[str, str, dict[str, Any], list[Any]]] = [
        ("POST", "/tickets/", {"json": {**TICKET, "created_at": "1500-01-01T00:00:00Z"}}, ["body", "created_at"]),
        (
            "POST",
            "/tickets/bulk",
            {"json": {"tickets": [TICKET, {**TICKET, "created_at": bad}]}},
            ["body", "tickets", 1, "created_at"],
        ),
        ("GET", "/tickets/", {"params": {"created_after": "2262-04-11T23:47:17Z"}}, ["query", "created_after"]),
        ("GET", "/tickets/", {"params": {"created_before": bad}}, ["query", "created_before"]),
        ("GET", f"/tickets/{ticket['id']}/similar", {"params": {"created_before": bad}}, ["query", "created_before"]),
        (
            "POST",
            "/tickets/search",
            {"json": {"query": "vpn", "filters": {"created_before": bad}}},
            ["body", "filters", "created_before"],
        ),
    ]
    for endpoint in ("invoke", "stream"):
        body = {"input": {"question": "vpn", "filters": {"created_after": bad}}}
        cases.append(("POST", f"/rag/{endpoint}", {"json": body}, ["body", "input", "filters", "created_after"]))
    cases.append(
        (
            "POST",
            "/rag/batch",
            {"json": {"inputs": [{"question": "vpn", "filters": {"created_after": bad}}]}},
            ["body", "inputs", 0, "filters", "created_after"],
        )
    )
    cases.append(
        (
            "POST",
            "/retriever/invoke",
            {"json": {"input": {"query": "vpn", "filters": {"created_before": bad}}}},
            ["body", "input", "filters", "created_before"],
        )
    )
    for method, path, kwargs, loc in cases:
        response = client.request(method, path, **kwargs)
        assert response.status_code == 422, (path, response.status_code, response.text)
        assert [e["loc"] for e in response.json()["detail"]] == [loc], (path, response.json())
    assert client.get("/tickets/").json()["count"] == 1  # nothing was stored


def test_naive_and_aware_dates_store_sort_and_filter_as_before(client: TestClient) -> None:
    """A naive date is UTC, as it always was; an aware one is compared at its own offset."""
    for title, created_at in [
        ("naive", "2024-01-10T00:00:00"),
        ("aware", "2024-03-01T01:00:00+01:00"),
        ("earliest", "1900-01-01T00:00:00Z"),
    ]:
        response = client.post("/tickets/", json={**TICKET, "title": title, "created_at": created_at})
        assert response.status_code == 201, response.text

    def titles(**params: str) -> list[str]:
        response = client.get("/tickets/", params=params)
        assert response.status_code == 200, response.text
        return [t["title"] for t in response.json()["data"]]

    listed = client.get("/tickets/").json()["data"]
    assert [t["title"] for t in listed] == ["aware", "naive", "earliest"]  # newest first
    assert {t["title"]: datetime.fromisoformat(t["created_at"]) for t in listed} == {
        "aware": datetime(2024, 3, 1, tzinfo=UTC),
        "naive": datetime(2024, 1, 10, tzinfo=UTC),
        "earliest": datetime(1900, 1, 1, tzinfo=UTC),
    }
    assert titles(created_after="2024-02-29T23:30:00") == ["aware"]
    assert titles(created_before="2024-03-01T00:30:00+00:30") == ["naive", "earliest"]
    assert titles(created_after="1900-01-01T00:00:00Z", created_before="2199-12-31T23:59:59Z") == [
        "aware",
        "naive",
        "earliest",
    ]
