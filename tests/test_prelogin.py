"""Before login: what a client that has not logged in can cost the proxy, and what it can write
into the proxy's logs, metrics and ACL LOG (issue 23 #5, #7, #9; issue 22 #6, #8).

- Names sent with AUTH are bounded everywhere: metric labels are configured users or `unknown`,
  the audit line shows `unknown:<8 hex>`, ACL LOG `unknown` (a password typed into the user-name
  slot lands nowhere), and one helper (redisgate.telemetry.audit.safe) escapes and cuts every client-chosen
  string in a log line (names, keys, certificate identities): no line can be forged.
- limits.auth_timeout closes connections that do not log in, on plain and TLS listeners.
- auth_throttle: failed logins per address and per name; past the threshold, refused unchecked
  (same reply) and delayed, without blocking the proxy; other addresses and logged-in
  connections are not affected.
- limits.max_clients counts TLS connections from accept, handshakes included.
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import hiredis
import pytest
from prometheus_client import REGISTRY

from proxy import ProxyRunner, pw_hash
from redisgate import certs
from redisgate.telemetry.audit import login_name, safe, unknown_tag, user_label
from redisgate.config import AuthThrottle, ConfigError, build_config
from redisgate.policy.throttle import LoginThrottle
from redisgate.tls import describe_peer
from servers import free_port
from wire import Wire, cmd

USERS = {
    "app": f"on {pw_hash('app-pw')} ~app:* +@all",
    "other": f"on {pw_hash('other-pw')} ~app:* +@all",
    "admin": f"on {pw_hash('admin-pw')} allkeys allchannels +@all",
}
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


class AuditLines(logging.Handler):
    """The audit log as the formatted lines a file handler would write."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record):
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def audit_lines():
    handler = AuditLines()
    logger = logging.getLogger("redisgate.audit")
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def label_sets(name: str) -> set:
    return {tuple(sorted(s.labels.items())) for m in REGISTRY.collect() for s in m.samples
            if s.name == name}


