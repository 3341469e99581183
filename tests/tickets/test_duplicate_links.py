"""Confirmed and rejected duplicate links: deletion, relinking, cycles and concurrent confirms, against the real
Weaviate."""

from __future__ import annotations

import uuid
from functools import partial

from fastapi.testclient import TestClient
from httpx import Response

from tests.tickets.concurrent import at_once


def _tickets(client: TestClient, count: int) -> list[str]:
    body = {"tickets": [{"title": f"Ticket {n}", "description": f"Problem number {n}."} for n in range(count)]}
    response = client.post("/tickets/bulk", json=body)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def _confirm(client: TestClient, ticket: str, original: str) -> Response:
    return client.post(f"/tickets/{ticket}/duplicate-of", json={"ticket_id": original})


def _reject(client: TestClient, ticket: str, other: str) -> Response:
    return client.post(f"/tickets/{ticket}/not-duplicate-of", json={"ticket_id": other})


def _get(client: TestClient, ticket: str) -> dict[str, object]:
    response = client.get(f"/tickets/{ticket}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_deleting_a_ticket_removes_the_links_to_it_both_ways(client: TestClient) -> None:
    a, b, c, d, e = _tickets(client, 5)
    assert _confirm(client, a, b).status_code == 200
    assert _confirm(client, d, c).status_code == 200
    assert _reject(client, e, c).status_code == 200

    assert client.delete(f"/tickets/{b}").status_code == 204
    assert _get(client, a)["duplicate_of"] is None  # the original is gone: no dangling link
    assert client.delete(f"/tickets/{d}").status_code == 204
    assert _get(client, c)["duplicates"] == []  # a deleted duplicate is no longer listed
    assert client.delete(f"/tickets/{c}").status_code == 204
    assert _get(client, e)["not_duplicates"] == []

    relinked = _confirm(client, a, e)  # A is not stuck
    assert relinked.status_code == 200, relinked.text
    assert relinked.json()["duplicate_of"] == e
    assert _get(client, e)["duplicates"] == [a]


def test_relinking_and_unlinking_ignore_an_original_that_no_longer_exists(client: TestClient) -> None:
    """Links left dangling before deletes removed them: the old original is skipped, not a 404."""
    a, c = _tickets(client, 2)
    store = client.app.state.services.store  # type: ignore[attr-defined]
    gone = uuid.uuid4()
    store.set_links(ticket_id=uuid.UUID(a), collection="default", links={"duplicate_of": str(gone)})

    unlinked = _reject(client, a, str(gone))
    assert unlinked.status_code == 200, unlinked.text
    assert unlinked.json()["duplicate_of"] is None

    store.set_links(ticket_id=uuid.UUID(a), collection="default", links={"duplicate_of": str(gone)})
    relinked = _confirm(client, a, c)
    assert relinked.status_code == 200, relinked.text
    assert relinked.json()["duplicate_of"] == c
    assert _get(client, c)["duplicates"] == [a]

    # a ticket that exists nowhere and is linked to nothing is still a 404
    assert _reject(client, a, str(uuid.uuid4())).status_code == 404
    assert _confirm(client, a, str(uuid.uuid4())).status_code == 404


def test_a_confirm_that_would_close_a_cycle_is_refused_naming_the_chain(client: TestClient) -> None:
    x, y, z = _tickets(client, 3)
    assert _confirm(client, x, y).status_code == 200
    assert _confirm(client, y, z).status_code == 200
    cycle = _confirm(client, z, x)
    assert cycle.status_code == 422
    error = cycle.json()["detail"][0]
    assert error["loc"] == ["body", "ticket_id"]
    assert all(t in error["msg"] for t in (x, y, z))
    assert _get(client, z)["duplicate_of"] is None
    assert _get(client, x)["duplicates"] == []
    direct = _confirm(client, y, x)
    assert direct.status_code == 422 and direct.json()["detail"][0]["loc"] == ["body", "ticket_id"]


def _originals(client: TestClient, tickets: list[str]) -> dict[str, str]:
    return {t: str(o) for t in tickets if (o := _get(client, t)["duplicate_of"]) is not None}


def _has_cycle(originals: dict[str, str]) -> bool:
    for start in originals:
        seen, node = {start}, originals[start]
        while node in originals:
            if node in seen:
                return True
            seen.add(node)
            node = originals[node]
    return False


def test_confirms_sent_at_the_same_time_never_make_a_cycle(client: TestClient) -> None:
    for _ in range(3):
        p, q = _tickets(client, 2)
        results = at_once(partial(_confirm, client, p, q), partial(_confirm, client, q, p))
        assert sorted(r.status_code for r in results) == [200, 422], [r.text for r in results]
        assert not _has_cycle(_originals(client, [p, q]))

        x, y, z = _tickets(client, 3)
        results = at_once(
            partial(_confirm, client, x, y), partial(_confirm, client, y, z), partial(_confirm, client, z, x)
        )
        assert sorted(r.status_code for r in results) == [200, 200, 422], [r.text for r in results]
        assert not _has_cycle(_originals(client, [x, y, z]))


def test_concurrent_confirms_onto_one_original_are_all_listed(client: TestClient) -> None:
    original, *copies = _tickets(client, 9)
    results = at_once(*(partial(_confirm, client, copy, original) for copy in copies))
    assert [r.status_code for r in results] == [200] * len(copies), [r.text for r in results]
    assert sorted(_get(client, original)["duplicates"]) == sorted(copies)  # type: ignore[type-var]
    assert all(_get(client, copy)["duplicate_of"] == original for copy in copies)
