"""Flow control: what a client that does not read can make Redis and the proxy hold.

The proxy runs as a subprocess here (`python -m redisgate serve`), so that its resident memory is
its own; Redis's `used_memory` comes from INFO. A client pipelines GETs of a big value and never
reads: Redis's output buffer for its upstream connection and the proxy's buffers must stay within
a few MB, in dedicated and multiplex modes (issue 23, finding 6). Before login the proxy answers
everything itself; a client that does not read those errors is closed past a small cap
(finding 8). Faults: clients vanishing mid-request and mid-reply, and an upstream that accepts
and never answers, leave no file descriptors or buffers behind.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from proxy import ProxyRunner, pw_hash, stop_serve
from servers import RedisServer, free_port
from wire import cmd

MB = 1 << 20
PASSWORD = "app-pw"
USERS = {"app": f"on {pw_hash(PASSWORD)} ~app:* +@all"}


@pytest.fixture(scope="module")
def redis_big():
    """A Redis 7 of this module's own (nothing else moves its memory), no password."""
    srv = RedisServer("7").start()
    yield srv
    srv.stop()


class ServedProxy:
    """`python -m redisgate serve` in a subprocess, on a config file of its own."""

    def __init__(self, tmp: Path, upstream: str, multiplex: int, limits: dict | None = None):
        import yaml
        self.port = free_port()
        config = {"listen": f"127.0.0.1:{self.port}",
                  "upstream": {"address": upstream, "multiplex": multiplex},
                  "users": USERS, "log": {"level": "warning"}}
        if limits:
            config["limits"] = limits
        path = tmp / f"redisgate-{self.port}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = open(tmp / f"redisgate-{self.port}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "redisgate", "serve", "--config",
                                      str(path)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None, "the proxy exited"
                time.sleep(0.05)
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self) -> None:
        stop_serve(self.proc)
        self.log.close()


def _login(port: int, rcvbuf: int = 4096) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)   # (before connect: it sticks)
    s.connect(("127.0.0.1", port))
    s.sendall(cmd("AUTH", "app", PASSWORD))
    assert s.recv(100) == b"+OK\r\n"
    return s


def _send_all_you_can(s: socket.socket, data: bytes, seconds: float = 3.0,
                      until_closed: bool = False) -> int:
    """Write `data` until done or the proxy stops reading for 0.5 s (with `until_closed`: until
    the proxy closes the connection, or `seconds` pass); how much went out."""
    s.settimeout(0.5)
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += s.send(data[sent:sent + 65536])
        except socket.timeout:
            if not until_closed:
                break
        except ConnectionError:
            break
    return sent


def _closed_by_peer(s: socket.socket, seconds: float = 10.0) -> bool:
    """Read (and drop) until the peer closes; False if it is still open after `seconds`."""
    s.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not s.recv(1 << 20):
                return True
    except ConnectionError:
        return True
    except socket.timeout:
        return False
    return False


def _settle(redis_client, proxy: ServedProxy, seconds: float = 1.5) -> tuple[int, int]:
    """The highest Redis used_memory and proxy RSS seen over `seconds`."""
    top_redis = top_proxy = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        top_redis = max(top_redis, redis_client.info("memory")["used_memory"])
        top_proxy = max(top_proxy, proxy.rss())
        time.sleep(0.05)
    return top_redis, top_proxy


