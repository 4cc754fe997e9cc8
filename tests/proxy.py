"""Run a real redisgate proxy for a test: in a background thread with its own uvloop loop.

The proxy is the production code path (Proxy, ClientConnection, Session); only signal handling
is left out because signals belong to the main thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Iterator

import redis
import uvloop

from redisgate.config import build_config
from redisgate.io.server import Proxy
from servers import RedisServer, free_port


def pw_hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


class ProxyRunner:
    def __init__(self, raw_config: dict, base_dir: Path | None = None):
        raw = dict(raw_config)
        raw.setdefault("listen", f"127.0.0.1:{free_port()}")
        # Every test client comes from 127.0.0.1, and randomised conversations fail AUTH on
        # purpose: auth_throttle's defaults would lock them out. tests/test_prelogin.py tests
        # the throttle with its settings given.
        raw.setdefault("auth_throttle", {"max_failures": 1_000_000})
        # REDISGATE_TEST_MULTIPLEX=N runs every proxy of the suite on N shared upstream links.
        mux = os.environ.get("REDISGATE_TEST_MULTIPLEX")
        if mux and isinstance(raw.get("upstream"), dict) and "multiplex" not in raw["upstream"]:
            raw["upstream"] = dict(raw["upstream"], multiplex=int(mux))
        self.config = build_config(raw, base_dir=base_dir or Path("."), allow_embedded=False)
        self.port = self.config.listeners[0].port
        self.proxy: Proxy | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.proxy = Proxy(self.config)
            self.loop.run_until_complete(self.proxy.start())
        except BaseException as e:  # surfaced to the test in start()
            self._error = e
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.proxy.close())
        # What asyncio.run does at the end (redisgate.io.server.run): cancel what is still pending,
        # such as a connection attempt to an upstream that does not answer.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def start(self) -> "ProxyRunner":
        self._thread.start()
        self._started.wait(15)
        if self._error:
            raise self._error
        return self

    def call(self, fn, *args, timeout: float = 10):
        """Run fn(*args) on the proxy's loop thread and return its result (waiting at most
        `timeout` s for the loop: longer where it may be busy on a loaded machine)."""
        fut = asyncio.run_coroutine_threadsafe(_as_coro(fn, *args), self.loop)
        return fut.result(timeout)

    def stop(self) -> None:
        if self.loop and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def client(self, username=None, password=None, **kw) -> redis.Redis:
        kw.setdefault("protocol", 2)   # redis-py 8 defaults to RESP3; tests ask for it explicitly
        return redis.Redis(host="127.0.0.1", port=self.port, username=username, password=password,
                           socket_timeout=10, **kw)


async def _as_coro(fn, *args):
    return fn(*args)


@contextlib.contextmanager
def mode_proxy(srv: RedisServer, users: dict, mode: str) -> Iterator[ProxyRunner]:
    """A proxy in front of `srv` (a conftest fixture's, with its `upstream`) for `users`, its
    upstream connections one per client (mode "dedicated") or a shared link ("multiplex":
    upstream.multiplex 1); `runner.mode` says which."""
    upstream = dict(srv.upstream)
    if mode == "multiplex":
        upstream["multiplex"] = 1
    runner = ProxyRunner({"upstream": upstream, "users": users}).start()
    runner.mode = mode
    try:
        yield runner
    finally:
        runner.stop()


@contextlib.contextmanager
def redis_and_proxy(version: str, password: str, acl_users: dict[str, tuple[str, str]],
                    default_rules: str | None = None,
                    multiplex: bool = False) -> Iterator[tuple[RedisServer, ProxyRunner]]:
    """A real Redis `version` (requirepass `password`) and a proxy in front of it whose users
    have the same rules as Redis's own, for differential tests. `acl_users`: name ->
    (password, rules), made on Redis 6.2+ (the first is the proxy's upstream identity) and in
    the proxy; on 5.0, which has no ACL, the proxy's one user is `default` with `password` and
    the first user's rules, and the upstream is requirepass. `default_rules`: also a proxy user
    `default` with `password` (Redis's default user). `multiplex`: `upstream.multiplex: 1`."""
    srv = RedisServer(version, password=password).start()
    try:
        users = {}
        if default_rules is not None:
            users["default"] = f"on {pw_hash(password)} {default_rules}"
        if version == "5":
            upstream = {"address": f"127.0.0.1:{srv.port}", "password": password}
            users.setdefault("default",
                             f"on {pw_hash(password)} {next(iter(acl_users.values()))[1]}")
        else:
            for name, (pw, rules) in acl_users.items():
                srv.client().execute_command("ACL", "SETUSER", name, "on", f">{pw}", *rules.split())
                users[name] = f"on {pw_hash(pw)} {rules}"
            name, (pw, _) = next(iter(acl_users.items()))
            upstream = {"address": f"127.0.0.1:{srv.port}", "username": name, "password": pw}
        if multiplex:
            upstream["multiplex"] = 1
        runner = ProxyRunner({"upstream": upstream, "users": users}).start()
        try:
            yield srv, runner
        finally:
            runner.stop()
    finally:
        srv.stop()


def stop_serve(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a `redisgate serve` subprocess: `sig` (SIGTERM, its graceful stop; SIGINT is Ctrl-C),
    SIGKILL if it is still there 15 s later."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
