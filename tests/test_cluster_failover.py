"""Resharding and failover under traffic, through redisgate, on a cluster of this module's own
(3 masters + 3 replicas of Redis 7.0): a live slot migration (ASK, then MOVED) with no
client-visible error, a manual CLUSTER FAILOVER and a killed master while 20 clients pipeline
through the proxy. The tests run in order and change the cluster for the ones after them.

The proxy writes a JSON audit file and serves /metrics on an admin endpoint: each test also reads
both and finds the events (failover, slots moved, node unreachable, redirect storm) with the
nodes' addresses, and the ``redisgate_cluster_*`` counters moved."""
from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
import redis

import asynq_workload as w

from cluster import RedisCluster, read_audit, scrape
from conftest import UPSTREAM_PASSWORD, UPSTREAM_USER, _need
from proxy import ProxyRunner, pw_hash
from redisgate.io.admin import Admin
from redisgate.cluster.slots import key_slot

QUEUE = "fq"
USERS = {"ops": f"on {pw_hash('pw')} allkeys allchannels +@all",
         **{role: {"rules": f"on {pw_hash('pw')}", "profile": f"asynq-{role}", "queues": [QUEUE],
                   "scripts": w.entries_for_profiles(f"asynq-{role}")}
            for role in ("producer", "worker", "scheduler", "inspector")}}


@pytest.fixture(scope="module")
def own_cluster():
    _need("7")
    c = RedisCluster(acl_user=UPSTREAM_USER, acl_password=UPSTREAM_PASSWORD).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def gate(own_cluster, tmp_path_factory):
    up = {"cluster": {"seeds": own_cluster.seeds, "refresh": "2s"}, "username": UPSTREAM_USER,
          "password": UPSTREAM_PASSWORD}
    audit_path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    p = ProxyRunner({"upstream": up, "users": USERS,
                     "audit": {"path": str(audit_path), "rate": 0}}).start()
    p.audit_path = audit_path
    p.admin = p.call(lambda: _admin(p))
    yield p
    p.call(lambda: __import__("asyncio").ensure_future(p.admin.stop()))
    p.stop()


def _admin(p: ProxyRunner) -> Admin:
    admin = Admin(p.proxy, "127.0.0.1", 0)
    admin.start()
    return admin


def metric(gate, name: str, **labels) -> float:
    """One sample of the proxy's /metrics (0 when absent)."""
    return scrape(gate.admin.port).get((name, tuple(sorted(labels.items()))), 0.0)


