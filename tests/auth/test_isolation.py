"""Collections stay sealed: every operation the app serves, attacked with keys scoped to `a`, never reaches `b`.

The app runs with an admin key and no anonymous access, over the session's real Weaviate and model, once with a
fake chat model that echoes nothing of its context and once with LLM_PROVIDER=none (whose answer lists the
tickets). Collections `a` and `b` hold tickets; every text field of b's tickets, and the names of b's keys, carry a
marker stored nowhere else. Keys scoped to ["a"] (read, write, admin) then send every shape of
tests/auth/isolation_attacks.py to every operation: no response or stream event may carry b's marker, none may be a
5xx, no key reaching beyond `a` may be listed, and after each write attempt the bootstrap admin checks that b,
its tickets and its keys are as they were and that no key beyond `a` appeared.

ENVIRONMENT stays development, so the playground is mounted and attacked too.

Hostile JSON (deep nesting, NaN and infinities, huge numbers, duplicate keys, bodies not in UTF-8, which
RFC 8259 8.1 requires) goes to every POST and PATCH operation of the OpenAPI document: a 4xx with a JSON
`detail`, never a 5xx, never accepted.

Run: .venv/bin/python -m pytest tests/auth/test_isolation.py (about two and a half minutes on two cores); the
`every_operation_was_attacked` tests print how many (route x shape x key) combinations were sent.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from pydantic import SecretStr
from weaviate.classes.query import Filter

from server import create_app
from tests.auth.isolation_attacks import (
    HOSTILE_KINDS,
    Attack,
    Operation,
    Targets,
    attacks,
    example,
    hostile_bodies,
    operations,
)
from tests.conftest import _drop_class, make_settings
from ticket_rag.runtime.weaviate import EmbeddedWeaviate

ADMIN = "admin-key-0123456789abcdefghijkl"
B_MARKER = f"LEAKMARKER{uuid.uuid4().hex}"  # in every text field of b's tickets and in the names of b's keys
A_MARKER = f"AMARKER{uuid.uuid4().hex}"  # in a's tickets: seeing it proves an attack reached real retrieval
ROLES = {"read": 1, "write": 2, "admin": 3}
LLM_MODES = ["fake-llm", "no-llm"]


def _secured(**overrides: Any) -> dict[str, Any]:
    return {"allow_anonymous": False, "admin_api_key": SecretStr(ADMIN), "rate_limit_per_minute": 0, **overrides}


# The operations are known when pytest collects (one test each); test_the_attacked_operations_are_the_served_ones
# checks that the served app has exactly these.
OPERATIONS = operations(create_app(make_settings(**_secured()), llm=None))
HOSTILE_OPERATIONS = [op for op in OPERATIONS if op.documented and op.method in ("POST", "PUT", "PATCH") and op.body]

# (operation, shape, key) combinations attacked, per LLM mode, and the operations a's marker came back from.
ATTACKED: dict[str, set[tuple[str, str, str]]] = {mode: set() for mode in LLM_MODES}
A_SEEN: dict[str, set[str]] = {mode: set() for mode in LLM_MODES}


def _ticket(marker: str, n: int, collection: str) -> dict[str, Any]:
    return {
        "title": f"VPN connection drops every hour after the client update {marker} {n}",
        "description": f"Since the client update the VPN disconnects about every hour. {marker}",
        "resolution": f"Rolled the VPN client back to the previous version. {marker}",
        "tags": ["vpn", marker],
        "category": f"Network {marker}",
        "external_id": f"{marker}-{n}",
        "status": "resolved",
        "collection": collection,
        "created_at": f"2025-01-0{n + 1}T08:00:00Z",
    }


@dataclass
class Guard:
    """The bootstrap admin's view of what `a` must not reach: b, its tickets, its keys, keys beyond a.

    `check` compares the current state with the last one and puts back whatever changed (so that one broken
    request does not fail every later check), returning what it found.
    """

    client: TestClient
    b_bodies: dict[str, dict[str, Any]]
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    collections: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.snapshot()

    def _get(self, url: str, **params: Any) -> httpx.Response:
        response = self.client.get(url, params=params, headers={"X-API-Key": ADMIN})
        assert response.status_code == 200, (url, response.status_code, response.text)
        return response

    def _current_keys(self) -> dict[str, dict[str, Any]]:
        return {k["key_id"]: k for k in self._get("/admin/keys").json()}

    def _current_tickets(self) -> dict[str, dict[str, Any]]:
        response = self.client.get("/tickets/", params={"collection": "b", "limit": 100}, headers={"X-API-Key": ADMIN})
        return {t["id"]: t for t in response.json()["data"]} if response.status_code == 200 else {}

    def _current_collections(self) -> set[str]:
        return {c["name"] for c in self._get("/collections").json()["data"]}

    def snapshot(self) -> None:
        self.keys, self.tickets, self.collections = (
            self._current_keys(),
            self._current_tickets(),
            self._current_collections(),
        )

    def check(self, role: str) -> list[str]:
        problems: list[str] = []
        admin = {"X-API-Key": ADMIN}
        keys = self._current_keys()
        for key_id, key in keys.items():
            before = self.keys.get(key_id)
            if before is None and role != "admin":
                problems.append(f"the {role} key created key {key_id} for {key['collections']} with role {key['role']}")
            if before is None and not key["revoked"] and not set(key["collections"]) <= {"a"}:
                problems.append(f"a key for {key['collections']} with role {key['role']} was created")
                self.client.delete(f"/admin/keys/{key_id}", headers=admin)
            if (
                before is not None
                and key["revoked"]
                and not before["revoked"]
                and not set(before["collections"]) <= {"a"}
            ):
                problems.append(f"key {key_id} ({before['name']}, for {before['collections']}) was revoked")
                self._unrevoke(key_id)
        collections = self._current_collections()
        for name in sorted(self.collections - collections - {"a"}):  # b, or any other collection beyond a
            problems.append(f"collection {name} was deleted")
            self.client.post("/collections", json={"name": name}, headers=admin)
        for name in sorted(collections - self.collections):
            problems.append(f"collection {name} was created")
            self.client.delete(f"/collections/{name}", headers=admin)
        tickets = self._current_tickets()
        for ticket_id, before in self.tickets.items():
            now = tickets.get(ticket_id)
            if now != before:
                changed = (
                    "deleted" if now is None else "changed: " + ", ".join(k for k in before if before[k] != now.get(k))
                )
                problems.append(f"b's ticket {ticket_id} was {changed}")
                self.client.post("/tickets/", json=self.b_bodies[ticket_id], headers=admin)
        for ticket_id in sorted(set(tickets) - set(self.tickets)):
            problems.append(f"a ticket appeared in b: {tickets[ticket_id]['title']!r}")
            self.client.delete(f"/tickets/{ticket_id}", params={"collection": "b"}, headers=admin)
        if problems:
            self.snapshot()
        else:
            self.keys = keys  # keys an admin of a made for a are its own business
        return problems

    def _unrevoke(self, key_id: str) -> None:
        """Put a revoked key back (there is no route for that, by design), straight in its Weaviate collection."""
        store = self.client.app.state.services.api_keys  # type: ignore[attr-defined]
        keys = store.client.collections.use(store.class_name)
        found = keys.query.fetch_objects(filters=Filter.by_property("key_id").equal(key_id), limit=1).objects
        keys.data.update(uuid=found[0].uuid, properties={"revoked": False})


@dataclass
class World:
    mode: str
    client: TestClient
    keys: dict[str, str]
    targets: Targets
    guard: Guard
    hostile_ticket: str
    other_ticket: str  # a body that names a ticket (a duplicate link) names this one


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest,
    weaviate_server: EmbeddedWeaviate,
    embeddings: Embeddings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    """One app per LLM mode with collections a and b, their tickets, and keys scoped to each."""
    mode: str = request.param
    settings = make_settings(
        weaviate_url=weaviate_server.url,
        weaviate_grpc_url=f"127.0.0.1:{weaviate_server.grpc_port}",
        weaviate_class=f"Iso{uuid.uuid4().hex[:12]}",
        data_dir=tmp_path_factory.mktemp("isolation"),
        rag_min_similarity=-1.0,  # every retrieved ticket becomes a source, so whatever is retrieved shows
        **_secured(),
    )
    llm = FakeListChatModel(responses=["Roll the client back to the previous version."]) if mode == "fake-llm" else None
    app = create_app(settings, embeddings=embeddings, llm=llm)
    with TestClient(app, raise_server_exceptions=False) as client:
        admin = {"X-API-Key": ADMIN}
        for name in ("a", "b"):
            assert client.post("/collections", json={"name": name}, headers=admin).status_code == 201
        stored: dict[str, list[str]] = {}
        bodies: dict[str, dict[str, Any]] = {}
        for name, marker in (("a", A_MARKER), ("b", B_MARKER)):
            tickets = [_ticket(marker, n, name) for n in range(3)]
            response = client.post("/tickets/bulk", json={"tickets": tickets}, headers=admin)
            assert response.status_code == 200, response.text
            stored[name] = [item["id"] for item in response.json()["items"]]
            bodies.update(zip(stored[name], tickets, strict=True))
        hostile, other = (
            client.post("/tickets/", json={"title": title, "description": "x", "collection": "a"}, headers=admin)
            for title in ("Hostile JSON target", "Another ticket of a")
        )
        keys = {role: _key(client, role=level, collections=["a"], name=f"a-{role}") for role, level in ROLES.items()}
        foreign = [
            _key(client, role=level, collections=["b"], name=f"b-{role} {B_MARKER}") for role, level in ROLES.items()
        ]
        foreign += [
            _key(client, role=1, collections=["*"], name="everything"),
            _key(client, role=1, collections=["a", "b"], name="a-and-b"),
        ]
        targets = Targets(
            b_ticket_ids=stored["b"][:2],
            foreign_key_ids=[key.split("_")[1] for key in foreign],
            extra_path_values=["", "index.html"],
        )
        guard = Guard(client=client, b_bodies={i: bodies[i] for i in stored["b"]})
        yield World(
            mode=mode,
            client=client,
            keys=keys,
            targets=targets,
            guard=guard,
            hostile_ticket=hostile.json()["id"],
            other_ticket=other.json()["id"],
        )
    _drop_class(settings)


def _key(client: TestClient, *, role: int, collections: list[str], name: str) -> str:
    response = client.post(
        "/admin/keys", json={"name": name, "role": role, "collections": collections}, headers={"X-API-Key": ADMIN}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["api_key"])


def _send(client: TestClient, attack: Attack, key: str) -> httpx.Response:
    headers = {**dict(attack.headers), "X-API-Key": key}
    return client.request(
        attack.method, attack.url, params=list(attack.params), content=attack.content, headers=headers
    )


def _described(attack: Attack) -> str:
    query = "?" + "&".join(f"{k}={v}" for k, v in attack.params) if attack.params else ""
    body = (attack.content or b"").decode(errors="replace")
    return f"{attack.method} {attack.url}{query} {body[:400]}".rstrip()


def _problems(response: httpx.Response) -> list[str]:
    """What a response to an a-scoped key must never show: b's marker, a 5xx, a key reaching beyond a."""
    text = response.text
    problems = []
    if response.status_code >= 500:
        problems.append(f"status {response.status_code}: {text[:200]}")
    if B_MARKER in text or B_MARKER in str(response.headers):
        at = text.find(B_MARKER)
        problems.append(
            f"b's marker in the response (status {response.status_code}): ...{text[max(0, at - 150) : at + 60]}..."
        )
    for event, data in _sse_events(response):
        if event == "error" and isinstance(data, dict) and int(data.get("status_code") or 500) >= 500:
            problems.append(f"a 5xx error event in the stream: {data}")
    if 200 <= response.status_code < 300 and "json" in response.headers.get("content-type", ""):
        beyond = [
            f"{k['key_id']} for {k['collections']}"
            for k in _api_keys_in(response.json())
            if not set(k["collections"]) <= {"a"}
        ]
        if beyond:
            problems.append(f"{len(beyond)} keys reaching beyond a in the response: {', '.join(beyond)}")
    return problems


