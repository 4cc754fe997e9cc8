"""What Redis receives through the proxy, watched by MONITOR: exactly the allowed commands.

A real Redis 7 is watched by MONITOR on a connection of its own (direct, not through the proxy).
Generated pipelines mix allowed and refused commands for a restricted user (`~app:* &chan:* +@all
-@dangerous`) and an Asynq worker scoped to one queue, and go through the proxy in one write each,
dedicated and with `upstream.multiplex: 1`. Between two markers (ECHO sent directly by the test),
the commands MONITOR shows from anyone but the test itself must be the allowed ones, in order, byte
for byte (MONITOR quotes arguments: they are unquoted and compared as bytes), apart from the
proxy's own handshake (AUTH, SELECT, HELLO). Arguments carry spaces, quotes, CR/LF, NUL and
non-ASCII bytes so that the comparison is of bytes, not of text.

Which commands are allowed is written by hand for each template below, and checked against
rules.User.judge of a separately compiled config: a wrong label fails loudly instead of hiding a
bug, and a judge that disagrees with the hand label fails too.
"""
from __future__ import annotations

import random
import re
import socket
import time
from pathlib import Path

import hiredis
import pytest

from conftest import UPSTREAM_PASSWORD, UPSTREAM_USER
from proxy import mode_proxy, pw_hash
from redisgate.protocol.commands import TABLE
from redisgate.config import build_config
from redisgate.protocol.resp import encode_command

PASSWORDS = {"app": b"app-pw", "worker": b"worker-pw"}
USERS = {
    "app": f"on {pw_hash('app-pw')} ~app:* &chan:* +@all -@dangerous",
    "worker": {"rules": f"on {pw_hash('worker-pw')}", "profile": "asynq-worker",
               "queues": ["default"]},
}
ODD = [b"v", b"two words", b'a "quoted" \\ value', b"cr\r\nlf", b"nul\x00byte", b"\xff\xfe\x80",
       b"", b"tab\there\x07\x08", b"x" * 300, b"caf\xc3\xa9"]


def _v(rng: random.Random) -> bytes:
    return rng.choice(ODD)


# (makes the arguments from a Random, allowed for `app`, allowed for `worker`)
TEMPLATES = [
    (lambda r: [b"SET", b"app:" + _v(r), _v(r)], True, False),
    (lambda r: [b"GET", b"app:1"], True, False),
    (lambda r: [b"GET", b"secret:" + _v(r)], False, False),
    (lambda r: [b"MSET", b"app:1", _v(r), b"app:2", _v(r)], True, False),
    (lambda r: [b"MSET", b"app:1", _v(r), b"secret:2", _v(r)], False, False),
    (lambda r: [b"DEL", b"app:2", b"app:3"], True, False),
    (lambda r: [b"HSET", b"app:h", _v(r), _v(r)], True, False),
    (lambda r: [b"INCR", b"app:n"], True, False),
    (lambda r: [b"COPY", b"app:1", b"app:c", b"REPLACE"], True, False),
    (lambda r: [b"COPY", b"app:1", b"secret:c"], False, False),
    (lambda r: [b"FLUSHALL"], False, False),
    (lambda r: [b"CONFIG", b"GET", b"maxmemory"], False, False),
    (lambda r: [b"KEYS", b"*"], False, False),
    (lambda r: [b"PUBLISH", b"chan:" + _v(r), _v(r)], True, False),
    (lambda r: [b"PUBLISH", b"other", b"x"], False, False),
    (lambda r: [b"ECHO", _v(r)], True, False),
    (lambda r: [b"PING"], True, True),
    (lambda r: [b"NOSUCHCOMMAND", _v(r)], False, False),
    (lambda r: [b"GET"], False, False),                       # wrong arity
    (lambda r: [b"SADD", b"asynq:queues", b"default"], False, True),
    (lambda r: [b"SADD", b"asynq:queues:x", b"default"], False, False),
    (lambda r: [b"ZADD", b"asynq:servers", b"1", _v(r)], False, True),
    (lambda r: [b"ZADD", b"asynq:{default}:lease", b"XX", b"2", b"t1"], False, True),
    (lambda r: [b"ZADD", b"asynq:{critical}:lease", b"XX", b"2", b"t1"], False, False),
    (lambda r: [b"HSET", b"asynq:{default}:t:" + _v(r), b"result", _v(r)], False, True),
    (lambda r: [b"HSET", b"asynq:{critical}:t:1", b"result", _v(r)], False, False),
    (lambda r: [b"SMEMBERS", b"asynq:{default}:groups"], False, True),
    (lambda r: [b"GET", b"asynq:{default}:pending"], False, False),
    (lambda r: [b"LPUSH", b"app:list", _v(r)], True, False),
]