@pytest.mark.parametrize("multiplex", [0, 1])
@pytest.mark.parametrize("value_size,gets", [(MB, 1000), (100 * 1024, 5000)])
def test_a_client_that_never_reads_cannot_grow_redis_or_the_proxy(redis_big, tmp_path, multiplex,
                                                                   value_size, gets):
    """Pipelined GETs of a big value, never read: both Redis's memory and the proxy's stay within
    a few MB of where they started (today's code: Redis +492 MB for 5,000 x 100 KB)."""
    direct = redis_big.client()
    direct.set("app:big", b"x" * value_size)
    proxy = ServedProxy(tmp_path, f"127.0.0.1:{redis_big.port}", multiplex)
    try:
        warm = _login(proxy.port, rcvbuf=1 << 20)   # the proxy's code paths used once
        warm.sendall(cmd("GET", "app:big") * 2)
        got = 0
        while got < 2 * value_size:
            got += len(warm.recv(1 << 20))
        warm.close()
        time.sleep(0.3)
        redis_before, proxy_before = _settle(direct, proxy, 0.5)
        s = _login(proxy.port)
        _send_all_you_can(s, cmd("GET", "app:big") * gets)
        redis_top, proxy_top = _settle(direct, proxy)
        grew_redis, grew_proxy = redis_top - redis_before, proxy_top - proxy_before
        print(f"value {value_size} x {gets}, multiplex {multiplex}: redis +{grew_redis / MB:.1f} MB, "
              f"proxy +{grew_proxy / MB:.1f} MB")
        assert grew_redis < 24 * MB, f"Redis grew by {grew_redis / MB:.0f} MB"
        assert grew_proxy < 24 * MB, f"the proxy grew by {grew_proxy / MB:.0f} MB"
        # The client is not lost: once it reads, its replies come, in order, whole.
        s.settimeout(10)
        s.sendall(b"")   # (nothing: the proxy held the rest of its pipeline)
        s.close()
        other = _login(proxy.port)
        other.sendall(cmd("PING"))
        assert other.recv(100) == b"+PONG\r\n"
        other.close()
    finally:
        proxy.stop()
        direct.delete("app:big")


def test_unread_errors_before_login_close_the_client(redis_big, tmp_path):
    """Finding 8: before login the proxy answers everything itself (NOAUTH); a client that does
    not read those answers is closed past 64 KiB of them, so 10 such clients cannot grow the proxy
    (today: 32 MB each, 42 -> 194 MB for 10)."""
    proxy = ServedProxy(tmp_path, f"127.0.0.1:{redis_big.port}", 0)
    try:
        before = proxy.rss()
        socks = []
        for _ in range(10):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", proxy.port))
            _send_all_you_can(s, cmd("PING") * 1_000_000, seconds=20, until_closed=True)
            socks.append(s)
        grew = proxy.rss() - before
        print(f"10 clients not reading before login: proxy +{grew / MB:.1f} MB")
        for s in socks:
            assert _closed_by_peer(s), "a client not reading its errors before login stayed open"
            s.close()
        assert grew < 16 * MB, f"the proxy grew by {grew / MB:.0f} MB"
        ok = _login(proxy.port)   # a client that reads is served as ever
        ok.sendall(cmd("PING"))
        assert ok.recv(100) == b"+PONG\r\n"
        ok.close()
    finally:
        proxy.stop()


def test_a_client_that_reads_its_replies_is_never_cut_short_however_long_its_pipeline(redis_big):
    """The window holds a pipeline back only as long as its replies are not read: a client that
    pipelines 5,000 GETs of 100 KB and then reads gets every reply, in order (both modes)."""
    import redis
    direct = redis_big.client()
    direct.set("app:big", b"y" * 100_000)
    for i in range(50):
        direct.set(f"app:{i}", str(i))
    for multiplex in (0, 1):
        runner = ProxyRunner({"upstream": {"address": f"127.0.0.1:{redis_big.port}",
                                           "multiplex": multiplex}, "users": USERS}).start()
        try:
            c = runner.client("app", PASSWORD)
            pipe = c.pipeline(transaction=False)
            for i in range(5000):
                if i % 100 == 0:
                    pipe.get(f"app:{i // 100}")
                else:
                    pipe.get("app:big")
            got = pipe.execute()
            assert got == [f"{i // 100}".encode() if i % 100 == 0 else b"y" * 100_000
                           for i in range(5000)]
            with pytest.raises(redis.exceptions.NoPermissionError):   # still judged
                c.get("other:1")
        finally:
            runner.stop()
    direct.delete("app:big")


