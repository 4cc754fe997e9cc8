"""CLIENT REPLY ON|OFF|SKIP through the proxy, byte for byte against real Redis 7.0, 6.2 and 5.0.

The proxy answers CLIENT REPLY itself on every kind of link (its own upstream connection and a
shared one, `upstream.multiplex`): the upstream is never asked, always replies, and the session
swallows the replies Redis would not send (Session._handle, replies.ReplyOrder). So each conversation below is sent
as one pipeline to Redis directly and through the proxy, in both modes, and the bytes that come
back must be the same: Redis's own tests of it (tests/unit/introspection.tcl), then pipelines
mixing OFF / SKIP / ON with commands the proxy refuses itself (unknown commands, wrong arity,
NOPERM), transactions, RESET, inline commands, pub/sub (whose confirmations Redis 6.2+ sends
even under OFF, and 5.0 does not), and the C lane's steady state after ON.

Deliberate differences (README, "Commands answered or refused by the proxy"): CLIENT REPLY inside
MULTI is refused (queued, Redis changes the flags halfway through EXEC's reply array and breaks
it); after QUIT or a protocol error under OFF / SKIP the proxy closes the connection (Redis sends
nothing either, but keeps it open); RESET, which the proxy answers on Redis 5.0 too, turns
OFF off there as on 6.2+; and EXEC of a transaction that subscribes, under OFF, answers nothing
(Redis 6.2+ sends the confirmations without EXEC's array header around the first one).
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import pytest

from proxy import pw_hash, redis_and_proxy
from servers import redis_binary
from wire import cmd

PW = "client-reply-pw"
LIM_PW = "client-reply-lim-pw"
FULL = "allkeys allchannels +@all"
LIM = "~k:* &* +@all -flushall"   # (Redis 6.2+ only: 5.0 has no ACL)
VERSIONS = ["7", "6.2", "5"]
MARK = b"end-of-case"
END = [("CLIENT", "REPLY", "ON"), ("PING", MARK)]
END_REPLY = b"$%d\r\n%s\r\n" % (len(MARK), MARK)


def _reply(*args) -> tuple:
    return ("CLIENT", "REPLY", *args)


@dataclass(frozen=True)
class Case:
    name: str
    commands: tuple            # tuples of arguments, or raw bytes sent as they are
    versions: tuple = tuple(VERSIONS)
    user: str = "full"         # "lim": the restricted user (Redis 6.2+)
    ends: bool = True          # False: read until the connection is quiet or closed


SET100 = tuple(("SET", f"k:off:{i}", i) for i in range(100))

CASES = [
    # Redis's own (tests/unit/introspection.tcl)
    Case("redis-off-on", (_reply("OFF"), ("PING", "pong"), ("PING", "pong2"), _reply("ON"),
                          ("PING", "pong3"))),
    Case("redis-skip", (_reply("SKIP"), ("PING", "pong"), ("PING", "pong2"))),
    Case("redis-on-unsets-skip", (_reply("SKIP"), _reply("ON"), ("PING",))),
    # refused by the proxy itself: unknown command, wrong arity, a bad CLIENT REPLY mode
    Case("off-proxy-errors", (_reply("OFF"), ("NOSUCHCMD", "x"), ("GET",), _reply("MAYBE"),
                              ("CLIENT", "REPLY"), ("SET", "k:1", "v"), _reply("ON"),
                              ("GET", "k:1"))),
    Case("skip-unknown", (_reply("SKIP"), ("NOSUCHCMD", "x"), ("ECHO", "a"))),
    Case("skip-arity", (_reply("SKIP"), ("GET",), ("ECHO", "a"), ("CLIENT", "REPLY"),
                        ("ECHO", "b"))),
    Case("skip-bad-mode", (_reply("SKIP"), _reply("MAYBE"), ("ECHO", "a"), _reply("MAYBE"))),
    Case("skip-skip", (_reply("SKIP"), _reply("SKIP"), ("ECHO", "a"), ("ECHO", "b"))),
    Case("off-skip-on", (_reply("OFF"), _reply("SKIP"), _reply("ON"), ("ECHO", "b"))),
    Case("off-off-on-on", (_reply("OFF"), _reply("OFF"), _reply("ON"), _reply("ON"))),
    Case("modes-any-case-cut-at-nul", (_reply("sKiP"), ("ECHO", "a"), _reply(b"off\0x"),
                                       ("ECHO", "b"), _reply(b"On\0"), ("ECHO", "c"))),
    # refused by the proxy's ACL (NOPERM): Redis's own user has the same rules
    Case("skip-noperm", (_reply("SKIP"), ("FLUSHALL",), ("ECHO", "a"), _reply("SKIP"),
                         ("GET", "other:1"), ("SET", "k:2", "v"), ("GET", "other:1")),
         versions=("7", "6.2"), user="lim"),
    Case("off-noperm", (_reply("OFF"), ("GET", "other:1"), ("FLUSHALL",), ("SET", "k:3", "v"),
                        _reply("ON"), ("GET", "k:3"), ("FLUSHALL",)),
         versions=("7", "6.2"), user="lim"),
    # transactions: the replies of MULTI, QUEUED and EXEC go as the flags say
    Case("off-multi", (_reply("OFF"), ("MULTI",), ("SET", "k:4", "v"), ("EXEC",), _reply("ON"),
                       ("GET", "k:4"))),
    Case("skip-multi", (_reply("SKIP"), ("MULTI",), ("SET", "k:5", "v"), ("EXEC",))),
    Case("off-multi-refused-inside", (_reply("OFF"), ("MULTI",), ("NOSUCHCMD",), ("EXEC",),
                                      _reply("ON"), ("ECHO", "after"))),
    # RESET turns OFF off and replies, unless SKIPped (the proxy answers RESET on 5.0 too)
    Case("off-reset", (_reply("OFF"), ("RESET",), ("PING",), ("AUTH", "full", PW)),
         versions=("7", "6.2")),
    Case("skip-reset", (_reply("SKIP"), ("RESET",), ("PING",), ("AUTH", "full", PW)),
         versions=("7", "6.2")),
    # inline commands
    Case("inline", (b"CLIENT REPLY SKIP\r\nPING\r\nECHO x\r\nCLIENT REPLY OFF\r\nPING\r\n"
                    b"CLIENT REPLY ON\r\nPING\r\n",)),
    # a long muted pipeline, then the fast path again
    Case("off-long-pipeline", (_reply("OFF"),) + SET100 + (_reply("ON"),)
         + tuple(("GET", f"k:off:{i}") for i in range(0, 100, 7))),
    # pub/sub, RESP2: confirmations pass on 6.2+ whatever the flags, not on 5.0
    Case("skip-subscribe", (_reply("SKIP"), ("SUBSCRIBE", "a", "b"), ("PING",),
                            ("UNSUBSCRIBE",), ("PING",))),
    Case("skip-unsubscribe", (_reply("SKIP"), ("UNSUBSCRIBE",), ("PING",))),
    Case("reply-refused-while-subscribed", (("SUBSCRIBE", "a"), _reply("OFF"), ("PING",),
                                            ("UNSUBSCRIBE", "a"))),
    Case("off-subscribe", (_reply("OFF"), ("SUBSCRIBE", "a"), ("PING",)), ends=False),
    # RESP3 (6.2+): HELLO 3 skipped (its reply names the connection's id)
    Case("resp3-off-subscribe", (_reply("SKIP"), ("HELLO", "3"), _reply("OFF"),
                                 ("SUBSCRIBE", "a"), _reply("ON"), ("UNSUBSCRIBE",), ("PING",)),
         versions=("7", "6.2")),
    # QUIT and a protocol error under OFF / SKIP: no reply (the proxy then closes)
    Case("off-quit", (_reply("OFF"), ("QUIT",)), ends=False),
    Case("skip-quit", (_reply("SKIP"), ("QUIT",)), ends=False),
    Case("skip-protocol-error", (_reply("SKIP"), b"*1\r\n$x\r\n"), ends=False),
]


@dataclass
class Target:
    version: str
    direct: int
    proxied: int


@pytest.fixture(scope="module", params=[v + m for v in VERSIONS for m in ("", "+multiplex")])
def target(request):
    version, _, mux = request.param.partition("+")
    if redis_binary(version) is None:
        pytest.fail(f"redis-server {version} is missing: run scripts/test.sh")
    with redis_and_proxy(version, PW, {"full": (PW, FULL), "lim": (LIM_PW, LIM)},
                         multiplex=bool(mux)) as (srv, runner):
        yield Target(version, srv.port, runner.port)


def _login(version: str, user: str) -> bytes:
    if version == "5":
        return cmd("AUTH", PW)
    return cmd("AUTH", user, LIM_PW if user == "lim" else PW)


def _conversation(port: int, data: bytes, ends: bool, timeout: float = 10.0) -> bytes:
    """Send `data` at once; the bytes back, up to the end marker's reply (`ends`), else until
    the connection closes or is quiet for a second."""
    sock = socket.create_connection(("127.0.0.1", port), timeout)
    try:
        sock.sendall(data)
        buf = b""
        deadline = time.monotonic() + timeout
        sock.settimeout(1.0 if not ends else timeout)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(1 << 16)
            except socket.timeout:
                if ends:
                    raise
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            if ends and buf.endswith(END_REPLY):
                break
        return buf
    finally:
        sock.close()


def _encode(case: Case) -> bytes:
    parts = [c if isinstance(c, bytes) else cmd(*c) for c in case.commands]
    if case.ends:
        parts += [cmd(*c) for c in END]
    return b"".join(parts)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_same_bytes_as_redis(target, case):
    if target.version not in case.versions:
        pytest.skip(f"not on Redis {target.version}")
    data = _login(target.version, case.user) + _encode(case)
    direct = _conversation(target.direct, data, case.ends)
    proxied = _conversation(target.proxied, data, case.ends)
    assert proxied == direct
    if case.ends:
        assert direct.endswith(END_REPLY)


def test_the_lane_steady_state_after_on(target):
    """One command at a time (the C lane's steady state on the proxy side): muted commands
    get nothing back while OFF, then every reply comes again after ON."""
    socks = {}
    for side, port in (("direct", target.direct), ("proxied", target.proxied)):
        s = socks[side] = socket.create_connection(("127.0.0.1", port), 10)
        s.sendall(_login(target.version, "full"))
        assert s.recv(100) == b"+OK\r\n"
    try:
        for side, s in socks.items():
            for i in range(20):   # round trips while ON, then OFF
                s.sendall(cmd("SET", f"k:lane:{side}", i))
                assert s.recv(100) == b"+OK\r\n"
            s.sendall(cmd(*_reply("OFF")))
            for i in range(20):
                s.sendall(cmd("INCR", f"k:lane:{side}"))
                time.sleep(0.002)
            s.sendall(cmd(*_reply("ON")))
            assert s.recv(100) == b"+OK\r\n"
            for _ in range(20):
                s.sendall(cmd("GET", f"k:lane:{side}"))
                assert s.recv(100) == b"$2\r\n39\r\n"
            s.sendall(cmd(*_reply("SKIP")) + cmd("GET", f"k:lane:{side}") + cmd("ECHO", "z"))
            assert s.recv(100) == b"$1\r\nz\r\n"
    finally:
        for s in socks.values():
            s.close()


def test_client_reply_inside_multi_is_refused_and_dooms_the_transaction(target):
    """Queued, CLIENT REPLY would change the flags halfway through EXEC's reply: refused."""
    data = _login(target.version, "full") + cmd("MULTI") + cmd(*_reply("OFF")) + cmd("EXEC") \
        + cmd("PING", MARK)
    got = _conversation(target.proxied, data, ends=True)
    assert got == (b"+OK\r\n+OK\r\n-ERR CLIENT REPLY inside MULTI is not supported through "
                   b"redisgate\r\n-EXECABORT Transaction discarded because of previous errors."
                   b"\r\n" + END_REPLY)


@pytest.mark.parametrize("case", ["off-quit", "skip-protocol-error"])
def test_the_proxy_closes_after_quit_or_a_protocol_error_under_off(target, case):
    case = next(c for c in CASES if c.name == case)
    sock = socket.create_connection(("127.0.0.1", target.proxied), 10)
    try:
        sock.sendall(_login(target.version, "full") + _encode(case))
        sock.settimeout(10)
        got = b""
        while chunk := sock.recv(1 << 16):
            got += chunk
        assert got == b"+OK\r\n"   # the login's, then nothing, then closed
    finally:
        sock.close()


def test_a_muted_reply_is_swallowed_without_being_kept():
    """A muted command's reply (here 4 MB, arriving in 64 KiB reads) is dropped as it comes:
    nothing of it is held in the session, and what follows ON passes as usual."""
    from redisgate.config import build_config
    from redisgate.session.gate import Gate
    from redisgate.session import Session

    cfg = build_config({"upstream": {"address": "127.0.0.1:1"},
                        "users": {"u": f"on {pw_hash('pw')} ~k:* +@all"}})
    s = Session(Gate(cfg, upstream_version=(7, 0, 15)), "test")
    s.client_data(cmd("AUTH", "u", "pw"))
    s.connected()
    assert b"".join(s.to_client) == b"+OK\r\n"
    s.to_client.clear()
    s.client_data(cmd(*_reply("OFF")) + cmd("GET", "k:big") + cmd(*_reply("ON"))
                  + cmd("GET", "k:small"))
    assert b"".join(s.to_upstream) == cmd("GET", "k:big") + cmd("GET", "k:small")
    value = b"x" * (4 << 20)
    stream = b"$%d\r\n%s\r\n$2\r\nhi\r\n" % (len(value), value)
    kept = 0
    for i in range(0, len(stream), 1 << 16):
        s.upstream_data(stream[i:i + (1 << 16)])
        kept = max(kept, len(s._partial or b""))
    assert kept == 0
    assert b"".join(s.to_client) == b"+OK\r\n$2\r\nhi\r\n"
