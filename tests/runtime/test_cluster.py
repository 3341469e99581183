"""Scale-out for real on loopback: 3 Weaviate nodes (replication factor 3, QUORUM), 2 API replicas, nodes SIGKILLed.

Measured numbers (how long a write takes to fail, how long a node takes to catch up) are attached
to each test with record_property;
`pytest tests/runtime/test_cluster.py -m slow -o junit_family=legacy --junitxml=out.xml` keeps them.
docs/scaling.md reports them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from langchain_core.embeddings import Embeddings
from weaviate.classes.config import ConsistencyLevel
from weaviate.classes.query import Filter

from server import create_app
from tests.conftest import make_settings
from tests.runtime.cluster import TcpBalancer, WeaviateCluster
from ticket_rag.runtime.weaviate import connect
from ticket_rag.tickets.store import ticket_uuid

pytestmark = pytest.mark.slow

# How long a node that was down may take to catch up. Weaviate's async replication compares
# replicas every 30 s and propagates objects older than 30 s (its defaults, kept here).
CONVERGENCE_TIMEOUT = 240.0

TICKETS = [
    {
        "title": "Password reset link expired",
        "description": "The reset link in the email says it has expired.",
        "status": "resolved",
        "resolution": "Send a new link; links last 30 minutes.",
    },
    {
        "title": "VPN drops every hour",
        "description": "The VPN client disconnects every hour on the dot.",
        "status": "resolved",
        "resolution": "Update the VPN client to 5.2; the old one renews keys badly.",
    },
    {
        "title": "Invoice shows the wrong VAT",
        "description": "The March invoice charged 19% VAT instead of 7%.",
        "status": "open",
    },
    {
        "title": "Cannot log in after password change",
        "description": "Login fails with 'invalid credentials'.",
        "status": "resolved",
        "resolution": "Clear the saved password in the browser.",
    },
    {
        "title": "Printer on floor 3 is offline",
        "description": "The printer shows offline for every laptop.",
        "status": "open",
    },
    {
        "title": "Two-factor codes never arrive",
        "description": "The SMS with the login code does not arrive.",
        "status": "resolved",
        "resolution": "Switch the account to the authenticator app.",
    },
]


@pytest.fixture(scope="module")
def cluster(weaviate_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeaviateCluster]:
    """Three weaviate-server processes on loopback, one cluster, for this module."""
    with WeaviateCluster(binary=weaviate_binary, root=tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture()
def healthy(cluster: WeaviateCluster, weaviate_class: str) -> Iterator[WeaviateCluster]:
    """The cluster with all nodes up; nodes a test killed are started again afterwards, and its classes dropped."""
    cluster.wait_healthy()
    yield cluster
    for i in range(cluster.size):
        if i not in cluster.running():
            cluster.nodes[i].start()
    cluster.wait_healthy()
    with connect(url=cluster.url(0), grpc_url=cluster.grpc_url(0)) as wv:
        wv.collections.delete([weaviate_class, f"{weaviate_class}ApiKey"])


@contextmanager
def api(
    embeddings: Embeddings, weaviate_class: str, tmp_path: Path, *, url: str, grpc_url: str
) -> Iterator[TestClient]:
    """One API replica (the whole app, lifespan included) over the given Weaviate node or balancer."""
    settings = make_settings(
        weaviate_url=url,
        weaviate_grpc_url=grpc_url,
        weaviate_class=weaviate_class,
        weaviate_replication_factor=3,
        weaviate_consistency="QUORUM",
        data_dir=tmp_path / f"api-{uuid.uuid4().hex[:6]}",
    )
    with TestClient(create_app(settings, embeddings=embeddings)) as client:
        yield client


def api_at(
    cluster: WeaviateCluster, i: int, embeddings: Embeddings, weaviate_class: str, tmp_path: Path
) -> AbstractContextManager[TestClient]:
    """An API replica whose Weaviate is node i."""
    return api(embeddings, weaviate_class, tmp_path, url=cluster.url(i), grpc_url=cluster.grpc_url(i))


def on_each_node(cluster: WeaviateCluster, weaviate_class: str, ids: list[str]) -> dict[int, set[str]]:
    """Which of these tickets each running node holds itself (consistency ONE reads the local replica first)."""
    found = {}
    for i in cluster.running():
        with connect(url=cluster.url(i), grpc_url=cluster.grpc_url(i)) as wv:
            tickets = wv.collections.use(weaviate_class).with_consistency_level(ConsistencyLevel.ONE)
            result = tickets.with_tenant("default").query.fetch_objects(
                filters=Filter.by_id().contains_any(ids), limit=len(ids) + 10, return_properties=[]
            )
            found[i] = {str(o.uuid) for o in result.objects}
    return found


def split(cluster: WeaviateCluster) -> tuple[int, tuple[int, int]]:
    """A follower to kill, and the two other nodes (for the API replicas)."""
    leader = cluster.leader()
    victim = next(i for i in reversed(range(cluster.size)) if i != leader)
    first, second = (i for i in range(cluster.size) if i != victim)
    return victim, (first, second)


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str, every: float = 2.0) -> float:
    """Seconds until condition() held; fails the test after timeout."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)
    return round(time.monotonic() - started, 1)


