"""Asynq-shaped Redis traffic, byte for byte as go-redis v9.14.1 + Asynq send it, with our own
Lua scripts.

``GoRedisConn`` is a raw-socket client that connects the way go-redis's ``initConn`` does
(REDIS-USAGE.md §6): ``hello 3 auth <user> <pass>``; on an error reply ``auth <user> <pass>`` (or
``auth <pass>`` without a username) and RESP2; ``select <db>`` when db > 0 (an error fails the
connection); then the pipelined ``client setinfo LIB-NAME go-redis(,go1.22.0)`` / ``LIB-VER
9.14.1`` whose error replies are ignored. Command names go out in lowercase, as go-redis sends
them. Scripts run as go-redis's ``Script.Run`` does: EVALSHA first, EVAL with the whole body
after a NOSCRIPT error.

The functions below each perform one Asynq operation (REDIS-USAGE.md §3). The scripts are
redisgate's own (tests/asynq_lua/), written from the KEYS/ARGV layouts of REDIS-USAGE.md §4, so
they are called exactly as Asynq calls its scripts but hash to other SHA1s: a proxy user runs
them through ``scripts: [{sha1: <ours>, like: <Asynq's name>}]`` entries (``own_script_entries``),
which bind each to the contract of the Asynq script it imitates. They run on Redis 5.0 and later
(ZRANGEBYSCORE, never ZRANGE ... BYSCORE). Task messages are opaque to every script, so a small
JSON document stands in for Asynq's protobuf TaskMessage.
"""
from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import hiredis
import pytest

import asynq_reference
from conftest import LEGACY_PASSWORD, _need
from wire import cmd

SCRIPT_DIR = Path(__file__).resolve().parent / "asynq_lua"
GO_REDIS_LIB_NAME = "go-redis(,go1.22.0)"
GO_REDIS_LIB_VER = "9.14.1"
MAX_INT64 = 9223372036854775807
STATS_TTL = 90 * 24 * 3600
LEASE_SECONDS = 30


class ReplyError(Exception):
    """An error reply from the server; ``str(e)`` is its text without the leading '-'."""


class ConnectFailed(Exception):
    """go-redis would fail this connection (initConn returned an error)."""


# ------------------------------------------------------------------------------------------------
# Scripts
# ------------------------------------------------------------------------------------------------

_ASYNQ_MAIN = asynq_reference.expected_shas()["main"]


@dataclass(frozen=True)
class Script:
    """One of our scripts. ``name`` is the Asynq script whose layout it has (its ``like``)."""
    name: str
    body: bytes

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.body).hexdigest()

    @property
    def asynq_sha(self) -> str:
        """The SHA1 of Asynq's own script of that name at main (REDIS-USAGE.md §5): what
        Asynq itself would send for this call."""
        return _ASYNQ_MAIN[self.name]


def load_scripts() -> dict[str, Script]:
    """Our scripts by the Asynq script name they imitate (the file stem)."""
    return {p.stem: Script(p.stem, p.read_bytes()) for p in sorted(SCRIPT_DIR.glob("*.lua"))}


SCRIPTS = load_scripts()


def script(name: str) -> Script:
    return SCRIPTS[name]


def own_script_entries(names=None) -> list[dict]:
    """``scripts:`` config entries ``{sha1, like}`` binding our scripts (all, or those named)
    to the contracts of the Asynq scripts they imitate."""
    wanted = sorted(SCRIPTS) if names is None else sorted(set(names) & set(SCRIPTS))
    return [{"sha1": SCRIPTS[n].sha, "like": n} for n in wanted]


def profile_script_names(*profiles: str) -> set[str]:
    """The Asynq script names the built-in profiles allow (by their SHA1s)."""
    from redisgate.asynq.profiles import load_profile
    from redisgate.asynq.scripts import KNOWN_SCRIPTS
    names: set[str] = set()
    for profile in profiles:
        names |= {KNOWN_SCRIPTS[sha].name for sha in load_profile(profile)[1]}
    return names


def entries_for_profiles(*profiles: str) -> list[dict]:
    """The own-script entries a user of these profiles needs: one per script the profiles allow,
    and no more (an inspector gets no own enqueue script)."""
    return own_script_entries(profile_script_names(*profiles))


# ------------------------------------------------------------------------------------------------
# A go-redis-shaped connection
# ------------------------------------------------------------------------------------------------

