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
    assert {"weaviate_data": "rag_weaviate_data", "model_cache": "rag_model_cache"}.items() <= volumes.items()
    assert "weaviate_data:/var/lib/weaviate" in weaviate["volumes"]
    assert weaviate["environment"]["PERSISTENCE_DATA_PATH"] == "/var/lib/weaviate"
    assert any(v.startswith("model_cache:") for v in api["volumes"])


def test_the_cluster_profile_runs_three_replicating_weaviate_nodes_and_two_api_replicas_behind_nginx() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    # `docker compose up` is unchanged: the default services are in no profile, every cluster service is
    assert "profiles" not in services["api"] and "profiles" not in services["weaviate"]
    cluster = {name: spec for name, spec in services.items() if name not in ("api", "weaviate")}
    assert all(spec["profiles"] == ["cluster"] for spec in cluster.values())

    nodes = {name: spec for name, spec in cluster.items() if name.startswith("weaviate-node")}
    assert len(nodes) == 3
    hostnames = sorted(spec["environment"]["CLUSTER_HOSTNAME"] for spec in nodes.values())
    assert hostnames == ["node1", "node2", "node3"]
    for spec in nodes.values():
        env = spec["environment"]
        assert spec["image"] == services["weaviate"]["image"]
        assert sorted(env["RAFT_JOIN"].split(",")) == hostnames and env["RAFT_BOOTSTRAP_EXPECT"] == "3"
        gossip = env["CLUSTER_GOSSIP_BIND_PORT"]
        assert sorted(env["CLUSTER_JOIN"].split(",")) == [f"{n}:{gossip}" for n in sorted(nodes)]
        assert env["DEFAULT_VECTORIZER_MODULE"] == "none"
        assert "/v1/.well-known/ready" in " ".join(spec["healthcheck"]["test"])
        (volume,) = spec["volumes"]
        assert volume.endswith(":" + env["PERSISTENCE_DATA_PATH"])
        assert volume.split(":")[0] in compose["volumes"]
    assert len({spec["volumes"][0] for spec in nodes.values()}) == 3, "each node has its own data volume"

    apis = {name: spec for name, spec in cluster.items() if spec.get("build") == "."}
    assert len(apis) >= 2
    weaviate_lb = cluster["weaviate-lb"]
    for spec in apis.values():
        env = spec["environment"]
        assert env["WEAVIATE_URL"] == "http://weaviate-lb:8080" and env["WEAVIATE_GRPC_URL"] == "weaviate-lb:50051"
        assert env["WEAVIATE_REPLICATION_FACTOR"] == "3" and env["WEAVIATE_CONSISTENCY"] == "QUORUM"
        assert any(v.startswith("model_cache:") for v in spec["volumes"])
        assert "/health/ready" in " ".join(spec["healthcheck"]["test"])
    assert set(weaviate_lb["depends_on"]) == set(nodes)

    weaviate_conf = _nginx_conf(weaviate_lb)
    for node in nodes:
        assert f"server {node}:8080" in weaviate_conf and f"server {node}:50051" in weaviate_conf
    assert "grpc_pass grpc://" in weaviate_conf

    lb = cluster["lb"]
    assert set(lb["depends_on"]) == set(apis)
    host_port = lb["ports"][0].split(":")[0]
    assert host_port not in {p.split(":")[0] for s in (services["api"], services["weaviate"]) for p in s["ports"]}
    api_conf = _nginx_conf(lb)
    assert sorted(re.findall(r"server ([\w-]+):8000", api_conf)) == sorted(apis)
    assert "proxy_buffering off" in api_conf  # streams pass through as they come
    for spec in cluster.values():
        assert spec["networks"] == ["rag_backend_network"]


def _nginx_conf(service: dict[str, object]) -> str:
    """The nginx.conf a service mounts, read from the repository."""
    (mount,) = [v for v in service["volumes"] if v.endswith(":/etc/nginx/nginx.conf:ro")]  # type: ignore[attr-defined]
    path = ROOT / mount.split(":")[0]
    assert path.is_file(), f"{path} is missing"
    return path.read_text()


def test_dockerfile_builds_the_api_on_python_311() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", dockerfile, re.M)
    assert "EXPOSE 8000" in dockerfile
    for path in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is missing"