def wire_from(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> Wire:
    w = Wire.__new__(Wire)
    w.sock = socket.create_connection(("127.0.0.1", port), timeout, source_address=(source, 0))
    w.reader = hiredis.Reader()
    w.raw_log = bytearray()
    return w


def proxy(redis7, **extra) -> ProxyRunner:
    extra.setdefault("auth_throttle", {})   # the defaults (ProxyRunner's own are relaxed)
    return ProxyRunner({"upstream": redis7.upstream, "users": USERS, **extra}).start()


# ---------------------------------------------------------------- the one escaping helper

def test_safe_escapes_and_cuts():
    assert safe(b"bob\nx\r\x00\x1b y") == "bob\\x0ax\\x0d\\x00\\x1b\\x20y"
    assert safe("caf\u00e9") == "caf\\xc3\\xa9"
    assert safe(b"a\\b") == "a\\\\b"           # a backslash cannot fake an escape
    long = safe(b"x" * 16000)
    assert long == "x" * 128 + "...[+15872 bytes]"
    assert safe(b"\n" * 1000).count("\\x0a") == 128
    assert safe(None) == "-"
    assert safe("two words", spaces=True) == "two words"
    assert "\n" not in safe("a\nb", spaces=True)


def test_names_before_login_show_only_when_configured():
    users = {"alice"}
    assert login_name(b"alice", users) == "alice"
    tag = login_name(b"Hunter2-S3cret!", users)
    assert tag.startswith("unknown:") and len(tag) == 16 and "Hunter2" not in tag
    assert tag == unknown_tag(b"Hunter2-S3cret!") != unknown_tag(b"Hunter2-S3cret")
    assert login_name(b"\xff\xfe", users).startswith("unknown:")
    assert user_label(b"alice", users) == "alice"
    assert user_label(b"Hunter2-S3cret!", users) == user_label(None, users) == "unknown"


def test_certificate_identities_are_escaped_in_descriptions():
    peer = {"subject": ((("commonName", "bob\r\n2026 INFO redisgate.audit: login user=admin"),),),
            "subjectAltName": (("DNS", "a\x00b"), ("URI", "u" * 500))}
    text = describe_peer(peer)
    assert "\n" not in text and "\r" not in text and "\x00" not in text
    assert "bob\\x0d\\x0a2026" in text and "a\\x00b" in text and len(text) < 400


# ---------------------------------------------------------------- issue 23 #5, issue 22 #6

def test_unique_long_names_grow_neither_metrics_nor_audit(redis7, audit_lines):
    """500 failed AUTHs with unique 16,000-byte names (throttle off for this): the label sets
    of the auth-failure metric stay those of configured users plus `unknown`, and the audit log
    grows by a bounded line per attempt (the old code wrote each whole name, 8 MB here)."""
    runner = proxy(redis7, auth_throttle={"max_failures": 1_000_000})
    try:
        before = label_sets("redisgate_auth_failures_total")
        w = Wire(runner.port)
        n = 500
        names = [(b"%05d" % i) * 3200 for i in range(n)]
        sender = threading.Thread(target=w.send,
                                  args=(b"".join(cmd("AUTH", name, "x") for name in names),))
        sender.start()
        replies = w.read(n)
        sender.join(10)
        assert all(str(r) == WRONGPASS for r in replies)
        after = label_sets("redisgate_auth_failures_total")
        assert after - before <= {(("reason", "unknown-user"), ("user", "unknown"))}
        failed = [line for line in audit_lines.lines if "auth-failed" in line]
        assert len(failed) == n
        assert max(map(len, failed)) < 300
        assert len(audit_lines.text()) < n * 300
        admin = runner.client("admin", "admin-pw")
        entries = admin.execute_command("ACL", "LOG")
        assert entries and all(e[e.index(b"username") + 1] == b"unknown" for e in entries)
        admin.close()
        w.close()
    finally:
        runner.stop()


def test_a_newline_in_a_name_or_key_cannot_forge_an_audit_line(redis7, audit_lines):
    runner = proxy(redis7)
    try:
        forged = "bob\n2026-12-07 02:00:00,000 INFO redisgate.audit: login user=admin via=password"
        w = Wire(runner.port)
        assert str(w.call("AUTH", forged, "x")) == WRONGPASS
        app = runner.client("app", "app-pw")
        with pytest.raises(Exception):
            app.get("nope\r\n2026 INFO redisgate.audit: login user=admin")
        app.close()
        w.close()
        time.sleep(0.1)
        for line in audit_lines.lines:
            assert "\n" not in line and "\r" not in line
        assert not any("login user=admin" in line for line in audit_lines.lines)
        denied = [line for line in audit_lines.lines if line.split(": ", 1)[1].startswith("denied")]
        assert denied and "object=nope\\x0d\\x0a2026" in denied[-1]
    finally:
        runner.stop()


def test_a_password_in_the_name_slot_is_stored_nowhere(redis7, audit_lines):
    runner = proxy(redis7)
    try:
        w = Wire(runner.port)
        assert str(w.call("AUTH", "Hunter2-S3cret!", "alice")) == WRONGPASS
        w.close()
        admin = runner.client("admin", "admin-pw")
        acl_log = repr(admin.execute_command("ACL", "LOG"))
        admin.close()
        exposition = "".join(str(s) for m in REGISTRY.collect() for s in m.samples)
        for where in (acl_log, audit_lines.text(), exposition):
            assert "Hunter2" not in where
        assert f"user={unknown_tag(b'Hunter2-S3cret!')}" in audit_lines.text()
    finally:
        runner.stop()


# ---------------------------------------------------------------- issue 23 #7: auth timeout

def test_auth_timeout_closes_idle_and_half_auth_connections(redis7):
    runner = proxy(redis7, limits={"auth_timeout": 0.5})
    try:
        timeouts = metric("redisgate_auth_timeouts_total")
        idle = Wire(runner.port)
        half = Wire(runner.port)
        half.send(b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$16000\r\n" + b"x" * 8000)
        logged_in = Wire(runner.port)
        assert logged_in.call("AUTH", "app", "app-pw") == b"OK"
        logged_out = Wire(runner.port)
        assert logged_out.call("AUTH", "app", "app-pw") == b"OK"
        time.sleep(0.7)   # past the timeout counted from accept: RESET restarts the clock
        assert logged_out.call("RESET") == b"RESET"
        assert idle.closed(5) and half.closed(5)
        assert logged_in.call("PING") == b"PONG"
        assert logged_out.closed(5)
        assert metric("redisgate_auth_timeouts_total") - timeouts == 3
        for w in (idle, half, logged_in, logged_out):
            w.close()
    finally:
        runner.stop()


def test_a_connection_logged_in_at_connect_has_no_auth_timeout(redis7):
    users = dict(USERS, default="on nopass ~app:* +@all")
    runner = ProxyRunner({"upstream": redis7.upstream, "users": users,
                          "limits": {"auth_timeout": 0.3}}).start()
    try:
        w = Wire(runner.port)
        time.sleep(0.6)
        assert w.call("PING") == b"PONG"
        w.close()
    finally:
        runner.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("prelogin-pki")
    certs.generate(d, clients=["app"])
    return d


def tls_proxy(redis7, pki, **limits) -> tuple[ProxyRunner, int]:
    tls_port = free_port()
    runner = ProxyRunner({
        "listen": [f"127.0.0.1:{free_port()}",
                   {"address": f"127.0.0.1:{tls_port}",
                    "tls": {"cert": str(pki / "server.crt"), "key": str(pki / "server.key")}}],
        "upstream": redis7.upstream, "users": USERS, "limits": limits}).start()
    return runner, tls_port


def tls_client(pki, port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.check_hostname = False
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), 10))


