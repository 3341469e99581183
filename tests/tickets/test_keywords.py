"""Keyword search on stemmed terms: inflected words match, the stored text stays as written, old tickets reindex."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings
from weaviate.classes.config import Configure, DataType, Property, Tokenization
from weaviate.classes.tenants import Tenant

from server import create_app
from tests.conftest import _drop_class, make_settings
from ticket_rag.errors import ConfigError
from ticket_rag.runtime.weaviate import connect
from ticket_rag.settings import Settings
from ticket_rag.tickets.keywords import KeywordAnalyzer
from ticket_rag.tools.cli import main as cli_main

PASSWORD = {"title": "Password reset link expired", "description": "The user requested a new password twice."}
PRINTER = {"title": "Printer jammed", "description": "Paper is stuck in tray B on the third floor."}


def _titles(client: TestClient, query: str, mode: str = "keyword") -> list[str]:
    response = client.post("/tickets/search", json={"query": query, "mode": mode})
    assert response.status_code == 200, response.text
    return [hit["ticket"]["title"] for hit in response.json()["results"]]


def test_terms_are_lowercased_stemmed_words_without_stopwords() -> None:
    english = KeywordAnalyzer("english")
    assert english.terms("Resetting PASSWORDS is not working: the reset-link expired_yesterday") == (
        "reset password work reset link expir yesterday"
    )
    assert english.terms("the and of") == ""
    assert KeywordAnalyzer("german").terms("Die Drucker druckten nicht") == "die druck druckt nicht"
    assert KeywordAnalyzer("none").terms("Resetting Passwords, 42 Übergrößen") == "resetting passwords 42 übergrößen"
    with pytest.raises(ValueError, match="unknown stemmer"):
        KeywordAnalyzer("klingon")


def test_unknown_stemmer_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="KEYWORD_STEMMER: must be one of none, arabic"):
        make_settings(keyword_stemmer="klingon")


def test_keyword_search_matches_other_forms_of_a_word(client: TestClient) -> None:
    for ticket in (PASSWORD, PRINTER):
        assert client.post("/tickets/", json=ticket).status_code == 201
    assert _titles(client, "resetting passwords") == [PASSWORD["title"]]
    assert _titles(client, "expiring") == [PASSWORD["title"]]
    assert _titles(client, "jams")[0] == PRINTER["title"]
    stored = client.get("/tickets/").json()["data"]
    assert {t["title"] for t in stored} == {PASSWORD["title"], PRINTER["title"]}  # stored text is never stemmed
    assert all("title_terms" not in t and "description_terms" not in t for t in stored)


def test_without_stemming_only_the_exact_word_matches(settings: Settings, embeddings: Embeddings) -> None:
    with TestClient(
        create_app(settings.model_copy(update={"keyword_stemmer": "none"}), embeddings=embeddings)
    ) as client:
        client.post("/tickets/", json=PASSWORD)
        assert _titles(client, "resetting passwords") == []
        assert _titles(client, "password") == [PASSWORD["title"]]
    _drop_class(settings)


def test_a_query_of_stopwords_finds_no_keyword_and_hybrid_still_answers(client: TestClient) -> None:
    client.post("/tickets/", json=PASSWORD)
    assert _titles(client, "the and of it") == []
    assert _titles(client, "the and of it", mode="hybrid") == [PASSWORD["title"]]  # the vector part still ranks


def test_an_edited_title_is_searched_by_its_new_words(client: TestClient) -> None:
    created = client.post("/tickets/", json=PRINTER).json()
    client.patch(f"/tickets/{created['id']}", json={"title": "Scanner offline"})
    assert _titles(client, "scanners") == ["Scanner offline"]
    assert _titles(client, "jammed", mode="keyword") == []  # the old title's terms are gone
    client.patch(f"/tickets/{created['id']}", json={"status": "resolved"})  # no text change keeps the terms
    assert _titles(client, "scanners") == ["Scanner offline"]


@pytest.fixture()
def old_collection(settings: Settings) -> Iterator[Settings]:
    """A collection as ticket-rag created it before keyword terms existed, with one ticket in it."""
    assert settings.weaviate_url is not None
    with connect(url=settings.weaviate_url, grpc_url=settings.weaviate_grpc_url) as wv:
        text = {"data_type": DataType.TEXT, "tokenization": Tokenization.WORD}
        field = {"data_type": DataType.TEXT, "tokenization": Tokenization.FIELD, "index_searchable": False}
        wv.collections.create(
            settings.weaviate_class,
            vector_config=Configure.Vectors.self_provided(),
            multi_tenancy_config=Configure.multi_tenancy(enabled=True),
            properties=[
                Property(name="title", **text),
                Property(name="description", **text),  # type: ignore[arg-type]
                *[Property(name=n, **field) for n in ("priority", "status", "category", "external_id")],  # type: ignore[arg-type]
                Property(name="resolution", data_type=DataType.TEXT, index_searchable=False),
                Property(
                    name="tags", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD, index_searchable=False
                ),
                Property(name="created_at", data_type=DataType.DATE),
                Property(name="updated_at", data_type=DataType.DATE),
            ],
        )
        tenant = wv.collections.use(settings.weaviate_class)
        tenant.tenants.create([Tenant(name="default")])
        now = datetime.now(UTC)
        tenant.with_tenant("default").data.insert(
            {**PASSWORD, "priority": "high", "status": "open", "created_at": now, "updated_at": now}, vector=[0.1] * 768
        )
    yield settings
    _drop_class(settings)


def test_tickets_stored_before_terms_existed_are_found_after_reindex(
    old_collection: Settings,
    embeddings: Embeddings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = old_collection
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        assert _titles(client, "password") == []  # the old ticket has no terms yet
        before = client.get("/tickets/").json()["data"][0]
    assert settings.weaviate_url is not None
    for name, value in {
        "WEAVIATE_URL": settings.weaviate_url,
        "WEAVIATE_GRPC_URL": settings.weaviate_grpc_url,
        "WEAVIATE_CLASS": settings.weaviate_class,
        "LOG_JSON": "false",
    }.items():
        monkeypatch.setenv(name, str(value))
    assert cli_main(["reindex"]) == 0
    assert "default: 1 tickets reindexed (english stemming)" in capsys.readouterr().out
    assert cli_main(["reindex", "--collection", "nosuch"]) == 2
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        assert _titles(client, "resetting passwords") == [PASSWORD["title"]]
        after = client.get("/tickets/").json()["data"][0]
        with connect(url=settings.weaviate_url, grpc_url=settings.weaviate_grpc_url) as wv:
            vector = (
                wv.collections.use(settings.weaviate_class)
                .with_tenant("default")
                .query.fetch_object_by_id(after["id"], include_vector=True)
                .vector["default"]
            )
    assert after == before  # every field as it was
    assert vector == pytest.approx([0.1] * 768)  # and the vector kept


def test_the_rag_retriever_keyword_part_uses_the_same_terms(settings: Settings, embeddings: Embeddings) -> None:
    """RAG_ALPHA=0 (keyword only): the retriever finds inflected words, as POST /tickets/search does."""
    with TestClient(create_app(settings.model_copy(update={"rag_alpha": 0.0}), embeddings=embeddings)) as client:
        for ticket in (PASSWORD, PRINTER):
            client.post("/tickets/", json=ticket)
        response = client.post("/retriever/invoke", json={"input": {"query": "resetting passwords"}})
        assert response.status_code == 200, response.text
        assert [doc["metadata"]["title"] for doc in response.json()["output"]] == [PASSWORD["title"]]
        stopwords = client.post("/retriever/invoke", json={"input": {"query": "the and of it"}})
        assert stopwords.status_code == 200 and stopwords.json()["output"] == []
    _drop_class(settings)