PIPELINES = 40      # per user and mode
LONGEST = 30        # commands per pipeline


def pipelines(user: str, seed: int):
    rng = random.Random(seed)
    for _ in range(PIPELINES):
        cmds = []
        for _ in range(rng.randint(1, LONGEST)):
            make, app_ok, worker_ok = rng.choice(TEMPLATES)
            cmds.append((make(rng), app_ok if user == "app" else worker_ok))
        yield cmds


# ------------------------------------------------------------------------------- MONITOR

_ESC = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b", b'"': b'"',
        b"\\": b"\\"}


def unquote(text: bytes) -> list[bytes]:
    """The arguments of a MONITOR line's command part (Redis's sdscatrepr, reversed)."""
    args, i, n = [], 0, len(text)
    while i < n:
        if text[i:i + 1] == b" ":
            i += 1
            continue
        assert text[i:i + 1] == b'"', text
        i += 1
        out = bytearray()
        while text[i:i + 1] != b'"':
            c = text[i:i + 1]
            if c == b"\\":
                e = text[i + 1:i + 2]
                if e == b"x":
                    out.append(int(text[i + 2:i + 4], 16))
                    i += 4
                    continue
                out += _ESC[e]
                i += 2
                continue
            out += c
            i += 1
        args.append(bytes(out))
        i += 1
    return args


_LINE = re.compile(rb"^\+?[0-9.]+ \[(\d+) ([^\]]+)\] (.*)$", re.S)


