"""TLS end to end: `python -m redisgate serve` as a subprocess, a Redis 7 `tls-port` upstream, and
real TLS clients (redis-py, /usr/bin/redis-cli --tls, openssl s_client, raw sockets).

One proxy serves the whole module: a plain listener and a TLS listener (client certificates
optional, 1 s handshake timeout), upstream TLS with CA verification and a client certificate.
Users: `app` (password), `worker` (certificate CN=asynq-worker, no password: certificate only),
`strict` (certificate CN=bob *and* a password, `require_password: true`).
"""
from __future__ import annotations

import datetime as dt
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry
from cryptography import x509

from redisgate import certs
from proxy import stop_serve
from servers import RedisServer, free_port, redis_cli

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_PASSWORD = "gate-upstream-secret"
APP_PW, STRICT_PW = "app-secret-pw", "strict-secret-pw"


def sha(pw: str) -> str:
    import hashlib
    return "#" + hashlib.sha256(pw.encode()).hexdigest()


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e-pki")
    certs.generate(d, clients=["asynq-worker", "bob", "stranger", "gate"])
    ca = certs.load_pair(d / "ca.crt", d / "ca.key")
    now = dt.datetime.now(dt.timezone.utc)
    certs.write_pair(d, "expired", certs.make_client_cert(
        ca, "asynq-worker", not_before=now - dt.timedelta(days=9), not_after=now - dt.timedelta(days=1)))
    certs.write_pair(d, "foreign", certs.make_client_cert(certs.make_ca(), "asynq-worker"))
    nxt = d / "next"
    certs.generate(nxt)
    # The next server certificate is signed by the same CA, so clients keep trusting it.
    certs.write_pair(nxt, "server", certs.make_server_cert(ca), force=True)
    return d


@pytest.fixture(scope="module")
def redis_tls(pki):
    """Redis 7: an admin plain port, and a tls-port that demands a client certificate."""
    tls_port = free_port()
    srv = RedisServer("7", extra=["--tls-port", str(tls_port),
                                  "--tls-cert-file", str(pki / "server.crt"),
                                  "--tls-key-file", str(pki / "server.key"),
                                  "--tls-ca-cert-file", str(pki / "ca.crt"),
                                  "--tls-auth-clients", "yes"]).start()
    srv.client().execute_command("ACL", "SETUSER", "gate", "on", f">{UPSTREAM_PASSWORD}",
                                 "allkeys", "allchannels", "+@all")
    srv.tls_port = tls_port
    yield srv
    srv.stop()


class Gate:
    """`python -m redisgate serve --config FILE` in a subprocess, with its log in a file."""

    def __init__(self, workdir: Path, config: dict):
        self.workdir = workdir
        self.config_path = workdir / "redisgate.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "redisgate.log"
        self.proc: subprocess.Popen | None = None

    def start(self, ready_port: int) -> "Gate":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "redisgate", "serve", "--config",
                                      str(self.config_path)], cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redisgate exited:\n{self.log()}")
            if "listening on" in self.log() and self._accepts(ready_port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redisgate did not start:\n{self.log()}")

    @staticmethod
    def _accepts(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, start: int = 0, timeout: float = 10) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log()[start:])
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}:\n{self.log()[start:]}")

    def stop(self) -> None:
        if self.proc:
            stop_serve(self.proc)
        self._log.close()


