"""What Weaviate does with in-place compression changes on a collection that holds tickets (docs/scaling.md).

    .venv/bin/python -m bench.compression_in_place

One embedded Weaviate, ticket-rag's schema, 300 tickets per collection; then each change is tried
through the Python client (and one through the REST API, as a client without the Python client's
guard would send it), and Weaviate is restarted to see whether every collection still answers a
search. Prints one line per step; changes nothing outside a temporary folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from weaviate.classes.config import Reconfigure
from weaviate.classes.data import DataObject

from ticket_rag.runtime.artifacts import ensure_weaviate_binary
from ticket_rag.runtime.weaviate import EmbeddedWeaviate, connect, free_port
from ticket_rag.settings import load_settings
from ticket_rag.tickets.compression import (
    current_compression,
    enable_compression,
    uncompressed_tenants,
    wait_until_compressed,
)
from ticket_rag.tickets.store import TicketStore


def _update(client: Any, name: str, quantizer: Any) -> str:
    try:
        client.collections.use(name).config.update(
            vector_config=Reconfigure.Vectors.update(
                name="default", vector_index_config=Reconfigure.VectorIndex.hnsw(quantizer=quantizer)
            )
        )
    except Exception as exc:  # the point is to see what is refused, and how
        return f"refused: {str(exc)[:160]}"
    return f"accepted; the schema now says {current_compression(client, name)}"


def main() -> int:
    settings = load_settings(_env_file=None)
    folder = Path(tempfile.mkdtemp(prefix="ticket-rag-inplace-"))
    ports = {"http_port": free_port(), "grpc_port": free_port()}
    binary = ensure_weaviate_binary(settings.cache_dir, settings.weaviate_version)
    vectors = np.random.default_rng(0).standard_normal((300, 768)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    q = Reconfigure.VectorIndex.Quantizer

    with EmbeddedWeaviate(binary=binary, data_dir=folder, **ports) as server:
        with connect(url=server.url, grpc_url=f"127.0.0.1:{server.grpc_port}") as client:
            for name, compression in (("Plain", "none"), ("Off", "rq8"), ("Switch", "rq8"), ("Rest", "rq8")):
                TicketStore(client=client, embeddings=None, class_name=name, compression=compression).ensure_schema(  # type: ignore[arg-type]
                    default_collection="default"
                )
                client.collections.use(name).with_tenant("default").data.insert_many(
                    [DataObject(properties={"title": "t", "description": "d"}, vector=v.tolist()) for v in vectors]
                )
            enable_compression(client, "Plain", "rq8")
            left = wait_until_compressed(client, "Plain", timeout=120)
            print(
                f"none -> rq8 (ticket-rag compress): {current_compression(client, 'Plain')}, uncompressed tenants "
                f"{left}"
            )
            print(f"rq8 -> rq1 (client): {_update(client, 'Switch', q.rq(bits=1))}")
            print(f"rq8 -> bq (client): {_update(client, 'Switch', q.bq())}")
            print(f"rq8 -> pq (client): {_update(client, 'Switch', q.pq())}")
            print(
                f"rq8 -> off (client, rq enabled=False): {_update(client, 'Off', q.rq(enabled=False))}; "
                f"tenants still compressed: {not uncompressed_tenants(client, 'Off')}"
            )
            schema = json.load(urllib.request.urlopen(f"{server.url}/v1/schema/Rest"))
            index = schema["vectorConfig"]["default"]["vectorIndexConfig"]
            index["rq"]["enabled"], index["bq"]["enabled"] = False, True
            request = urllib.request.Request(
                f"{server.url}/v1/schema/Rest",
                data=json.dumps(schema).encode(),
                method="PUT",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request) as response:
                print(
                    f"rq8 -> bq (REST PUT of the schema): HTTP {response.status}; the schema now says "
                    f"{current_compression(client, 'Rest')}"
                )
    with EmbeddedWeaviate(binary=binary, data_dir=folder, **ports) as server:
        with connect(url=server.url, grpc_url=f"127.0.0.1:{server.grpc_port}") as client:
            for name in ("Plain", "Off", "Switch", "Rest"):
                try:
                    hits = (
                        client.collections.use(name)
                        .with_tenant("default")
                        .query.near_vector(near_vector=vectors[5].tolist(), limit=1)
                    )
                    state = f"answers ({len(hits.objects)} hit)"
                except Exception as exc:  # a collection that no longer loads
                    state = f"FAILS: {str(exc)[:120]}"
                print(f"after a restart, {name} ({current_compression(client, name)}): {state}")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