class Monitor:
    """MONITOR on a direct connection; `between(start, end)` gives [(client address, args)]."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = hiredis.Reader()
        self.lines: list[bytes] = []
        self.sock.sendall(encode_command([b"AUTH", UPSTREAM_USER.encode(),
                                          UPSTREAM_PASSWORD.encode()]) + encode_command([b"MONITOR"]))
        assert self._next() == b"OK" and self._next() == b"OK"

    def _next(self):
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            data = self.sock.recv(1 << 16)
            assert data, "MONITOR connection closed"
            self.reader.feed(data)

    def until(self, marker: bytes) -> list[tuple[str, list[bytes]]]:
        """Lines up to (excluding) the one for ECHO <marker>, parsed."""
        out = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = self._next()
            m = _LINE.match(line)
            assert m, line
            client, args = m.group(2).decode(), unquote(m.group(3))
            if args == [b"ECHO", marker] or args == [b"echo", marker]:
                return out
            out.append((client, args))
        raise AssertionError(f"marker {marker!r} never seen by MONITOR")

    def close(self):
        self.sock.close()


# ------------------------------------------------------------------------------- the test

@pytest.fixture(params=["dedicated", "multiplex"])
def proxied(request, redis7):
    with mode_proxy(redis7, USERS, request.param) as runner:
        yield runner


def _read_replies(sock, reader, count):
    replies = []
    deadline = time.monotonic() + 15
    while len(replies) < count:
        reply = reader.gets()
        if reply is not False:
            replies.append(reply)
            continue
        assert time.monotonic() < deadline, f"{len(replies)} of {count} replies"
        data = sock.recv(1 << 16)
        assert data, "the proxy closed the connection"
        reader.feed(data)
    return replies


def _judge_agrees(users, user, args, allowed):
    """The hand label must be what rules.User.judge says (of its own compiled config)."""
    spec = TABLE.lookup(args)
    if spec is None or spec.is_container or not spec.check_arity(len(args)):
        judged = False
    else:
        entry = users[user]
        judged = entry.user.judge(spec, args, db=0) is None
    assert judged == allowed, f"label {allowed} but judge says {judged} for {user}: {args!r}"


@pytest.mark.parametrize("user", ["app", "worker"])
def test_redis_receives_exactly_the_allowed_commands(proxied, redis7, user):
    oracle_users = build_config({"upstream": redis7.upstream, "users": USERS},
                                base_dir=Path("."), allow_embedded=False).users
    monitor = Monitor(redis7.port)
    marker_conn = redis7.admin()
    marker_addr = None
    client = socket.create_connection(("127.0.0.1", proxied.port), timeout=10)
    reader = hiredis.Reader()
    try:
        client.sendall(encode_command([b"AUTH", user.encode(), PASSWORDS[user]]))
        assert _read_replies(client, reader, 1) == [b"OK"]
        marker_conn.echo("init")
        monitor.until(b"init")
        marker_addr = marker_conn.client_info()["addr"]
        seed = {"app": 1, "worker": 2}[user] * 10 + (proxied.mode == "multiplex")
        forwarded = refused = 0
        for n, cmds in enumerate(pipelines(user, seed)):
            for args, allowed in cmds:
                _judge_agrees(oracle_users, user, args, allowed)
            start, end = b"start-%d" % n, b"end-%d" % n
            marker_conn.echo(start)
            client.sendall(b"".join(encode_command(args) for args, _ in cmds))
            replies = _read_replies(client, reader, len(cmds))
            marker_conn.echo(end)
            monitor.until(start)
            seen = [args for addr, args in monitor.until(end)
                    if addr != marker_addr and args[0].upper() not in (b"AUTH", b"SELECT", b"HELLO")]
            want = [args for args, allowed in cmds if allowed]
            assert seen == want, f"pipeline {n}: Redis received {seen!r}, allowed {want!r}"
            for (args, allowed), reply in zip(cmds, replies):
                if not allowed:
                    assert isinstance(reply, hiredis.ReplyError), (args, reply)
            forwarded += len(want)
            refused += len(cmds) - len(want)
        assert forwarded > 50 and refused > 50
    finally:
        client.close()
        marker_conn.close()
        monitor.close()


# Finding 4 of issue 23: option words compared as Redis compares them (strcasecmp stops at NUL,
# the last of a repeated option wins). Each of these writes outside database 0 on Redis 7, which
# `app` (databases: the default, [0]) may not use: none of them may reach Redis.
OPTION_TRICKS = [
    [b"COPY", b"app:1", b"app:c2", b"DB", b"0", b"DB", b"5"],
    [b"COPY", b"app:1", b"app:c3", b"DB\x00", b"5"],
    [b"COPY", b"app:1", b"app:c4", b"db\x00x", b"5"],
]


def test_option_words_redis_would_read_as_db_never_reach_redis(proxied, redis7):
    monitor = Monitor(redis7.port)
    marker_conn = redis7.admin()
    client = socket.create_connection(("127.0.0.1", proxied.port), timeout=10)
    reader = hiredis.Reader()
    try:
        client.sendall(encode_command([b"AUTH", b"app", PASSWORDS["app"]]))
        assert _read_replies(client, reader, 1) == [b"OK"]
        marker_conn.echo("trick-start")
        client.sendall(b"".join(map(encode_command, OPTION_TRICKS)) + encode_command([b"PING"]))
        replies = _read_replies(client, reader, len(OPTION_TRICKS) + 1)
        marker_conn.echo("trick-end")
        monitor.until(b"trick-start")
        addr = marker_conn.client_info()["addr"]
        seen = [args for a, args in monitor.until(b"trick-end")
                if a != addr and args[0].upper() not in (b"AUTH", b"SELECT", b"HELLO")]
        assert seen == [[b"PING"]], seen
        assert all(isinstance(r, hiredis.ReplyError) for r in replies[:-1]), replies
    finally:
        client.close()
        marker_conn.close()
        monitor.close()