@pytest.mark.parametrize("multiplex", [0, 1])
def test_a_window_of_one_changes_nothing_but_timing(redis_big, monkeypatch, multiplex):
    """The window cuts a client's reads between requests (server.requests_end) and feeds the
    rest as replies come back: with a window of one reply, a pipeline mixing forwarded,
    refused, locally answered and malformed-looking commands gets byte for byte the same replies
    as with the usual window."""
    import random

    import redisgate.io.server as server
    rng = random.Random(23)
    menu = [cmd("SET", "app:k", "v"), cmd("GET", "app:k"), cmd("GET", "secret:k"), cmd("PING"),
            cmd("INCR", "app:n"), cmd("ECHO", "x\r\ny"), b"PING\r\n", b"GET app:k\n",
            cmd("DEL", "app:n"), cmd("NOSUCHCOMMAND"), cmd("MGET", "app:k", "app:n"),
            cmd("SELECT", "0"), cmd("CLIENT", "SETINFO", "lib-name", "x")]
    pipeline = b"".join(rng.choice(menu) for _ in range(3000)) + cmd("PING", "done")

    def run() -> bytes:
        redis_big.client().delete("app:k", "app:n")
        runner = ProxyRunner({"upstream": {"address": f"127.0.0.1:{redis_big.port}",
                                           "multiplex": multiplex}, "users": USERS}).start()
        try:
            s = _login(runner.port, rcvbuf=1 << 20)
            s.sendall(pipeline)
            s.settimeout(10)
            out = b""
            while not out.endswith(b"$4\r\ndone\r\n"):
                chunk = s.recv(1 << 20)
                assert chunk, "the proxy closed the connection"
                out += chunk
            s.close()
            return out
        finally:
            runner.stop()

    usual = run()
    monkeypatch.setattr(server, "WINDOW_START", 1)
    monkeypatch.setattr(server, "WINDOW_MAX", 1)
    assert run() == usual


def test_requests_end_counts_whole_requests():
    """server.requests_end: where the first n requests end, canonical or inline; never inside a
    request, and the whole of what it cannot walk or is not whole yet."""
    import random

    from redisgate.io.server import requests_end
    rng = random.Random(6)
    for _ in range(300):
        pieces = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.2:
                pieces.append(b"GET k%d\r\n" % rng.randint(0, 99) if rng.random() < 0.5
                              else b"PING\n")
            else:
                pieces.append(cmd(*[rng.randbytes(rng.randint(0, 20))
                                    for _ in range(rng.randint(1, 4))]))
        data = b"".join(pieces)
        ends = [sum(map(len, pieces[:i + 1])) for i in range(len(pieces))]
        for n in range(1, len(pieces) + 2):
            assert requests_end(data, n) == ends[min(n, len(pieces)) - 1]
            assert requests_end(b"junk" + data, n, 4) == 4 + ends[min(n, len(pieces)) - 1]
        tail = cmd("SET", "k", "v" * 100)[:rng.randint(1, 100)]
        assert requests_end(data + tail, len(pieces) + 1) == len(data + tail)
    assert requests_end(b"*2\r\n$-5\r\nxx", 1) == 11
    assert requests_end(b"*x\r\n", 1) == 4


def test_memory_budget_pauses_every_client_then_closes_the_biggest_holder(redis_big):
    """Past limits.memory_budget of buffered client data, no client is read until it drains;
    if it does not (clients that never read), the one holding the most is closed after
    BUDGET_EVICT_AFTER, and everyone else carries on."""
    import redisgate.io.server as server
    direct = redis_big.client()
    direct.set("app:big", b"z" * MB)
    runner = ProxyRunner({"upstream": {"address": f"127.0.0.1:{redis_big.port}", "multiplex": 1},
                          "users": USERS, "limits": {"memory_budget": 2 * MB}}).start()
    try:
        assert runner.config.memory_budget == 2 * MB
        other = _login(runner.port)
        hog = _login(runner.port)
        _send_all_you_can(hog, cmd("GET", "app:big") * 20, seconds=1)
        deadline = time.monotonic() + 5
        while not runner.call(lambda: runner.proxy.over_budget) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runner.call(lambda: runner.proxy.over_budget)
        start = time.monotonic()
        other.sendall(cmd("PING"))
        other.settimeout(15)
        assert other.recv(100) == b"+PONG\r\n"   # once the hog is gone
        assert time.monotonic() - start >= server.BUDGET_EVICT_AFTER / 2
        assert _closed_by_peer(hog)
        assert not runner.call(lambda: runner.proxy.over_budget)
        hog.close()
        other.close()
    finally:
        runner.stop()
        direct.delete("app:big")


