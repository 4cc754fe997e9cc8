"""Load and faults, counted: 5,000 authenticated clients at once, and the upstream Redis killed
(SIGKILL) and restarted under busy pipelines, dedicated and with `upstream.multiplex: 1`.

The proxy runs in this process (tests/proxy.py), so its file descriptors are this process's
(/proc/self/fd) and its memory is this process's RSS. Each test measures both before and after
and requires them back at their starting level once the clients are gone; bounded time to a
clear error or a clean close; replies never cross between clients (each client's replies are
checkable as its own).
"""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import time

import hiredis
import psutil
import pytest

from proxy import ProxyRunner, mode_proxy, pw_hash
from redisgate.protocol.resp import encode_command
from servers import RedisServer

PASSWORD = b"load-pw"
USERS = {"load": f"on {pw_hash('load-pw')} ~app:* +@all -@dangerous"}
UPSTREAM_PASSWORD = "load-faults-upstream-secret"


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def settle(check, timeout: float = 15.0) -> bool:
    """Poll check() until it is true (the proxy's thread closes connections asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


class Client:
    """One raw RESP connection, driven from this thread's asyncio loop."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.parser = hiredis.Reader()

    @classmethod
    async def open(cls, port: int) -> "Client":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def replies(self, count: int, timeout: float = 20.0) -> list:
        """`count` replies; fewer when the connection closes (EOF)."""
        out = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < count:
            reply = self.parser.gets()
            if reply is not False:
                out.append(reply)
                continue
            left = deadline - asyncio.get_running_loop().time()
            data = await asyncio.wait_for(self.reader.read(1 << 16), max(left, 0.001))
            if not data:
                break
            self.parser.feed(data)
        return out

    async def call(self, *cmds: list[bytes]) -> list:
        self.writer.write(b"".join(map(encode_command, cmds)))
        return await self.replies(len(cmds))

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------- 5,000 clients

CLIENTS = 5000


async def _crowd(port: int, n: int) -> None:
    """n clients connected at once, each authenticated and using its own key, then all closed."""
    gate = asyncio.Semaphore(256)   # connection attempts in flight (the listen backlog)

    async def one(i: int) -> Client:
        async with gate:
            c = await Client.open(port)
        key = b"app:load:%d" % i
        got = await c.call([b"AUTH", b"load", PASSWORD], [b"SET", key, b"%d" % i], [b"GET", key])
        assert got == [b"OK", b"OK", b"%d" % i], (i, got)
        return c

    clients = await asyncio.gather(*(one(i) for i in range(n)))
    # All of them open at the same time; each still answers, with its own value.
    got = await asyncio.gather(*(c.call([b"GET", b"app:load:%d" % i])
                                 for i, c in enumerate(clients)))
    assert got == [[b"%d" % i] for i in range(n)]
    for c in clients:
        c.close()
    await asyncio.sleep(0)


@pytest.fixture(params=["dedicated", "multiplex"])
def crowd_proxy(request, redis7):
    with mode_proxy(redis7, USERS, request.param) as runner:
        yield runner


def test_5000_authenticated_clients_and_resources_come_back(crowd_proxy, redis7):
    port = crowd_proxy.port
    asyncio.run(_crowd(port, 200))          # warm up: first-use allocations, the shared link
    assert settle(lambda: len(crowd_proxy.proxy.clients) == 0)
    admin = redis7.admin()
    redis_clients0 = admin.info("clients")["connected_clients"]
    fds0, rss0 = fd_count(), rss_mb()
    asyncio.run(_crowd(port, CLIENTS))
    assert settle(lambda: len(crowd_proxy.proxy.clients) == 0), len(crowd_proxy.proxy.clients)
    assert settle(lambda: fd_count() <= fds0), (fd_count(), fds0)
    rss1 = rss_mb()
    # A second crowd must not grow memory again: what the first one took was reused, not leaked.
    asyncio.run(_crowd(port, CLIENTS))
    assert settle(lambda: len(crowd_proxy.proxy.clients) == 0)
    assert settle(lambda: fd_count() <= fds0), (fd_count(), fds0)
    rss2 = rss_mb()
    print(f"\n{crowd_proxy.mode}: fds {fds0} -> {fd_count()}, RSS {rss0:.1f} -> {rss1:.1f} -> "
          f"{rss2:.1f} MB")
    assert rss2 - rss1 < 16, (rss0, rss1, rss2)
    assert rss2 - rss0 < 64, (rss0, rss1, rss2)
    # Redis's connections from the proxy are gone as well (dedicated: one per client).
    assert settle(lambda: admin.info("clients")["connected_clients"] <= redis_clients0)
    # The shared Redis 7 of the session gets its keyspace back (other tests SCAN it).
    for i in range(0, CLIENTS, 1000):
        admin.delete(*(f"app:load:{j}" for j in range(i, i + 1000)))
    admin.close()


