"""Shared upstream links must be invisible: random command sequences, each on its own client
connection, give byte-identical reply streams through a proxy with `upstream.multiplex: 1`
(several clients at once on the same links) and through one with an upstream connection per
client, each in front of its own real Redis 7.

The sequences mix what may ride a shared link (GET/SET/HGETALL/ZSCORE, whose RESP2 and RESP3
replies differ) with everything that must not: protocol switches (HELLO 2/3, RESET), MULTI/EXEC/
DISCARD, WATCH, SELECT, subscriptions, CLIENT commands, re-AUTH, denied and unknown commands,
several commands per write. Only connection ids are normalised (HELLO's `id`).

The default run is REDISGATE_DIFF_SEQUENCES=3000 sequences, 8 clients at a time (about 30 s on 2
busy cores). A longer run, with another seed, and without the C lane:
`REDISGATE_DIFF_SEQUENCES=20000 REDISGATE_DIFF_SEED=7 pytest tests/test_mux_differential.py`
(about 2 minutes; 0 of 20,000 differ), `REDISGATE_NO_LANE=1 ...` for the Python path alone. Before
the fix, 46 of 300 sequences differed (seed 23).
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import re

import pytest

from proxy import ProxyRunner, pw_hash
from servers import RedisServer, redis_binary
from wire import cmd

SEQUENCES = int(os.environ.get("REDISGATE_DIFF_SEQUENCES", "3000"))
SEED = int(os.environ.get("REDISGATE_DIFF_SEED", "23"))
CONCURRENCY = 8

USERS = {
    "app": {"rules": f"on {pw_hash('app-pw')} ~app:* &chan:* +@all -@dangerous",
            "databases": [0, 2]},
    "ro": f"on {pw_hash('ro-pw')} ~app:* +get +hgetall +zscore +ping +hello +echo",
}


def _sequence(rng: random.Random, n: int) -> list[list[bytes]]:
    """One client's random conversation (writes of one or more commands), ending in QUIT."""
    k = f"app:{n}:"
    ch = f"chan:{n}"
    pool = [
        (8, lambda: ["GET", k + rng.choice("abc")]),
        (5, lambda: ["SET", k + rng.choice("abc"), rng.choice(["1", "x", "1.5"])]),
        (3, lambda: ["HSET", k + "h", rng.choice("fg"), "v"]),
        (4, lambda: ["HGETALL", k + "h"]),
        (2, lambda: ["ZADD", k + "z", rng.choice(["1.5", "2", "-0.25"]), "m"]),
        (4, lambda: ["ZSCORE", k + "z", "m"]),
        (2, lambda: ["INCR", k + "n"]),
        (2, lambda: ["PING"]),
        (1, lambda: ["ECHO", "e"]),
        (1, lambda: ["EXISTS", k + "a", k + "b"]),
        (2, lambda: ["GET", "secret:1"]),
        (1, lambda: ["FLUSHALL"]),
        (1, lambda: ["KEYS", "*"]),
        (1, lambda: ["NOSUCHCOMMAND"]),
        (1, lambda: ["GET"]),
        (4, lambda: ["HELLO", rng.choice(["2", "3"])]),
        (1, lambda: ["HELLO"]),
        (1, lambda: ["HELLO", "3", "AUTH", "app", "app-pw"]),
        (1, lambda: ["HELLO", "2", "SETNAME", f"c{n}"]),
        (2, lambda: ["RESET"]),
        (3, lambda: ["AUTH", "app", "app-pw"]),
        (1, lambda: ["AUTH", "ro", "ro-pw"]),
        (1, lambda: ["AUTH", "app", "wrong"]),
        (2, lambda: ["MULTI"]),
        (2, lambda: ["EXEC"]),
        (1, lambda: ["DISCARD"]),
        (1, lambda: ["WATCH", k + "a"]),
        (1, lambda: ["UNWATCH"]),
        (1, lambda: ["SELECT", rng.choice(["0", "2", "5"])]),
        (1, lambda: ["SUBSCRIBE", ch]),
        (1, lambda: ["UNSUBSCRIBE"]),
        (1, lambda: ["PSUBSCRIBE", ch + "*"]),
        (1, lambda: ["PUBLISH", ch, "hi"]),
        (1, lambda: ["CLIENT", "SETNAME", f"c{n}"]),
        (1, lambda: ["CLIENT", "GETNAME"]),
        (1, lambda: ["CLIENT", "TRACKING", "ON", "BCAST"]),
        (1, lambda: ["CLIENT", "TRACKING", "ON", "REDIRECT", "1"]),
        (1, lambda: ["CLIENT", "REPLY", "OFF"]),
        (1, lambda: ["READONLY"]),
    ]
    weights = [w for w, _ in pool]
    makers = [m for _, m in pool]
    cmds = [rng.choice([["AUTH", "app", "app-pw"], ["HELLO", "3", "AUTH", "app", "app-pw"]])]
    for _ in range(rng.randint(3, 30)):
        cmds.append(rng.choices(makers, weights)[0]())
    cmds.append(["QUIT"])
    writes, i = [], 0
    while i < len(cmds):
        step = rng.choice([1, 1, 2, 3, 5, 8])
        writes.append(b"".join(cmd(*c) for c in cmds[i:i + step]))
        i += step
    return writes


async def _converse(port: int, writes: list[bytes]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for w in writes:
            writer.write(w)
            await asyncio.sleep(0)
        await writer.drain()
        chunks = []
        while True:
            data = await asyncio.wait_for(reader.read(1 << 16), 10)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)
    finally:
        writer.close()


async def _run_all(port: int, sequences: list[list[bytes]]) -> list[bytes]:
    results: list[bytes | None] = [None] * len(sequences)
    queue = list(range(len(sequences)))

    async def worker():
        while queue:
            i = queue.pop()
            try:
                results[i] = await _converse(port, sequences[i])
            except (asyncio.TimeoutError, ConnectionError) as e:
                results[i] = f"<{e.__class__.__name__}>".encode()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return results


_ID = re.compile(rb"\$2\r\nid\r\n:\d+\r\n")


def _normal(stream: bytes) -> bytes:
    return _ID.sub(b"$2\r\nid\r\n:ID\r\n", stream)


@pytest.fixture
def quiet_audit():
    audit = logging.getLogger("redisgate.audit")
    level = audit.level
    audit.setLevel(logging.ERROR)   # thousands of failed AUTHs and denials, by design
    yield
    audit.setLevel(level)


def test_multiplex_and_dedicated_reply_streams_are_identical(quiet_audit):
    if redis_binary("7") is None:
        pytest.fail("redis-server 7 is missing: run scripts/test.sh")
    rng = random.Random(SEED)
    sequences = [_sequence(rng, n) for n in range(SEQUENCES)]
    streams = {}
    for mode in (0, 1):
        srv = RedisServer("7").start()
        runner = ProxyRunner({"upstream": {"address": f"127.0.0.1:{srv.port}", "multiplex": mode},
                              "users": USERS}).start()
        try:
            streams[mode] = asyncio.run(_run_all(runner.port, sequences))
        finally:
            runner.stop()
            srv.stop()
    differ = [i for i in range(SEQUENCES)
              if _normal(streams[0][i]) != _normal(streams[1][i])]
    if differ:
        i = differ[0]
        pytest.fail(f"{len(differ)} of {SEQUENCES} sequences differ (seed {SEED}); the first, "
                    f"#{i}:\n  sent: {b''.join(sequences[i])!r}\n"
                    f"  dedicated: {streams[0][i]!r}\n  multiplex: {streams[1][i]!r}")
