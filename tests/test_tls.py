"""tls.py without the proxy: settings validation, real handshakes over loopback, reload, identities,
and the upstream context against a real Redis 7 `tls-port`.

Handshake tests run on both event loops the proxy may use (asyncio's and uvloop's). The server
side is a small test-only protocol around `TLSEngine` (`EngineEcho`): it greets a client with the
user its certificate maps to and then echoes, and reports every failed handshake with its reason.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import socket
import ssl
import warnings
from types import SimpleNamespace

import pytest
import uvloop
from cryptography import x509

from redisgate import certs
from redisgate.tls import (ListenerTLS, TLSConfigError, TLSEngine, TLSHandshakeError, TLSRecordError,
                           UpstreamTLS, describe_peer, handshake_failure_reason,
                           match_certificate_user)
from redisgate.policy.login import identity_of, validate_selector
from servers import RedisServer, free_port

USERS = {"bob": {"cn": "bob"}, "worker": {"cn": "asynq-worker"}}
WAIT = 10  # seconds to wait for an event that must happen (not a speed assertion)


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two independent development PKIs plus the odd certificates the tests need."""
    d = tmp_path_factory.mktemp("pki")
    certs.generate(d, clients=["bob", "asynq-worker"])
    ca = certs.load_pair(d / "ca.crt", d / "ca.key")
    now = dt.datetime.now(dt.timezone.utc)
    certs.write_pair(d, "expired", certs.make_client_cert(
        ca, "bob", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)))
    certs.write_pair(d, "future", certs.make_client_cert(
        ca, "bob", not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30)))
    certs.write_pair(d, "foreign", certs.make_client_cert(certs.make_ca(), "bob"))
    certs.write_pair(d, "stranger", certs.make_client_cert(ca, "stranger"))
    nxt = d / "next"
    certs.generate(nxt, clients=["bob"])
    return SimpleNamespace(dir=d, next=nxt)


@pytest.fixture
def live(pki, tmp_path):
    """A writable copy of the server files, for reload tests that replace them."""
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(pki.dir / name, tmp_path / name)
    return tmp_path


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a coroutine function to completion on a fresh loop of the parametrised kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(fn, *args):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(fn(*args), 60))
    return runner


def listener(base, **overrides) -> ListenerTLS:
    cfg = {"cert": "server.crt", "key": "server.key", **overrides}
    return ListenerTLS(cfg, base, where="listen[1].tls")


def client_ctx(pki_dir, user: str | None = None, ca_dir=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str((ca_dir or pki_dir) / "ca.crt"))
    if user:
        ctx.load_cert_chain(pki_dir / f"{user}.crt", pki_dir / f"{user}.key")
    return ctx


