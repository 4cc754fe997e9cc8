"""The Asynq profiles end to end: `python -m redisgate serve` in front of Redis 7.0 and 5.0, each
role's go-redis-shaped traffic through it, and what each role must be refused.

The traffic runs our own scripts (tests/asynq_lua/), which have Asynq's KEYS/ARGV layouts but
other SHA1s; each user is configured with its profile plus ``scripts: [{sha1, like}]`` entries
binding the scripts of its role to the contracts of the Asynq scripts they imitate.

Refusals proven here: a producer cannot dequeue, delete, or read task hashes of another queue; a
worker cannot run an unknown script (nor an own script bound only for another role), FLUSHALL,
SCRIPT FLUSH, or pass a key prefix of another queue in ARGV (to an own script bound like
dequeueCmd); the inspector cannot enqueue; nobody reaches keys outside asynq:.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest
import yaml

import asynq_workload as w
from asynq_workload import redis5  # noqa: F401 (this module's redis5: a RESP2 admin client)
from proxy import stop_serve
from servers import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not (ROOT / "redisgate" / "io" / "server.py").exists(),
                                reason="redisgate/io/server.py does not exist yet")

ROLES = ("producer", "worker", "scheduler", "inspector", "admin")
PASSWORDS = {role: f"{role}-secret-{uuid.uuid4().hex[:6]}"
             for role in ROLES + ("everywhere", "default")}


def pw_hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


class Gate:
    """A `python -m redisgate serve --config FILE` subprocess on a free port."""

    def __init__(self, tmp: Path, upstream: dict, queue: str):
        self.port = free_port()
        self.queue = queue
        secret = upstream["password"]
        users = {role: {"rules": f"on {pw_hash(PASSWORDS[role])}", "profile": f"asynq-{role}",
                        "queues": [queue], "scripts": w.entries_for_profiles(f"asynq-{role}")}
                 for role in ROLES}
        # The worker's Asynq uses DB 2 too: go-redis sends SELECT 2, which must then succeed.
        users["worker"]["databases"] = [0, 2]
        users["everywhere"] = {"rules": f"on {pw_hash(PASSWORDS['everywhere'])}",
                               "profile": "asynq-producer",
                               "scripts": w.entries_for_profiles("asynq-producer")}
        # asynqmon's command line has no username: go-redis then sends HELLO 3 AUTH default <pw>.
        users["default"] = {"rules": f"on {pw_hash(PASSWORDS['default'])}",
                            "profile": "asynq-inspector",
                            "scripts": w.entries_for_profiles("asynq-inspector")}
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "upstream": {**{k: v for k, v in upstream.items() if k != "password"},
                         "password": "${REDIS_PASSWORD}"},
            "users": users,
        }
        path = tmp / "redisgate.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "REDIS_PASSWORD": secret,
               "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = open(tmp / "redisgate.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "redisgate", "serve", "--config",
                                      str(path)], cwd=str(ROOT), env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redisgate exited: {(tmp / 'redisgate.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redisgate did not listen within 15 s")

    def connect(self, role: str, **kw) -> w.GoRedisConn:
        return w.GoRedisConn(self.port, username=role, password=PASSWORDS[role], **kw)

    def stop(self) -> None:
        stop_serve(self.proc)
        self.log.close()


@pytest.fixture(scope="module", params=["7", "6.2", "5"])
def gate(request, tmp_path_factory):
    srv = request.getfixturevalue({"7": "redis7", "6.2": "redis62", "5": "redis5"}[request.param])
    g = Gate(tmp_path_factory.mktemp(f"gate{request.param}"), srv.upstream,
             f"q-{uuid.uuid4().hex[:8]}")
    g.srv = srv
    yield g
    g.stop()


def refused(fn, *args) -> str:
    """Run fn and return the NOPERM error text it must end with."""
    with pytest.raises(w.ReplyError) as err:
        fn(*args)
    assert str(err.value).startswith("NOPERM"), str(err.value)
    return str(err.value)


# --- the handshake ----------------------------------------------------------------------------

def test_go_redis_handshake_succeeds_for_every_role(gate):
    for role in ROLES:
        with gate.connect(role) as conn:
            assert conn.call("ping") in (b"PONG", "PONG")


def test_password_only_client_like_asynqmon_logs_in_as_default(gate):
    with w.GoRedisConn(gate.port, password=PASSWORDS["default"]) as conn:
        assert conn.handshake_log[0][0] == "hello"
        w.queue_info(conn, gate.queue)
        refused(w.enqueue, conn, gate.queue)


def test_select_of_a_listed_database_succeeds_and_any_other_fails_the_connection(gate):
    with gate.connect("worker", db=2) as conn:
        assert ("select", b"OK") in conn.handshake_log or ("select", "OK") in conn.handshake_log
        assert conn.call("ping") in (b"PONG", "PONG")
    with pytest.raises(w.ConnectFailed):
        gate.connect("worker", db=3)
    with pytest.raises(w.ConnectFailed):
        gate.connect("producer", db=2)


def test_wrong_password_fails_the_go_redis_connection(gate):
    with pytest.raises(w.ConnectFailed):
        w.GoRedisConn(gate.port, username="worker", password="wrong")


# --- each role's traffic works ----------------------------------------------------------------

def test_producer_traffic_through_the_proxy(gate):
    with gate.connect("producer") as conn:
        msgs = w.producer_traffic(conn, gate.queue)
        msgs += w.batch_enqueue(conn, gate.queue, 3)
    assert len(msgs) == 9
    assert gate.srv.admin().exists(f"asynq:{{{gate.queue}}}:t:{msgs[0].id}") == 1


def test_worker_traffic_through_the_proxy(gate):
    q = gate.queue
    with gate.connect("producer") as p:
        for _ in range(5):
            w.enqueue(p, q)
        w.enqueue(p, q, group="agg")
    with gate.connect("worker") as conn:
        handled = w.worker_traffic(conn, q)
    assert {"done", "retry", "archive", "complete", "requeue"} <= set(handled)


def test_worker_subscriber_and_admin_cancel_through_the_proxy(gate):
    with gate.connect("worker") as sub, gate.connect("admin") as admin:
        assert w.subscribe_cancel(sub)[:2] == [b"subscribe", b"asynq:cancel"]
        assert w.subscriber_ping(sub) == (b"PONG" if sub.resp3 else [b"pong", b""])
        assert w.cancel(admin, "task-1") == 1
        assert sub.read() == [b"message", b"asynq:cancel", b"task-1"]


def test_eval_fallback_after_the_script_cache_is_flushed(gate):
    admin = gate.srv.admin()
    admin.script_flush()
    sha = w.SCRIPTS["enqueueCmd"].sha
    with gate.connect("producer") as conn:
        with pytest.raises(w.ReplyError, match="^NOSCRIPT"):
            conn.call("evalsha", sha, 2, w.task_key(gate.queue, "probe"),
                      f"asynq:{{{gate.queue}}}:pending", b"m", "probe", 1)
        msg = w.enqueue(conn, gate.queue)           # EVALSHA -> NOSCRIPT -> EVAL body
    assert admin.script_exists(sha) == [True]      # the EVAL went through and cached it
    assert admin.exists(f"asynq:{{{gate.queue}}}:t:{msg.id}") == 1


def test_scheduler_traffic_through_the_proxy(gate):
    with gate.connect("scheduler") as conn:
        w.scheduler_traffic(conn, gate.queue)


def test_inspector_and_admin_traffic_through_the_proxy(gate):
    w.inspector_and_admin_traffic(gate.connect, gate.queue)


# --- what each role is refused ----------------------------------------------------------------

def test_producer_cannot_dequeue(gate):
    q = gate.queue
    with gate.connect("producer") as conn:
        w.enqueue(conn, q)
        refused(w.dequeue, conn, [q])


def test_producer_cannot_delete_tasks(gate):
    q = gate.queue
    with gate.connect("producer") as conn:
        msg = w.enqueue(conn, q)
        refused(conn.call, "del", w.task_key(q, msg.id))
        refused(w.delete_task, conn, q, msg.id)
    assert gate.srv.admin().exists(w.task_key(q, msg.id)) == 1


def test_producer_cannot_read_task_hashes_of_another_queue(gate):
    with gate.connect("producer") as conn:
        refused(conn.call, "hget", w.task_key("other", "1"), "msg")
        refused(conn.call, "hgetall", w.task_key(gate.queue, "1"))
        refused(w.enqueue, conn, "other")


def test_worker_cannot_run_an_unknown_script(gate):
    with gate.connect("worker") as conn:
        text = refused(conn.call, "evalsha", "f" * 40, 1, f"asynq:{{{gate.queue}}}:pending")
        refused(conn.call, "eval", "return redis.call('FLUSHALL')", 1,
                f"asynq:{{{gate.queue}}}:pending")
    assert "NOSCRIPT" not in text


def test_worker_cannot_flushall_or_script_flush(gate):
    admin = gate.srv.admin()
    admin.set("outside:canary", "1")
    sha = admin.script_load(w.SCRIPTS["enqueueCmd"].body)
    with gate.connect("worker") as conn:
        refused(conn.call, "flushall")
        refused(conn.call, "script", "flush")
    assert admin.get("outside:canary") == b"1"
    assert admin.script_exists(sha) == [True]


def enqueued_one(gate) -> Callable[[], int]:
    """The producer enqueues one task into gate.queue; returns what counts the queue's pending
    tasks (read from Redis directly)."""
    with gate.connect("producer") as p:
        w.enqueue(p, gate.queue)
    admin = gate.srv.admin()
    return lambda: admin.llen(f"asynq:{{{gate.queue}}}:pending")


def test_worker_cannot_pass_a_key_prefix_of_another_queue(gate):
    # Our dequeue script is bound like dequeueCmd for the worker: its contract holds for it.
    q = gate.queue
    pending = enqueued_one(gate)
    before = pending()
    with gate.connect("worker") as conn:
        s = w.SCRIPTS["dequeueCmd"]
        keys = [w.qkey(q, k) for k in ("pending", "paused", "active", "lease")]
        refused(conn.run, s, keys, [int(time.time()) + 30, "asynq:{other}:t:"])
        refused(conn.run, s, keys, [int(time.time()) + 30, "session:"])
        refused(conn.call, "eval", s.body, 4, *keys, int(time.time()) + 30, "asynq:{other}:t:")
        assert w.dequeue(conn, [q]) is not None     # the same script with its own prefix runs
    assert pending() == before - 1


def test_worker_cannot_run_an_own_script_bound_only_for_another_role(gate):
    q = gate.queue
    pending = enqueued_one(gate)
    before = pending()
    with gate.connect("worker") as conn:
        refused(w.delete_all_pending, conn, q)      # ours, bound like it for the admin only
        s = w.SCRIPTS["deleteAllPendingCmd"]
        refused(conn.call, "eval", s.body, 1, w.qkey(q, "pending"), w.qkey(q, "t:"))
    assert pending() == before


def test_worker_cannot_work_a_queue_it_is_not_scoped_to(gate):
    with gate.connect("everywhere") as p:
        w.enqueue(p, "elsewhere")
    with gate.connect("worker") as conn:
        refused(w.dequeue, conn, ["elsewhere"])


def test_inspector_cannot_enqueue(gate):
    keys = [w.task_key(gate.queue, "x"), f"asynq:{{{gate.queue}}}:pending"]
    with gate.connect("inspector") as conn:
        refused(w.enqueue, conn, gate.queue)
        refused(conn.run, w.SCRIPTS["enqueueCmd"], keys, [b"m", "x", 1])
        refused(conn.call, "evalsha", w.SCRIPTS["enqueueCmd"].asynq_sha, 2, *keys, b"m", "x", 1)
    assert gate.srv.admin().exists(keys[0]) == 0


@pytest.mark.parametrize("role", ROLES)
def test_nobody_reaches_keys_outside_asynq(gate, role):
    gate.srv.admin().set("outside:secret", "s3cret")
    with gate.connect(role) as conn:
        for args in (("get", "outside:secret"), ("set", "outside:secret", "x"),
                     ("del", "outside:secret"), ("keys", "*"), ("scan", "0"),
                     ("eval", w.SCRIPTS["enqueueCmd"].body, 2, "outside:t:1", "outside:pending",
                      "m", "1", "1")):
            refused(conn.call, *args)
    assert gate.srv.admin().get("outside:secret") == b"s3cret"
