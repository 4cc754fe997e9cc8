"""limits.max_clients, limits.max_clients_per_user and limits.idle_timeout (issue 17), against a
real Redis 7 through a real proxy, with raw sockets (exact bytes) and redis-py.

- A connection past max_clients, or a login past max_clients_per_user (AUTH, HELLO AUTH, the
  automatic login at connect of a certificate or `nopass` user, RESET's), gets Redis's
  `-ERR max number of clients reached` and is closed; nothing it pipelined behind is run.
- A user's count follows its logins: up at login, down at close, RESET or a login as another
  user; it goes back to 0 when every connection is closed.
- idle_timeout closes a logged-in connection that sent nothing that long, but not one owed a
  reply (BLPOP) or subscribed (RESP2 and RESP3), nor one that keeps sending (through the C lane
  or not, on its own upstream connection or a shared link).
"""
from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time

import pytest
import redis

from proxy import ProxyRunner, pw_hash
from redisgate import certs
from redisgate.config import ConfigError, build_config
from servers import free_port
from wire import Wire, cmd

MAXED = b"-ERR max number of clients reached\r\n"
USERS = {
    "a": f"on {pw_hash('a-pw')} ~k:* &ch +@all",
    "b": f"on {pw_hash('b-pw')} ~k:* &ch +@all",
}


def proxy(redis7, users=None, multiplex=0, listen=None, **limits) -> ProxyRunner:
    raw = {"upstream": dict(redis7.upstream, multiplex=multiplex), "users": users or USERS,
           "limits": limits}
    if listen is not None:
        raw["listen"] = listen
    return ProxyRunner(raw).start()


def counts(runner) -> tuple[dict, int]:
    return runner.call(lambda: (dict(runner.proxy.gate.user_clients), runner.proxy.accepted))