def _sse_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        return
    for block in response.text.replace("\r\n", "\n").split("\n\n"):
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            try:
                yield event, json.loads("\n".join(data))
            except ValueError:
                yield event, "\n".join(data)


def _api_keys_in(value: Any) -> Iterator[dict[str, Any]]:
    """Every object in a JSON value that describes an API key (a key id and its collections)."""
    if isinstance(value, dict):
        if "key_id" in value and isinstance(value.get("collections"), list):
            yield value
        for sub in value.values():
            yield from _api_keys_in(sub)
    elif isinstance(value, list):
        for sub in value:
            yield from _api_keys_in(sub)


def test_the_attacked_operations_are_the_served_ones() -> None:
    """The operations parametrised at collection time are those of an app built like the served one."""
    served = operations(create_app(make_settings(**_secured()), llm=FakeListChatModel(responses=["x"])))
    assert [str(op) for op in served] == [str(op) for op in OPERATIONS]
    assert len([op for op in OPERATIONS if op.documented]) >= 29  # the document's operations, LangServe's included
    assert {"POST /rag/invoke", "POST /rag/stream_events", "POST /retriever/batch", "GET /metrics"} <= {
        str(op) for op in OPERATIONS
    }


@pytest.mark.parametrize("world", LLM_MODES, indirect=True)
@pytest.mark.parametrize("operation", OPERATIONS, ids=str)
def test_no_request_shape_reaches_b(world: World, operation: Operation) -> None:
    """Every shape, sent with each a-scoped key: b's data never shows, and nothing of b's changes."""
    shapes = attacks(operation, world.targets)
    assert shapes, f"no request shape generated for {operation}"
    problems: list[str] = []
    for role, key in world.keys.items():
        for attack in shapes:
            response = _send(world.client, attack, key)
            ATTACKED[world.mode].add((str(operation), attack.shape, role))
            if 200 <= response.status_code < 300 and A_MARKER in response.text:
                A_SEEN[world.mode].add(str(operation))
            found = _problems(response)
            if attack.method != "GET" and role != "read":  # after each attempt that a role could make change something
                found += [f"afterwards: {p}" for p in world.guard.check(role)]
            problems += [f"[{role} key, {attack.shape}] {p}\n    request: {_described(attack)}" for p in found]
        if (
            operation.method != "GET" and role == "read"
        ):  # a read key changes nothing: checked once for all its attempts
            problems += [f"[read key, one of the shapes above] afterwards: {p}" for p in world.guard.check(role)]
    assert not problems, f"{len(problems)} problems on {operation}:\n" + "\n".join(problems)


