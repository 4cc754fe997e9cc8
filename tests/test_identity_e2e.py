"""Identities end to end (issue 22, findings 1, 4, 5, 7): `python -m redisgate serve` as a
subprocess in front of a real Redis 7, real TLS clients with certificates from two test CAs, and
SIGHUP reloads.

Listeners: plain, TLS trusting CA 1 (client certificates optional), TLS trusting CA 2 (required).
"""
from __future__ import annotations

import socket
import ssl
import subprocess
import sys

import pytest
import yaml

from redisgate import certs
from servers import RedisServer, free_port
from test_tls_e2e import ROOT, Gate, closed_by_peer, resp, roundtrip, sha

PW = "bob-secret-pw"
RULES = "~d:* +get +set +ping +acl|whoami"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("identity-pki")
    ca1, ca2 = certs.make_ca(), certs.make_ca()
    certs.write_pair(d, "ca1", ca1)
    certs.write_pair(d, "ca2", ca2)
    certs.write_pair(d, "server", certs.make_server_cert(ca1))
    for name, ca in (("alice", ca1), ("bob", ca1), ("stranger", ca1)):
        certs.write_pair(d, f"{name}-ca1", certs.make_client_cert(ca, name))
    for name in ("alice", "bob"):
        certs.write_pair(d, f"{name}-ca2", certs.make_client_cert(ca2, name))
    (d / "both.crt").write_bytes(ca1.cert_pem() + ca2.cert_pem())
    return d


@pytest.fixture(scope="module")
def redis7():
    srv = RedisServer("7").start()
    yield srv
    srv.stop()


class Proxy:
    def __init__(self, tmp_path, pki, redis7, users: dict, tls_a: dict | None = None):
        self.pki = pki
        self.plain, self.a, self.b = free_port(), free_port(), free_port()
        self.tls_a = {"cert": str(pki / "server.crt"), "key": str(pki / "server.key"),
                      "client_ca": str(pki / "ca1.crt"), "client_cert": "optional", **(tls_a or {})}
        self.tls_b = {"cert": str(pki / "server.crt"), "key": str(pki / "server.key"),
                      "client_ca": str(pki / "ca2.crt"), "client_cert": "required"}
        self.redis = redis7
        self.gate = Gate(tmp_path, self.config(users))
        self.gate.start(self.b)

    def config(self, users: dict) -> dict:
        return {"listen": [{"address": f"127.0.0.1:{self.plain}"},
                           {"address": f"127.0.0.1:{self.a}", "tls": self.tls_a},
                           {"address": f"127.0.0.1:{self.b}", "tls": self.tls_b}],
                "upstream": {"address": f"127.0.0.1:{self.redis.port}"},
                "users": users}

    def reload(self, users: dict) -> str:
        start = len(self.gate.log())
        self.gate.config_path.write_text(yaml.safe_dump(self.config(users), sort_keys=False))
        self.gate.proc.send_signal(__import__("signal").SIGHUP)
        self.gate.wait_for_log(r"configuration reloaded|reload rejected", start)
        return self.gate.log()[start:]

    def connect(self, where: str, cert: str | None = None, **ctx_kw):
        port = {"plain": self.plain, "a": self.a, "b": self.b}[where]
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if where == "plain":
            return raw
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca1.crt"))
        for k, v in ctx_kw.items():
            setattr(ctx, k, v)
        if cert:
            ctx.load_cert_chain(self.pki / f"{cert}.crt", self.pki / f"{cert}.key")
        return ctx.wrap_socket(raw, server_hostname="localhost")

    def whoami(self, sock) -> bytes:
        return roundtrip(sock, resp("ACL", "WHOAMI"))

    def stop(self):
        self.gate.stop()