def wait_counts(runner, want: dict, accepted: int | None = None, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        users, acc = counts(runner)
        if users == want and (accepted is None or acc == accepted):
            return
        assert time.monotonic() < deadline, (users, acc)
        time.sleep(0.02)


def login(runner, user: str, via: str = "auth") -> Wire:
    w = Wire(runner.port)
    if via == "auth":
        assert w.call("AUTH", user, f"{user}-pw") == b"OK"
    else:
        reply = w.call("HELLO", "3", "AUTH", user, f"{user}-pw")
        assert reply[b"proto"] == 3
    return w


def refused(w: Wire) -> bool:
    """The proxy answered with exactly Redis's maxclients error, then closed."""
    return w.read_raw_until_closed() == MAXED


# ---------------------------------------------------------------------------- config

@pytest.mark.parametrize("value, seconds", [(0, 0), ("0s", 0), ("10s", 10), ("500ms", 0.5),
                                            ("5m", 300), (7, 7), ("2.5", 2.5)])
def test_idle_timeout_durations(value, seconds):
    cfg = build_config({"upstream": "127.0.0.1:1", "users": USERS,
                        "limits": {"idle_timeout": value, "max_clients_per_user": 3}})
    assert cfg.idle_timeout == seconds and cfg.max_clients_per_user == 3


def test_limits_defaults():
    cfg = build_config({"upstream": "127.0.0.1:1", "users": USERS})
    assert cfg.idle_timeout == 0 and cfg.max_clients_per_user == 0


@pytest.mark.parametrize("limits, message", [
    ({"idle_timeout": "-1s"}, "limits.idle_timeout: expected a duration >= 0"),
    ({"idle_timeout": "soon"}, "limits.idle_timeout: expected a duration >= 0"),
    ({"idle_timeout": "2d"}, "limits.idle_timeout: expected a duration >= 0"),
    ({"max_clients_per_user": -1}, "limits.max_clients_per_user: expected a whole number >= 0"),
    ({"max_clients_per_user": "5"}, "limits.max_clients_per_user: expected a whole number >= 0"),
    ({"max_clients_per_user": True}, "limits.max_clients_per_user: expected a whole number >= 0"),
])
def test_bad_limits_are_where_why(limits, message):
    with pytest.raises(ConfigError) as e:
        build_config({"upstream": "127.0.0.1:1", "users": USERS, "limits": limits})
    assert any(p.startswith(message) for p in e.value.problems), e.value.problems


def test_check_reports_the_new_keys(tmp_path):
    import yaml
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"upstream": "127.0.0.1:1", "users": USERS,
                                   "limits": {"idle_timeout": "10 parsecs",
                                              "max_clients_per_user": -3}}))
    out = subprocess.run([sys.executable, "-m", "redisgate", "check", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "limits.idle_timeout: expected a duration >= 0 and at most 1 day" in out.stdout + out.stderr
    assert "limits.max_clients_per_user: expected a whole number >= 0 (0: no limit), got -3" \
        in out.stdout + out.stderr
    cfg.write_text(yaml.safe_dump({"upstream": "127.0.0.1:1", "users": USERS,
                                   "limits": {"max_clients": 5, "max_clients_per_user": 10}}))
    out = subprocess.run([sys.executable, "-m", "redisgate", "check", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert "warning: limits.max_clients_per_user: 10 is more than limits.max_clients (5)" \
        in out.stdout + out.stderr


# ---------------------------------------------------------------------------- max_clients

def test_max_clients_error_is_byte_exact_and_released(redis7):
    runner = proxy(redis7, max_clients=3)
    try:
        held = [login(runner, "a") for _ in range(2)] + [Wire(runner.port)]
        wait_counts(runner, {"a": 2}, accepted=3)
        extra = Wire(runner.port)
        assert refused(extra)
        for w in held:
            w.close()
        wait_counts(runner, {}, accepted=0)
        again = login(runner, "b")
        assert again.call("PING") == b"PONG"
        again.close()
        wait_counts(runner, {}, accepted=0)
    finally:
        runner.stop()


# ---------------------------------------------------------------------------- per user

@pytest.mark.parametrize("multiplex", [0, 1])
def test_per_user_limit_auth_and_hello(redis7, multiplex):
    runner = proxy(redis7, multiplex=multiplex, max_clients_per_user=2)
    admin = redis7.admin()
    admin.delete("k:after-refusal")
    try:
        a1, a2 = login(runner, "a"), login(runner, "a", via="hello")
        wait_counts(runner, {"a": 2})
        # The third login as `a`: the error, byte for byte, then EOF; what it pipelined behind
        # the AUTH is not run.
        w = Wire(runner.port)
        w.send(cmd("AUTH", "a", "a-pw") + cmd("SET", "k:after-refusal", "1"))
        assert refused(w)
        w = Wire(runner.port)
        w.send(cmd("HELLO", "3", "AUTH", "a", "a-pw", "SETNAME", "x") + cmd("PING"))
        assert refused(w)
        assert admin.exists("k:after-refusal") == 0
        # A wrong password is still a wrong password (checked first), and leaves it open.
        w = Wire(runner.port)
        assert isinstance(w.call("AUTH", "a", "nope"), Exception)
        assert w.call("PING") != b"PONG"          # (NOAUTH: not logged in)
        w.close()
        # Another user is not affected; both `a` connections still work.
        b = login(runner, "b")
        assert b.call("SET", "k:1", "v") == b"OK"
        assert a1.call("GET", "k:1") == b"v" and a2.call("GET", "k:1") == b"v"
        wait_counts(runner, {"a": 2, "b": 1})
        a1.close()
        wait_counts(runner, {"a": 1, "b": 1})
        a3 = login(runner, "a")                     # a place is free again
        for w in (a2, a3, b):
            w.close()
        wait_counts(runner, {}, accepted=0)
    finally:
        runner.stop()


def test_re_auth_moves_the_count_and_a_full_user_refuses_it(redis7):
    runner = proxy(redis7, max_clients_per_user=1)
    try:
        c = login(runner, "a")
        assert c.call("AUTH", "a", "a-pw") == b"OK"       # the same user again: still 1
        wait_counts(runner, {"a": 1})
        assert c.call("AUTH", "b", "b-pw") == b"OK"       # a -> b: a's place is free
        wait_counts(runner, {"b": 1})
        a = login(runner, "a")
        wait_counts(runner, {"a": 1, "b": 1})
        # b -> a while a is full: refused with the error, closed; b's place freed at close.
        c.send(cmd("AUTH", "a", "a-pw") + cmd("PING"))
        assert refused(c)
        wait_counts(runner, {"a": 1})
        assert a.call("PING") == b"PONG"
        b = login(runner, "b")
        assert b.call("PING") == b"PONG"
        for w in (a, b):
            w.close()
        wait_counts(runner, {}, accepted=0)
    finally:
        runner.stop()


def test_reset_releases_and_the_automatic_login_is_counted(redis7):
    """A nopass `default`: its automatic login counts; past the limit, the connection may still
    AUTH as another user, and its first command as `default` gets the error and the close."""
    users = dict(USERS, default="on nopass ~k:* +@all")
    runner = proxy(redis7, users=users, max_clients_per_user=1)
    try:
        d = Wire(runner.port)                           # logged in as default at connect
        assert d.call("PING") == b"PONG"
        wait_counts(runner, {"default": 1})
        w = Wire(runner.port)                           # a second default ...
        w.send(cmd("PING") + cmd("PING"))
        assert refused(w)                               # ... at its first command
        w = Wire(runner.port)
        w.send(cmd("HELLO", "3") + cmd("PING"))
        assert refused(w)
        # RESET of an `a` connection: a's place is freed, and RESET's automatic login as
        # `default` (full) waits: the next command as default is refused.
        a = login(runner, "a")
        wait_counts(runner, {"default": 1, "a": 1})
        assert a.call("RESET") == b"RESET"
        wait_counts(runner, {"default": 1})
        a.send(cmd("GET", "k:1"))
        assert refused(a)
        login(runner, "a").close()
        # RESET of the default connection frees its place and takes it again.
        assert d.call("RESET") == b"RESET"
        wait_counts(runner, {"default": 1})
        assert d.call("AUTH", "b", "b-pw") == b"OK"      # default -> b
        wait_counts(runner, {"b": 1})
        e = Wire(runner.port)                           # default's place is free again
        assert e.call("PING") == b"PONG"
        for w in (d, e):
            w.close()
        wait_counts(runner, {}, accepted=0)
    finally:
        runner.stop()


def test_certificate_login_at_connect_is_counted(redis7, tmp_path):
    certs.generate(tmp_path, clients=["a"])
    tls_port = free_port()
    users = dict(USERS, a={"rules": "on ~k:* +@all", "certificate": {"cn": "a"}})
    runner = proxy(redis7, users=users, max_clients_per_user=1, listen=[
        f"127.0.0.1:{free_port()}",
        {"address": f"127.0.0.1:{tls_port}",
         "tls": {"cert": str(tmp_path / "server.crt"), "key": str(tmp_path / "server.key"),
                 "client_ca": str(tmp_path / "ca.crt"), "client_cert": "required"}}])

    def connect() -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        ctx.check_hostname = False
        ctx.load_cert_chain(tmp_path / "a.crt", tmp_path / "a.key")
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", tls_port), 10))

    def read_all(s) -> bytes:
        out = b""
        s.settimeout(5)
        try:
            while data := s.recv(65536):
                out += data
        except (ConnectionResetError, ssl.SSLError):
            pass
        return out

    try:
        first = connect()
        first.sendall(cmd("PING"))
        assert first.recv(100) == b"+PONG\r\n"
        second = connect()
        assert read_all(second) == MAXED
        first.close()
        wait_counts(runner, {}, accepted=0)
        third = connect()
        third.sendall(cmd("PING"))
        assert third.recv(100) == b"+PONG\r\n"
        third.close()
        second.close()
        wait_counts(runner, {}, accepted=0)
    finally:
        runner.stop()


def test_no_leak_after_many_logins(redis7):
    """Many connections logging in, re-authenticating, resetting and failing: the counts
    go back to nothing."""
    runner = proxy(redis7, max_clients_per_user=5)
    try:
        for round_ in range(4):
            conns = []
            for i in range(12):
                w = Wire(runner.port)
                w.send(cmd("AUTH", "a" if i % 2 else "b", ("a" if i % 2 else "b") + "-pw")
                       + cmd("AUTH", "b", "b-pw") + cmd("RESET") + cmd("AUTH", "a", "a-pw"))
                conns.append(w)
            for w in conns:
                w.close()
            wait_counts(runner, {}, accepted=0)
    finally:
        runner.stop()


def test_reload_lowering_the_limit_keeps_open_connections(redis7, tmp_path):
    runner = proxy(redis7, max_clients_per_user=3)
    try:
        held = [login(runner, "a") for _ in range(3)]
        assert reload(runner, tmp_path, {"upstream": redis7.upstream, "users": USERS,
                                         "limits": {"max_clients_per_user": 1}})
        assert all(w.call("PING") == b"PONG" for w in held)
        assert refused(login_attempt(runner, "a"))
        for w in held[:2]:
            w.close()
        wait_counts(runner, {"a": 1})
        assert refused(login_attempt(runner, "a"))       # still 1 of 1
        held[2].close()
        wait_counts(runner, {}, accepted=0)
        login(runner, "a").close()
    finally:
        runner.stop()


def reload(runner, tmp_path, raw: dict) -> bool:
    """Proxy.reload (what SIGHUP runs) from a file holding `raw`."""
    import yaml
    path = tmp_path / "reloaded.yaml"
    path.write_text(yaml.safe_dump(dict(raw, listen=f"127.0.0.1:{runner.port}",
                                        auth_throttle={"max_failures": 1_000_000})))
    runner.proxy.config.path = path
    return runner.call(runner.proxy.reload)


def login_attempt(runner, user: str) -> Wire:
    w = Wire(runner.port)
    w.send(cmd("AUTH", user, f"{user}-pw"))
    return w


# ---------------------------------------------------------------------------- idle_timeout

def is_closed(w: Wire, timeout: float) -> bool:
    return w.closed(timeout)


@pytest.mark.parametrize("multiplex", [0, 1])
def test_idle_connections_are_closed_active_ones_are_not(redis7, multiplex):
    runner = proxy(redis7, multiplex=multiplex, idle_timeout="400ms")
    try:
        idle = login(runner, "a")
        assert idle.call("SET", "k:idle", "1") == b"OK"
        busy = login(runner, "b")
        unauthenticated = Wire(runner.port)          # limits.auth_timeout's (10 s), not this
        start = time.monotonic()
        # The busy client keeps sending (GET and pipelines of SET: the C lane's steady state)
        # for three timeouts; the idle one is closed meanwhile, silently.
        while time.monotonic() - start < 1.2:
            busy.send(cmd("SET", "k:b", "1") + cmd("GET", "k:b") * 10)
            assert busy.read(11)[-1] == b"1"
            time.sleep(0.05)
        assert idle.read_raw_until_closed() == b""       # closed, without a word (as Redis)
        assert busy.call("PING") == b"PONG"
        from redisgate.io.server import Lane
        if Lane is not None:   # (built here: the busy client's steady state ran in C)
            assert runner.call(lambda: max(c.lane.passed for c in runner.proxy.clients
                                           if c.lane is not None)) > 0
        unauthenticated.send(cmd("PING"))
        assert unauthenticated.read(1)[0].args[0].startswith("NOAUTH")
        busy.close()
        unauthenticated.close()
        wait_counts(runner, {}, accepted=0)
    finally:
        runner.stop()


def test_idle_timeout_is_not_early(redis7):
    runner = proxy(redis7, idle_timeout=1.5)
    try:
        w = login(runner, "a")
        assert not is_closed(w, 0.8)       # (well within the timeout: still open)
        assert w.call("PING") == b"PONG"
        assert is_closed(w, 5)
    finally:
        runner.stop()


def test_blocked_and_subscribed_connections_are_not_idle(redis7):
    runner = proxy(redis7, idle_timeout="300ms")
    try:
        blocked = login(runner, "a")
        blocked.send(cmd("BLPOP", "k:empty-list", "1.2"))
        sub2 = login(runner, "a")
        assert sub2.call("SUBSCRIBE", "ch") == [b"subscribe", b"ch", 1]
        sub3 = login(runner, "b", via="hello")
        assert sub3.call("SUBSCRIBE", "ch") == [b"subscribe", b"ch", 1]
        time.sleep(1.0)
        redis7.admin().publish("ch", "hello")
        assert sub2.read(1)[0] == [b"message", b"ch", b"hello"]
        assert sub3.read(1)[0] == [b"message", b"ch", b"hello"]
        assert blocked.read(1)[0] is None              # BLPOP's own timeout, answered
        # Done waiting: idle from now on, and closed.
        assert is_closed(blocked, 5)
        # Unsubscribed: idle too.
        sub2.send(cmd("UNSUBSCRIBE"))
        assert sub2.read(1)[0] == [b"unsubscribe", b"ch", 0]
        assert is_closed(sub2, 5)
        assert sub3.call("PING") == b"PONG"           # (RESP3: PING while subscribed)
        sub3.close()
        wait_counts(runner, {}, accepted=0)
    finally:
        runner.stop()


def test_redis_py_pool_reconnects_after_an_idle_close(redis7):
    """What a client with a pool sees: the next command on a closed pooled connection is
    retried on a new one (redis-py), so an idle timeout is invisible to it."""
    runner = proxy(redis7, idle_timeout="200ms")
    try:
        c = redis.Redis(port=runner.port, username="a", password="a-pw", protocol=2,
                        socket_timeout=5)
        assert c.set("k:pool", "1")
        time.sleep(0.8)
        assert c.get("k:pool") == b"1"
        c.close()
        wait_counts(runner, {}, accepted=0)
    finally:
        runner.stop()


def test_a_reload_sets_idle_timeout_and_keeps_multiplex(redis7, tmp_path):
    """A reload that sets idle_timeout applies it to open connections; one that changes
    upstream.multiplex keeps the links made at start (and says so) instead of asking for
    links that are not there."""
    runner = proxy(redis7)
    try:
        w = login(runner, "a")
        assert not is_closed(w, 0.5)
        assert reload(runner, tmp_path, {"upstream": dict(redis7.upstream, multiplex=2),
                                         "users": USERS, "limits": {"idle_timeout": 0.3}})
        fresh = login(runner, "b")                      # (dedicated still: no shared link)
        assert fresh.call("SET", "k:m", "1") == b"OK"
        assert runner.call(lambda: runner.proxy.links) == []
        assert is_closed(w, 5)
        assert is_closed(fresh, 5)
        wait_counts(runner, {}, accepted=0)
    finally:
        runner.stop()


# ---------------------------------------------------------------------------- seen by an operator

def test_the_limits_are_visible_in_metrics_and_audit(redis7, tmp_path):
    """max_clients, max_clients_per_user and idle_timeout each leave a metric and an audit line
    (the disconnect's reason)."""
    import json
    from prometheus_client import REGISTRY

    def value(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    trail = tmp_path / "audit.jsonl"
    before = (value("redisgate_clients_refused_total", limit="max_clients"),
              value("redisgate_clients_refused_total", limit="max_clients_per_user"),
              value("redisgate_idle_timeouts_total"))
    runner = ProxyRunner({"upstream": redis7.upstream, "users": USERS,
                          "audit": {"path": str(trail)},
                          "limits": {"max_clients": 2, "max_clients_per_user": 1,
                                     "idle_timeout": "300ms"}}).start()
    try:
        first = login(runner, "a")
        second = login_attempt(runner, "a")            # a's second connection
        assert refused(second)
        third = Wire(runner.port)
        fourth = Wire(runner.port)                     # past max_clients (2: first, third)
        assert refused(fourth)
        assert first.read_raw_until_closed() == b""    # idle past 300 ms: closed
        third.close()
        deadline = time.monotonic() + 10
        while True:
            events = [json.loads(x) for x in trail.read_text().splitlines() if x.strip()]
            reasons = {e.get("reason") for e in events if e["event"] == "disconnect"}
            if {"max-clients", "max-clients-per-user", "idle-timeout"} <= reasons:
                break
            assert time.monotonic() < deadline, reasons
            time.sleep(0.05)
    finally:
        runner.stop()
    after = (value("redisgate_clients_refused_total", limit="max_clients"),
             value("redisgate_clients_refused_total", limit="max_clients_per_user"),
             value("redisgate_idle_timeouts_total"))
    assert [b - a for a, b in zip(before, after)] == [1, 1, 1]