# ---------------------------------------------------------------------------- upstream SIGKILL

BUSY = 8            # clients pipelining while Redis is killed
PIPELINE = 200      # INCRBY per write


def _start_redis(port: int = 0) -> RedisServer:
    return RedisServer("7", port=port, password=UPSTREAM_PASSWORD).start()


async def _busy(port: int, i: int, stop_at: float, log: list) -> None:
    """Client i pipelines INCRBY app:busy:i (i + 1): every integer it gets is a multiple of i + 1,
    so a reply of another client's would show. Records ('ok'|'error'|'eof'|'reset'|'late', time)."""
    step = i + 1
    c = await Client.open(port)
    assert await c.call([b"AUTH", b"load", PASSWORD]) == [b"OK"]
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < stop_at:
            c.writer.write(encode_command([b"INCRBY", b"app:busy:%d" % i, b"%d" % step]) * PIPELINE)
            t0 = loop.time()
            try:
                got = await c.replies(PIPELINE, timeout=20)
            except asyncio.TimeoutError:
                log.append(("late", loop.time() - t0))
                return
            except ConnectionResetError:
                # Closed with commands of ours still unread in its socket: the kernel resets.
                log.append(("reset", loop.time()))
                return
            errors = 0
            for reply in got:
                if isinstance(reply, hiredis.ReplyError):
                    assert "upstream Redis unavailable" in str(reply) or "LOADING" in str(reply), reply
                    errors += 1
                else:
                    assert isinstance(reply, int) and reply % step == 0, (i, reply)
            # (One entry per pipeline: the log itself must not be what grows memory.)
            if errors:
                log.append(("error", loop.time()))
            if len(got) > errors:
                log.append(("ok", loop.time()))
            if len(got) < PIPELINE:
                log.append(("eof", loop.time()))
                return
            await asyncio.sleep(0)
    finally:
        c.close()


async def _kill_and_restart(runner, srv_box: list, idle: Client) -> dict:
    loop = asyncio.get_running_loop()
    logs = [[] for _ in range(BUSY)]
    start = loop.time()
    kill_at = start + 1.0
    stop_at = kill_at + 6.0
    tasks = [asyncio.ensure_future(_busy(runner.port, i, stop_at, logs[i])) for i in range(BUSY)]
    await asyncio.sleep(kill_at - loop.time())
    srv = srv_box[0]
    srv.proc.send_signal(signal.SIGKILL)          # mid-pipeline: the busy clients never pause
    srv.proc.wait()
    killed = loop.time()
    srv.proc.stderr.close()                       # (the test's pipe from the dead server)
    await asyncio.sleep(1.0)
    srv_box[0] = await asyncio.to_thread(_start_redis, srv.port)   # the same address again
    restarted = loop.time()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    # The idle client (no command in flight at the kill): a clear outcome, at once.
    t0 = loop.time()
    idle.writer.write(encode_command([b"PING"]))
    try:
        idle_reply = await idle.replies(1, timeout=10)
    except (ConnectionError, asyncio.TimeoutError) as e:
        idle_reply = e
    idle_time = loop.time() - t0
    # A client that comes after the restart works normally.
    fresh = await Client.open(runner.port)
    fresh_replies = await fresh.call([b"AUTH", b"load", PASSWORD], [b"SET", b"app:after", b"1"],
                                     [b"GET", b"app:after"])
    fresh.close()
    return {"logs": logs, "killed": killed, "restarted": restarted, "idle": idle_reply,
            "idle_time": idle_time, "fresh": fresh_replies, "start": start}