@pytest.fixture
def proxy_factory(tmp_path, pki, redis7):
    made = []

    def make(users, **kw):
        p = Proxy(tmp_path, pki, redis7, users, **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


def test_finding_1_a_certificate_bound_nopass_default_needs_its_certificate(proxy_factory):
    p = proxy_factory({"default": {"rules": f"on nopass {RULES}", "certificate": {"cn": "alice"}}})
    for sock in (p.connect("plain"), p.connect("a"), p.connect("a", "stranger-ca1")):
        with sock:
            assert p.whoami(sock).startswith(b"-NOAUTH")
            assert roundtrip(sock, resp("SET", "d:1", "x")).startswith(b"-NOAUTH")
            assert roundtrip(sock, resp("RESET")) == b"+RESET\r\n"
            assert roundtrip(sock, resp("SET", "d:1", "x")).startswith(b"-NOAUTH")
            assert roundtrip(sock, resp("AUTH", "default", "x")).startswith(b"-WRONGPASS")
    with p.connect("a", "alice-ca1") as sock:
        assert p.whoami(sock) == b"$7\r\ndefault\r\n"
        assert roundtrip(sock, resp("RESET")) == b"+RESET\r\n"
        assert p.whoami(sock) == b"$7\r\ndefault\r\n"


def test_finding_4_a_reload_closes_sessions_whose_certificate_no_longer_maps(proxy_factory):
    users = {"alice": {"rules": f"on {RULES}", "certificate": {"cn": "alice"}},
             "bob": {"rules": f"on {sha(PW)} {RULES}", "certificate": {"cn": "bob"},
                     "require_password": True},
             "app": f"on {sha(PW)} {RULES}"}
    p = proxy_factory(users)
    alice = p.connect("a", "alice-ca1")
    assert p.whoami(alice) == b"$5\r\nalice\r\n"
    bob = p.connect("a", "bob-ca1")              # opened before bob is re-bound; not logged in
    assert p.whoami(bob).startswith(b"-NOAUTH")
    app = p.connect("plain")
    assert roundtrip(app, resp("AUTH", "app", PW)) == b"+OK\r\n"
    log = p.reload({**users, "alice": {**users["alice"], "certificate": {"cn": "alice-new"}},
                    "bob": {**users["bob"], "certificate": {"cn": "bob-new"}}})
    assert "1 connections closed by the re-check" in log
    assert closed_by_peer(alice)                 # at once: it sent nothing after the reload
    assert roundtrip(bob, resp("AUTH", "bob", PW)).startswith(b"-WRONGPASS")
    assert p.whoami(app) == b"$3\r\napp\r\n"     # untouched
    assert "disconnect user=alice reason=reload:cert-unmapped" in p.gate.log()
    for s in (bob, app):
        s.close()


def test_finding_4_swapping_the_listeners_ca_closes_sessions_it_no_longer_trusts(proxy_factory, pki):
    users = {"alice": {"rules": f"on {RULES}", "certificate": {"cn": "alice"}}}
    p = proxy_factory(users)
    alice = p.connect("a", "alice-ca1")
    assert p.whoami(alice) == b"$5\r\nalice\r\n"
    p.tls_a = {**p.tls_a, "client_ca": str(pki / "both.crt")}   # CA 1 still trusted
    p.reload(users)
    assert p.whoami(alice) == b"$5\r\nalice\r\n"
    p.tls_a = {**p.tls_a, "client_ca": str(pki / "ca2.crt")}
    log = p.reload(users)
    assert "client_ca changed; applies to new connections" in log
    assert closed_by_peer(alice)
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        with p.connect("a", "alice-ca1") as s:        # a new handshake with CA 1: refused
            p.whoami(s)


def test_finding_5_changed_tls_settings_apply_to_new_connections(proxy_factory):
    users = {"app": f"on {sha(PW)} {RULES}"}
    p = proxy_factory(users)
    old = p.connect("a")                          # no certificate: fine while optional
    assert roundtrip(old, resp("AUTH", "app", PW)) == b"+OK\r\n"
    p.tls_a = {**p.tls_a, "client_cert": "required", "min_version": "1.3", "handshake_timeout": 3}
    log = p.reload(users)
    assert "listen[1].tls: client_cert, min_version, handshake_timeout changed; applies to new " \
           "connections" in log
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        with p.connect("a") as s:                 # no certificate now: refused
            p.whoami(s)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        p.connect("a", "alice-ca1", maximum_version=ssl.TLSVersion.TLSv1_2)
    with p.connect("a", "alice-ca1") as s:
        assert s.version() == "TLSv1.3"
    assert p.whoami(old) == b"$3\r\napp\r\n"      # established connections keep theirs


def test_finding_5_a_tls_setting_that_cannot_apply_refuses_the_whole_reload(proxy_factory):
    users = {"app": f"on {sha(PW)} {RULES}"}
    p = proxy_factory(users)
    p.tls_a = {**p.tls_a, "ciphers": "NO-SUCH-CIPHER"}
    log = p.reload({**users, "new": f"on {sha(PW)} {RULES}"})
    assert "listen[1].tls.ciphers: no cipher matches 'NO-SUCH-CIPHER'" in log
    assert "reload rejected" in log and "configuration reloaded" not in log
    with p.connect("plain") as s:                 # the new user did not arrive either
        assert roundtrip(s, resp("AUTH", "new", PW)).startswith(b"-WRONGPASS")
    p.tls_a = None
    log = p.reload(users)                         # (the listener would switch to plain)
    assert "switching the listener" in log and "reload rejected" in log


def test_finding_7_a_binding_with_a_ca_ignores_other_cas(proxy_factory, pki):
    users = {"bob": {"rules": f"on {RULES}",
                     "certificate": {"cn": "bob", "ca": str(pki / "ca1.crt")}},
             "alice": {"rules": f"on {RULES}", "certificate": {"cn": "alice"}}}
    p = proxy_factory(users)
    with p.connect("a", "bob-ca1") as s:
        assert p.whoami(s) == b"$3\r\nbob\r\n"
    with p.connect("b", "bob-ca2") as s:          # CN=bob from CA 2, on the listener trusting it
        assert p.whoami(s).startswith(b"-NOAUTH")
    with p.connect("b", "alice-ca2") as s:        # a binding without ca: any trusted CA
        assert p.whoami(s) == b"$5\r\nalice\r\n"
    assert "users.alice.certificate: listeners trust different client CAs" in p.gate.log()
    out = subprocess.run([sys.executable, "-m", "redisgate", "check", "--config",
                          str(p.gate.config_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "warning: users.alice.certificate: listeners trust different client CAs" in out.stderr
    assert "users.bob" not in out.stderr
