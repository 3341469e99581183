"""No Docker engine here: check the compose file's structure the way `docker compose config` would read it."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT
from ticket_rag.settings import WEAVIATE_VERSION


def test_compose_wires_the_api_to_weaviate() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api, weaviate = compose["services"]["api"], compose["services"]["weaviate"]

    assert api["container_name"] == "rag_fastapi_backend"
    assert weaviate["container_name"] == "rag_weaviate_db"
    assert "8000:8000" in api["ports"]
    assert {"8080:8080", "50051:50051"} <= set(weaviate["ports"])
    assert api["environment"]["WEAVIATE_URL"] == "http://weaviate:8080"
    assert api["environment"]["WEAVIATE_GRPC_URL"] == "weaviate:50051"
    assert api["depends_on"]["weaviate"]["condition"] == "service_healthy"
    assert "/v1/.well-known/ready" in " ".join(weaviate["healthcheck"]["test"])
    # The same Weaviate release as the embedded default.
    assert weaviate["image"].endswith(":" + WEAVIATE_VERSION.lstrip("v"))
    assert weaviate["environment"]["DEFAULT_VECTORIZER_MODULE"] == "none"

    assert compose["networks"]["rag_backend_network"]["name"] == "rag_backend_network"
    for service in (api, weaviate):
        assert service["networks"] == ["rag_backend_network"]
    volumes = {name: spec["name"] for name, spec in compose["volumes"].items()}
    assert volumes == {"weaviate_data": "rag_weaviate_data", "model_cache": "rag_model_cache"}
    assert "weaviate_data:/var/lib/weaviate" in weaviate["volumes"]
    assert weaviate["environment"]["PERSISTENCE_DATA_PATH"] == "/var/lib/weaviate"
    assert any(v.startswith("model_cache:") for v in api["volumes"])


def test_dockerfile_builds_the_api_on_python_311() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    assert "EXPOSE 8000" in dockerfile
    for path in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is missing"
