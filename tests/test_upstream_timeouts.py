"""An upstream that accepts but never answers, and TCP keepalive on upstream sockets.

- `upstream.keepalive` sets SO_KEEPALIVE with Redis's own tcp-keepalive shape (idle, idle/3,
  3 probes) on every upstream connection: a client's own and a shared link's.
- `upstream.handshake_timeout`: a real redis-server stopped with SIGSTOP still completes TCP
  connections (the kernel does), so only the proxy's handshake (AUTH) going unanswered tells; the
  client gets `-ERR redisgate: upstream Redis unavailable (handshake timed out)` in time, on its own
  connection and on a shared link, and works again once Redis runs again. Behind an AUTH
  nothing of the client's was sent (the client stays); behind a SELECT alone it was (closed).
- Blocking commands are never cut: a BLPOP that blocks longer than the handshake timeout gets its
  own (nil) reply.
- The keys are validated like every other (`redisgate check` goes through the same schema).
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import hiredis
import pytest
from prometheus_client import REGISTRY

from proxy import ProxyRunner, pw_hash
from redisgate.config import ConfigError, build_config
from servers import RedisServer
from wire import Wire

PASSWORD = "stopped-upstream-secret"
USERS = {"app": f"on {pw_hash('app-pw')} ~* +@all"}


@pytest.fixture
def stoppable():
    """A Redis 7 of this test's own (requirepass: the proxy's handshake is an AUTH), so that it
    can be stopped; resumed at the end whatever happens."""
    srv = RedisServer("7", password=PASSWORD).start()
    srv.upstream = {"address": f"127.0.0.1:{srv.port}", "password": PASSWORD}
    try:
        yield srv
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


def _proxy(srv, **upstream) -> ProxyRunner:
    return ProxyRunner({"upstream": dict(srv.upstream, **upstream), "users": USERS}).start()


def _handshake_errors() -> float:
    return REGISTRY.get_sample_value("redisgate_upstream_errors_total",
                                     {"stage": "handshake"}) or 0.0


def _login(runner: ProxyRunner) -> Wire:
    w = Wire(runner.port, timeout=30)
    assert w.call("AUTH", "app", "app-pw") == b"OK"
    return w


# ---------------------------------------------------------------------------- configuration

def test_defaults_and_values():
    up = {"address": "127.0.0.1:1"}
    cfg = build_config({"upstream": up, "users": USERS})
    assert cfg.upstream.handshake_timeout == 5.0 and cfg.upstream.keepalive == 60.0
    cfg = build_config({"upstream": dict(up, handshake_timeout="250ms", keepalive=0),
                        "users": USERS})
    assert cfg.upstream.handshake_timeout == 0.25 and cfg.upstream.keepalive == 0


@pytest.mark.parametrize("key,value,says", [
    ("handshake_timeout", 0, "upstream.handshake_timeout: expected a duration > 0"),
    ("handshake_timeout", "soon", "upstream.handshake_timeout: expected a duration > 0"),
    ("keepalive", "-1s", "upstream.keepalive: expected a duration >= 0"),
    ("keepalive", "10h", "upstream.keepalive: at most 32767s"),
])
def test_bad_values_are_refused(key, value, says):
    with pytest.raises(ConfigError) as e:
        build_config({"upstream": {"address": "127.0.0.1:1", key: value}, "users": USERS})
    assert says in str(e.value)


# ---------------------------------------------------------------------------- keepalive

def _keepalive_of(sock) -> tuple[int, int, int, int]:
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))


@pytest.mark.parametrize("multiplex", [0, 1])
def test_upstream_sockets_have_keepalive(redis7, multiplex):
    runner = ProxyRunner({"upstream": dict(redis7.upstream, keepalive="9s", multiplex=multiplex),
                          "users": USERS}).start()
    try:
        w = _login(runner)
        assert w.call("SET", "keepalive:k", "v") == b"OK"

        def options():
            if multiplex:
                link = runner.proxy.links[0]
                return _keepalive_of(link.conn.transport.get_extra_info("socket"))
            (client,) = runner.proxy.clients
            return _keepalive_of(client.upstream.transport.get_extra_info("socket"))
        deadline = time.monotonic() + 10   # (set when the dial returns: a loop turn or so)
        while runner.call(options)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.call(options) == (1, 9, 3, 3)
        w.close()
    finally:
        runner.stop()


def test_keepalive_zero_leaves_it_off(redis7):
    runner = ProxyRunner({"upstream": dict(redis7.upstream, keepalive=0), "users": USERS}).start()
    try:
        w = _login(runner)
        assert w.call("SET", "keepalive:k", "v") == b"OK"
        (client,) = runner.call(lambda: list(runner.proxy.clients))
        sock = runner.call(lambda: client.upstream.transport.get_extra_info("socket"))
        assert runner.call(lambda: sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)) == 0
        w.close()
    finally:
        runner.stop()


# ---------------------------------------------------------------------------- a mute upstream

@pytest.mark.parametrize("multiplex", [0, 1])
def test_a_stopped_upstream_fails_the_handshake_in_time(stoppable, multiplex):
    """The proxy's AUTH goes alone: the client's GET waits behind it and is never sent, so it
    gets the error and the client stays (as after a failed connect), on its own connection and
    on a shared link."""
    runner = _proxy(stoppable, handshake_timeout="300ms", multiplex=multiplex)
    try:
        os.kill(stoppable.proc.pid, signal.SIGSTOP)
        before = _handshake_errors()
        w = _login(runner)
        start = time.monotonic()
        reply = w.call("GET", "k")
        took = time.monotonic() - start
        assert isinstance(reply, hiredis.ReplyError)
        assert str(reply) == "ERR redisgate: upstream Redis unavailable (handshake timed out)"
        assert took >= 0.3 * 0.9   # (the timeout's, not an early failure; no upper bound: load)
        assert _handshake_errors() > before
        os.kill(stoppable.proc.pid, signal.SIGCONT)
        assert w.call("SET", "k", "v") == b"OK" and w.call("GET", "k") == b"v"
        w.close()
    finally:
        runner.stop()


@pytest.mark.parametrize("multiplex", [0, 1])
def test_commands_behind_an_unanswered_select_close_the_client(multiplex):
    """No password but a db: SELECT goes with the client's commands (nothing waits for its
    reply), so when it goes unanswered they may still run once Redis does: the client gets the
    error and is closed, as after a lost connection."""
    srv = RedisServer("7").start()
    try:
        runner = ProxyRunner({"upstream": {"address": f"127.0.0.1:{srv.port}", "db": 1,
                                           "handshake_timeout": "300ms",
                                           "multiplex": multiplex},
                              "users": USERS}).start()
        try:
            os.kill(srv.proc.pid, signal.SIGSTOP)
            before = _handshake_errors()
            w = _login(runner)
            reply = w.call("GET", "k")
            assert str(reply) == "ERR redisgate: upstream Redis unavailable (handshake timed out)"
            assert w.closed()
            assert _handshake_errors() > before
            os.kill(srv.proc.pid, signal.SIGCONT)
            w = _login(runner)
            assert w.call("SET", "k", "v") == b"OK" and w.call("GET", "k") == b"v"
            w.close()
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
            runner.stop()
    finally:
        srv.stop()


def test_a_login_alone_keeps_the_connection(stoppable):
    """The login opens the client's upstream connection; its handshake unanswered, nothing of
    the client's was lost: the connection stays, and works once Redis runs again."""
    runner = _proxy(stoppable, handshake_timeout="300ms")
    try:
        os.kill(stoppable.proc.pid, signal.SIGSTOP)
        w = _login(runner)
        os.kill(stoppable.proc.pid, signal.SIGCONT)
        assert w.call("SET", "k", "v") == b"OK" and w.call("GET", "k") == b"v"
        w.close()
    finally:
        runner.stop()


