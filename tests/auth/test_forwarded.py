"""Whose address the rate limits count: X-Forwarded-For is believed only from the proxies FORWARDED_ALLOW_IPS names."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings
from pydantic import SecretStr

from server import create_app
from ticket_rag.settings import Settings
from ticket_rag.tools.cli import proxy_options

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-key-0123456789abcdefghijkl"


@contextmanager
def served(settings: Settings, embeddings: Embeddings, forwarded: str | None) -> Iterator[TestClient]:
    """The app wrapped exactly as `ticket-rag serve` wraps it (uvicorn's own middleware included)."""
    settings = settings.model_copy(
        update={"allow_anonymous": False, "admin_api_key": SecretStr(ADMIN), "forwarded_allow_ips": forwarded}
    )
    config = uvicorn.Config(create_app(settings, embeddings=embeddings), **proxy_options(settings))
    config.load()
    # a local caller, as with `make run`: uvicorn's default would believe its X-Forwarded-For
    with TestClient(config.loaded_app, client=("127.0.0.1", 50000)) as client:
        yield client


def _bad_keys(client: TestClient, addresses: list[str]) -> list[int]:
    return [
        client.get("/tickets/", headers={"X-API-Key": f"trk_dead{n}_beef", "X-Forwarded-For": address}).status_code
        for n, address in enumerate(addresses)
    ]


def test_a_client_cannot_escape_the_invalid_key_limit_by_naming_another_address(
    settings: Settings, embeddings: Embeddings
) -> None:
    with served(settings, embeddings, forwarded=None) as client:
        codes = _bad_keys(client, [f"198.51.100.{n}" for n in range(12)])
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes


def test_behind_a_trusted_proxy_each_forwarded_client_is_limited_on_its_own(
    settings: Settings, embeddings: Embeddings
) -> None:
    with served(settings, embeddings, forwarded="*") as client:
        guesser = _bad_keys(client, ["198.51.100.7"] * 11)
        bystander = client.get("/tickets/", headers={"X-API-Key": ADMIN, "X-Forwarded-For": "203.0.113.9"})
    assert guesser[-1] == 429, guesser
    assert bystander.status_code == 200, bystander.text


def test_the_compose_proxy_overwrites_the_clients_forwarded_header() -> None:
    # the replicas trust nginx ("*"), so nginx must not pass on an address the client wrote
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in conf
    assert "$proxy_add_x_forwarded_for" not in conf
