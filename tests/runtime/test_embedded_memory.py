"""The embedded Weaviate's memory settings reach the process, and a Weaviate started with them serves tickets."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.embeddings import Embeddings

from tests.conftest import make_settings
from ticket_rag.errors import ConfigError
from ticket_rag.runtime.weaviate import build_weaviate, free_port
from ticket_rag.tickets.schemas import TicketCreate
from ticket_rag.tickets.store import build_ticket_store


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_a_memory_capped_pread_weaviate_gets_its_settings_and_serves(tmp_path: Path, embeddings: Embeddings) -> None:
    settings = make_settings(
        data_dir=tmp_path / "data",
        weaviate_http_port=free_port(),
        weaviate_grpc_port=free_port(),
        weaviate_memory_limit="1536MiB",
        weaviate_lsm_access="pread",
    )
    client, embedded = build_weaviate(settings)
    try:
        assert embedded is not None and embedded.process is not None
        env = _environ(embedded.process.pid)
        assert env["GOMEMLIMIT"] == "1536MiB" and env["PERSISTENCE_LSM_ACCESS_STRATEGY"] == "pread"
        store = build_ticket_store(settings=settings, client=client, embeddings=embeddings)
        store.ensure_schema(default_collection="default")
        store.upsert(
            ticket=TicketCreate(title="VPN drops hourly", description="The tunnel drops."), collection="default"
        )
        hits = store.search(query="vpn tunnel drops", collection="default", limit=1, mode="hybrid")
        assert hits and hits[0].ticket.title == "VPN drops hourly"
    finally:
        client.close()
        if embedded is not None:
            embedded.stop()


def test_the_default_is_go_and_weaviates_own_and_a_bad_limit_names_the_setting() -> None:
    settings = make_settings()
    assert settings.weaviate_memory_limit is None and settings.weaviate_lsm_access == "mmap"
    with pytest.raises(ConfigError, match="WEAVIATE_MEMORY_LIMIT"):
        make_settings(weaviate_memory_limit="3 gigs")
    with pytest.raises(ConfigError, match="WEAVIATE_LSM_ACCESS"):
        make_settings(weaviate_lsm_access="mmapx")
