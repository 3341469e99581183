"""Start-up configuration: bad values and missing artifacts fail with one line that says what to do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_settings
from ticket_rag.errors import ConfigError
from ticket_rag.runtime.artifacts import (
    ensure_weaviate_binary,
    managed_model_dir,
    resolve_model,
    verify_sha256,
)
from ticket_rag.runtime.weaviate import free_port
from ticket_rag.settings import DEFAULT_MODEL_SHA256


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"port": 70000}, "PORT"),
        ({"weaviate_url": "not a url"}, "WEAVIATE_URL"),
        ({"weaviate_grpc_port": 0}, "WEAVIATE_GRPC_PORT"),
        ({"embedding_sha256": "xyz"}, "EMBEDDING_SHA256"),
        ({"environment": "prod"}, "ENVIRONMENT"),
    ],
)
def test_invalid_setting_names_the_variable(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        make_settings(**overrides)


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEAVIATE_URL", "http://weaviate:8080/")
    monkeypatch.setenv("CORS_ORIGINS", '["https://desk.example.com"]')
    settings = make_settings()
    assert settings.weaviate_url == "http://weaviate:8080"
    assert not settings.embedded_weaviate
    assert settings.cors_origins == ["https://desk.example.com"]


def test_unknown_model_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="EMBEDDING_MODEL: no model folder"):
        resolve_model(str(tmp_path / "nope"), cache_dir=tmp_path, expected_sha256=DEFAULT_MODEL_SHA256)


def test_corrupt_weights_are_refused(tmp_path: Path) -> None:
    """A model folder whose model.safetensors is not the published file does not load."""
    real = managed_model_dir(make_settings().cache_dir)
    fake = tmp_path / "model"
    fake.mkdir()
    for item in real.iterdir():
        if item.name != "model.safetensors" and item.is_file():
            (fake / item.name).symlink_to(item)
    (fake / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ConfigError, match="expected 78c0197b"):
        resolve_model(str(fake), cache_dir=tmp_path, expected_sha256=DEFAULT_MODEL_SHA256)


def test_a_changed_file_is_hashed_again(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"a")
    digest_a = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
    verify_sha256(blob, digest_a, what="blob", fix="-")
    blob.write_bytes(b"b")
    with pytest.raises(ConfigError, match="has sha256"):
        verify_sha256(blob, digest_a, what="blob", fix="-")


def test_missing_weaviate_without_go_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="Go is not installed.*WEAVIATE_URL"):
        ensure_weaviate_binary(tmp_path, "v1.39.3")


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ticket_rag.tools.cli", *args],
        cwd=ROOT,
        env={
            **os.environ,
            "LOG_JSON": "false",
            "WEAVIATE_HTTP_PORT": str(free_port()),
            "WEAVIATE_GRPC_PORT": str(free_port()),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"EMBEDDING_MODEL": "/no/such/model"}, "EMBEDDING_MODEL: no model folder at /no/such/model"),
        ({"PORT": "abc"}, "PORT: Input should be a valid integer"),
        ({"WEAVIATE_BINARY": "/no/such/weaviate"}, "WEAVIATE_BINARY: no file at /no/such/weaviate"),
    ],
)
def test_serve_with_bad_configuration_prints_one_line(env: dict[str, str], expected: str, tmp_path: Path) -> None:
    result = _cli("serve", "--port", str(free_port()), DATA_DIR=str(tmp_path), **env)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve_refuses_a_taken_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        result = _cli("serve", "--port", str(taken), DATA_DIR=str(tmp_path))
    assert result.returncode == 2
    assert f"port {taken} on 127.0.0.1 is taken" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_example_documents_every_setting() -> None:
    from ticket_rag.settings import Settings

    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert {name.upper() for name in Settings.model_fields} <= documented
