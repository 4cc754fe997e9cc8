"""Failure reporting with a Redis Cluster upstream (issue 18): every node that cannot be reached,
every refresh that fails, every slot owner change (failover, resharding, slots left without a
master) and every MOVED/ASK storm is an audit event (JSON and text formats) with the nodes'
addresses, and counted in the ``redisgate_cluster_*`` metrics (fixed-word labels only).

The slot-map changes and storms are fed to a real `ClusterMap` here, without sockets (its
`_adopt` and `redirects` are what a refresh and the clients' Routers call); a refresh that fails
runs a real proxy whose seed does not answer, scraped over its admin endpoint. The same events
from a real cluster (a live migration, a manual failover, a killed master):
tests/test_cluster_failover.py. Last, with the same fed map: a node that leaves it closes only its
own shared links (upstream.multiplex)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from cluster import read_audit, scrape
from proxy import ProxyRunner, pw_hash
from servers import free_port

from redisgate.telemetry import audit
from redisgate.io.admin import Admin
from redisgate.cluster import io as cluster_io
from redisgate.cluster.io import STORM, ClusterMap
from redisgate.cluster.router import Hop
from redisgate.cluster.topology import NodeAddr, RedirectKind, topology_from_slots
from redisgate.config import AuditSettings

A, A2 = NodeAddr("127.0.0.1", 7000), NodeAddr("127.0.0.1", 7003)   # a master and its replica
B, B2 = NodeAddr("127.0.0.1", 7001), NodeAddr("127.0.0.1", 7004)
C, C2 = NodeAddr("127.0.0.1", 7002), NodeAddr("127.0.0.1", 7005)


def _row(start, end, master, *replicas):
    return [start, end, *([n.host.encode(), n.port, b"id%d" % n.port] for n in (master, *replicas))]


OLD = [_row(0, 5460, A, A2), _row(5461, 10922, B, B2), _row(10923, 16383, C, C2)]
# A failed over to A2; 100 slots of B moved to C; C's last 10 slots have no master
NEW = [_row(0, 5460, A2), _row(5461, 10822, B, B2), _row(10823, 10922, C, C2),
       _row(10923, 16373, C, C2)]


def cmap() -> ClusterMap:
    m = ClusterMap(None, SimpleNamespace(seeds=[("127.0.0.1", 7000)], refresh=30.0))
    m.refresh_soon = lambda: None   # (no loop here: the refresh it asks for is not the point)
    m._adopt(topology_from_slots(OLD, A), A)
    return m


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def clock(monkeypatch):
    """cluster/io.py's clock, moved by hand (windows of 1 s and 5 s, whatever the load)."""
    now = [1000.0]
    monkeypatch.setattr(cluster_io, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


@pytest.fixture
def audit_file(tmp_path):
    def configure(fmt: str) -> Path:
        path = tmp_path / f"audit.{fmt}"
        audit.configure(AuditSettings(path=str(path), rate=0, format=fmt))
        return path
    yield configure
    audit.configure(None)


def test_slot_owner_changes_are_audit_events_and_metrics(audit_file):
    path = audit_file("json")
    kinds = ("failover", "reshard", "unserved")
    before = {k: (sample("redisgate_cluster_slot_owner_changes_total", kind=k),
                  sample("redisgate_cluster_slots_changed_total", kind=k)) for k in kinds}
    m = cmap()
    m._adopt(topology_from_slots(NEW, A2), A2)
    events = {e["event"]: e for e in read_audit(path)}
    assert set(events) == {"cluster-failover", "cluster-slots-moved", "cluster-slots-unserved"}
    for e in events.values():
        assert e["user"] is None and "client" not in e and "conn" not in e
        assert e["ts"].endswith("Z")
    assert {k: events["cluster-failover"][k] for k in ("node", "previous", "slots")} == \
        {"node": "127.0.0.1:7003", "previous": "127.0.0.1:7000", "slots": 5461}
    assert {k: events["cluster-slots-moved"][k] for k in ("node", "previous", "slots")} == \
        {"node": "127.0.0.1:7002", "previous": "127.0.0.1:7001", "slots": 100}
    unserved = events["cluster-slots-unserved"]
    assert unserved["previous"] == "127.0.0.1:7002" and unserved["slots"] == 10
    assert "node" not in unserved
    for kind, slots in (("failover", 5461), ("reshard", 100), ("unserved", 10)):
        assert sample("redisgate_cluster_slot_owner_changes_total", kind=kind) == \
            before[kind][0] + 1
        assert sample("redisgate_cluster_slots_changed_total", kind=kind) == before[kind][1] + slots
    # the same map again: nothing changed, nothing reported
    m._adopt(topology_from_slots(NEW, A2), A2)
    assert len(read_audit(path)) == 3


def test_the_text_format_has_a_line_per_cluster_event(audit_file):
    path = audit_file("text")
    m = cmap()
    m._adopt(topology_from_slots(NEW, A2), A2)
    m.unreachable(B, "connection refused", "connect")
    lines = path.read_text().splitlines()
    assert all(" WARNING redisgate.audit: cluster-" in line for line in lines), lines
    text = "\n".join(lines)
    assert "cluster-failover node=127.0.0.1:7003 previous=127.0.0.1:7000 slots=5461" in text
    assert "cluster-slots-moved node=127.0.0.1:7002 previous=127.0.0.1:7001 slots=100" in text
    assert "cluster-slots-unserved previous=127.0.0.1:7002 slots=10" in text
    assert ("cluster-node-unreachable node=127.0.0.1:7001 stage=connect "
            "reason=connection refused") in text


def test_without_an_audit_section_the_log_line_is_written_once(caplog):
    audit.configure(None)
    caplog.set_level(logging.INFO)
    m = cmap()
    m._adopt(topology_from_slots(NEW, A2), A2)
    m.unreachable(C, "timed out", "connect")
    assert not [r for r in caplog.records if r.name == "redisgate.audit"]
    logged = [r.getMessage() for r in caplog.records if r.name == "redisgate"]
    assert logged.count("cluster: failover: 127.0.0.1:7003 replaced 127.0.0.1:7000 as master "
                        "of 5461 slots") == 1
    assert logged.count("cluster node 127.0.0.1:7002 unreachable: timed out") == 1


def test_an_unreachable_node_is_counted_every_time_and_reported_once_per_5_s(audit_file, clock):
    path = audit_file("json")
    before = {s: sample("redisgate_cluster_node_errors_total", stage=s)
              for s in ("connect", "lost")}
    m = cmap()
    for _ in range(20):             # 20 clients lose their connection to B at once
        m.unreachable(B, "connection lost", "lost")
    m.unreachable(C, "connection refused", "connect")
    clock[0] += 4.9
    m.unreachable(B, "connection refused", "connect")   # (within 5 s: counted, not reported)
    clock[0] += 0.2
    m.unreachable(B, "connection refused", "connect")
    events = read_audit(path)
    assert [(e["event"], e["node"], e["stage"], e["reason"]) for e in events] == [
        ("cluster-node-unreachable", "127.0.0.1:7001", "lost", "connection lost"),
        ("cluster-node-unreachable", "127.0.0.1:7002", "connect", "connection refused"),
        ("cluster-node-unreachable", "127.0.0.1:7001", "connect", "connection refused")]
    assert sample("redisgate_cluster_node_errors_total", stage="lost") == before["lost"] + 20
    assert sample("redisgate_cluster_node_errors_total", stage="connect") == before["connect"] + 3
    m.closed = True   # the proxy stopping: its own links' closing is no node failure
    m.unreachable(B, "proxy shutting down", "lost")
    assert sample("redisgate_cluster_node_errors_total", stage="lost") == before["lost"] + 20


def test_a_redirect_storm_is_reported_once_a_second_with_the_nodes(audit_file, clock):
    path = audit_file("json")
    before = {k: sample("redisgate_cluster_redirects_total", kind=k) for k in ("moved", "ask")}
    storms = sample("redisgate_cluster_redirect_storms_total")
    m = cmap()
    m.redirects({Hop(RedirectKind.MOVED, A, B): 30, Hop(RedirectKind.ASK, C, B): 5})
    assert read_audit(path) == []   # (35 within a second: no storm)
    m.redirects({Hop(RedirectKind.MOVED, A, B): STORM, Hop(RedirectKind.ASK, C, B): 1})
    m.redirects({Hop(RedirectKind.MOVED, A, B): 50})   # (the same second: reported already)
    events = read_audit(path)
    assert len(events) == 1
    e = events[0]
    assert e["event"] == "cluster-redirect-storm"
    assert (e["count"], e["moved"], e["ask"]) == (STORM + 36, STORM + 30, 6)
    assert e["nodes"] == ["127.0.0.1:7000->127.0.0.1:7001", "127.0.0.1:7002->127.0.0.1:7001"]
    assert m.followed["moved"] == STORM + 80 and m.followed["ask"] == 6
    assert sample("redisgate_cluster_redirects_total", kind="moved") == before["moved"] + STORM + 80
    assert sample("redisgate_cluster_redirects_total", kind="ask") == before["ask"] + 6
    assert sample("redisgate_cluster_redirect_storms_total") == storms + 1
    # the distinct (kind, from, to) a window names are bounded
    many = {Hop(RedirectKind.MOVED, NodeAddr("10.0.0.1", 1000 + i), B): 1 for i in range(5000)}
    clock[0] += 1.5   # (a new window)
    m.redirects(many)
    assert len(m._storm_hops) <= 64
    e = read_audit(path)[-1]   # (its counts are all of them, not only the named pairs')
    assert (e["count"], e["moved"], e["ask"], len(e["nodes"])) == (5000, 5000, 0, 8)


def test_a_refresh_that_fails_is_in_the_audit_and_the_metrics(tmp_path):
    """A real proxy whose one seed does not answer: its start-up refresh fails; the audit file
    and /metrics on the admin endpoint say so, with the seed's address."""
    seed = free_port()   # (nothing listens there)
    path = tmp_path / "audit.jsonl"
    before = (sample("redisgate_cluster_refreshes_total", result="failed"),
              sample("redisgate_cluster_node_errors_total", stage="refresh"))
    p = ProxyRunner({"upstream": {"cluster": {"seeds": [f"127.0.0.1:{seed}"], "refresh": "30s"},
                                  "connect_timeout": "1s"},
                     "users": {"ops": f"on {pw_hash('pw')} allkeys +@all"},
                     "audit": {"path": str(path), "rate": 0}}).start()
    try:
        admin = p.call(lambda: _admin(p))
        c = p.client("ops", "pw")
        with pytest.raises(Exception, match="no node of the cluster answered CLUSTER SLOTS"):
            c.get("k")
        c.close()
        metrics = scrape(admin.port)
        p.call(lambda: __import__("asyncio").ensure_future(admin.stop()))
    finally:
        p.stop()
    events = read_audit(path)
    failed = [e for e in events if e["event"] == "cluster-refresh-failed"]
    assert failed and failed[0]["problems"] == [f"127.0.0.1:{seed} (connection refused)"]
    unreachable = [e for e in events if e["event"] == "cluster-node-unreachable"]
    assert unreachable[0]["node"] == f"127.0.0.1:{seed}"
    assert unreachable[0]["stage"] == "refresh"
    assert unreachable[0]["reason"] == "connection refused"
    assert metrics[("redisgate_cluster_refreshes_total", (("result", "failed"),))] >= before[0] + 1
    assert metrics[("redisgate_cluster_node_errors_total", (("stage", "refresh"),))] >= \
        before[1] + 1


def _admin(p: ProxyRunner) -> Admin:
    admin = Admin(p.proxy, "127.0.0.1", 0)
    admin.start()
    return admin


class FakeLink:
    """A shared link as ClusterMap._close_links sees it."""

    def __init__(self, due: int = 0):
        self.conn = object()
        self.due = due
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_node_that_leaves_the_map_closes_only_its_own_shared_links():
    """(upstream.multiplex) B leaves the map: B's idle links close, a B link with replies still
    due stays until it fails or the proxy stops, the other nodes' links stay open."""
    m = cmap()
    links = {(n, r3): [FakeLink(), FakeLink()] for n in (A, B, C) for r3 in (False, True)}
    busy = links[(B, True)][1]
    busy.due = 3
    m._links = {k: list(v) for k, v in links.items()}
    gone = [_row(0, 5460, A, A2), _row(5461, 16383, C, C2)]
    m._adopt(topology_from_slots(gone, A), A)
    closed = {k: [link.closed for link in v] for k, v in links.items()}
    assert closed[(B, False)] == [True, True] and closed[(B, True)] == [True, False]
    assert all(not any(closed[(n, r3)]) for n in (A, C) for r3 in (False, True))
    assert m._links.get((B, True)) == [busy] and (B, False) not in m._links
    assert all(m._links[(n, r3)] == links[(n, r3)] for n in (A, C) for r3 in (False, True))


def test_a_node_that_refuses_the_proxys_login_is_reported(redis_cluster, tmp_path):
    """The map is known, then every node refuses the proxy's identity (its password changed):
    a client's first command closes it (as after a Redis restart), and the audit and the metrics
    name the node and the stage ``login``. (An ACL user of this test's own, removed after.)"""
    nodes = [redis_cluster.client(p) for p in redis_cluster.ports]
    for n in nodes:
        n.execute_command("ACL", "SETUSER", "gate-ev", "on", ">ev-secret", "allkeys", "+@all")
    path = tmp_path / "audit.jsonl"
    before = sample("redisgate_cluster_node_errors_total", stage="login")
    p = ProxyRunner({"upstream": {"cluster": {"seeds": redis_cluster.seeds}, "username": "gate-ev",
                                  "password": "ev-secret"},
                     "users": {"ops": f"on {pw_hash('pw')} allkeys +@all"},
                     "audit": {"path": str(path), "rate": 0}}).start()
    try:
        assert p.proxy.cluster.topology is not None
        for n in nodes:
            n.execute_command("ACL", "SETUSER", "gate-ev", "resetpass", ">ev-changed-7f3a")
        c = p.client("ops", "pw")
        with pytest.raises(Exception):
            c.get("k")
        c.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not [
                e for e in read_audit(path) if e.get("stage") == "login"]:
            time.sleep(0.05)
    finally:
        p.stop()
        for n in nodes:
            n.execute_command("ACL", "DELUSER", "gate-ev")
    login = [e for e in read_audit(path) if e.get("stage") == "login"]
    assert login and login[0]["event"] == "cluster-node-unreachable", read_audit(path)
    assert login[0]["node"] in redis_cluster.seeds
    assert login[0]["reason"].startswith("refused the proxy's authentication: WRONGPASS")
    assert "ev-secret" not in path.read_text() and "ev-changed-7f3a" not in path.read_text()
    assert sample("redisgate_cluster_node_errors_total", stage="login") >= before + 1


def test_the_map_is_refreshed_periodically_and_counted(redis_cluster):
    """`refresh: 300ms`, no traffic at all: the map is asked for again and again, each time
    counted in redisgate_cluster_refreshes_total{result="ok"}."""
    before = sample("redisgate_cluster_refreshes_total", result="ok")
    p = ProxyRunner({"upstream": dict(redis_cluster.upstream,
                                      cluster={"seeds": redis_cluster.seeds, "refresh": "300ms"}),
                     "users": {"ops": f"on {pw_hash('pw')} allkeys +@all"}}).start()
    try:
        start = p.proxy.cluster.refreshes
        time.sleep(1.6)
        done = p.proxy.cluster.refreshes - start
    finally:
        p.stop()
    assert 2 <= done <= 7, done   # (about 5 in 1.6 s; loose: a loaded machine is slower)
    assert sample("redisgate_cluster_refreshes_total", result="ok") >= before + 1 + done