def test_writes_and_reads_continue_with_one_of_three_nodes_killed(
    healthy: WeaviateCluster,
    embeddings: Embeddings,
    weaviate_class: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """A follower dies (the Raft leader's own case is the next test): nothing a user does notices, but
    counts, briefly.
    """
    cluster = healthy
    victim, (first, second) = split(cluster)
    with (
        api_at(cluster, first, embeddings, weaviate_class, tmp_path) as a,
        api_at(cluster, second, embeddings, weaviate_class, tmp_path) as b,
    ):
        acknowledged = [a.post("/tickets/", json=TICKETS[0]).json()["id"]]
        cluster.kill(victim)
        killed = time.monotonic()

        slowest = 0.0
        for n, ticket in enumerate(TICKETS[1:4]):
            started = time.monotonic()
            response = (a, b)[n % 2].post("/tickets/", json=ticket)
            slowest = max(slowest, time.monotonic() - started)
            assert response.status_code == 201, response.text
            acknowledged.append(response.json()["id"])
        bulk = b.post("/tickets/bulk", json={"tickets": TICKETS[4:]})
        assert bulk.status_code == 200, bulk.text
        acknowledged += [item["id"] for item in bulk.json()["items"]]
        record_property("write_with_one_node_down_slowest_s", round(slowest, 2))

        for client in (a, b):
            for ticket_id in acknowledged:
                assert client.get(f"/tickets/{ticket_id}").status_code == 200
            hits = client.post("/tickets/search", json={"query": "password", "limit": 10})
            assert hits.status_code == 200
        # Counts (GET /collections/x, the total of GET /tickets/) ask every replica: until the cluster has
        # marked the node dead they wait for it and answer 503; then they answer again.
        wait_until(lambda: a.get("/collections/default").status_code == 200, timeout=60, what="counts", every=0.5)
        record_property("counts_answer_again_after_kill_s", round(time.monotonic() - killed, 1))
        for client in (a, b):
            assert client.get("/collections/default").json()["ticket_count"] == len(TICKETS)

        started = time.monotonic()
        cluster.restart(victim)
        record_property("restart_to_healthy_s", round(time.monotonic() - started, 1))
        assert len(set(acknowledged)) == len(TICKETS)
        waited = wait_until(
            lambda: all(
                found == set(acknowledged) for found in on_each_node(cluster, weaviate_class, acknowledged).values()
            ),
            timeout=CONVERGENCE_TIMEOUT,
            what="every acknowledged ticket on every node",
        )
        record_property("convergence_after_restart_s", waited)


def test_writes_pause_while_the_raft_leader_is_replaced_and_nothing_acknowledged_is_lost(
    healthy: WeaviateCluster,
    embeddings: Embeddings,
    weaviate_class: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """Writes need the Raft leader (Weaviate reads the collection's schema from it): they answer 503 until a new one is
    elected.
    """
    cluster = healthy
    leader = cluster.leader()
    other = next(i for i in range(cluster.size) if i != leader)
    with api_at(cluster, other, embeddings, weaviate_class, tmp_path) as a:
        assert a.post("/tickets/", json=TICKETS[0]).status_code == 201
        cluster.kill(leader)
        killed = time.monotonic()
        statuses, acknowledged, searches = [], [], []
        for n in range(40):
            if statuses.count(201) >= 3 or time.monotonic() - killed > 180:
                break
            response = a.post("/tickets/", json={**TICKETS[n % len(TICKETS)], "external_id": f"leaderless-{n}"})
            statuses.append(response.status_code)
            if response.status_code == 201:
                acknowledged.append(response.json()["id"])
                if len(acknowledged) == 1:
                    record_property("writes_answer_again_after_leader_kill_s", round(time.monotonic() - killed, 1))
            searches.append(a.post("/tickets/search", json={"query": "password"}).status_code)
        record_property("write_statuses_after_leader_kill", statuses)
        assert set(statuses) <= {201, 503}, statuses
        assert statuses.count(201) >= 3, statuses
        assert set(searches) == {200}, searches  # searches never needed the leader

        cluster.restart(leader)
        wait_until(
            lambda: all(
                set(acknowledged) <= found for found in on_each_node(cluster, weaviate_class, acknowledged).values()
            ),
            timeout=CONVERGENCE_TIMEOUT,
            what="every acknowledged ticket on every node",
        )


def test_writes_fail_with_503_when_two_of_three_nodes_are_down(
    healthy: WeaviateCluster,
    embeddings: Embeddings,
    weaviate_class: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    cluster = healthy
    victims = [i for i in range(cluster.size) if i != 0]
    with api_at(cluster, 0, embeddings, weaviate_class, tmp_path) as a:
        kept = a.post("/tickets/", json={**TICKETS[0], "external_id": "kept"})
        doomed = a.post("/tickets/", json={**TICKETS[3], "external_id": "doomed"})
        assert kept.status_code == doomed.status_code == 201
        for i in victims:
            cluster.kill(i)

        outage = {**TICKETS[1], "external_id": "during-outage"}
        bulk = {"tickets": [{**TICKETS[2], "external_id": "bulk-outage"}]}
        writes = [
            ("POST", "/tickets/", outage),
            ("POST", "/tickets/bulk", bulk),
            ("DELETE", f"/tickets/{doomed.json()['id']}", None),
        ]
        slowest = 0.0
        for method, path, body in writes:
            started = time.monotonic()
            response = a.request(method, path, json=body)
            slowest = max(slowest, time.monotonic() - started)
            assert response.status_code == 503, (method, path, response.status_code, response.text)
            assert response.headers["retry-after"]
        record_property("write_with_two_nodes_down_slowest_503_s", round(slowest, 1))
        # Reads are searches, served by the node's own copy: they still answer.
        record_property("read_with_two_nodes_down_status", a.get(f"/tickets/{kept.json()['id']}").status_code)

        for i in victims:
            cluster.nodes[i].start()
        cluster.wait_healthy()
        # A 503 means "not acknowledged", not "not applied": the node that coordinated the write may have
        # applied it to its own copy, which then spreads to the others. Seen for creates and deletes.
        applied = {
            "create": a.get(f"/tickets/{ticket_uuid('default', 'during-outage')}").status_code == 200,
            "bulk": a.get(f"/tickets/{ticket_uuid('default', 'bulk-outage')}").status_code == 200,
            "delete": a.get(f"/tickets/{doomed.json()['id']}").status_code == 404,
        }
        record_property("writes_answered_503_but_applied", applied)
        # So clients retry, and every write here is idempotent: same external_id, same ticket; a delete again is a 404.
        assert a.post("/tickets/", json=outage).status_code in (200, 201)
        assert a.post("/tickets/bulk", json=bulk).status_code == 200
        assert a.delete(f"/tickets/{doomed.json()['id']}").status_code in (204, 404)
        listed = a.get("/tickets/", params={"limit": 100}).json()
        assert sorted(t["external_id"] for t in listed["data"]) == ["bulk-outage", "during-outage", "kept"]
        assert listed["count"] == 3
        wait_until(
            lambda: all(
                kept.json()["id"] in found
                for found in on_each_node(cluster, weaviate_class, [kept.json()["id"]]).values()
            ),
            timeout=CONVERGENCE_TIMEOUT,
            what="the acknowledged ticket on every node",
        )


def test_a_ticket_deleted_while_a_node_is_down_stays_deleted_and_a_later_reimport_stays_too(
    healthy: WeaviateCluster,
    embeddings: Embeddings,
    weaviate_class: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """Conflicts between a delete and a write that a node missed: the later one wins (TimeBasedResolution)."""
    cluster = healthy
    victim, (first, second) = split(cluster)
    ticket = {**TICKETS[0], "external_id": "ext-1"}
    with (
        api_at(cluster, first, embeddings, weaviate_class, tmp_path) as a,
        api_at(cluster, second, embeddings, weaviate_class, tmp_path) as b,
    ):
        gone = a.post("/tickets/", json=ticket).json()["id"]
        kept = a.post("/tickets/", json=TICKETS[3]).json()["id"]
        # the victim must hold the ticket before it goes down, or there is nothing to resurrect
        wait_until(
            lambda: on_each_node(cluster, weaviate_class, [gone, kept])[victim] == {gone, kept},
            timeout=CONVERGENCE_TIMEOUT,
            what="both tickets on the victim",
        )
        cluster.kill(victim)
        assert a.delete(f"/tickets/{gone}").status_code == 204
        assert b.get(f"/tickets/{gone}").status_code == 404
        cluster.restart(victim)
        restarted = time.monotonic()

        # The returning node still holds its old copy; a read it coordinates answers from it (a read is a
        # search, served by the local copy even at QUORUM) and repairs it.
        record_property(
            "returning_node_held_the_deleted_ticket", gone in on_each_node(cluster, weaviate_class, [gone])[victim]
        )
        with api_at(cluster, victim, embeddings, weaviate_class, tmp_path) as c:
            reads = [c.get(f"/tickets/{gone}").status_code]
            while reads[-1] != 404 and time.monotonic() - restarted < CONVERGENCE_TIMEOUT:
                time.sleep(0.5)
                reads.append(c.get(f"/tickets/{gone}").status_code)
        record_property("reads_of_the_deleted_ticket_via_the_returning_node", reads)
        assert set(reads) <= {200, 404} and reads[-1] == 404
        wait_until(
            lambda: all(gone not in found for found in on_each_node(cluster, weaviate_class, [gone, kept]).values()),
            timeout=CONVERGENCE_TIMEOUT,
            what="the delete reaching the returning node",
        )
        # and it stays deleted through further rounds of async replication (every 30 s)
        deadline = time.monotonic() + 70
        while time.monotonic() < deadline:
            found = on_each_node(cluster, weaviate_class, [gone, kept])
            assert all(ids == {kept} for ids in found.values()), f"resurrected: {found}"
            time.sleep(5)
        for client in (a, b):
            assert client.get(f"/tickets/{gone}").status_code == 404
            hits = client.post("/tickets/search", json={"query": "password reset link", "limit": 10}).json()["results"]
            assert [h["ticket"]["id"] for h in hits] == [kept]

        # The same ticket imported again (same external_id, so the same id) while the node is down: the
        # returning node's older delete must not undo it (with DeleteOnConflict it would).
        cluster.kill(victim)
        again = a.post("/tickets/", json=ticket)
        assert again.status_code == 201 and again.json()["id"] == gone
        cluster.restart(victim)
        waited = wait_until(
            lambda: all(
                found == {gone, kept} for found in on_each_node(cluster, weaviate_class, [gone, kept]).values()
            ),
            timeout=CONVERGENCE_TIMEOUT,
            what="the re-imported ticket on every node",
        )
        record_property("reimport_reached_returning_node_s", waited)
        for client in (a, b):
            assert client.get(f"/tickets/{gone}").status_code == 200


def test_search_and_rag_sources_are_the_same_through_either_api_replica(
    healthy: WeaviateCluster, embeddings: Embeddings, weaviate_class: str, tmp_path: Path
) -> None:
    cluster = healthy
    with (
        api_at(cluster, 0, embeddings, weaviate_class, tmp_path) as a,
        api_at(cluster, 1, embeddings, weaviate_class, tmp_path) as b,
    ):
        created = a.post("/tickets/bulk", json={"tickets": TICKETS})
        assert created.status_code == 200, created.text
        ids = [str(item["id"]) for item in created.json()["items"]]
        wait_until(
            lambda: all(found == set(ids) for found in on_each_node(cluster, weaviate_class, ids).values()),
            timeout=CONVERGENCE_TIMEOUT,
            what="every ticket on every node",
        )

        for body in [
            {"query": "I cannot log in", "limit": 4},
            {"query": "VPN disconnects", "mode": "hybrid", "alpha": 0.5, "limit": 4},
            {"query": "login code", "mode": "keyword", "limit": 4},
        ]:
            results = [c.post("/tickets/search", json=body).json()["results"] for c in (a, b)]
            seen = [[(h["ticket"]["id"], h["score"], h["similarity"]) for h in r] for r in results]
            assert seen[0] and seen[0] == seen[1], body

        question = {"input": {"question": "How do I fix a password reset link that expired?"}}
        outputs = [c.post("/rag/invoke", json=question).json()["output"] for c in (a, b)]
        assert outputs[0]["sources"] and outputs[0]["sources"] == outputs[1]["sources"]
        assert outputs[0]["answer"] == outputs[1]["answer"]


def test_an_api_behind_a_load_balancer_keeps_working_when_its_node_is_killed(
    healthy: WeaviateCluster,
    embeddings: Embeddings,
    weaviate_class: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    cluster = healthy
    victim, others = split(cluster)
    order = [victim, *others]  # the balancer's first connection goes to a follower, which then dies
    with (
        TcpBalancer([cluster.nodes[i].http_port for i in order]) as http_lb,
        TcpBalancer([cluster.nodes[i].grpc_port for i in order]) as grpc_lb,
        api(
            embeddings,
            weaviate_class,
            tmp_path,
            url=f"http://127.0.0.1:{http_lb.port}",
            grpc_url=f"127.0.0.1:{grpc_lb.port}",
        ) as client,
    ):
        assert client.post("/tickets/", json=TICKETS[0]).status_code == 201
        assert grpc_lb.backend_of.get(cluster.nodes[victim].grpc_port), "the gRPC connection is not on the victim"
        cluster.kill(victim)

        statuses = []
        for ticket in TICKETS[1:]:
            statuses.append(client.post("/tickets/", json=ticket).status_code)
            statuses.append(client.post("/tickets/search", json={"query": ticket["title"]}).status_code)
        record_property("statuses_after_killing_the_connected_node", statuses)
        assert set(statuses) <= {200, 201, 503}
        # at most the request that finds the connection dead fails (503, never a silent 2xx); then it fails over
        assert statuses.count(503) <= 1 and statuses[-4:] == [201, 200] * 2, statuses
        # counts ask every replica, so they answer again once the cluster has marked the node dead (see above)
        wait_until(lambda: client.get("/collections/default").status_code == 200, timeout=60, what="counts", every=0.5)
        assert client.get("/collections/default").json()["ticket_count"] == 1 + statuses[::2].count(201)