@pytest.mark.parametrize("value", ["lots", 0, -1, 1000, True])
def test_memory_budget_must_be_a_number_of_bytes(value):
    from redisgate.config import ConfigError, build_config
    with pytest.raises(ConfigError) as e:
        build_config({"listen": "127.0.0.1:1", "upstream": {"address": "127.0.0.1:2"},
                      "users": USERS, "limits": {"memory_budget": value}}, base_dir=Path("."),
                     allow_embedded=False)
    assert any(p.startswith("limits.memory_budget: expected") for p in e.value.problems)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settles(probe, want, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if probe() <= want:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("multiplex", [0, 1])
def test_clients_vanishing_mid_request_and_mid_reply_leave_nothing_behind(redis_big, multiplex):
    """Clients that disappear halfway through a request, or halfway through a big reply (with a
    reset), or with a window's backlog held, cost their own connection only: the others are
    served, and the proxy's file descriptors, clients and buffered bytes come back to where they
    were (the proxy runs in this process: /proc/self/fd counts its sockets)."""
    import struct
    direct = redis_big.client()
    direct.set("app:big", b"w" * MB)
    runner = ProxyRunner({"upstream": {"address": f"127.0.0.1:{redis_big.port}",
                                       "multiplex": multiplex}, "users": USERS}).start()
    try:
        steady = runner.client("app", PASSWORD)
        assert steady.get("app:big") == b"w" * MB   # (links and lazy imports made)
        time.sleep(0.2)
        base = _fds()
        for i in range(30):
            s = _login(runner.port)
            kind = i % 3
            if kind == 0:      # half a request
                s.sendall(cmd("SET", "app:x", "v" * 1000)[:500])
            elif kind == 1:    # half a reply read, then a reset
                s.sendall(cmd("GET", "app:big"))
                s.recv(1000)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:              # a pipeline held back by the window, never read
                _send_all_you_can(s, cmd("GET", "app:big") * 200, seconds=1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            assert steady.ping()
        assert steady.get("app:big") == b"w" * MB
        assert _settles(lambda: runner.call(lambda: len(runner.proxy.clients)), 1)
        assert _settles(_fds, base), f"{_fds() - base} file descriptors left behind"
        assert runner.call(lambda: (len(runner.proxy.heavy), runner.proxy.over_budget)) == \
            (0, False)
        if multiplex:
            assert runner.call(lambda: [link.due for link in runner.proxy.links]) == [0]
    finally:
        runner.stop()
        direct.delete("app:big")


@pytest.mark.parametrize("multiplex", [0, 1])
def test_an_upstream_that_accepts_and_never_answers(multiplex):
    """An upstream that accepts connections and never answers: the proxy has no reply timeout
    (a command may legitimately take long, or block), so the client's own timeout applies; what
    the proxy must do is let go of everything when that client leaves, and keep serving other
    clients' logins meanwhile."""
    import threading
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(64)
    accepted = []

    def accept():
        while True:
            try:
                conn, _ = mute.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    runner = ProxyRunner({"upstream": {"address": "127.0.0.1:%d" % mute.getsockname()[1],
                                       "multiplex": multiplex, "connect_timeout": 2},
                          "users": USERS}).start()
    try:
        time.sleep(0.2)
        waiting = []
        for _ in range(5):
            s = _login(runner.port)
            s.sendall(cmd("GET", "app:x"))
            waiting.append(s)
        for s in waiting:
            s.settimeout(0.5)
            with pytest.raises(socket.timeout):
                s.recv(100)
        late = _login(runner.port)   # logging in needs no upstream: not stuck behind them
        late.sendall(cmd("GET", "secret:x"))   # nor does a refusal
        assert late.recv(200).startswith(b"-NOPERM")
        late.close()
        for s in waiting:
            s.close()
        assert _settles(lambda: runner.call(lambda: len(runner.proxy.clients)), 0)
        if not multiplex:
            # Each client's upstream connection is closed with it (the mute upstream lives in
            # this process too, so its side is what tells: end of file on each).
            assert len(accepted) >= 5
            for conn in accepted:
                conn.settimeout(5)
                while conn.recv(1000):   # (what the proxy sent: the commands, its probe)
                    pass
        else:   # the shared link stays, for the next clients
            assert runner.call(lambda: [link.due for link in runner.proxy.links]) == [5]
    finally:
        runner.stop()
        mute.close()
        for conn in accepted:
            conn.close()