def serial_of(writer) -> int:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def serial_in(path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


class EngineEcho(asyncio.Protocol):
    """Test-only I/O around TLSEngine: greet with the certificate's user, then echo."""

    def __init__(self, tls: ListenerTLS, events: asyncio.Queue):
        self.tls, self.events = tls, events
        self.engine: TLSEngine | None = None
        self.greeted = False

    def connection_made(self, transport):
        self.transport = transport
        self.engine = TLSEngine(self.tls.context)   # the current context: reloads apply here
        self.timer = asyncio.get_running_loop().call_later(self.tls.handshake_timeout, self._expire)

    def data_received(self, data):
        try:
            plain = self.engine.receive(data)
        except (TLSHandshakeError, TLSRecordError) as e:
            self._fail(str(e))
            return
        if self.engine.handshake_done and not self.greeted:
            self.greeted = True
            self.timer.cancel()
            user = match_certificate_user(self.engine.peercert, USERS)
            self.engine.send(f"hello {user or '-'} {self.engine.version}\n".encode())
            self.events.put_nowait(("ok", user))
        self.engine.send(plain)
        self.transport.write(self.engine.data_to_send())
        if self.engine.peer_closed:
            self.transport.close()

    def eof_received(self):
        if not self.engine.handshake_done:
            self._fail(handshake_failure_reason(ConnectionResetError(), self.engine.first_byte))
        return False

    def _expire(self):
        if not self.engine.handshake_done:
            self._fail(handshake_failure_reason(TimeoutError(), self.engine.first_byte))

    def _fail(self, reason: str):
        self.timer.cancel()
        self.transport.write(self.engine.data_to_send())   # the alert, if any
        self.transport.close()
        self.events.put_nowait(("failed", reason))


async def engine_server(tls: ListenerTLS):
    events: asyncio.Queue = asyncio.Queue()
    server = await asyncio.get_running_loop().create_server(
        lambda: EngineEcho(tls, events), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], events


async def connect(port, ctx, server_hostname="localhost"):
    """A TLS client; returns (reader, writer, greeting line or the exception it got)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname=server_hostname)
    try:
        greeting = await reader.readline()
    except (ssl.SSLError, ConnectionError) as e:   # TLS 1.3: a rejected client cert shows here
        greeting = e
    return reader, writer, greeting


async def echo(reader, writer, payload=b"ping\n") -> bytes:
    writer.write(payload)
    await writer.drain()
    return await reader.readline()


async def next_event(events):
    return await asyncio.wait_for(events.get(), WAIT)


# ---------------------------------------------------------------------------- settings

@pytest.mark.parametrize("overrides, message", [
    ({"client_cert": "maybe", "client_ca": "ca.crt"},
     "listen[1].tls.client_cert: must be none, optional or required, got 'maybe'"),
    ({"client_cert": "required"},
     "listen[1].tls.client_ca: required when client_cert is required"),
    ({"min_version": "1.1"}, 'listen[1].tls.min_version: must be "1.2" or "1.3" '
                             "(TLS 1.0 and 1.1 are not supported), got '1.1'"),
    ({"min_version": 1.0}, 'listen[1].tls.min_version: must be "1.2" or "1.3"'),
    ({"ciphers": "NOT-A-CIPHER"}, "listen[1].tls.ciphers: no cipher matches 'NOT-A-CIPHER'"),
    ({"handshake_timeout": 0}, "listen[1].tls.handshake_timeout: expected a number of seconds > 0"),
    ({"handshake_timeout": "10"}, "listen[1].tls.handshake_timeout: expected a number of seconds"),
    ({"sni": "x"}, "listen[1].tls.sni: unknown setting (known: cert, key, client_ca, "),
    ({"cert": None}, "listen[1].tls.cert: required"),
    ({"cert": "missing.crt"}, "listen[1].tls.cert: cannot read "),
    ({"key": "ca.crt"}, "listen[1].tls.key: "),
    ({"cert": "ca.crt"}, "listen[1].tls.key: "),
    ({"client_ca": "server.key"}, "listen[1].tls.client_ca: "),
])
def test_listener_settings_are_validated_with_the_key_named(live, overrides, message):
    with pytest.raises(TLSConfigError) as e:
        listener(live, **overrides)
    assert any(p.startswith(message) for p in e.value.problems), e.value.problems
    assert isinstance(e.value, ValueError)


def test_file_problems_say_which_file_and_why(live):
    with pytest.raises(TLSConfigError, match=r"cannot read .*missing\.crt: No such file"):
        listener(live, cert="missing.crt")
    with pytest.raises(TLSConfigError, match=r"server\.key does not belong to the certificate"):
        listener(live, cert="ca.crt")
    with pytest.raises(TLSConfigError, match=r"ca\.crt holds no readable PEM private key"):
        listener(live, key="ca.crt")
    (live / "garbage.crt").write_text("not a certificate")
    with pytest.raises(TLSConfigError, match=r"garbage\.crt holds no PEM certificate"):
        listener(live, cert="garbage.crt")


def test_an_encrypted_key_is_refused_without_prompting(live, pki):
    from cryptography.hazmat.primitives import serialization
    key = certs.load_pair(live / "server.crt", live / "server.key").key
    (live / "enc.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret-pass")))
    with pytest.raises(TLSConfigError, match="is encrypted; redisgate needs an unencrypted"):
        listener(live, key="enc.key")


def test_defaults_and_accepted_spellings(live):
    tls = listener(live)
    assert tls.handshake_timeout == 10.0 and tls.client_cert == "none"
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.context.verify_mode == ssl.CERT_NONE
    # YAML reads an unquoted 1.3 as a float.
    assert listener(live, min_version=1.3).context.minimum_version == ssl.TLSVersion.TLSv1_3
    with_ca = listener(live, client_ca="ca.crt", handshake_timeout=2.5)
    assert with_ca.client_cert == "optional" and with_ca.handshake_timeout == 2.5
    assert with_ca.context.verify_mode == ssl.CERT_OPTIONAL
    absolute = ListenerTLS({"cert": str(live / "server.crt"), "key": str(live / "server.key")},
                           "/nonexistent-base")
    assert absolute.cert_path == live / "server.crt"


# ---------------------------------------------------------------------------- handshakes

def test_tls13_is_negotiated_and_data_flows(run, pki):
    async def main():
        server, port, events = await engine_server(listener(pki.dir))
        reader, writer, greeting = await connect(port, client_ctx(pki.dir))
        assert greeting == b"hello - TLSv1.3\n"
        big = b"x" * 3_000_000
        writer.write(big)
        assert await reader.readexactly(len(big)) == big
        writer.close()
        server.close()
    run(main)


def test_tls12_is_accepted_unless_the_minimum_is_13(run, pki):
    async def main():
        ctx = client_ctx(pki.dir)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        server, port, events = await engine_server(listener(pki.dir))
        _, writer, greeting = await connect(port, ctx)
        assert greeting == b"hello - TLSv1.2\n"
        writer.close()
        server.close()
        server, port, events = await engine_server(listener(pki.dir, min_version="1.3"))
        with pytest.raises(ssl.SSLError):
            await connect(port, ctx)
        assert await next_event(events) == ("failed", "TLS version below the configured minimum")
        server.close()
    run(main)


def test_tls11_client_is_refused(run, pki):
    async def main():
        server, port, events = await engine_server(listener(pki.dir))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises(ssl.SSLError):
            await connect(port, ctx)
        assert await next_event(events) == ("failed", "TLS version below the configured minimum")
        server.close()
    run(main)


def test_client_certificate_identifies_the_user(run, pki):
    async def main():
        server, port, events = await engine_server(listener(pki.dir, client_ca="ca.crt"))
        _, w1, greeting = await connect(port, client_ctx(pki.dir, "asynq-worker"))
        assert greeting == b"hello worker TLSv1.3\n"
        # client_cert: optional lets a client without a certificate in, as nobody.
        _, w2, greeting = await connect(port, client_ctx(pki.dir))
        assert greeting == b"hello - TLSv1.3\n"
        # Verified, but mapped to no configured user: no identity at all.
        _, w3, greeting = await connect(port, client_ctx(pki.dir, "stranger"))
        assert greeting == b"hello - TLSv1.3\n"
        for w in (w1, w2, w3):
            w.close()
        server.close()
    run(main)


@pytest.mark.parametrize("user, reason", [
    ("expired", "client certificate expired"),
    ("future", "client certificate not yet valid"),
    ("foreign", "client certificate not trusted (unknown CA)"),
])
def test_bad_client_certificates_are_refused_and_audited(run, pki, user, reason):
    async def main():
        server, port, events = await engine_server(listener(pki.dir, client_ca="ca.crt"))
        reader, writer, greeting = await connect(port, client_ctx(pki.dir, "bob"))
        assert greeting == b"hello bob TLSv1.3\n"
        assert await next_event(events) == ("ok", "bob")
        try:
            _, _, bad = await connect(port, client_ctx(pki.dir, user))
        except (ssl.SSLError, ConnectionError):
            bad = None
        assert not isinstance(bad, bytes) or bad == b""
        assert await next_event(events) == ("failed", reason)
        assert await echo(reader, writer) == b"ping\n"     # the other connection is untouched
        writer.close()
        server.close()
    run(main)


def test_required_client_certificate(run, pki):
    async def main():
        server, port, events = await engine_server(
            listener(pki.dir, client_ca="ca.crt", client_cert="required"))
        _, _, got = await connect(port, client_ctx(pki.dir))
        assert not isinstance(got, bytes) or got == b""
        assert await next_event(events) == ("failed", "no client certificate (client_cert: required)")
        _, writer, greeting = await connect(port, client_ctx(pki.dir, "bob"))
        assert greeting == b"hello bob TLSv1.3\n"
        writer.close()
        server.close()
    run(main)


@pytest.mark.parametrize("payload, reason", [
    (b"*1\r\n$4\r\nPING\r\n", "plaintext instead of a TLS handshake (a RESP command?)"),
    (b"PING\r\n", "plaintext instead of a TLS handshake (a RESP command?)"),
    (b"\x00\x01\x02\x03\x04\x05\x06\x07", "garbage instead of a TLS handshake"),
    # A handshake record holding a ClientHello too short to be one.
    (b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\xff\xff\xff\xff", None),
], ids=["resp", "inline", "binary", "bad-hello"])
def test_non_tls_bytes_are_closed_without_disturbing_others(run, pki, payload, reason):
    async def main():
        server, port, events = await engine_server(listener(pki.dir))
        reader, writer, greeting = await connect(port, client_ctx(pki.dir))
        await next_event(events)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(payload)
        await w2.drain()
        await asyncio.wait_for(r2.read(), WAIT)    # reads up to EOF: the server closed it
        kind, why = await next_event(events)
        assert kind == "failed"
        if reason:
            assert why == reason
        assert await echo(reader, writer) == b"ping\n"
        writer.close()
        server.close()
    run(main)


def test_slow_and_truncated_handshakes_time_out_cleanly(run, pki):
    async def main():
        tls = listener(pki.dir, handshake_timeout=0.3)
        server, port, events = await engine_server(tls)
        reader, writer, _ = await connect(port, client_ctx(pki.dir))
        await next_event(events)
        # Half a ClientHello, then silence; and a connection that sends nothing at all.
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        r3, w3 = await asyncio.open_connection("127.0.0.1", port)
        assert await next_event(events) == ("failed", "handshake timeout")
        assert await next_event(events) == ("failed", "handshake timeout")
        assert await asyncio.wait_for(r2.read(), WAIT) == b""
        assert await asyncio.wait_for(r3.read(), WAIT) == b""
        assert await echo(reader, writer) == b"ping\n"
        writer.close()
        server.close()
    run(main)


def test_a_client_that_hangs_up_mid_handshake_is_audited(run, pki):
    async def main():
        server, port, events = await engine_server(listener(pki.dir))
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"\x16\x03\x01\x02\x00\x01")
        await w.drain()
        w.close()
        assert await next_event(events) == ("failed", "connection closed during the handshake")
        server.close()
    run(main)


def test_engine_buffers_sends_until_the_handshake_completes(pki):
    server = TLSEngine(listener(pki.dir).context)
    client = TLSEngine(client_ctx(pki.dir), server_side=False, server_hostname="localhost")
    server.send(b"early ")
    client.send(b"hello")
    client.receive(b"")                        # ClientHello
    for _ in range(4):                         # shuttle records until both sides are done
        got_s = server.receive(client.data_to_send())
        got_c = client.receive(server.data_to_send())
        if got_s or got_c:
            break
    assert server.handshake_done and client.handshake_done
    assert got_s == b"hello" and got_c == b"early "
    client.close()
    server.receive(client.data_to_send())
    assert server.peer_closed


# ---------------------------------------------------------------------------- reload

def test_reload_serves_new_certificate_to_new_handshakes_only(run, pki, live):
    async def main():
        tls = listener(live, client_ca="ca.crt")
        server, port, events = await engine_server(tls)
        old_reader, old_writer, _ = await connect(port, client_ctx(pki.dir, "bob"))
        assert serial_of(old_writer) == serial_in(pki.dir / "server.crt")
        for name in ("server.crt", "server.key", "ca.crt"):     # rotate to the other PKI
            shutil.copy(pki.next / name, live / name)
        assert tls.reload() is True
        _, new_writer, greeting = await connect(port, client_ctx(pki.next, "bob"))
        assert greeting == b"hello bob TLSv1.3\n"
        assert serial_of(new_writer) == serial_in(pki.next / "server.crt")
        # The old CA no longer vouches for client certificates...
        try:
            _, _, got = await connect(port, client_ctx(pki.dir, "bob", ca_dir=pki.next))
        except (ssl.SSLError, ConnectionError):
            got = None
        assert not isinstance(got, bytes) or got == b""
        # ...while the connection made before the reload carries on.
        assert await echo(old_reader, old_writer) == b"ping\n"
        for w in (old_writer, new_writer):
            w.close()
        server.close()
    run(main)


def test_a_broken_new_file_keeps_the_old_context(run, pki, live, caplog):
    async def main():
        tls = listener(live)
        before = tls.context
        (live / "server.key").write_text("-----BEGIN PRIVATE KEY-----\ntruncated")
        with caplog.at_level(logging.INFO, logger="redisgate.tls"):
            assert tls.reload() is False
        assert tls.context is before
        line = caplog.records[-1]
        assert line.levelno == logging.ERROR
        assert line.getMessage() == (
            f"listen[1].tls: TLS reload failed, still using the previous certificate: "
            f"listen[1].tls.key: {live / 'server.key'} holds no readable PEM private key")
        server, port, events = await engine_server(tls)
        _, writer, greeting = await connect(port, client_ctx(pki.dir))
        assert greeting == b"hello - TLSv1.3\n"
        assert serial_of(writer) == serial_in(pki.dir / "server.crt")
        writer.close()
        server.close()
        # A mismatched pair (new cert, old key: a half-finished rotation) is refused the same way.
        shutil.copy(pki.dir / "server.key", live / "server.key")
        shutil.copy(pki.next / "server.crt", live / "server.crt")
        assert tls.reload() is False and tls.context is before
    run(main)


@pytest.mark.parametrize("with_sni", [True, False])
def test_create_server_contexts_follow_reload_through_the_sni_callback(run, pki, live, with_sni):
    """For `loop.create_server(ssl=...)`: the listener keeps its first context object, and each
    new handshake is moved onto the current one (also when the client sends no SNI)."""
    async def handle(reader, writer):
        pc = writer.get_extra_info("peercert")
        writer.write(f"hello {match_certificate_user(pc, USERS) or '-'}\n".encode())
        while line := await reader.readline():
            writer.write(line)
        writer.close()

    async def main():
        tls = listener(live, client_ca="ca.crt")
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls.context)
        port = server.sockets[0].getsockname()[1]
        name = "localhost" if with_sni else "127.0.0.1"   # no SNI is sent for an IP address
        old_reader, old_writer, greeting = await connect(port, client_ctx(pki.dir, "bob"), name)
        assert greeting == b"hello bob\n"
        for f in ("server.crt", "server.key", "ca.crt"):
            shutil.copy(pki.next / f, live / f)
        assert tls.reload()
        _, new_writer, greeting = await connect(port, client_ctx(pki.next, "bob"), name)
        assert greeting == b"hello bob\n"
        assert serial_of(new_writer) == serial_in(pki.next / "server.crt")
        assert await echo(old_reader, old_writer) == b"ping\n"
        for w in (old_writer, new_writer):
            w.close()
        server.close()
    run(main)


# ---------------------------------------------------------------------------- identities

def _peer(cn=("bob",), dns=(), uri=(), ip=()):
    return {"subject": tuple((("commonName", c),) for c in cn),
            "subjectAltName": tuple([("DNS", d) for d in dns] + [("URI", u) for u in uri]
                                    + [("IP Address", i) for i in ip])}


def test_identity_of_each_selector_kind():
    peer = _peer(cn=["svc"], dns=["Worker.Example.", "other.example"],
                 uri=["spiffe://example.org/ns/jobs/sa/worker"])
    assert identity_of(peer, {"cn": "svc"}) == "svc"
    assert identity_of(peer, {"cn": "SVC"}) is None
    assert identity_of(peer, {"san_dns": "worker.example"}) == "Worker.Example."
    assert identity_of(peer, {"san_dns": "nope.example"}) is None
    assert identity_of(peer, {"san_uri": "spiffe://example.org/ns/jobs/sa/worker"}) \
        == "spiffe://example.org/ns/jobs/sa/worker"
    assert identity_of(peer, {"san_uri": "spiffe://example.org/ns/jobs/sa/WORKER"}) is None


def test_identity_refuses_what_could_be_ambiguous():
    assert identity_of(_peer(cn=["bob", "alice"]), {"cn": "bob"}) is None
    assert identity_of(_peer(dns=["*.example"]), {"san_dns": "worker.example"}) is None
    assert identity_of({}, {"cn": "bob"}) is None          # unverified certificate
    assert identity_of(None, {"cn": "bob"}) is None
    assert identity_of(_peer(), {"cn": "bob", "san_dns": "x"}) is None
    assert identity_of(_peer(), {"cn": ""}) is None
    assert identity_of(_peer(), {"email": "bob"}) is None


def test_match_certificate_user_maps_to_exactly_one_user(caplog):
    users = {"worker": {"cn": "asynq-worker"}, "web": {"san_dns": "web.internal"}}
    assert match_certificate_user(_peer(cn=["asynq-worker"]), users) == "worker"
    assert match_certificate_user(_peer(cn=["x"], dns=["web.internal"]), users) == "web"
    assert match_certificate_user(_peer(cn=["nobody"]), users) is None
    with caplog.at_level(logging.WARNING, logger="redisgate.tls"):
        assert match_certificate_user(_peer(cn=["asynq-worker"], dns=["web.internal"]), users) is None
    assert "matches several users (web, worker); granting none" in caplog.text


def test_real_peercert_dict_from_a_handshake_is_understood(pki):
    server = TLSEngine(listener(pki.dir, client_ca="ca.crt").context)
    client = TLSEngine(client_ctx(pki.dir, "asynq-worker"), server_side=False,
                       server_hostname="localhost")
    client.receive(b"")
    while not server.handshake_done:
        server.receive(client.data_to_send())
        client.receive(server.data_to_send())
    assert match_certificate_user(server.peercert, USERS) == "worker"
    assert describe_peer(server.peercert) == "CN=asynq-worker"
    assert describe_peer(_peer(cn=["a"], dns=["d"], uri=["u"])) == "CN=a SAN=DNS:d,URI:u"


def test_validate_selector_messages():
    assert validate_selector({"cn": "x"}, "users.w.certificate") == []
    assert validate_selector({"cn": "x", "san_dns": "y"}, "users.w.certificate") == [
        "users.w.certificate: expected exactly one of {cn: ...}, {san_dns: ...}, {san_uri: ...}"]
    assert validate_selector({"san_uri": 3}, "users.w.certificate") == [
        "users.w.certificate.san_uri: expected a non-empty string"]


def test_handshake_failure_reason_never_raises():
    assert handshake_failure_reason(ValueError("odd")) == "ValueError: odd"
    assert handshake_failure_reason(TimeoutError()) == "handshake timeout"
    assert handshake_failure_reason(TimeoutError(), first_byte=ord("*")).startswith("plaintext")


# ---------------------------------------------------------------------------- upstream: Redis 7

@pytest.fixture(scope="module")
def tls_redis(pki):
    """Redis 7 with a plain port (for administration) and a `tls-port` using the test PKI."""
    tls_port = free_port()
    d = pki.dir
    srv = RedisServer("7", extra=["--tls-port", str(tls_port),
                                  "--tls-cert-file", str(d / "server.crt"),
                                  "--tls-key-file", str(d / "server.key"),
                                  "--tls-ca-cert-file", str(d / "ca.crt"),
                                  "--tls-auth-clients", "optional"]).start()
    srv.tls_port = tls_port
    yield srv
    srv.stop()


def redis_ping(port: int, up: UpstreamTLS) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with up.context.wrap_socket(raw, server_hostname=up.server_name("127.0.0.1")) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64)


def test_upstream_context_verifies_redis_by_ca_and_name(tls_redis, pki):
    up = UpstreamTLS({"ca": "ca.crt", "server_name": "localhost"}, pki.dir)
    assert redis_ping(tls_redis.tls_port, up) == b"+PONG\r\n"
    # No server_name: the upstream host is checked against the IP SANs.
    up = UpstreamTLS({"ca": "ca.crt"}, pki.dir)
    assert up.server_name("127.0.0.1") == "127.0.0.1"
    assert redis_ping(tls_redis.tls_port, up) == b"+PONG\r\n"


def test_upstream_refuses_a_wrong_name_or_an_unknown_ca(tls_redis, pki):
    up = UpstreamTLS({"ca": "ca.crt", "server_name": "redis.elsewhere"}, pki.dir)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        redis_ping(tls_redis.tls_port, up)
    up = UpstreamTLS({"ca": "next/ca.crt", "server_name": "localhost"}, pki.dir)
    with pytest.raises(ssl.SSLCertVerificationError):
        redis_ping(tls_redis.tls_port, up)


def test_insecure_skip_verify_must_be_explicit_and_warns(tls_redis, pki, caplog):
    with pytest.raises(TLSConfigError, match=r"upstream\.tls\.insecure_skip_verify: must be true "
                                             r"or false, got 'yes'"):
        UpstreamTLS({"insecure_skip_verify": "yes"}, pki.dir)
    with caplog.at_level(logging.WARNING, logger="redisgate.tls"):
        up = UpstreamTLS({"ca": "next/ca.crt", "server_name": "wrong", "insecure_skip_verify": True},
                         pki.dir)
    assert "upstream.tls.insecure_skip_verify is true" in caplog.text
    assert redis_ping(tls_redis.tls_port, up) == b"+PONG\r\n"


def test_upstream_client_certificate_when_redis_requires_one(tls_redis, pki):
    admin = tls_redis.client()
    admin.config_set("tls-auth-clients", "yes")
    try:
        without = UpstreamTLS({"ca": "ca.crt", "server_name": "localhost"}, pki.dir)
        try:
            got = redis_ping(tls_redis.tls_port, without)
        except (ssl.SSLError, ConnectionError):
            got = b""
        assert got == b""
        with_cert = UpstreamTLS({"ca": "ca.crt", "server_name": "localhost",
                                 "cert": "bob.crt", "key": "bob.key"}, pki.dir)
        assert redis_ping(tls_redis.tls_port, with_cert) == b"+PONG\r\n"
    finally:
        admin.config_set("tls-auth-clients", "optional")


def test_upstream_settings_are_validated(pki):
    with pytest.raises(TLSConfigError) as e:
        UpstreamTLS({"cert": "bob.crt", "verify": False, "server_name": ""}, pki.dir)
    assert e.value.problems == [
        "upstream.tls.verify: unknown setting (known: ca, server_name, cert, key, "
        "insecure_skip_verify, min_version)",
        "upstream.tls.key: required together with cert (the client certificate)",
        "upstream.tls.server_name: expected the host name in the Redis certificate",
    ]
    with pytest.raises(TLSConfigError, match=r"upstream\.tls\.ca: cannot read .*nope\.crt"):
        UpstreamTLS({"ca": "nope.crt"}, pki.dir)


def test_upstream_reload_picks_up_a_new_ca(tls_redis, pki, tmp_path, caplog):
    shutil.copy(pki.next / "ca.crt", tmp_path / "ca.crt")
    up = UpstreamTLS({"ca": "ca.crt", "server_name": "localhost"}, tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        redis_ping(tls_redis.tls_port, up)
    (tmp_path / "ca.crt").write_text("broken")
    with caplog.at_level(logging.ERROR, logger="redisgate.tls"):
        assert up.reload() is False
    assert f"upstream.tls.ca: {tmp_path / 'ca.crt'} holds no PEM certificate" in caplog.text
    shutil.copy(pki.dir / "ca.crt", tmp_path / "ca.crt")
    assert up.reload() is True
    assert redis_ping(tls_redis.tls_port, up) == b"+PONG\r\n"
