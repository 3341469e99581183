"""Weaviate: the embedded server (a child process on loopback) and the client to any Weaviate."""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import grpc
import grpc.aio
import weaviate
import weaviate.connect.v4 as weaviate_v4
from weaviate.classes.init import AdditionalConfig, Auth, GrpcConfig, Timeout
from weaviate.exceptions import WeaviateRetryError

from ticket_rag.errors import ConfigError
from ticket_rag.runtime.metrics import WEAVIATE_RESTARTS
from ticket_rag.settings import Settings

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on host right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: a Weaviate
# (re)started from a short-lived thread (a worker, a supervisor) got SIGTERM as soon as that thread
# returned. Every child is forked from this one thread instead, which lives as long as the process.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weaviate-spawner")


def _spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, preexec_fn=_die_with_parent, **kwargs)

    return _spawner.submit(spawn).result()


class EmbeddedWeaviate:
    """A weaviate-server child process bound to loopback, its data kept in one folder.

    The internal cluster ports (gossip, data, Raft) are chosen once and remembered in the data
    folder, so a restart finds its single-node Raft cluster at the same address.
    """

    def __init__(
        self,
        *,
        binary: Path,
        data_dir: Path,
        http_port: int,
        grpc_port: int,
        host: str = "127.0.0.1",
        startup_timeout: float = 90.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.binary = binary
        self.data_dir = data_dir.resolve()
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.startup_timeout = startup_timeout
        # Added to (and overriding) the environment below, e.g. the settings of a multi-node cluster.
        self.extra_env = dict(extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._lock_fh: object | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def _internal_ports(self) -> dict[str, int]:
        path = self.data_dir / "ticket-rag-ports.json"
        try:
            ports: dict[str, int] = json.loads(path.read_text())
            if not any(port_in_use(p, self.host) for p in ports.values()):
                return ports
        except (OSError, ValueError):
            pass
        ports = {name: free_port(self.host) for name in ("gossip", "data", "raft", "raft_rpc")}
        path.write_text(json.dumps(ports))
        return ports

    def _lock_data_dir(self) -> None:
        lock_path = self.data_dir / "ticket-rag.lock"
        fh = lock_path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise ConfigError(
                f"the Weaviate data folder {self.data_dir} is in use by another ticket-rag: "
                "stop it, or set DATA_DIR to another folder"
            ) from None
        self._lock_fh = fh

    def start(self) -> None:
        """Start the server and wait until it answers ready."""
        if not self.binary.is_file():
            raise ConfigError(f"no weaviate-server at {self.binary}: run `make run` or `ticket-rag setup`")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        self._launch()

    @property
    def exited(self) -> bool:
        """Whether the server process has ended (it is reaped here, so it never lingers as a zombie)."""
        return self.process is not None and self.process.poll() is not None

    def restart(self) -> None:
        """Start the server again after it died, keeping the data folder's lock, and wait until it is ready."""
        if self.process is not None and self.process.poll() is None:
            return
        self._launch()

    def _launch(self) -> None:
        for name, port in (("WEAVIATE_HTTP_PORT", self.http_port), ("WEAVIATE_GRPC_PORT", self.grpc_port)):
            if port_in_use(port, self.host):
                raise ConfigError(
                    f"port {port} on {self.host} is taken: set {name} to a free port, "
                    "or WEAVIATE_URL to use the Weaviate that is already running"
                )
        ports = self._internal_ports()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PERSISTENCE_DATA_PATH": str(self.data_dir / "weaviate"),
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
            "DEFAULT_VECTORIZER_MODULE": "none",
            "ENABLE_MODULES": "",
            "API_BASED_MODULES_DISABLED": "true",
            "DISABLE_TELEMETRY": "true",
            "GO_PROFILING_DISABLE": "true",
            "PROMETHEUS_MONITORING_ENABLED": "false",
            "QUERY_DEFAULTS_LIMIT": "25",
            "GRPC_PORT": str(self.grpc_port),
            "CLUSTER_HOSTNAME": "node1",
            "CLUSTER_BIND_ADDR": self.host,
            "CLUSTER_ADVERTISE_ADDR": self.host,
            "CLUSTER_GOSSIP_BIND_PORT": str(ports["gossip"]),
            "CLUSTER_DATA_BIND_PORT": str(ports["data"]),
            "RAFT_PORT": str(ports["raft"]),
            "RAFT_INTERNAL_RPC_PORT": str(ports["raft_rpc"]),
            "RAFT_ENABLE_ONE_NODE_RECOVERY": "true",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "warning",
            "GOMAXPROCS": os.environ.get("GOMAXPROCS", str(os.cpu_count() or 2)),
            **self.extra_env,
        }
        log_path = self.data_dir / "weaviate.log"
        log = log_path.open("ab")
        logger.info("starting embedded Weaviate on %s (data in %s)", self.url, self.data_dir)
        self.process = _spawn(
            [str(self.binary), "--host", self.host, "--port", str(self.http_port), "--scheme", "http"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        try:
            self._wait_ready(log_path)
        except BaseException:
            self._terminate()
            raise

    def _wait_ready(self, log_path: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise ConfigError(f"the embedded Weaviate exited at start ({' | '.join(tail)}); log: {log_path}")
            if is_ready(self.url):
                return
            time.sleep(0.2)
        raise ConfigError(f"the embedded Weaviate was not ready within {self.startup_timeout:.0f} s; log: {log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it does not exit in time; release the data folder."""
        self._terminate(timeout)
        if self._lock_fh is not None:
            self._lock_fh.close()  # type: ignore[attr-defined]
            self._lock_fh = None

    def _terminate(self, timeout: float = 30.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("Weaviate did not stop within %.0f s; killing it", timeout)
                proc.kill()
                proc.wait()

    def __enter__(self) -> EmbeddedWeaviate:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class WeaviateSupervisor:
    """Watches the embedded Weaviate and starts it again when it dies (SIGKILL, OOM, a crash), with backoff.

    `status` is "ok" or says what is under way, for /health/ready; every call meanwhile answers 503 fast.
    `probe`, once set, is a call through the service's own client: the status turns "ok" only when it
    succeeds (the server answering its HTTP probe is not yet the client's gRPC channel reconnected).
    """

    def __init__(self, server: EmbeddedWeaviate, *, interval: float = 0.5, max_backoff: float = 30.0) -> None:
        self.server = server
        self.interval = interval
        self.max_backoff = max_backoff
        self.status = "ok"
        self.restarts = 0
        self.probe: Callable[[], object] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="weaviate-supervisor", daemon=True)

    def start(self) -> WeaviateSupervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before the server itself is stopped, so a shutdown is not taken for a crash)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            process = self.server.process
            if process is None or process.poll() is None:
                continue
            logger.warning("the embedded Weaviate exited (status %s); restarting it", process.returncode)
            self._restart()

    def _restart(self) -> None:
        attempt, delay = 0, 0.5
        while not self._stop.is_set():
            attempt += 1
            self.status = f"restarting (attempt {attempt})"
            started = time.monotonic()
            try:
                self.server.restart()
            except Exception as exc:  # a port still taken, a start that timed out: try again later
                logger.warning("restarting the embedded Weaviate failed (%s); next try in %.1f s", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            self.restarts += 1
            WEAVIATE_RESTARTS.inc()
            self._wait_for_the_client()
            self.status = "ok"
            logger.warning("the embedded Weaviate is back after %.1f s", time.monotonic() - started)
            return

    def _wait_for_the_client(self, timeout: float = 60.0) -> None:
        self.status = "restarting (reconnecting)"
        deadline = time.monotonic() + timeout
        while self.probe is not None and not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.probe()
                return
            except Exception:  # still reconnecting, or its shards still loading
                self._stop.wait(0.2)


def is_ready(url: str, timeout: float = 2.0) -> bool:
    """Whether the Weaviate at url answers its readiness probe."""
    try:
        with urllib.request.urlopen(f"{url}/v1/.well-known/ready", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class _BoundedRetry:
    """weaviate-client retries gRPC UNAVAILABLE with sleeps of 1, 2, 4 … 32 s (over a minute, not configurable).

    A service must answer 503 within its deadline instead, so retries here stop after RETRY_BUDGET
    seconds. Installed over weaviate.connect.v4._Retry (weaviate-client is pinned; see connect()).
    """

    budget = 1.0

    def __init__(self, n: float = 4) -> None:
        self.n = n

    def with_exponential_backoff(self, count: int, error: str, f: Any, *args: Any, **kwargs: Any) -> Any:
        deadline, delay = time.monotonic() + self.budget, 0.1
        while True:
            try:
                return f(*args, **kwargs)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay > deadline:
                    raise WeaviateRetryError(str(exc), count) from exc
                time.sleep(delay)
                delay, count = delay * 2, count + 1

    async def awith_exponential_backoff(self, count: int, error: str, f: Any, *args: Any, **kwargs: Any) -> Any:
        deadline, delay = time.monotonic() + self.budget, 0.1
        while True:
            try:
                return await f(*args, **kwargs)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay > deadline:
                    raise WeaviateRetryError(str(exc), count) from exc
                await asyncio.sleep(delay)
                delay, count = delay * 2, count + 1


def connect(
    *, url: str, grpc_url: str | None = None, api_key: str | None = None, timeout: float = 10.0
) -> weaviate.WeaviateClient:
    """A connected sync client for the Weaviate at url (gRPC on grpc_url, default same host :50051)."""
    # A private name of the pinned weaviate-client, guarded by tests/runtime/test_private_apis.py.
    weaviate_v4._Retry = _BoundedRetry  # type: ignore[attr-defined,assignment]
    http = urlparse(url)
    http_secure = http.scheme == "https"
    http_port = http.port or (443 if http_secure else 80)
    if grpc_url:
        grpc_secure = grpc_url.startswith("grpcs://")
        grpc = urlparse(grpc_url if "://" in grpc_url else f"grpc://{grpc_url}")
        grpc_host, grpc_port = grpc.hostname or "", grpc.port or 50051
    else:
        grpc_secure, grpc_host, grpc_port = http_secure, http.hostname or "", 50051
    client = weaviate.connect_to_custom(
        http_host=http.hostname or "",
        http_port=http_port,
        http_secure=http_secure,
        grpc_host=grpc_host,
        grpc_port=grpc_port,
        grpc_secure=grpc_secure,
        auth_credentials=Auth.api_key(api_key) if api_key else None,
        skip_init_checks=True,
        additional_config=AdditionalConfig(
            timeout=Timeout(init=min(timeout, 10), query=timeout, insert=max(timeout, 30)),
            # gRPC waits ever longer (up to 2 minutes) between reconnects to a server that went away: a
            # restarted Weaviate would then sit unused long after it is ready. Retry at least every second.
            grpc_config=GrpcConfig(
                channel_options=[("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)]
            ),
        ),
    )
    return client


def embedded_memory_env(settings: Settings) -> dict[str, str]:
    """The embedded Weaviate's memory settings, as Weaviate's own environment."""
    env: dict[str, str] = {"PERSISTENCE_LSM_ACCESS_STRATEGY": settings.weaviate_lsm_access}
    if settings.weaviate_memory_limit:
        env["GOMEMLIMIT"] = settings.weaviate_memory_limit
    return env


def build_weaviate(settings: Settings) -> tuple[weaviate.WeaviateClient, EmbeddedWeaviate | None]:
    """Start the embedded Weaviate if no WEAVIATE_URL is set, then connect to whichever serves."""
    embedded = None
    url = settings.weaviate_url
    grpc_url = settings.weaviate_grpc_url
    if url is None:
        from ticket_rag.runtime.artifacts import ensure_weaviate_binary

        binary = settings.weaviate_binary or ensure_weaviate_binary(settings.cache_dir, settings.weaviate_version)
        embedded = EmbeddedWeaviate(
            binary=binary,
            data_dir=settings.data_dir,
            http_port=settings.weaviate_http_port,
            grpc_port=settings.weaviate_grpc_port,
            startup_timeout=settings.weaviate_startup_timeout,
            extra_env=embedded_memory_env(settings),
        )
        embedded.start()
        url, grpc_url = embedded.url, f"127.0.0.1:{embedded.grpc_port}"
    api_key = settings.weaviate_api_key.get_secret_value() if settings.weaviate_api_key else None
    try:
        client = connect(url=url, grpc_url=grpc_url, api_key=api_key, timeout=settings.weaviate_timeout)
        client.connect()
    except Exception as exc:
        if embedded is not None:
            embedded.stop()
        raise ConfigError(f"cannot connect to Weaviate at {url}: {type(exc).__name__}; check WEAVIATE_URL") from exc
    return client, embedded