class GoRedisConn:
    """One client connection. ``call`` raises ``ReplyError``; ``pipeline`` returns errors."""

    def __init__(self, port: int, host: str = "127.0.0.1", *, username: str | None = None,
                 password: str | None = None, db: int = 0, timeout: float = 10.0,
                 handshake: bool = True):
        self.username, self.password, self.db = username, password, db
        self.sock = socket.create_connection((host, port), timeout)
        self.reader = hiredis.Reader()
        self.resp3 = False
        self.handshake_log: list[tuple] = []      # (command, reply) of the handshake
        if handshake:
            self.handshake()

    # --- wire ---
    def send(self, *commands) -> None:
        self.sock.sendall(b"".join(cmd(*c) for c in commands))

    def read(self):
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return ReplyError(str(reply)) if isinstance(reply, hiredis.ReplyError) else reply
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("connection closed by the server")
            self.reader.feed(data)

    def call(self, *args):
        self.send(args)
        reply = self.read()
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def pipeline(self, commands: list) -> list:
        self.send(*commands)
        return [self.read() for _ in commands]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- go-redis v9.14.1 baseClient.initConn ---
    def handshake(self) -> None:
        hello = ["hello", "3"]
        if self.password:
            hello += ["auth", self.username or "default", self.password]
        self.send(hello)
        reply = self.read()
        self.handshake_log.append(("hello", reply))
        if isinstance(reply, ReplyError):
            if self.password:
                auth = ["auth", self.username, self.password] if self.username \
                    else ["auth", self.password]
                self.send(auth)
                reply = self.read()
                self.handshake_log.append(("auth", reply))
                if isinstance(reply, ReplyError):
                    raise ConnectFailed(f"failed to authenticate: {reply}")
        else:
            self.resp3 = True
        if self.db > 0:
            replies = self.pipeline([["select", str(self.db)]])
            self.handshake_log.append(("select", replies[0]))
            if isinstance(replies[0], ReplyError):
                raise ConnectFailed(f"select failed: {replies[0]}")
        replies = self.pipeline([["client", "setinfo", "LIB-NAME", GO_REDIS_LIB_NAME],
                                 ["client", "setinfo", "LIB-VER", GO_REDIS_LIB_VER]])
        self.handshake_log.append(("client setinfo", replies))   # error replies are ignored

    # --- go-redis Script.Run ---
    def run(self, s: Script, keys: list, argv: list):
        args = [len(keys), *keys, *argv]
        try:
            return self.call("evalsha", s.sha, *args)
        except ReplyError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
        return self.call("eval", s.body, *args)


# ------------------------------------------------------------------------------------------------
# Keys (internal/base/base.go)
# ------------------------------------------------------------------------------------------------

def qkey(q: str, suffix: str) -> str:
    return f"asynq:{{{q}}}:{suffix}"


def task_key(q: str, task_id: str) -> str:
    return qkey(q, f"t:{task_id}")


def day(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts or time.time()))


def unique_key(q: str, task_type: str, payload: bytes) -> str:
    return qkey(q, f"unique:{task_type}:{hashlib.md5(payload).hexdigest()}")