def closed(sock, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, ssl.SSLError):
        return True
    except socket.timeout:
        return False


def test_auth_timeout_on_a_tls_listener(redis7, pki):
    """After the handshake and during it: the timeout counts from accept on TLS too."""
    runner, tls_port = tls_proxy(redis7, pki, auth_timeout=0.5)   # handshake_timeout: 10 s
    try:
        idle = tls_client(pki, tls_port)
        half = tls_client(pki, tls_port)
        half.sendall(b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$16000\r\n" + b"x" * 8000)
        handshaking = socket.create_connection(("127.0.0.1", tls_port), 10)
        ok = tls_client(pki, tls_port)
        ok.sendall(cmd("AUTH", "app", "app-pw"))
        assert ok.recv(100) == b"+OK\r\n"
        assert closed(idle) and closed(half) and closed(handshaking)
        time.sleep(0.3)
        ok.sendall(cmd("PING"))
        assert ok.recv(100) == b"+PONG\r\n"
        for s in (idle, half, handshaking, ok):
            s.close()
    finally:
        runner.stop()


# ---------------------------------------------------------------- issue 22 #8: max_clients

def test_max_clients_counts_tls_handshakes(redis7, pki):
    runner, tls_port = tls_proxy(redis7, pki, max_clients=5)
    try:
        held = [socket.create_connection(("127.0.0.1", tls_port), 10) for _ in range(5)]
        deadline = time.monotonic() + 5
        while runner.call(lambda: runner.proxy.accepted) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        plain = Wire(runner.port)
        assert plain.read_raw_until_closed() == b"-ERR max number of clients reached\r\n"
        extra = socket.create_connection(("127.0.0.1", tls_port), 10)
        assert closed(extra, 2)
        for s in held + [extra]:
            s.close()
        deadline = time.monotonic() + 5
        while runner.call(lambda: runner.proxy.accepted) and time.monotonic() < deadline:
            time.sleep(0.02)
        again = Wire(runner.port)
        assert again.call("AUTH", "app", "app-pw") == b"OK"
        again.close()
    finally:
        runner.stop()


# ---------------------------------------------------------------- issue 23 #9: auth throttle

def test_pipelined_guesses_are_checked_only_up_to_the_threshold(redis7, audit_lines):
    """10,000 pipelined guesses on one connection: the first 10 are checked, then the address
    and the name are locked (300 s): the right password inside the pipeline is refused
    unchecked, replies come one a second, the proxy serves everyone else meanwhile."""
    runner = proxy(redis7)
    try:
        existing = runner.client("app", "app-pw")
        existing.set("app:k", "v")
        checked = metric("redisgate_auth_failures_total", user="app", reason="wrong-password")
        refused = metric("redisgate_auth_refused_locked_total")
        attacker = Wire(runner.port)
        guesses = [cmd("AUTH", "app", f"guess-{i}") for i in range(10_000)]
        guesses[10] = cmd("AUTH", "app", "app-pw")          # right, but after the threshold
        sender = threading.Thread(target=lambda: _send_quietly(attacker.sock, b"".join(guesses)),
                                  daemon=True)
        sender.start()
        assert [str(r) for r in attacker.read(11)] == [WRONGPASS] * 11
        # Another address logs in at once; the locked user's open connection keeps working.
        elsewhere = wire_from(runner.port, "127.0.0.2")
        assert elsewhere.call("AUTH", "other", "other-pw") == b"OK"
        assert existing.get("app:k") == b"v"
        # The name is locked for every address, the address for every name; same reply for a
        # known and an unknown name.
        assert str(wire_from(runner.port, "127.0.0.2").call("AUTH", "app", "app-pw")) == WRONGPASS
        same_address = Wire(runner.port)
        assert str(same_address.call("AUTH", "other", "other-pw")) == WRONGPASS
        assert str(same_address.call("AUTH", "nosuchuser", "x")) == WRONGPASS
        time.sleep(1.5)
        assert metric("redisgate_auth_failures_total", user="app", reason="wrong-password") \
            - checked == 10
        assert metric("redisgate_auth_refused_locked_total") - refused >= 3
        assert sum("auth-failed" in line for line in audit_lines.lines) == 10
        lockouts = [line for line in audit_lines.lines if "auth-lockout" in line]
        assert len(lockouts) == 2 and "scope=address addr=127.0.0.1" in lockouts[0] \
            and "scope=user user=app" in lockouts[1]
        attacker.close()
        elsewhere.close()
        same_address.close()
        existing.close()
    finally:
        runner.stop()


def _send_quietly(sock, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass   # the test closed the socket while the proxy was still holding it back


def test_a_lockout_looks_the_same_for_known_and_unknown_names(redis7):
    runner = proxy(redis7, auth_throttle={"max_failures": 3, "window": 60, "lockout": 300})
    try:
        sources = iter(f"127.0.0.{i}" for i in range(10, 40))
        for name in ("app", "ghost"):
            for _ in range(3):   # from 3 addresses: only the name reaches the threshold
                w = wire_from(runner.port, next(sources))
                assert str(w.call("AUTH", name, "wrong")) == WRONGPASS
                w.close()
        replies = {}
        for name, password in (("app", "app-pw"), ("ghost", "x")):
            w = wire_from(runner.port, next(sources))
            replies[name] = str(w.call("AUTH", name, password))
            w.close()
        assert replies == {"app": WRONGPASS, "ghost": WRONGPASS}
        w = wire_from(runner.port, next(sources))   # HELLO AUTH is the same login
        assert str(w.call("HELLO", "2", "AUTH", "app", "app-pw")) == WRONGPASS
        w.close()
        w = wire_from(runner.port, next(sources))
        assert w.call("AUTH", "other", "other-pw") == b"OK"
        w.close()
    finally:
        runner.stop()


def test_throttle_counts_per_window_locks_and_recovers():
    now = [0.0]
    t = LoginThrottle(AuthThrottle(max_failures=3, window=10, lockout=100), clock=lambda: now[0])
    assert t.failed("a", b"u") == [] and t.failed("a", b"v") == []
    now[0] = 11.0                           # a new window: the count starts again
    assert t.failed("a", b"w") == [] and t.failed("a", b"x") == []
    assert not t.locked("a", b"y")
    assert t.failed("a", b"z") == ["address"]
    assert t.locked("a", b"anything") and not t.locked("b", b"u")
    now[0] = 112.0
    assert not t.locked("a", b"u")
    assert [t.failed(f"b{i}", b"n") for i in range(3)][-1] == ["user"]
    assert t.locked("c", b"n")
    now[0] = 300.0
    t.failed("d", b"m")
    t.succeeded("g", b"m")                  # a login forgets the name's failures
    assert t.failed("e", b"m") == [] and t.failed("f", b"m") == []


def test_a_name_lockout_spares_addresses_that_logged_in_as_it():
    """Guessing at a service's name from elsewhere must not lock the service's own clients out."""
    now = [0.0]
    t = LoginThrottle(AuthThrottle(max_failures=3, window=10, lockout=100), clock=lambda: now[0])
    t.succeeded("127.0.0.1", b"worker")
    assert [t.failed(f"10.0.0.{i}", b"worker") for i in range(3)][-1] == ["user"]
    assert t.locked("10.0.0.9", b"worker")            # a new address: the name's lockout holds
    assert not t.locked("127.0.0.1", b"worker")       # the service's own address: not locked
    assert t.locked("127.0.0.1", b"other") is False
    for _ in range(3):                                # its own failures still lock the address
        t.failed("127.0.0.1", b"worker")
    assert t.locked("127.0.0.1", b"worker")


def test_throttle_tables_are_bounded():
    t = LoginThrottle(AuthThrottle(), max_tracked=100)
    for i in range(1000):
        t.failed(f"10.0.{i // 256}.{i % 256}", b"%d" % i + b"x" * 1000)
    for i in range(1000):
        t.succeeded(f"10.1.{i // 256}.{i % 256}", b"n")
    assert t.tracked() == {"address": 100, "user": 100, "known_good": 100}
    assert all(len(k) == 16 for k in t._tables["user"])   # names kept only as a short hash


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("raw, message", [
    ({"limits": {"handshake_timeout": float("inf")}}, "limits.handshake_timeout: expected a duration > 0"),
    ({"limits": {"auth_timeout": float("nan")}}, "limits.auth_timeout: expected a duration > 0"),
    ({"limits": {"auth_timeout": 0}}, "limits.auth_timeout: expected a duration > 0"),
    ({"limits": {"auth_timeout": "0s"}}, "limits.auth_timeout: expected a duration > 0"),
    ({"limits": {"auth_timeout": "soon"}}, "limits.auth_timeout: expected a duration > 0"),
    ({"limits": {"max_clients": float("inf")}}, "limits.max_clients: expected a positive whole number"),
    ({"auth_throttle": 5}, "auth_throttle: expected a mapping"),
    ({"auth_throttle": {"max_failures": 0}}, "auth_throttle.max_failures: expected a positive whole number"),
    ({"auth_throttle": {"max_failures": 2.5}}, "auth_throttle.max_failures: expected a positive whole number"),
    ({"auth_throttle": {"window": float("inf")}}, "auth_throttle.window: expected a duration > 0"),
    ({"auth_throttle": {"lockout": "5 minutes"}}, "auth_throttle.lockout: expected a duration > 0"),
    ({"auth_throttle": {"lockot": 5}}, "auth_throttle.lockot: unknown setting"),
])
def test_bad_prelogin_settings_are_where_why_errors(raw, message):
    with pytest.raises(ConfigError) as e:
        build_config({"upstream": "127.0.0.1:6379", "users": USERS, **raw})
    assert any(p.startswith(message) for p in e.value.problems), e.value.problems


def test_prelogin_settings_defaults_and_values():
    cfg = build_config({"upstream": "127.0.0.1:6379", "users": USERS})
    assert cfg.auth_timeout == 10.0
    assert cfg.auth_throttle == AuthThrottle(max_failures=10, window=60.0, lockout=300.0)
    cfg = build_config({"upstream": "127.0.0.1:6379", "users": USERS,
                        "limits": {"auth_timeout": 3, "handshake_timeout": "500ms"},
                        "auth_throttle": {"max_failures": 5, "window": "30s", "lockout": "5m"}})
    assert cfg.auth_timeout == 3.0 and cfg.handshake_timeout == 0.5
    assert cfg.auth_throttle == AuthThrottle(5, 30.0, 300.0)