@pytest.fixture(scope="module")
def gate(pki, redis_tls, tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e-gate")
    live = work / "certs"
    live.mkdir()
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(pki / name, live / name)
    (work / "upstream.pw").write_text(UPSTREAM_PASSWORD)
    plain, tls = free_port(), free_port()
    config = {
        "listen": [
            {"address": f"127.0.0.1:{plain}"},
            {"address": f"127.0.0.1:{tls}",
             "tls": {"cert": "certs/server.crt", "key": "certs/server.key",
                     "client_ca": "certs/ca.crt", "client_cert": "optional",
                     "min_version": "1.2", "handshake_timeout": 1}},
        ],
        "upstream": {
            "address": f"127.0.0.1:{redis_tls.tls_port}", "username": "gate",
            "password": "${file:upstream.pw}",
            "tls": {"ca": str(pki / "ca.crt"), "server_name": "localhost",
                    "cert": str(pki / "gate.crt"), "key": str(pki / "gate.key")},
        },
        "users": {
            "app": f"on {sha(APP_PW)} ~* &* +@all",
            "worker": {"rules": "on ~asynq:* +@all -@dangerous",
                       "certificate": {"cn": "asynq-worker"}},
            "strict": {"rules": f"on {sha(STRICT_PW)} ~strict:* +@all",
                       "certificate": {"cn": "bob"}, "require_password": True},
        },
        "pid_file": str(work / "redisgate.pid"),
    }
    g = Gate(work, config).start(tls)
    g.plain, g.tls, g.live, g.pki = plain, tls, live, pki
    yield g
    g.stop()


def tls_client(gate, user: str | None = None, **kw) -> redis.Redis:
    """redis-py over TLS, optionally presenting `user`'s client certificate."""
    if user:
        kw.update(ssl_certfile=str(gate.pki / f"{user}.crt"), ssl_keyfile=str(gate.pki / f"{user}.key"))
    kw.setdefault("socket_timeout", 10)
    kw.setdefault("retry", Retry(NoBackoff(), 0))   # a refusal must surface, not be retried
    return redis.Redis(host="127.0.0.1", port=gate.tls, ssl=True, ssl_ca_certs=str(gate.pki / "ca.crt"),
                       **kw)


def ssl_ctx(gate, user: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(gate.pki / "ca.crt"))
    if user:
        ctx.load_cert_chain(gate.pki / f"{user}.crt", gate.pki / f"{user}.key")
    return ctx


def tls_socket(gate, user: str | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", gate.tls), timeout=10)
    return ssl_ctx(gate, user).wrap_socket(raw, server_hostname="localhost")


def resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


def roundtrip(sock, data: bytes) -> bytes:
    sock.sendall(data)
    return sock.recv(65536)


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the peer has closed: recv returns EOF (or a reset / TLS alert) within 10 s."""
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    return True


# ---------------------------------------------------------------------------- clients

def test_redis_py_over_tls_with_a_password(gate, redis_tls):
    c = tls_client(gate, username="app", password=APP_PW)
    assert c.ping() is True
    c.set("e2e:tls", "through TLS both ways")
    # The upstream is the tls-port only: the value is in Redis, seen from its admin port.
    assert redis_tls.client().get("e2e:tls") == b"through TLS both ways"
    assert c.execute_command("ACL", "WHOAMI") == b"app"


def test_redis_py_over_tls_without_credentials_is_not_authenticated(gate):
    with pytest.raises(redis.AuthenticationError):
        tls_client(gate, protocol=2).get("e2e:tls")


def test_certificate_user_is_logged_in_without_auth(gate):
    c = tls_client(gate, "asynq-worker")          # redis-py's default handshake: HELLO 3
    assert c.execute_command("ACL", "WHOAMI") == b"worker"
    c.set("asynq:e2e", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.set("other:e2e", "1")


def test_password_less_certificate_user_cannot_log_in_by_password(gate):
    with socket.create_connection(("127.0.0.1", gate.plain), timeout=10) as plain:
        assert roundtrip(plain, resp("AUTH", "worker", "anything")).startswith(b"-WRONGPASS")
    with tls_socket(gate) as s:
        assert roundtrip(s, resp("AUTH", "worker", "anything")).startswith(b"-WRONGPASS")
        assert roundtrip(s, resp("HELLO", "3", "AUTH", "worker", "")).startswith(b"-WRONGPASS")


def test_require_password_needs_both_certificate_and_auth(gate):
    with tls_socket(gate, "bob") as s:
        assert roundtrip(s, resp("GET", "strict:x")).startswith(b"-NOAUTH")
        assert roundtrip(s, resp("AUTH", "strict", STRICT_PW)) == b"+OK\r\n"
        assert roundtrip(s, resp("ACL", "WHOAMI")) == b"$6\r\nstrict\r\n"
    # The right password without the certificate is not enough.
    with tls_socket(gate) as s:
        assert roundtrip(s, resp("AUTH", "strict", STRICT_PW)).startswith(b"-WRONGPASS")


def test_verified_but_unmapped_certificate_gets_no_access(gate):
    with tls_socket(gate, "stranger") as s:
        assert roundtrip(s, resp("GET", "e2e:tls")).startswith(b"-NOAUTH")
        assert roundtrip(s, resp("AUTH", "app", APP_PW)).startswith(b"-WRONGPASS")
        assert roundtrip(s, resp("GET", "e2e:tls")).startswith(b"-NOAUTH")


def test_hello_3_with_auth_over_tls(gate):
    with tls_socket(gate) as s:
        reply = roundtrip(s, b"*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n"
                             + f"${len(APP_PW)}\r\n{APP_PW}\r\n".encode())
        assert reply.startswith(b"%") and b"proto" in reply
        assert roundtrip(s, b"*1\r\n$4\r\nPING\r\n") == b"+PONG\r\n"


def test_redis_cli_tls_with_certificate_and_with_password(gate):
    cli = redis_cli()
    base = [cli, "-h", "127.0.0.1", "-p", str(gate.tls), "--tls", "--cacert", str(gate.pki / "ca.crt")]
    out = subprocess.run(base + ["--cert", str(gate.pki / "asynq-worker.crt"),
                                 "--key", str(gate.pki / "asynq-worker.key"), "ACL", "WHOAMI"],
                         capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "worker", out.stderr
    out = subprocess.run(base + ["--user", "app", "--pass", APP_PW, "--no-auth-warning", "PING"],
                         capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "PONG", out.stderr


def test_openssl_s_client_verifies_the_proxy_and_speaks_resp(gate):
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gate.tls}", "-servername", "localhost",
         "-verify_return_error", "-CAfile", str(gate.pki / "ca.crt"),
         "-cert", str(gate.pki / "asynq-worker.crt"), "-key", str(gate.pki / "asynq-worker.key"),
         "-ign_eof"],
        input="PING\r\nQUIT\r\n", capture_output=True, text=True, timeout=20)
    assert "Verify return code: 0 (ok)" in out.stdout
    assert "+PONG" in out.stdout and "+OK" in out.stdout
    assert re.search(r"New, TLSv1\.3, Cipher is ", out.stdout)


# ---------------------------------------------------------------------------- bad input

def _survivor(gate):
    c = tls_client(gate, username="app", password=APP_PW, single_connection_client=True)
    assert c.ping()
    return c


@pytest.mark.parametrize("payload", [
    b"*1\r\n$4\r\nPING\r\n",                           # plaintext RESP to the TLS port
    b"PING\r\n",                                       # an inline command
    b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\xff\xff\xff\xff",   # a broken ClientHello
    bytes(range(256)) * 4,                             # garbage
], ids=["resp", "inline", "bad-hello", "garbage"])
def test_non_tls_input_is_closed_while_other_connections_carry_on(gate, payload):
    survivor = _survivor(gate)
    with socket.create_connection(("127.0.0.1", gate.tls), timeout=10) as s:
        s.sendall(payload)
        assert closed_by_peer(s)
    assert survivor.ping() is True


def test_slow_and_truncated_handshakes_are_cut_off_by_the_handshake_timeout(gate):
    survivor = _survivor(gate)
    silent = socket.create_connection(("127.0.0.1", gate.tls), timeout=10)
    partial = socket.create_connection(("127.0.0.1", gate.tls), timeout=10)
    partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert closed_by_peer(silent) and closed_by_peer(partial)   # handshake_timeout: 1
    silent.close()
    partial.close()
    assert survivor.ping() is True


@pytest.mark.parametrize("user", ["expired", "foreign"])
def test_expired_and_untrusted_client_certificates_are_refused(gate, user):
    survivor = _survivor(gate)
    assert _refused(gate, user)
    assert survivor.ping() is True


def _refused(gate, user: str) -> bool:
    """True when the proxy rejects `user`'s certificate. With TLS 1.3 the client's side of the
    handshake completes first; the rejection arrives as an alert (or EOF) on the first read."""
    try:
        with tls_socket(gate, user) as s:
            return roundtrip(s, b"*1\r\n$4\r\nPING\r\n") == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_tls11_is_refused(gate):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.minimum_version, ctx.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", gate.tls), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw)


def test_failed_handshakes_leave_an_audit_entry(gate):
    start = len(gate.log())
    assert _refused(gate, "expired")
    gate.wait_for_log(r"redisgate\.audit.*tls.*expired", start, timeout=2)


# ---------------------------------------------------------------------------- rotation

def _serial(sock: ssl.SSLSocket) -> int:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


def _file_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_reload_rotates_the_server_certificate_for_new_handshakes_only(gate):
    old = tls_socket(gate, "asynq-worker")
    assert _serial(old) == _file_serial(gate.live / "server.crt")
    assert roundtrip(old, b"*1\r\n$4\r\nPING\r\n") == b"+PONG\r\n"

    # A broken file: rejected with a clear line, and the current certificate stays in use.
    start = len(gate.log())
    (gate.live / "server.key").write_text("not a key")
    gate.proc.send_signal(signal.SIGHUP)
    gate.wait_for_log(r"listen\[1\]\.tls: TLS reload failed, still using the previous "
                      r"certificate: listen\[1\]\.tls\.key: .*server\.key holds no readable PEM "
                      r"private key", start)
    with tls_socket(gate) as s:
        assert _serial(s) == _file_serial(gate.pki / "server.crt")

    # The real rotation, through `redisgate reload`.
    start = len(gate.log())
    shutil.copy(gate.pki / "next" / "server.key", gate.live / "server.key")
    shutil.copy(gate.pki / "next" / "server.crt", gate.live / "server.crt")
    out = subprocess.run([sys.executable, "-m", "redisgate", "reload", "--pid-file",
                          str(gate.workdir / "redisgate.pid")], cwd=ROOT, capture_output=True,
                         text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    gate.wait_for_log(r"listen\[1\]\.tls: TLS certificate reloaded", start)
    with tls_socket(gate, "asynq-worker") as new:
        assert _serial(new) == _file_serial(gate.pki / "next" / "server.crt")
        assert roundtrip(new, b"*1\r\n$4\r\nPING\r\n") == b"+PONG\r\n"
    # The connection made before the rotation carries on with its session.
    assert roundtrip(old, b"*1\r\n$4\r\nPING\r\n") == b"+PONG\r\n"
    old.close()


def test_secrets_never_reach_the_log(gate):
    log = gate.log()
    for secret in (UPSTREAM_PASSWORD, APP_PW, STRICT_PW):
        assert secret not in log
    assert "PRIVATE KEY" not in log