def test_a_blocking_command_outlives_the_handshake_timeout(stoppable):
    runner = _proxy(stoppable, handshake_timeout="200ms")
    try:
        w = _login(runner)
        start = time.monotonic()
        assert w.call("BLPOP", "nothing-here", "1") is None   # (nil: it timed out in Redis)
        assert time.monotonic() - start >= 0.9
        assert w.call("PING") == b"PONG"
        w.close()
    finally:
        runner.stop()


def test_no_handshake_no_timer(redis7):
    """Without a handshake of the proxy's (no password, db 0) the first reply is to a client's
    command, which may block: nothing is timed."""
    srv = RedisServer("7").start()
    try:
        runner = ProxyRunner({"upstream": {"address": f"127.0.0.1:{srv.port}",
                                           "handshake_timeout": "100ms"},
                              "users": USERS}).start()
        try:
            w = _login(runner)
            assert w.call("BLPOP", "nothing-here", "0.5") is None
            assert runner.call(lambda: [c._handshake_timer for c in runner.proxy.clients]) == [None]
            w.close()
        finally:
            runner.stop()
    finally:
        srv.stop()


class _RefusesThenHangs:
    """An upstream that answers a connection's first AUTH with WRONGPASS and then nothing (a
    Redis that refused the proxy's password and stopped before the second AUTH): a raw socket
    server of the test's, the only way to hang exactly between the two AUTHs."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.auths = 0
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn):
        seen = b""
        refused = False
        conn.settimeout(30)
        for _ in range(1000):
            try:
                data = conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            seen += data
            count = seen.upper().count(b"AUTH")
            self.auths += count
            seen = b""
            if count and not refused:
                refused = True
                conn.sendall(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")

    def close(self):
        self.listener.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("multiplex", [0, 1])
def test_a_second_auth_is_timed_too(tmp_path, multiplex):
    """Redis refuses the proxy's password; the other one the proxy knows (the secret file's new
    content) goes in a second AUTH, whose reply is timed again: unanswered, the client gets the
    handshake error in time (and stays: nothing of its was sent)."""
    secret = tmp_path / "upstream-password"
    secret.write_text("old-secret")
    secret.chmod(0o600)
    fake = _RefusesThenHangs()
    try:
        runner = ProxyRunner({"upstream": {"address": f"127.0.0.1:{fake.port}",
                                           "password": f"${{file:{secret}}}", "version": "7.0",
                                           "connect_timeout": "1s",
                                           "handshake_timeout": "300ms",
                                           "multiplex": multiplex},
                              "users": USERS}, base_dir=tmp_path).start()
        try:
            secret.write_text("new-secret")
            time.sleep(1.1)   # (handshake.Passwords reads the file again at most once a second)
            before = _handshake_errors()
            auths = fake.auths
            # Its own connection: the login opens it (its OK waits behind the proxy's AUTH, in
            # order): both AUTHs unanswered, it is given up; the GET opens another. A shared
            # link: the GET opens it.
            w = _login(runner)
            opened = 0 if multiplex else 1
            assert _handshake_errors() == before + opened
            reply = w.call("GET", "k")
            assert str(reply) == "ERR redisgate: upstream Redis unavailable (handshake timed out)"
            assert fake.auths >= auths + 2 * (opened + 1)   # each: the refused one, the other
            assert _handshake_errors() == before + opened + 1
            assert not w.closed(timeout=0.5)
            w.close()
        finally:
            runner.stop()
    finally:
        fake.close()