@pytest.mark.parametrize("world", LLM_MODES, indirect=True)
def test_every_operation_was_attacked_with_every_key(
    world: World, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """The count for the closing note; fails if the generator silently attacked nothing for a selected operation."""
    selected = {
        item.callspec.params["operation"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_no_request_shape_reaches_b"
        and item.callspec.params.get("world") == world.mode
    }
    if not selected:
        pytest.skip("no operation of the isolation suite was selected")
    attacked = ATTACKED[world.mode]
    missing = sorted(
        {(str(op), role) for op in selected for role in world.keys} - {(op, role) for op, _, role in attacked}
    )
    assert not missing, f"never attacked: {missing}"
    assert len(attacked) >= len(selected) * len(world.keys)
    # a's own data came back from every LangServe endpoint: the attacks reached real retrieval
    runnable = {str(op) for op in selected if op.body and {"input", "inputs"} & set(op.body.get("properties", {}))}
    assert runnable <= A_SEEN[world.mode], f"a's tickets never came back from {sorted(runnable - A_SEEN[world.mode])}"
    shapes = {(op, shape) for op, shape, _ in attacked}
    line = (
        f"isolation ({world.mode}): {len(attacked)} (route x shape x key) combinations = {len(shapes)} (route x shape) "
        f"over {len(selected)} operations x {len(world.keys)} keys"
    )
    with capsys.disabled():
        sys.stderr.write(f"\n{line}\n")


@pytest.mark.parametrize("world", LLM_MODES[:1], indirect=True)
@pytest.mark.parametrize("kind", HOSTILE_KINDS)
@pytest.mark.parametrize("operation", HOSTILE_OPERATIONS, ids=str)
def test_hostile_json_gets_a_4xx_with_detail(world: World, operation: Operation, kind: str) -> None:
    """Deep nesting, NaN and infinities, huge numbers, duplicate keys, other encodings: a 4xx naming the problem."""
    values = {
        p.name: (world.hostile_ticket if p.schema.get("format") == "uuid" else "a") for p in operation.path_params
    }
    url = operation.path.format(**values)
    params = [("collection", "a")] if any(p.name == "collection" for p in operation.query_params) else []
    headers = {"Content-Type": "application/json", "X-API-Key": ADMIN}
    # The bodies are built around a valid one, so that a 4xx answers the hostile part: a create that conflicts
    # with `a` (a collection named a) gets a fresh name instead.
    collection = "a"
    control = world.client.request(
        operation.method,
        url,
        params=params,
        json=example(operation.body, collection, ticket=world.other_ticket),
        headers=headers,
    )
    if control.status_code == 409:
        collection = f"h{uuid.uuid4().hex[:12]}"
        control = world.client.request(
            operation.method,
            url,
            params=params,
            json=example(operation.body, collection, ticket=world.other_ticket),
            headers=headers,
        )
    assert 200 <= control.status_code < 300, control.text
    cases = hostile_bodies(operation, collection, ticket=world.other_ticket)[kind]
    assert cases
    failures = []
    for index, (case, body) in enumerate(cases):
        if collection != "a":  # each body may create what it names: a name of its own
            case, body = hostile_bodies(operation, f"h{uuid.uuid4().hex[:12]}", ticket=world.other_ticket)[kind][index]
        response = world.client.request(operation.method, url, params=params, content=body, headers=headers)
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = None
        if not 400 <= response.status_code < 500 or not detail:
            failures.append(f"{case}: {response.status_code} {response.text[:150]!r}")
    assert not failures, f"{len(failures)} of {len(cases)} bodies not refused with a 4xx:\n" + "\n".join(failures)
