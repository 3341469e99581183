"""A Weaviate cluster on loopback: n weaviate-server processes joined by gossip (memberlist) and Raft.

Each node is an EmbeddedWeaviate (the same binary and start-up code the service uses) with the
cluster settings in its extra environment. All nodes share 127.0.0.1, so Weaviate must be told it
runs "in localhost" (CLUSTER_IN_LOCALHOST): it then reads each peer's Raft port from RAFT_JOIN
(name:port) instead of assuming one port everywhere, and expects that peer's internal Raft RPC on
Raft port + 1 (cluster/resolver/rpc.go). So each node gets a pair of consecutive free ports.

Nodes are spawned from the calling thread: EmbeddedWeaviate asks the kernel to SIGTERM the child
when its parent *thread* ends (PR_SET_PDEATHSIG), so a node started in a short-lived thread dies
with it. The nodes of a new cluster are spawned one after the other, then awaited together, since
Raft bootstraps only when all RAFT_BOOTSTRAP_EXPECT voters are there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from ticket_rag.runtime.weaviate import EmbeddedWeaviate, free_port, port_in_use


def _free_ports(taken: set[int], *, pair: bool = False) -> int:
    """A free port not in taken (with pair, p + 1 free too: Raft, and its internal RPC in localhost mode)."""
    for _ in range(200):
        port = free_port()
        wanted = {port, port + 1} if pair else {port}
        if not wanted & taken and max(wanted) <= 65535 and not (pair and port_in_use(port + 1)):
            taken |= wanted
            return port
    raise RuntimeError("no free ports on 127.0.0.1")


class _Node(EmbeddedWeaviate):
    """An EmbeddedWeaviate whose start() can return before the node is ready (see the module docstring)."""

    wait = True

    def _wait_ready(self, log_path: Path) -> None:
        self.log_path = log_path
        if self.wait:
            super()._wait_ready(log_path)

    def wait_ready(self) -> None:
        try:
            super()._wait_ready(self.log_path)
        except BaseException:
            self.stop()
            raise


class WeaviateCluster:
    """size weaviate-server processes on loopback forming one cluster; nodes can be killed and restarted."""

    def __init__(
        self,
        *,
        binary: Path,
        root: Path,
        size: int = 3,
        extra_env: dict[str, str] | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        self.size = size
        self.startup_timeout = startup_timeout
        names = [f"node{i + 1}" for i in range(size)]
        taken: set[int] = set()
        gossip = [_free_ports(taken) for _ in names]
        raft = [_free_ports(taken, pair=True) for _ in names]
        join = ",".join(f"127.0.0.1:{port}" for port in gossip)
        raft_join = ",".join(f"{name}:{port}" for name, port in zip(names, raft, strict=True))
        self.nodes: list[_Node] = []
        for i, name in enumerate(names):
            env = {
                "CLUSTER_HOSTNAME": name,
                "CLUSTER_IN_LOCALHOST": "true",
                "CLUSTER_GOSSIP_BIND_PORT": str(gossip[i]),
                "CLUSTER_DATA_BIND_PORT": str(_free_ports(taken)),
                # every node lists every seed, so a restarted node finds the others whichever one it was
                "CLUSTER_JOIN": join,
                "RAFT_PORT": str(raft[i]),
                "RAFT_INTERNAL_RPC_PORT": str(raft[i] + 1),
                "RAFT_JOIN": raft_join,
                "RAFT_BOOTSTRAP_EXPECT": str(size),
                # recovery of a one-node Raft (what EmbeddedWeaviate sets) would be wrong in a cluster
                "RAFT_ENABLE_ONE_NODE_RECOVERY": "false",
                **(extra_env or {}),
            }
            self.nodes.append(
                _Node(
                    binary=binary,
                    data_dir=root / name,
                    http_port=_free_ports(taken),
                    grpc_port=_free_ports(taken),
                    startup_timeout=startup_timeout,
                    extra_env=env,
                )
            )

    def url(self, i: int) -> str:
        return self.nodes[i].url

    def grpc_url(self, i: int) -> str:
        return f"127.0.0.1:{self.nodes[i].grpc_port}"

    def settings_for(self, i: int) -> dict[str, Any]:
        """The settings that point a ticket-rag at node i."""
        return {"weaviate_url": self.url(i), "weaviate_grpc_url": self.grpc_url(i)}

    def start(self) -> None:
        """Spawn every node, wait until each is ready and the cluster has all its members."""
        try:
            for node in self.nodes:
                node.wait = False
                node.start()
            for node in self.nodes:
                node.wait_ready()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        finally:
            for node in self.nodes:
                node.wait = True

    def nodes_status(self, i: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """GET /v1/nodes on node i: every member it knows of, with its status and shards."""
        with urllib.request.urlopen(f"{self.url(i)}/v1/nodes?output=verbose", timeout=timeout) as resp:
            return list(json.loads(resp.read())["nodes"])

    def wait_healthy(self, *, expected: int | None = None, timeout: float | None = None) -> None:
        """Until every running node reports `expected` (default: all) members, each HEALTHY."""
        expected = self.size if expected is None else expected
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        last: object = None
        while time.monotonic() < deadline:
            try:
                views = [self.nodes_status(i) for i in self.running()]
                last = [[(n["name"], n["status"]) for n in view] for view in views]
                if all(len(v) == expected and all(n["status"] == "HEALTHY" for n in v) for v in views):
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.5)
        raise RuntimeError(f"the cluster did not reach {expected} healthy nodes: {last}")

    def leader(self) -> int:
        """The node that leads the Raft (schema) cluster now, as the running nodes see it."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for i in self.running():
                try:
                    with urllib.request.urlopen(f"{self.url(i)}/v1/cluster/statistics", timeout=5) as resp:
                        stats = json.loads(resp.read())["statistics"]
                except OSError:
                    continue
                leaders = {s.get("leaderId") for s in stats} - {None, ""}
                if len(leaders) == 1:
                    return int(leaders.pop().removeprefix("node")) - 1
            time.sleep(0.5)
        raise RuntimeError("the cluster has no Raft leader")

    def running(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.process is not None and node.process.poll() is None]

    def kill(self, i: int) -> None:
        """SIGKILL node i (no shutdown, no flush), like a machine that loses power."""
        node = self.nodes[i]
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait()
        node.stop()  # releases the data folder's lock

    def restart(self, i: int) -> None:
        """Start node i again on its data folder and wait until the whole cluster is healthy."""
        self.nodes[i].start()
        self.wait_healthy()

    def stop(self) -> None:
        threads = [threading.Thread(target=node.stop) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def __enter__(self) -> WeaviateCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TcpBalancer:
    """A round-robin TCP load balancer on loopback, standing in for nginx / a Kubernetes Service.

    Each new connection goes to the next backend that accepts it; a connection whose backend dies
    is closed, so the client reconnects and lands on a live one. Enough for HTTP and gRPC (one
    HTTP/2 connection per client, balanced per connection, as nginx's stream module does).
    """

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._next = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.backend_of: dict[int, int] = {}  # backend port -> live connections to it
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            start, self._next = self._next, self._next + 1
        for k in range(len(self.ports)):
            port = self.ports[(start + k) % len(self.ports)]
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                continue
            upstream.settimeout(None)
            break
        else:
            client.close()
            return
        with self._lock:
            self._open |= {client, upstream}
            self.backend_of[port] = self.backend_of.get(port, 0) + 1

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            for end in (src, dst):  # one side gone: end both, so the client reconnects elsewhere
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
        back.start()
        pipe(client, upstream)
        back.join()
        client.close()
        upstream.close()
        with self._lock:
            self._open -= {client, upstream}
            self.backend_of[port] -= 1

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for s in list(self._open):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> TcpBalancer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
