"""Vector compression: a new collection gets VECTOR_COMPRESSION; `ticket-rag compress` turns it on for
one that holds tickets.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings

from server import create_app
from ticket_rag.errors import ConfigError
from ticket_rag.runtime.weaviate import connect
from ticket_rag.settings import Settings, load_settings
from ticket_rag.tickets.compression import current_compression, uncompressed_tenants
from ticket_rag.tools.cli import main as cli_main

TICKETS = [
    {
        "title": "Cannot log in after password reset",
        "description": "The reset link says it expired and I am locked out.",
    },
    {"title": "VPN drops every few minutes", "description": "The VPN connection from home disconnects constantly."},
    {"title": "Printer on floor 3 jams", "description": "Paper gets stuck in tray 2 of the office printer."},
    {"title": "Invoice shows the wrong VAT rate", "description": "Our March invoice charged 19% instead of 7%."},
    {
        "title": "Outlook does not sync the calendar",
        "description": "Meetings added on the phone never show in Outlook.",
    },
]


def _search(client: TestClient, query: str, mode: str = "vector") -> list[dict[str, object]]:
    response = client.post("/tickets/search", json={"query": query, "limit": 5, "mode": mode})
    assert response.status_code == 200, response.text
    return list(response.json()["results"])


def _use_env(monkeypatch: pytest.MonkeyPatch, settings: Settings, compression: str) -> None:
    for name, value in {
        "WEAVIATE_URL": settings.weaviate_url,
        "WEAVIATE_GRPC_URL": settings.weaviate_grpc_url,
        "WEAVIATE_CLASS": settings.weaviate_class,
        "LOG_JSON": "false",
        "VECTOR_COMPRESSION": compression,
    }.items():
        monkeypatch.setenv(name, str(value))


def test_a_new_collection_is_created_with_vector_compression(settings: Settings, client: TestClient) -> None:
    """The default VECTOR_COMPRESSION applies to the collection the service creates, and search still finds tickets."""
    assert settings.vector_compression == "rq8"
    assert client.post("/tickets/bulk", json={"tickets": TICKETS}).status_code == 200
    assert settings.weaviate_url is not None
    with connect(url=settings.weaviate_url, grpc_url=settings.weaviate_grpc_url) as wv:
        assert current_compression(wv, settings.weaviate_class) == "rq8"
        assert uncompressed_tenants(wv, settings.weaviate_class) == []
    assert _search(client, "I forgot my password and cannot sign in")[0]["ticket"]["title"] == TICKETS[0]["title"]
    assert _search(client, "printer paper stuck", mode="hybrid")[0]["ticket"]["title"] == TICKETS[2]["title"]


def test_compress_turns_compression_on_for_a_collection_that_holds_tickets(
    settings: Settings, embeddings: Embeddings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    uncompressed = settings.model_copy(update={"vector_compression": "none"})
    with TestClient(create_app(uncompressed, embeddings=embeddings)) as client:
        assert client.post("/tickets/bulk", json={"tickets": TICKETS}).status_code == 200
        before = {q: _search(client, q) for q in ("password expired", "calendar sync", "VAT on the invoice")}
    assert settings.weaviate_url is not None
    with connect(url=settings.weaviate_url, grpc_url=settings.weaviate_grpc_url) as wv:
        assert current_compression(wv, settings.weaviate_class) == "none"

    _use_env(monkeypatch, settings, "rq8")
    assert cli_main(["compress"]) == 0
    out = capsys.readouterr().out
    assert "vector compression none -> rq8" in out and "every loaded collection is compressed" in out
    with connect(url=settings.weaviate_url, grpc_url=settings.weaviate_grpc_url) as wv:
        assert current_compression(wv, settings.weaviate_class) == "rq8"
        assert uncompressed_tenants(wv, settings.weaviate_class) == []

    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        assert client.get("/collections/default").json()["ticket_count"] == len(TICKETS)  # nothing lost
        for query, hits in before.items():
            after = _search(client, query)
            assert [h["ticket"]["id"] for h in after] == [h["ticket"]["id"] for h in hits]  # same ranking
            for a, b in zip(after, hits, strict=True):
                assert a["similarity"] == pytest.approx(b["similarity"], abs=0.02)

    assert cli_main(["compress"]) == 0  # again: nothing to do
    assert "already rq8; nothing to do" in capsys.readouterr().out
    for other in ("bq", "none"):  # Weaviate cannot switch methods or decompress in place: a re-import, said so
        _use_env(monkeypatch, settings, other)
        assert cli_main(["compress"]) == 2
        assert "import the tickets again" in capsys.readouterr().err


def test_an_unknown_compression_stops_the_start_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="VECTOR_COMPRESSION"):
        load_settings(_env_file=None, vector_compression="zstd")