@pytest.mark.parametrize("mode", ["dedicated", "multiplex"])
def test_upstream_sigkill_and_restart_mid_pipeline(mode):
    srv_box = [_start_redis()]
    upstream = {"address": f"127.0.0.1:{srv_box[0].port}", "password": UPSTREAM_PASSWORD}
    if mode == "multiplex":
        upstream["multiplex"] = 1
    runner = ProxyRunner({"upstream": upstream, "users": USERS}).start()
    try:
        async def warm():
            c = await Client.open(runner.port)
            assert await c.call([b"AUTH", b"load", PASSWORD], [b"PING"]) == [b"OK", b"PONG"]
            c.close()
        asyncio.run(warm())
        assert settle(lambda: len(runner.proxy.clients) == 0)
        fds0, rss0 = fd_count(), rss_mb()

        async def scenario():
            idle = await Client.open(runner.port)
            assert await idle.call([b"AUTH", b"load", PASSWORD], [b"PING"]) == [b"OK", b"PONG"]
            try:
                return await _kill_and_restart(runner, srv_box, idle)
            finally:
                idle.close()
        r = asyncio.run(scenario())

        for i, log in enumerate(r["logs"]):
            kinds = [k for k, _ in log]
            assert "late" not in kinds, f"client {i}: a pipeline got no answer within 20 s"
            assert kinds.count("ok") > 0, f"client {i} never got a reply before the kill"
            # Bounded time from the kill to a clear error or a clean close (or, with multiplex,
            # to working again on a new link).
            after = [t for k, t in log if t >= r["killed"] and k in ("error", "eof", "reset")]
            if after:
                assert after[0] - r["killed"] < 10, f"client {i}: {after[0] - r['killed']:.1f} s"
            else:
                assert mode == "multiplex" or log[-1][1] < r["killed"], (i, log[-5:])
            if mode == "multiplex":
                # Its commands, on the shared link, work again once Redis is back; unless the
                # proxy closed it (replies of it were due on the link that died).
                assert any(k == "ok" and t > r["restarted"] for k, t in log) \
                    or log[-1][0] in ("eof", "reset"), (i, log[-5:])
        affected = sum(any(k in ("error", "eof", "reset") for k, _ in log) for log in r["logs"])
        outcomes = {k: sum(1 for log in r["logs"] for kk, _ in log if kk == k)
                    for k in ("error", "eof", "reset")}
        assert affected > 0, "nobody noticed the upstream going away"
        assert r["idle_time"] < 5, r["idle_time"]
        if mode == "dedicated":
            # Its upstream connection was lost: closed, as by a Redis restart (no reply).
            assert r["idle"] == [] or isinstance(r["idle"], ConnectionError), r["idle"]
        else:
            # On the shared link it had nothing in flight: it simply works on the new link.
            assert r["idle"] == [b"PONG"], r["idle"]
        assert r["fresh"] == [b"OK", b"OK", b"1"], r["fresh"]
        assert settle(lambda: len(runner.proxy.clients) == 0), len(runner.proxy.clients)
        assert settle(lambda: fd_count() <= fds0 + (1 if mode == "multiplex" else 0)), \
            (fd_count(), fds0)
        rss1 = rss_mb()
        print(f"\n{mode}: affected {affected}/{BUSY} {outcomes}, idle {r['idle']!r} in {r['idle_time']:.2f} s,"
              f" fds {fds0} -> {fd_count()}, RSS {rss0:.1f} -> {rss1:.1f} MB")
        assert rss1 - rss0 < 32, (rss0, rss1)
    finally:
        runner.stop()
        srv_box[0].stop()