def audited(gate, event: str, timeout: float = 5.0, **fields) -> list[dict]:
    """The audit file's `event` events with these fields, waiting up to `timeout` for one."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in read_audit(gate.audit_path) if e["event"] == event
                 and all(e.get(k) == v for k, v in fields.items())]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def slots_of(c: RedisCluster) -> list:
    for srv in c.nodes:
        if srv.proc is not None and srv.proc.poll() is None:
            try:
                return c.client(srv.port).execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
    raise AssertionError("no node answers")


def node_id(c: RedisCluster, port: int) -> str:
    return c.client(port).execute_command("CLUSTER", "MYID").decode()


class Traffic:
    """`n` clients, each INCRementing keys of its own (spread over every master) in pipelines
    through the proxy; every reply is checked to be this client's (its counters start at
    client * 10**6) and, where `strict`, exactly the next value; else (a killed master may lose
    writes it acknowledged: Redis replicates asynchronously) at most the number of INCRs sent
    (none ran twice)."""

    def __init__(self, gate, n: int, keys_per_client: int = 6, tag: str = "t", strict=True,
                 keys=None):
        self.gate, self.n, self.strict = gate, n, strict
        self.keys = [[(keys(i, j) if keys else f"{tag}{i}:{j}") for j in range(keys_per_client)]
                     for i in range(n)]
        self.errors: list[tuple[float, int, str]] = []
        self.wrong: list[str] = []
        self.ok = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]

    def start(self) -> "Traffic":
        setup = self.gate.client("ops", "pw")
        for i, ks in enumerate(self.keys):
            for k in ks:
                setup.set(k, i * 10**6)
        setup.close()
        for t in self.threads:
            t.start()
        return self

    def _run(self, i: int) -> None:
        keys = self.keys[i]
        lo = {k: i * 10**6 for k in keys}
        hi = dict(lo)
        c = self.gate.client("ops", "pw")
        while not self.stop.is_set():
            p = c.pipeline(transaction=False)
            for k in keys:
                p.incr(k)
            try:
                replies = p.execute(raise_on_error=False)
            except redis.RedisError as e:
                self.errors.append((time.monotonic(), i, f"{type(e).__name__}: {e}"))
                for k in keys:
                    hi[k] += 1
                c.close()
                c = self.gate.client("ops", "pw")
                time.sleep(0.05)
                continue
            for k, r in zip(keys, replies):
                if isinstance(r, Exception):
                    self.errors.append((time.monotonic(), i, f"{type(r).__name__}: {r}"))
                    hi[k] += 1
                    continue
                if not i * 10**6 < r < (i + 1) * 10**6:
                    self.wrong.append(f"client {i} key {k}: reply {r} is not its own")
                elif self.strict and not lo[k] + 1 <= r <= hi[k] + 1:
                    self.wrong.append(f"client {i} key {k}: reply {r}, expected "
                                      f"{lo[k] + 1}..{hi[k] + 1}")
                elif r > hi[k] + 1:
                    self.wrong.append(f"client {i} key {k}: reply {r}, more than the "
                                      f"{hi[k] + 1} INCRs sent: one ran twice")
                lo[k] = hi[k] = r
                self.ok += 1
            time.sleep(0.005)
        c.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(20)
        assert not any(t.is_alive() for t in self.threads)


def test_live_slot_migration_follows_ask_then_moved(gate, own_cluster):
    c = own_cluster
    slot = key_slot(b"{mig}")
    source = c.port_for_slot(slot)
    target = next(p for p in c.masters() if p != source)
    cmap = gate.proxy.cluster
    before = dict(cmap.followed)
    m_before = {k: metric(gate, "redisgate_cluster_redirects_total", kind=k)
                for k in ("ask", "moved")}
    reshards = metric(gate, "redisgate_cluster_slot_owner_changes_total", kind="reshard")
    storms = metric(gate, "redisgate_cluster_redirect_storms_total")
    # 4 clients, each with 5 keys in the migrating slot and 3 elsewhere; every INCR's reply
    # must be exactly the next value (nothing lost, nothing run twice)
    traffic = Traffic(gate, 4, keys_per_client=8,
                      keys=lambda i, j: f"{{mig}}:{i}:{j}" if j < 5 else f"other{i}:{j}").start()
    try:
        time.sleep(0.5)
        src_id, dst_id = node_id(c, source), node_id(c, target)
        admin = {p: c.client(p) for p in c.masters()}
        assert admin[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        assert admin[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        for _ in range(40):   # a few keys at a time, with traffic in between (ASK)
            batch = admin[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 3)
            if not batch:
                break
            admin[source].execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000,
                                          "KEYS", *batch)
            time.sleep(0.15)
        assert admin[source].execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        # every key is on the target, the source still MIGRATING: one client's pipeline of
        # 200 GETs of such a key is 200 ASKs within a second, a storm (if the traffic's ASKs
        # were not one already: a storm is reported once a second)
        with gate.client("ops", "pw") as one:
            pipe = one.pipeline(transaction=False)
            for _ in range(200):
                pipe.get("{mig}:0:0")
            assert all(r is not None for r in pipe.execute())
        assert metric(gate, "redisgate_cluster_redirect_storms_total") > storms
        for p in (target, source, *[m for m in c.masters() if m not in (source, target)]):
            admin[p].execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        time.sleep(1.5)   # MOVED from the source now, until the map is refreshed
    finally:
        traffic.finish()
    assert not traffic.errors, traffic.errors[:5]
    assert not traffic.wrong, traffic.wrong[:5]
    assert traffic.ok > 100
    assert cmap.followed["ask"] > before.get("ask", 0)
    assert cmap.followed["moved"] > before.get("moved", 0)
    assert c.port_for_slot(slot) == target
    assert cmap.master_for(slot).port == target
    # the audit and the metrics: the redirects, the storm (with the nodes), the slot's new owner
    assert metric(gate, "redisgate_cluster_redirects_total", kind="ask") > m_before["ask"]
    assert metric(gate, "redisgate_cluster_redirects_total", kind="moved") > m_before["moved"]
    pair = f"127.0.0.1:{source}->127.0.0.1:{target}"
    storms = [e for e in audited(gate, "cluster-redirect-storm") if pair in e["nodes"]]
    assert storms and storms[-1]["count"] > 100 and storms[-1]["ask"] > 0, storms
    assert audited(gate, "cluster-slots-moved", node=f"127.0.0.1:{target}",
                   previous=f"127.0.0.1:{source}", slots=1)
    assert metric(gate, "redisgate_cluster_slot_owner_changes_total", kind="reshard") > reshards


def _failover_under_traffic(gate, c: RedisCluster, how: str, caplog):
    caplog.set_level(logging.INFO, logger="redisgate")
    rows = slots_of(c)
    row = rows[0]
    master, replica = int(row[2][1]), int(row[3][1])
    failovers = metric(gate, "redisgate_cluster_slot_owner_changes_total", kind="failover")
    node_errors = sum(metric(gate, "redisgate_cluster_node_errors_total", stage=s)
                      for s in ("connect", "lost", "refresh"))
    traffic = Traffic(gate, 20, tag=f"{how}-", strict=how == "manual").start()
    try:
        time.sleep(1.0)
        assert traffic.ok > 0
        if how == "manual":
            assert c.client(replica).execute_command("CLUSTER", "FAILOVER") == b"OK"
        else:
            srv = next(s for s in c.nodes if s.port == master)
            srv.proc.kill()
            srv.proc.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = {int(r[2][1]) for r in slots_of(c)}
            if replica in now and master not in now:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("no failover within 30 s")
        elected = time.monotonic()
        time.sleep(6.0)
    finally:
        traffic.finish()
    late = [e for e in traffic.errors if e[0] > elected + 5]
    last = max((e[0] for e in traffic.errors), default=elected)
    print(f"{how}: {len(traffic.errors)} errors, the last {last - elected:+.2f} s from the "
          f"election; {traffic.ok} replies")
    assert not late, late[:5]
    assert not traffic.wrong, traffic.wrong[:5]
    for _, _, text in traffic.errors:
        assert "cluster node" in text or "CLUSTERDOWN" in text or "TRYAGAIN" in text, text
    # the log names the nodes: the failover (and, for a killed master, the node unreachable)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"failover: 127.0.0.1:{replica} replaced 127.0.0.1:{master}" in logged, logged[-2000:]
    if how == "killed":
        assert f"cluster node 127.0.0.1:{master} unreachable" in logged
    # ... and so do the audit file and /metrics
    assert audited(gate, "cluster-failover", node=f"127.0.0.1:{replica}",
                   previous=f"127.0.0.1:{master}")
    assert metric(gate, "redisgate_cluster_slot_owner_changes_total", kind="failover") > failovers
    if how == "killed":
        lost = audited(gate, "cluster-node-unreachable", node=f"127.0.0.1:{master}")
        assert lost and all(e["stage"] in ("connect", "lost", "refresh") for e in lost), lost
        assert sum(metric(gate, "redisgate_cluster_node_errors_total", stage=s)
                   for s in ("connect", "lost", "refresh")) > node_errors
    return traffic


def test_manual_failover_under_20_clients(gate, own_cluster, caplog):
    # (strict: a coordinated failover loses nothing; no INCR lost or run twice)
    traffic = _failover_under_traffic(gate, own_cluster, "manual", caplog)
    assert traffic.ok > 500


def test_asynq_across_a_manual_failover_loses_and_repeats_no_task(gate, own_cluster):
    """A producer enqueues and a worker dequeues and marks done, a scheduler beats and enqueues
    its entry's tasks, an inspector reads the queue, all through the proxy with their own
    profiles, while the queue's master fails over to its replica: no role sees an error, and
    every task (the producer's and the scheduler's) is processed exactly once."""
    c = own_cluster
    slot = key_slot(QUEUE.encode())
    master = c.port_for_slot(slot)
    row = next(r for r in slots_of(c) if int(r[0]) <= slot <= int(r[1]))
    replica = int(row[3][1])
    enqueued, processed, errors, inspected = [], [], [], []
    stop = threading.Event()

    def produce():
        with w.GoRedisConn(gate.port, username="producer", password="pw") as conn:
            for _ in range(300):
                if stop.is_set():
                    return
                try:
                    enqueued.append(w.enqueue(conn, QUEUE).id)
                except Exception as e:   # noqa: BLE001 - recorded, the test fails on any
                    errors.append(f"enqueue: {e}")
                time.sleep(0.01)

    def schedule():
        sid, entry = str(uuid.uuid4()), str(uuid.uuid4())
        with w.GoRedisConn(gate.port, username="scheduler", password="pw") as conn:
            for _ in range(40):
                if stop.is_set():
                    break
                try:
                    w.scheduler_heartbeat(conn, sid, [entry.encode()])
                    enqueued.append(w.scheduler_enqueue(conn, entry, QUEUE).id)
                except Exception as e:   # noqa: BLE001
                    errors.append(f"scheduler: {e}")
                time.sleep(0.075)
            w.scheduler_shutdown(conn, sid, [entry])

    def inspect():
        with w.GoRedisConn(gate.port, username="inspector", password="pw") as conn:
            while producer.is_alive() and not stop.is_set():
                try:
                    w.queue_info(conn, QUEUE)
                    w.list_pending(conn, QUEUE)
                    w.history(conn, QUEUE)
                    inspected.append(1)
                except Exception as e:   # noqa: BLE001
                    errors.append(f"inspector: {e}")
                time.sleep(0.05)

    def work():
        with w.GoRedisConn(gate.port, username="worker", password="pw") as conn:
            idle_since = None
            while not stop.is_set():
                try:
                    msg = w.dequeue(conn, [QUEUE])
                    if msg is None:
                        idle_since = idle_since or time.monotonic()
                        if not producer.is_alive() and not scheduler.is_alive() \
                                and time.monotonic() - idle_since > 1:
                            return
                        time.sleep(0.01)
                        continue
                    idle_since = None
                    w.done(conn, msg)
                    processed.append(msg.id)
                except Exception as e:   # noqa: BLE001
                    errors.append(f"worker: {e}")

    producer = threading.Thread(target=produce, daemon=True)
    worker = threading.Thread(target=work, daemon=True)
    scheduler = threading.Thread(target=schedule, daemon=True)
    inspector = threading.Thread(target=inspect, daemon=True)
    for t in (producer, worker, scheduler, inspector):
        t.start()
    try:
        time.sleep(1.0)
        assert c.client(replica).execute_command("CLUSTER", "FAILOVER") == b"OK"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and c.port_for_slot(slot) != replica:
            time.sleep(0.05)
        assert c.port_for_slot(slot) == replica, "no failover within 30 s"
        for t in (producer, scheduler, worker, inspector):
            t.join(60)
    finally:
        stop.set()
    assert not any(t.is_alive() for t in (producer, worker, scheduler, inspector))
    assert not errors, errors[:5]
    assert len(enqueued) == 340 and inspected
    assert sorted(processed) == sorted(enqueued)          # none lost, none run twice
    assert master != replica


def test_killed_master_under_20_clients(gate, own_cluster, caplog):
    traffic = _failover_under_traffic(gate, own_cluster, "killed", caplog)
    assert traffic.ok > 500