@dataclass
class Msg:
    """What a script returned as ``msg``; the stand-in for a decoded TaskMessage."""
    id: str
    queue: str
    type: str = "email:send"
    payload: str = ""
    unique_key: str = ""

    def encode(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "Msg":
        return cls(**json.loads(raw))


# ------------------------------------------------------------------------------------------------
# Client (producer)
# ------------------------------------------------------------------------------------------------

def enqueue(conn: GoRedisConn, queue: str, *, task_id: str | None = None, payload: bytes = b"",
            unique_ttl: int | None = None, process_in: int | None = None,
            group: str | None = None, published: set | None = None) -> Msg:
    """Client.EnqueueContext: SADD asynq:queues (once per queue with ``published``), then one of
    the six enqueue scripts depending on ProcessIn / Group / Unique."""
    task_id = task_id or str(uuid.uuid4())
    msg = Msg(task_id, queue, payload=payload.decode("latin-1"))
    if unique_ttl is not None:
        msg.unique_key = unique_key(queue, msg.type, payload)
    if published is None or queue not in published:
        conn.call("sadd", "asynq:queues", queue)
        if published is not None:
            published.add(queue)
    now = time.time()
    tkey = task_key(queue, task_id)
    if process_in is not None:
        at = int(now + process_in)
        if unique_ttl is not None:
            n = conn.run(script("scheduleUniqueCmd"),
                         [msg.unique_key, tkey, qkey(queue, "scheduled")],
                         [task_id, unique_ttl + process_in, at, msg.encode()])
        else:
            n = conn.run(script("scheduleCmd"), [tkey, qkey(queue, "scheduled")],
                         [msg.encode(), at, task_id])
    elif group is not None:
        keys = [tkey, qkey(queue, f"g:{group}"), qkey(queue, "groups")]
        if unique_ttl is not None:
            n = conn.run(script("addToGroupUniqueCmd"), keys + [msg.unique_key],
                         [msg.encode(), task_id, int(now), group, unique_ttl])
        else:
            n = conn.run(script("addToGroupCmd"), keys, [msg.encode(), task_id, int(now), group])
    elif unique_ttl is not None:
        n = conn.run(script("enqueueUniqueCmd"), [msg.unique_key, tkey, qkey(queue, "pending")],
                     [task_id, unique_ttl, msg.encode(), time.time_ns()])
    else:
        n = conn.run(script("enqueueCmd"), [tkey, qkey(queue, "pending")],
                     [msg.encode(), task_id, time.time_ns()])
    if n != 1:
        raise AssertionError(f"enqueue script returned {n} (0: id conflict, -1: duplicate)")
    return msg


def batch_enqueue(conn: GoRedisConn, queue: str, count: int) -> list[Msg]:
    """Client.BatchEnqueueContext (main only): SCRIPT LOAD, then one plain pipeline of SADD and
    EVALSHA per task, with no EVAL fallback."""
    s = script("enqueueCmd")
    conn.call("script", "load", s.body)
    msgs = [Msg(str(uuid.uuid4()), queue) for _ in range(count)]
    cmds = [["sadd", "asynq:queues", queue]]
    cmds += [["evalsha", s.sha, 2, task_key(queue, m.id), qkey(queue, "pending"), m.encode(), m.id,
              time.time_ns()] for m in msgs]
    for reply in conn.pipeline(cmds):
        if isinstance(reply, ReplyError):
            raise reply
    return msgs


# ------------------------------------------------------------------------------------------------
# Server (worker)
# ------------------------------------------------------------------------------------------------

def dequeue(conn: GoRedisConn, queues: list[str]) -> Msg | None:
    """processor Dequeue: dequeueCmd (RPOPLPUSH pending -> active) per queue in order."""
    for q in queues:
        raw = conn.run(script("dequeueCmd"),
                       [qkey(q, "pending"), qkey(q, "paused"), qkey(q, "active"), qkey(q, "lease")],
                       [int(time.time()) + LEASE_SECONDS, qkey(q, "t:")])
        if raw is not None:
            return Msg.decode(raw)
    return None


def _stats_keys(q: str) -> tuple[str, str, str, str]:
    d = day()
    return (qkey(q, f"processed:{d}"), qkey(q, f"failed:{d}"), qkey(q, "processed"),
            qkey(q, "failed"))


def done(conn: GoRedisConn, msg: Msg):
    q = msg.queue
    pday, _, ptotal, _ = _stats_keys(q)
    keys = [qkey(q, "active"), qkey(q, "lease"), task_key(q, msg.id), pday, ptotal]
    argv = [msg.id, int(time.time()) + STATS_TTL, MAX_INT64]
    if msg.unique_key:
        return conn.run(script("doneUniqueCmd"), keys + [msg.unique_key], argv)
    return conn.run(script("doneCmd"), keys, argv)


def mark_as_complete(conn: GoRedisConn, msg: Msg, retention: int = 3600):
    q = msg.queue
    pday, _, ptotal, _ = _stats_keys(q)
    keys = [qkey(q, "active"), qkey(q, "lease"), qkey(q, "completed"), task_key(q, msg.id), pday,
            ptotal]
    now = int(time.time())
    argv = [msg.id, now + STATS_TTL, now + retention, msg.encode(), MAX_INT64]
    if msg.unique_key:
        return conn.run(script("markAsCompleteUniqueCmd"), keys + [msg.unique_key], argv)
    return conn.run(script("markAsCompleteCmd"), keys, argv)


def retry(conn: GoRedisConn, msg: Msg, delay: int = 0, is_failure: bool = True):
    q = msg.queue
    pday, fday, ptotal, ftotal = _stats_keys(q)
    now = int(time.time())
    return conn.run(script("retryCmd"),
                    [task_key(q, msg.id), qkey(q, "active"), qkey(q, "lease"), qkey(q, "retry"),
                     pday, fday, ptotal, ftotal],
                    [msg.id, msg.encode(), now + delay, now + STATS_TTL, 1 if is_failure else 0,
                     MAX_INT64])


def archive(conn: GoRedisConn, msg: Msg):
    q = msg.queue
    pday, fday, ptotal, ftotal = _stats_keys(q)
    now = int(time.time())
    # v0.25+ layout: the bare task prefix is KEYS[9].
    keys = [task_key(q, msg.id), qkey(q, "active"), qkey(q, "lease"), qkey(q, "archived"),
            pday, fday, ptotal, ftotal, qkey(q, "t:")]
    return conn.run(script("archiveCmd"), keys, [msg.id, msg.encode(), now,
                                                 now - 90 * 24 * 3600, 10000, now + STATS_TTL,
                                                 MAX_INT64])


def requeue(conn: GoRedisConn, msg: Msg):
    q = msg.queue
    return conn.run(script("requeueCmd"), [qkey(q, "active"), qkey(q, "lease"), qkey(q, "pending"),
                                           task_key(q, msg.id)], [msg.id])


def write_result(conn: GoRedisConn, msg: Msg, data: bytes):
    return conn.call("hset", task_key(msg.queue, msg.id), "result", data)


def extend_lease(conn: GoRedisConn, queue: str, ids: list[str]):
    exp = int(time.time()) + LEASE_SECONDS
    args = []
    for i in ids:
        args += [exp, i]
    return conn.call("zadd", qkey(queue, "lease"), "xx", *args)


@dataclass
class ServerIdentity:
    host: str = "worker-1"
    pid: int = 4242
    server_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def tag(self) -> str:
        return f"{self.host}:{self.pid}:{self.server_id}"

    @property
    def server_key(self) -> str:
        return f"asynq:servers:{{{self.tag}}}"

    @property
    def workers_key(self) -> str:
        return f"asynq:workers:{{{self.tag}}}"


def heartbeat(conn: GoRedisConn, server: ServerIdentity, active: list[Msg] = ()):
    """heartbeater beat: ZADD the two registries, writeServerStateCmd, then extend leases."""
    ttl = 10
    exp = int(time.time()) + ttl
    conn.call("zadd", "asynq:servers", exp, server.server_key)
    conn.call("zadd", "asynq:workers", exp, server.workers_key)
    argv = [str(ttl), json.dumps({"host": server.host, "pid": server.pid}).encode()]
    for m in active:
        argv += [m.id, m.encode()]
    conn.run(script("writeServerStateCmd"), [server.server_key, server.workers_key], argv)
    by_queue: dict[str, list[str]] = {}
    for m in active:
        by_queue.setdefault(m.queue, []).append(m.id)
    for q, ids in by_queue.items():
        extend_lease(conn, q, ids)


def server_shutdown(conn: GoRedisConn, server: ServerIdentity):
    conn.call("zrem", "asynq:servers", server.server_key)
    conn.call("zrem", "asynq:workers", server.workers_key)
    return conn.run(script("clearServerStateCmd"), [server.server_key, server.workers_key], [])


def forward(conn: GoRedisConn, queue: str) -> int:
    """forwarder: forwardCmd on scheduled then retry, each until it moves nothing."""
    moved = 0
    for src in ("scheduled", "retry"):
        while True:
            now = time.time()
            n = conn.run(script("forwardCmd"), [qkey(queue, src), qkey(queue, "pending")],
                         [int(now), qkey(queue, "t:"), time.time_ns(), qkey(queue, "g:")])
            moved += n
            if n == 0:
                break
    return moved


def recover(conn: GoRedisConn, queue: str) -> list[Msg]:
    """recoverer: listLeaseExpiredCmd (cutoff now - 30 s) and reclaimStateAggregationSetsCmd."""
    now = int(time.time())
    raw = conn.run(script("listLeaseExpiredCmd"), [qkey(queue, "lease")],
                   [now - LEASE_SECONDS, qkey(queue, "t:")])
    conn.run(script("reclaimStateAggregationSetsCmd"), [qkey(queue, "aggregation_sets")], [now])
    return [Msg.decode(r) for r in raw]


def janitor(conn: GoRedisConn, queue: str) -> int:
    deleted = 0
    while True:
        n = conn.run(script("deleteExpiredCompletedTasksCmd"), [qkey(queue, "completed")],
                     [int(time.time()), qkey(queue, "t:"), 100])
        deleted += n
        if n == 0:
            return deleted


def aggregate(conn: GoRedisConn, queue: str, max_size: int = 2) -> list[list[Msg]]:
    """aggregator: SMEMBERS groups; per group aggregationCheckCmd, and for a created set
    readAggregationSetCmd + ZSCORE, an ordinary enqueue of the aggregate and
    deleteAggregationSetCmd."""
    out = []
    for group in conn.call("smembers", qkey(queue, "groups")):
        group = group.decode()
        set_key = qkey(queue, f"g:{group}:{uuid.uuid4()}")
        now = int(time.time())
        n = conn.run(script("aggregationCheckCmd"),
                     [qkey(queue, f"g:{group}"), set_key, qkey(queue, "aggregation_sets"),
                      qkey(queue, "groups")],
                     [max_size, 0, 0, now + 120, now, group])
        if n != 1:
            continue
        raw = conn.run(script("readAggregationSetCmd"), [set_key], [qkey(queue, "t:")])
        conn.call("zscore", qkey(queue, "aggregation_sets"), set_key)
        out.append([Msg.decode(r) for r in raw])
        enqueue(conn, queue, payload=b"aggregated")
        conn.run(script("deleteAggregationSetCmd"), [set_key, qkey(queue, "aggregation_sets")],
                 [qkey(queue, "t:")])
    return out


def subscribe_cancel(conn: GoRedisConn):
    """subscriber: SUBSCRIBE asynq:cancel, then wait for the confirmation (Receive)."""
    conn.send(["subscribe", "asynq:cancel"])
    return conn.read()


def subscriber_ping(conn: GoRedisConn):
    """go-redis's Pub/Sub health check: a bare PING on the subscribed connection. RESP3 answers
    PONG; RESP2 answers ["pong", ""] inside subscribed mode."""
    conn.send(["ping"])
    return conn.read()


# ------------------------------------------------------------------------------------------------
# Scheduler
# ------------------------------------------------------------------------------------------------

def scheduler_enqueue(conn: GoRedisConn, entry_id: str, queue: str, published: set | None = None):
    msg = enqueue(conn, queue, published=published)
    event = json.dumps({"task_id": msg.id, "enqueued_at": int(time.time())}).encode()
    conn.run(script("recordSchedulerEnqueueEventCmd"), [f"asynq:scheduler_history:{entry_id}"],
             [int(time.time()), event, 1000])
    return msg


def scheduler_heartbeat(conn: GoRedisConn, scheduler_id: str, entries: list[bytes]):
    ttl = 20
    key = f"asynq:schedulers:{{{scheduler_id}}}"
    conn.call("zadd", "asynq:schedulers", int(time.time()) + ttl, key)
    return conn.run(script("writeSchedulerEntriesCmd"), [key], [str(ttl), *entries])


def scheduler_shutdown(conn: GoRedisConn, scheduler_id: str, entry_ids: list[str]):
    key = f"asynq:schedulers:{{{scheduler_id}}}"
    conn.call("zrem", "asynq:schedulers", key)
    conn.call("del", key)
    for e in entry_ids:
        conn.call("del", f"asynq:scheduler_history:{e}")


# ------------------------------------------------------------------------------------------------
# Inspector (read side)
# ------------------------------------------------------------------------------------------------

def queues(conn: GoRedisConn) -> list[bytes]:
    return conn.call("smembers", "asynq:queues")


def queue_exists(conn: GoRedisConn, queue: str) -> bool:
    return conn.call("sismember", "asynq:queues", queue) == 1


def queue_info(conn: GoRedisConn, queue: str):
    """GetQueueInfo: queue check, currentStatsCmd, memoryUsageCmd (MEMORY USAGE inside)."""
    queue_exists(conn, queue)
    d = day()
    stats_keys = ("pending", "active", "scheduled", "retry", "archived", "completed",
                  f"processed:{d}", f"failed:{d}", "processed", "failed", "paused", "groups")
    stats = conn.run(script("currentStatsCmd"), [qkey(queue, s) for s in stats_keys],
                     [qkey(queue, "t:"), qkey(queue, "g:")])
    memory_keys = ("active", "pending", "scheduled", "retry", "archived", "completed", "groups")
    memory = conn.run(script("memoryUsageCmd"), [qkey(queue, s) for s in memory_keys],
                      [qkey(queue, "t:"), 20, 5, qkey(queue, "g:")])
    return stats, memory


def history(conn: GoRedisConn, queue: str, days: int = 3):
    queue_exists(conn, queue)
    keys = []
    for i in range(days):
        d = day(time.time() - i * 86400)
        keys += [qkey(queue, f"processed:{d}"), qkey(queue, f"failed:{d}")]
    return conn.run(script("historicalStatsCmd"), keys, [])


def task_info(conn: GoRedisConn, queue: str, task_id: str):
    queue_exists(conn, queue)
    return conn.run(script("getTaskInfoCmd"), [task_key(queue, task_id)],
                    [task_id, int(time.time()), qkey(queue, "")])


def list_pending(conn: GoRedisConn, queue: str):
    queue_exists(conn, queue)
    return conn.run(script("listMessagesCmd"), [qkey(queue, "pending")],
                    [-20, -1, qkey(queue, "t:")])


def list_active(conn: GoRedisConn, queue: str):
    queue_exists(conn, queue)
    active = conn.run(script("listMessagesCmd"), [qkey(queue, "active")],
                      [-20, -1, qkey(queue, "t:")])
    expired = conn.run(script("listLeaseExpiredCmd"), [qkey(queue, "lease")],
                       [int(time.time()), qkey(queue, "t:")])
    return active, expired


def list_zset(conn: GoRedisConn, queue: str, state: str):
    queue_exists(conn, queue)
    return conn.run(script("listZSetEntriesCmd"), [qkey(queue, state)], [0, 19, qkey(queue, "t:")])


def group_stats(conn: GoRedisConn, queue: str):
    return conn.run(script("groupStatsCmd"), [qkey(queue, "groups")], [qkey(queue, "g:")])


def servers(conn: GoRedisConn):
    """Inspector.Servers: listServerKeysCmd + GET each, listWorkersCmd + HVALS each."""
    now = int(time.time())
    out = []
    for key in conn.run(script("listServerKeysCmd"), ["asynq:servers"], [now]):
        out.append(conn.call("get", key))
    for key in conn.run(script("listServerKeysCmd"), ["asynq:workers"], [now]):
        out.append(conn.call("hvals", key))
    return out


def scheduler_entries(conn: GoRedisConn):
    keys = conn.run(script("listServerKeysCmd"), ["asynq:schedulers"], [int(time.time())])
    return [conn.call("lrange", k, 0, -1) for k in keys]


def scheduler_events(conn: GoRedisConn, entry_id: str):
    return conn.call("zrevrange", f"asynq:scheduler_history:{entry_id}", 0, 19, "withscores")


def redis_info(conn: GoRedisConn):
    return conn.call("info")


# ------------------------------------------------------------------------------------------------
# Inspector (admin side)
# ------------------------------------------------------------------------------------------------

def pause(conn: GoRedisConn, queue: str):
    return conn.call("setnx", qkey(queue, "paused"), int(time.time()))


def unpause(conn: GoRedisConn, queue: str):
    return conn.call("del", qkey(queue, "paused"))


def cancel(conn: GoRedisConn, task_id: str):
    return conn.call("publish", "asynq:cancel", task_id)


def run_task(conn: GoRedisConn, queue: str, task_id: str):
    queue_exists(conn, queue)
    return conn.run(script("runTaskCmd"),
                    [task_key(queue, task_id), qkey(queue, "pending"), qkey(queue, "groups")],
                    [task_id, qkey(queue, ""), qkey(queue, "g:")])


def run_all(conn: GoRedisConn, queue: str, state: str):
    queue_exists(conn, queue)
    return conn.run(script("runAllCmd"), [qkey(queue, state), qkey(queue, "pending")],
                    [qkey(queue, "t:")])


def archive_task(conn: GoRedisConn, queue: str, task_id: str):
    queue_exists(conn, queue)
    now = int(time.time())
    return conn.run(script("archiveTaskCmd"),
                    [task_key(queue, task_id), qkey(queue, "archived"), qkey(queue, "groups")],
                    [task_id, now, now - 90 * 86400, 10000, qkey(queue, ""), qkey(queue, "g:")])


def archive_all(conn: GoRedisConn, queue: str, state: str):
    queue_exists(conn, queue)
    now = int(time.time())
    return conn.run(script("archiveAllCmd"), [qkey(queue, state), qkey(queue, "archived")],
                    [now, now - 90 * 86400, 10000, qkey(queue, "t:"), queue])


def archive_all_pending(conn: GoRedisConn, queue: str):
    queue_exists(conn, queue)
    now = int(time.time())
    return conn.run(script("archiveAllPendingCmd"),
                    [qkey(queue, "pending"), qkey(queue, "archived")],
                    [now, now - 90 * 86400, 10000, qkey(queue, "t:")])


def delete_task(conn: GoRedisConn, queue: str, task_id: str):
    queue_exists(conn, queue)
    return conn.run(script("deleteTaskCmd"), [task_key(queue, task_id), qkey(queue, "groups")],
                    [task_id, qkey(queue, ""), qkey(queue, "g:")])


def delete_all(conn: GoRedisConn, queue: str, state: str):
    queue_exists(conn, queue)
    return conn.run(script("deleteAllCmd"), [qkey(queue, state)], [qkey(queue, "t:"), queue])


def delete_all_pending(conn: GoRedisConn, queue: str):
    queue_exists(conn, queue)
    return conn.run(script("deleteAllPendingCmd"), [qkey(queue, "pending")], [qkey(queue, "t:")])


def update_task_payload(conn: GoRedisConn, queue: str, task_id: str, payload: bytes):
    """UpdateTaskPayload (v0.26+): queue check, getTaskInfoCmd, updateTaskPayloadCmd with the
    task's message re-encoded around the new payload."""
    queue_exists(conn, queue)
    raw = task_info(conn, queue, task_id)[0]
    msg = Msg.decode(raw)
    msg.payload = payload.decode("latin-1")
    return conn.run(script("updateTaskPayloadCmd"), [task_key(queue, task_id)], [msg.encode()])


def run_all_aggregating(conn: GoRedisConn, queue: str, group: str):
    queue_exists(conn, queue)
    return conn.run(script("runAllAggregatingCmd"),
                    [qkey(queue, f"g:{group}"), qkey(queue, "pending"), qkey(queue, "groups")],
                    [qkey(queue, "t:"), group])


def archive_all_aggregating(conn: GoRedisConn, queue: str, group: str):
    queue_exists(conn, queue)
    now = int(time.time())
    return conn.run(script("archiveAllAggregatingCmd"),
                    [qkey(queue, f"g:{group}"), qkey(queue, "archived"), qkey(queue, "groups")],
                    [now, now - 90 * 86400, 10000, qkey(queue, "t:"), group])


def delete_all_aggregating(conn: GoRedisConn, queue: str, group: str):
    queue_exists(conn, queue)
    return conn.run(script("deleteAllAggregatingCmd"),
                    [qkey(queue, f"g:{group}"), qkey(queue, "groups")],
                    [qkey(queue, "t:"), group])


def delete_queue(conn: GoRedisConn, queue: str, force: bool = False):
    """DeleteQueue: queue check, removeQueue[Force]Cmd, then SREM asynq:queues."""
    queue_exists(conn, queue)
    name = "removeQueueForceCmd" if force else "removeQueueCmd"
    n = conn.run(script(name), [qkey(queue, s) for s in ("pending", "active", "scheduled", "retry",
                                                         "archived", "lease")], [qkey(queue, "t:")])
    if n == 1:
        conn.call("srem", "asynq:queues", queue)
    return n


# ------------------------------------------------------------------------------------------------
# x/rate semaphore
# ------------------------------------------------------------------------------------------------

def acquire(conn: GoRedisConn, scope: str, task_id: str, max_tokens: int = 2,
            hold: int = 60) -> bool:
    """Semaphore.Acquire: acquireCmd on asynq:sema:<scope>."""
    now = int(time.time())
    return conn.run(script("acquireCmd"), [f"asynq:sema:{scope}"],
                    [max_tokens, now, now + hold, task_id]) == 1


def release(conn: GoRedisConn, scope: str, task_id: str):
    """Semaphore.Release: ZREM asynq:sema:<scope> <task id>."""
    return conn.call("zrem", f"asynq:sema:{scope}", task_id)


# ------------------------------------------------------------------------------------------------
# Whole roles
# ------------------------------------------------------------------------------------------------

def producer_traffic(conn: GoRedisConn, queue: str) -> list[Msg]:
    """One of each enqueue path: plain, unique, scheduled, scheduled unique, group, group unique."""
    published: set = set()
    tag = uuid.uuid4().hex[:8]
    return [
        enqueue(conn, queue, published=published),
        enqueue(conn, queue, payload=f"u-{tag}".encode(), unique_ttl=60, published=published),
        enqueue(conn, queue, process_in=3600, published=published),
        enqueue(conn, queue, payload=f"su-{tag}".encode(), unique_ttl=60, process_in=3600,
                published=published),
        enqueue(conn, queue, group=f"g-{tag}", published=published),
        enqueue(conn, queue, payload=f"gu-{tag}".encode(), group=f"g-{tag}", unique_ttl=60,
                published=published),
    ]


def worker_traffic(conn: GoRedisConn, queue: str) -> dict:
    """A worker's life against tasks already enqueued in ``queue``: heartbeat, dequeue, result,
    done / retry / archive / complete / requeue, forward, recover, janitor, aggregate, shutdown."""
    server = ServerIdentity()
    heartbeat(conn, server)
    handled = {}
    outcomes = ["done", "retry", "archive", "complete", "requeue"]
    for outcome in outcomes:
        msg = dequeue(conn, [queue])
        if msg is None:
            break
        heartbeat(conn, server, [msg])
        if outcome == "done":
            write_result(conn, msg, b"ok")
            done(conn, msg)
        elif outcome == "retry":
            retry(conn, msg)
        elif outcome == "archive":
            archive(conn, msg)
        elif outcome == "complete":
            mark_as_complete(conn, msg)
        else:
            requeue(conn, msg)
        handled[outcome] = msg.id
    handled["forwarded"] = forward(conn, queue)
    handled["recovered"] = len(recover(conn, queue))
    handled["janitor"] = janitor(conn, queue)
    handled["aggregated"] = len(aggregate(conn, queue, max_size=1))
    server_shutdown(conn, server)
    return handled


def scheduler_traffic(conn: GoRedisConn, queue: str) -> None:
    """A scheduler's life: heartbeat, one enqueue of an entry, shutdown."""
    sid, entry = str(uuid.uuid4()), str(uuid.uuid4())
    scheduler_heartbeat(conn, sid, [b"entry"])
    scheduler_enqueue(conn, entry, queue)
    scheduler_shutdown(conn, sid, [entry])


def inspector_and_admin_traffic(connect, queue: str) -> None:
    """A producer's tasks, then what Asynq's Inspector reads of them (as the `inspector` role)
    and what its admin calls change (as `admin`); `connect(role)` opens a GoRedisConn."""
    with connect("producer") as p:
        msgs = producer_traffic(p, queue)
    with connect("inspector") as conn:
        assert queue.encode() in queues(conn)
        queue_info(conn, queue)
        history(conn, queue)
        task_info(conn, queue, msgs[0].id)
        list_pending(conn, queue)
        list_active(conn, queue)
        list_zset(conn, queue, "scheduled")
        group_stats(conn, queue)
        servers(conn)
        scheduler_entries(conn)
        redis_info(conn)
    with connect("admin") as conn:
        pause(conn, queue)
        unpause(conn, queue)
        run_task(conn, queue, msgs[2].id)
        archive_task(conn, queue, msgs[0].id)
        run_all(conn, queue, "archived")
        delete_task(conn, queue, msgs[1].id)
        delete_all(conn, queue, "scheduled")
        assert update_task_payload(conn, queue, msgs[4].id, b"new payload") == 1


# ------------------------------------------------------------------------------------------------
# Test servers
# ------------------------------------------------------------------------------------------------

def start_redis5(password: str):
    """A legacy Redis 5.0 whose admin client speaks RESP2.

    The shared ``redis5`` fixture's startup ping uses redis-py 8's default HELLO 3, which 5.0
    does not know; test modules that need 5.0 override the fixture with the `redis5` below.
    """
    from servers import RedisServer

    class Resp2Server(RedisServer):
        def client(self, **kw):
            kw.setdefault("protocol", 2)
            return super().client(**kw)

    srv = Resp2Server("5", password=password).start()
    srv.upstream = {"address": f"127.0.0.1:{srv.port}", "password": password}
    srv.admin = srv.client
    return srv


@pytest.fixture(scope="module")
def redis5():
    """Legacy 5.0 with a RESP2 admin client (see start_redis5). A test module that needs it
    imports it (`from asynq_workload import redis5`): it then replaces conftest's `redis5`."""
    _need("5")
    srv = start_redis5(LEGACY_PASSWORD)
    yield srv
    srv.stop()
