"""The Asynq-shaped workload (tests/asynq_workload.py) through redisgate in front of a real Redis
Cluster: each role with its profile, as a plain `RedisClientOpt` client of the proxy (go-redis's
handshake, HELLO 3, EVALSHA with NOSCRIPT fallback, the cancel subscription)."""
from __future__ import annotations

import uuid

import pytest

import asynq_workload as w
from proxy import ProxyRunner
from test_asynq_e2e import PASSWORDS, ROLES, pw_hash


@pytest.fixture(scope="module")
def gate(redis_cluster):
    queue = f"cq-{uuid.uuid4().hex[:8]}"
    users = {role: {"rules": f"on {pw_hash(PASSWORDS[role])}", "profile": f"asynq-{role}",
                    "queues": [queue], "scripts": w.entries_for_profiles(f"asynq-{role}")}
             for role in ROLES}
    p = ProxyRunner({"upstream": dict(redis_cluster.upstream), "users": users}).start()
    p.queue = queue
    p.connect = lambda role, **kw: w.GoRedisConn(p.port, username=role,
                                                 password=PASSWORDS[role], **kw)
    yield p
    p.stop()


def test_go_redis_handshake_for_every_role(gate):
    for role in ROLES:
        with gate.connect(role) as conn:
            assert conn.resp3
            assert conn.call("ping") == b"PONG"


def test_producer_worker_done_over_the_cluster(gate, redis_cluster):
    q = gate.queue
    with gate.connect("producer") as p:
        msgs = w.producer_traffic(p, q)
        msgs += w.batch_enqueue(p, q, 3)
        for _ in range(5):
            w.enqueue(p, q)
    assert len(msgs) == 9
    slot_owner = redis_cluster.client(redis_cluster.port_for_slot(
        redis_cluster.client(redis_cluster.ports[0]).execute_command("CLUSTER", "KEYSLOT", q)),
        username="gate", password="gate-upstream-secret")
    assert slot_owner.exists(f"asynq:{{{q}}}:t:{msgs[0].id}") == 1
    with gate.connect("worker") as conn:
        handled = w.worker_traffic(conn, q)
    assert {"done", "retry", "archive", "complete", "requeue"} <= set(handled)


def test_cancel_subscription_and_scheduler_and_inspector(gate):
    q = gate.queue
    with gate.connect("worker") as sub, gate.connect("admin") as admin:
        assert w.subscribe_cancel(sub)[:2] == [b"subscribe", b"asynq:cancel"]
        assert w.subscriber_ping(sub) == (b"PONG" if sub.resp3 else [b"pong", b""])
        w.cancel(admin, "task-1")   # (Redis Cluster: counts the subscribers of one node only)
        assert sub.read() == [b"message", b"asynq:cancel", b"task-1"]
    with gate.connect("scheduler") as conn:
        w.scheduler_traffic(conn, q)
    w.inspector_and_admin_traffic(gate.connect, q)
