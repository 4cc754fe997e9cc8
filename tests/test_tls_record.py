"""redisgate._native._tlsrec: a TLS connection's records in C after the Python handshake (tls.TLSEngine).

No sockets: a client `TLSEngine` and a server `TLSEngine` shuttle bytes in memory; after the
handshake the server's records move to a `_tlsrec.Record` (`TLSEngine.hand_over`), which must
decrypt, encrypt, fail and close exactly as the Python engine does. The end-to-end TLS tests
(test_tls_e2e, test_identity_e2e, test_reload_tls) run the same code path through the proxy.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from redisgate import certs
from redisgate.tls import ListenerTLS, TLSEngine, TLSRecordError, record_layer

Record = record_layer()
pytestmark = pytest.mark.skipif(Record is None, reason="redisgate._native._tlsrec is not built here")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    certs.generate(d, clients=["bob"])
    return d


class Peer:
    """The server side as server.TLSClientConnection wires it, recording what happens."""

    def __init__(self, pki, client_cert: bool = False):
        import ssl
        cfg = {"cert": "server.crt", "key": "server.key"}
        if client_cert:
            cfg.update(client_ca="ca.crt", client_cert="required")
        self.server = TLSEngine(ListenerTLS(cfg, pki, where="listen[1].tls").context)
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        if client_cert:
            ctx.load_cert_chain(pki / "bob.crt", pki / "bob.key")
        self.client = TLSEngine(ctx, server_side=False, server_hostname="localhost")
        self.wire: list[bytes] = []          # what the server wrote to its socket
        self.plain: list[bytes] = []         # what the record layer handed on
        self.failed: list[str] = []
        self.closes = 0
        self.owner = SimpleNamespace(closed=False)
        self.record = Record(self._slow)

    def _slow(self, data: bytes) -> None:
        raise AssertionError("the Python path was called after start()")

    def handshake(self) -> None:
        self.client.receive(b"")
        for _ in range(6):
            self.server.receive(self.client.data_to_send())
            self.client.receive(self.server.data_to_send())
            if self.server.handshake_done and self.client.handshake_done:
                break
        assert self.server.handshake_done and self.client.handshake_done
        self.client.receive(self.server.data_to_send())   # (TLS 1.3: nothing left, tickets off)
        assert self.server.hand_over(self.record, self.wire.append, self.owner, self.plain.append,
                                     self.failed.append, self._closed)
        assert self.record.started

    def _closed(self) -> None:
        self.closes += 1

    def to_server(self, data: bytes) -> None:
        self.client.send(data)
        self.record.data_received(self.client.data_to_send())

    def from_server(self) -> bytes:
        out = b"".join(self.wire)
        self.wire.clear()
        return self.client.receive(out)


def test_records_both_ways_after_a_python_handshake(pki):
    p = Peer(pki)
    p.handshake()
    p.to_server(b"*1\r\n$4\r\nPING\r\n")
    assert p.plain == [b"*1\r\n$4\r\nPING\r\n"]
    p.record.write(b"+PONG\r\n")
    assert p.from_server() == b"+PONG\r\n"


def test_before_start_reads_go_to_the_python_path(pki):
    seen = []
    rec = Record(seen.append)
    assert not rec.started
    rec.data_received(b"\x16\x03\x01")
    assert seen == [b"\x16\x03\x01"]


def test_several_records_in_one_read_and_a_record_cut_across_reads(pki):
    p = Peer(pki)
    p.handshake()
    for chunk in (b"a" * 10, b"b" * 20, b"c" * 30):
        p.client.send(chunk)
    wire = p.client.data_to_send()
    p.record.data_received(wire[:7])            # not even a whole record header
    assert p.plain == []
    p.record.data_received(wire[7:])
    assert b"".join(p.plain) == b"a" * 10 + b"b" * 20 + b"c" * 30


def test_large_values_both_ways(pki):
    p = Peer(pki)
    p.handshake()
    value = os.urandom(1 << 20)
    p.to_server(value)                           # 65 records in one read
    assert b"".join(p.plain) == value
    p.record.write(value)
    assert p.from_server() == value


def _corrupt(p: Peer, data: bytes) -> bytes:
    p.client.send(data)
    wire = bytearray(p.client.data_to_send())
    wire[-1] ^= 0xFF                             # the AEAD tag no longer matches
    return bytes(wire)


def test_a_corrupt_record_fails_with_the_reason_and_nothing_is_handed_on(pki):
    p = Peer(pki)
    p.handshake()
    wire = _corrupt(p, b"GET k\r\n")
    p.record.data_received(wire)
    assert p.plain == []
    # the reason as the Python engine words it (TLSRecordError "TLS error: <reason>")
    assert p.failed == ["DECRYPTION_FAILED_OR_BAD_RECORD_MAC"]
    assert p.record.failed
    q = Peer(pki)
    q.handshake()
    with pytest.raises(TLSRecordError, match="^TLS error: DECRYPTION_FAILED_OR_BAD_RECORD_MAC$"):
        q.server.receive(_corrupt(q, b"GET k\r\n"))
    p.record.data_received(b"anything")          # a failed connection reads nothing more
    assert p.plain == [] and len(p.failed) == 1


def test_close_notify_calls_on_close_after_the_data_before_it(pki):
    p = Peer(pki)
    p.handshake()
    p.client.send(b"QUIT\r\n")
    p.client.close()
    p.record.data_received(p.client.data_to_send())
    assert p.plain == [b"QUIT\r\n"] and p.closes == 1 and p.record.peer_closed


def test_no_plaintext_for_a_closed_owner(pki):
    p = Peer(pki)
    p.handshake()
    p.owner.closed = True
    p.to_server(b"PING\r\n")
    assert p.plain == []


def test_writes_after_close_are_dropped(pki):
    p = Peer(pki)
    p.handshake()
    p.server.close()                             # close_notify queued in the same SSL
    p.record.write(b"+late\r\n")
    p.wire.append(p.server.data_to_send())
    assert p.from_server() == b"" and p.client.peer_closed


def test_client_certificate_is_still_read_from_the_engine(pki):
    p = Peer(pki, client_cert=True)
    p.handshake()
    p.to_server(b"PING\r\n")
    assert dict(x[0] for x in p.server.peercert["subject"])["commonName"] == "bob"
    assert p.server.verified_chain


def test_start_refuses_objects_it_does_not_know(pki):
    rec = Record(lambda data: None)
    with pytest.raises(TypeError):
        rec.start(object(), object(), print, None, print, print, print)
    p = Peer(pki)
    p.handshake()
    other = TLSEngine(ListenerTLS({"cert": "server.crt", "key": "server.key"}, pki).context)
    with pytest.raises(TypeError):               # an SSL whose read BIO is not this MemoryBIO
        Record(print).start(p.server._obj._sslobj, other._in, print, None, print, print, print)
