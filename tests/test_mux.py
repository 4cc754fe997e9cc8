"""Shared upstream links (upstream.multiplex): mux.Demux alone, the session's side, and end to end
against real Redis 7.0 and legacy 5.0 (tests/test_proxy.py also runs whole on shared links)."""
from __future__ import annotations

import threading
import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redisgate.config import ConfigError, build_config
from redisgate.protocol.mux import Demux
from redisgate.protocol.resp import ReplyScanner, UpstreamProtocolError
from redisgate.session import Session, shareable
from redisgate.protocol.commands import TABLE
from redisgate.session.gate import Gate

from proxy import ProxyRunner, pw_hash
from servers import free_port
from wire import Wire, cmd

# Every test here runs with the C scan and with its Python twin (conftest.both_scans).
pytestmark = pytest.mark.usefixtures("both_scans")

# ---------------------------------------------------------------- Demux


def _impls():
    """The C LinkState (redisgate._native._lane) a Demux keeps its queue in, and its Python twin."""
    from redisgate.protocol.linkstate import PyLinkState
    try:
        from redisgate._native._lane import LinkState
    except ImportError:
        return [pytest.param(PyLinkState, id="py")]
    return [pytest.param(LinkState, id="c"), pytest.param(PyLinkState, id="py")]


def demux(impl):
    return Demux(impl(lambda owner, size, replies: None))


both_states = pytest.mark.parametrize("impl", _impls())


_leaf = st.one_of(
    st.just(b"+OK\r\n"), st.just(b"-ERR no\r\n"), st.integers(-10**6, 10**6).map(lambda i: b":%d\r\n" % i),
    st.just(b"$-1\r\n"), st.just(b"*-1\r\n"),
    st.binary(max_size=40).map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
    st.integers(1000, 3000).map(lambda n: b"$%d\r\n%s\r\n" % (n, b"\r\n" * (n // 2) + b"x" * (n % 2))),
)
_reply = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4).map(
    lambda items: b"*%d\r\n" % len(items) + b"".join(items)), max_leaves=8)


@both_states
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=st.lists(st.tuples(st.integers(0, 3), st.lists(_reply, min_size=1, max_size=6)),
                     min_size=1, max_size=8),
       cuts=st.lists(st.integers(0, 20000), max_size=12))
def test_demux_gives_every_owner_exactly_its_replies(impl, runs, cuts):
    owners = [object() for _ in range(4)]
    d = demux(impl)
    want: dict[int, bytes] = {}
    stream = b""
    for who, replies in runs:
        d.sent(owners[who], len(replies))
        want[who] = want.get(who, b"") + b"".join(replies)
        stream += b"".join(replies)
    assert d.pending == sum(len(r) for _, r in runs)
    got: dict[int, bytes] = {}
    counted = 0
    order = []
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in zip(points, points[1:]):
        for owner, chunk, replies, whole in d.received(stream[a:b]):
            who = owners.index(owner)
            if whole:   # the owner's bytes so far end where one of its replies ends
                scanner = ReplyScanner()
                scanner.feed(got.get(who, b"") + chunk)
                assert scanner.idle
            got[who] = got.get(who, b"") + chunk
            counted += replies
            if not order or order[-1] != who:
                order.append(who)
    assert got == want
    assert counted == sum(len(r) for _, r in runs)
    assert d.pending == 0 and d.state.head_due == 0 and d.state.head_owner is None
    # Owners come in the order their runs were sent (a run continues across reads).
    sent_order = []
    for who, _ in runs:
        if not sent_order or sent_order[-1] != who:
            sent_order.append(who)
    assert order == sent_order


@both_states
def test_demux_refuses_replies_nobody_asked_for(impl):
    d = demux(impl)
    d.sent("a", 1)
    with pytest.raises(UpstreamProtocolError):
        d.received(b"+OK\r\n+OK\r\n")
    d = demux(impl)
    with pytest.raises(UpstreamProtocolError):
        d.received(b"*1\r\n")
    d = demux(impl)
    d.sent("a", 1)
    with pytest.raises(UpstreamProtocolError):
        d.received(b"!garbage\r\n")


PUSH = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$5\r\napp:x\r\n"


@both_states
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=st.lists(st.tuples(st.integers(0, 2), st.lists(_reply, min_size=1, max_size=4)),
                     min_size=1, max_size=6),
       pushes=st.lists(st.integers(0, 40), max_size=4),
       cuts=st.lists(st.integers(0, 20000), max_size=12))
def test_demux_drops_push_messages_without_failing_the_link(impl, runs, pushes, cuts):
    # Nothing on a shared link subscribes or tracks keys; a push that arrives anyway (anywhere
    # between replies, split anywhere) is dropped and logged: every owner still gets exactly its
    # replies, and the link is not failed for everyone.
    owners = [object() for _ in range(3)]
    d = demux(impl)
    want: dict[int, bytes] = {}
    replies = []
    for who, rs in runs:
        d.sent(owners[who], len(rs))
        want[who] = want.get(who, b"") + b"".join(rs)
        replies += rs
    for at in pushes:
        replies.insert(at % (len(replies) + 1), PUSH)
    stream = b"".join(replies)
    got: dict[int, bytes] = {}
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in zip(points, points[1:]):
        for owner, chunk, _, _ in d.received(stream[a:b]):
            who = owners.index(owner)
            got[who] = got.get(who, b"") + chunk
    assert got == want and d.pending == 0 and d.dropped == len(pushes)


@both_states
def test_demux_drops_a_push_when_nothing_is_due(impl):
    d = demux(impl)
    assert d.received(PUSH[:7]) == [] and d.received(PUSH[7:]) == []
    d.sent("a", 1)
    assert d.received(PUSH + b"+OK\r\n") == [("a", b"+OK\r\n", 1, True)]
    with pytest.raises(UpstreamProtocolError):   # a reply nobody asked for still fails it
        d.received(b"+OK\r\n")


@both_states
def test_demux_forget_lists_each_waiting_owner_once(impl):
    d = demux(impl)
    for who in ("a", "b", "a", "c"):
        d.sent(who, 2)
    d.received(b"+OK\r\n+OK\r\n+OK")
    assert d.forget() == ["b", "a", "c"]
    assert d.pending == 0


# ---------------------------------------------------------------- the session's side

USER = f"on {pw_hash('pw')} ~k:* ~q:* +get +set +incr +ping +multi +exec +select +blpop +hello +reset"


def shared_session(upstream=None):
    up = dict(upstream or {"address": "127.0.0.1:1", "password": "${MUX_TEST_PW}"}, multiplex=1)
    cfg = build_config({"upstream": up, "users": {"u": USER}})
    s = Session(Gate(cfg, upstream_version=(7, 0, 15)), "test")
    s.client_data(cmd("AUTH", "u", "pw"))
    assert b"".join(s.to_client) == b"+OK\r\n"
    s.to_client.clear()
    return s


@pytest.fixture(autouse=True)
def _pw(monkeypatch):
    monkeypatch.setenv("MUX_TEST_PW", "gate-secret")


def test_a_fresh_client_goes_on_the_shared_link_without_a_handshake():
    s = shared_session()
    assert s.shared and s.upstream_ready and not s.want_upstream
    s.client_data(cmd("SET", "k:1", "v") + cmd("GET", "k:1") + cmd("GET", "nope") + cmd("PING"))
    # No AUTH of the proxy's own: the shared link did that once for everyone.
    assert b"".join(s.to_upstream) == cmd("SET", "k:1", "v") + cmd("GET", "k:1") + cmd("PING")
    assert s.expected == 3
    s.upstream_data(b"+OK\r\n$1\r\nv\r\n+PONG\r\n")
    replies = b"".join(s.to_client)
    assert replies.startswith(b"+OK\r\n$1\r\nv\r\n-NOPERM ") and replies.endswith(b"\r\n+PONG\r\n")


@pytest.mark.parametrize("stateful, own_setup, sent", [
    (cmd("MULTI"), b"", True), (cmd("SELECT", "0"), b"", True),
    (cmd("BLPOP", "q:1", "0"), b"", True),
    # A protocol switch after use: answered here (the link's protocol is not the client's to
    # switch); the next command, with the RESP2 link's reply still due, needs a connection of
    # its own, which speaks RESP3 from the start.
    (cmd("HELLO", "3"), cmd("HELLO", "3"), False),
])
def test_a_stateful_command_moves_the_client_to_its_own_connection(stateful, own_setup, sent):
    s = shared_session()
    s.client_data(cmd("INCR", "k:n") + stateful + cmd("GET", "k:n"))
    # INCR went to the shared link; what follows waits for the client's own connection...
    assert b"".join(s.to_upstream) == cmd("INCR", "k:n")
    assert s.expected == 1 and not s.shared and s.want_upstream and not s.upstream_ready
    assert not s.link_resp3                  # (INCR's link: the RESP2 one, bound when judged)
    s.to_upstream.clear()
    s.upstream_data(b":1\r\n")               # (the shared reply, routed here by the link)
    assert b"".join(s.to_client).startswith(b":1\r\n")
    s.to_client.clear()
    s.connected()                            # ...which starts with the proxy's own AUTH
    assert b"".join(s.to_upstream) == cmd("AUTH", "gate-secret")   # (alone: see _send_setup)
    s.to_upstream.clear()
    s.upstream_data(b"+OK\r\n")
    assert b"".join(s.to_upstream) == own_setup + (stateful if sent else b"") + cmd("GET", "k:n")
    assert s.expected == 1                   # nothing more was asked of the shared link


def fresh_session():
    cfg = build_config({"upstream": {"address": "127.0.0.1:1", "password": "${MUX_TEST_PW}",
                                     "multiplex": 1}, "users": {"u": USER}})
    return Session(Gate(cfg, upstream_version=(7, 0, 15)), "test")


def test_go_redis_handshake_keeps_the_client_on_a_shared_link():
    # HELLO 3 AUTH, CLIENT SETINFO twice (answered here), then work: what every go-redis v9
    # connection sends (Asynq). HELLO is answered here (never on a link); the first command
    # goes to a RESP3 link.
    s = fresh_session()
    s.client_id = 42
    s.client_data(cmd("HELLO", "3", "AUTH", "u", "pw")
                  + cmd("CLIENT", "SETINFO", "LIB-NAME", "go-redis(,go1.22.5)")
                  + cmd("CLIENT", "SETINFO", "LIB-VER", "9.14.1") + cmd("GET", "k:1"))
    assert s.shared and s.resp3 and s.link_resp3 and s.upstream_ready and not s.want_upstream
    assert b"".join(s.to_upstream) == cmd("GET", "k:1")
    assert s.expected == 1
    s.upstream_data(b"_\r\n")
    replies = b"".join(s.to_client)
    assert replies.startswith(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n"
                              b"$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:42\r\n")
    assert b"-ERR unknown subcommand 'SETINFO'" in replies
    assert replies.endswith(b"\r\n_\r\n") and replies.count(b"-ERR unknown subcommand") == 2


def test_hello_with_a_name_needs_a_connection_of_its_own():
    s = fresh_session()
    s.client_data(cmd("HELLO", "3", "AUTH", "u", "pw", "SETNAME", "worker-1"))
    assert not s.shared and s.want_upstream and not s.to_upstream
    s.connected()
    assert b"".join(s.to_upstream) == cmd("AUTH", "gate-secret")
    s.to_upstream.clear()
    s.upstream_data(b"+OK\r\n")
    assert b"".join(s.to_upstream) == cmd("HELLO", "3") + cmd("HELLO", "3", "SETNAME", "worker-1")


def test_reset_takes_a_busy_resp3_client_off_its_resp3_link():
    s = shared_session()
    s.client_data(cmd("HELLO", "3") + cmd("GET", "k:1") + cmd("RESET") + cmd("AUTH", "u", "pw")
                  + cmd("GET", "k:1"))
    assert b"".join(s.to_upstream) == cmd("GET", "k:1")
    assert s.link_resp3   # (bound to the RESP3 links when it was judged)
    assert s.expected == 1 and not s.shared and not s.resp3 and s.want_upstream
    s.to_upstream.clear()
    s.upstream_data(b"_\r\n")   # the shared reply, then the local ones that waited for it
    assert b"".join(s.to_client).endswith(b"_\r\n+RESET\r\n+OK\r\n")
    s.to_client.clear()
    s.connected()   # a RESP2 connection of its own: nothing to reset on it, no HELLO 3
    assert b"".join(s.to_upstream) == cmd("AUTH", "gate-secret")
    s.to_upstream.clear()
    s.upstream_data(b"+OK\r\n")
    assert b"".join(s.to_upstream) == cmd("GET", "k:1")
    s.upstream_data(b"$-1\r\n")
    assert b"".join(s.to_client) == b"$-1\r\n"


def test_a_protocol_switch_with_nothing_due_moves_the_client_to_the_other_links():
    s = shared_session()
    s.client_data(cmd("GET", "k:1"))
    assert not s.link_resp3 and s.expected == 1
    s.to_upstream.clear()
    s.upstream_data(b"$-1\r\n")
    s.to_client.clear()
    s.client_data(cmd("HELLO", "3") + cmd("GET", "k:1") + cmd("GET", "k:2"))
    # Nothing was due on the RESP2 link: the client is bound to the RESP3 ones, still shared.
    assert s.shared and s.resp3 and s.link_resp3 and not s.want_upstream
    assert b"".join(s.to_upstream) == cmd("GET", "k:1") + cmd("GET", "k:2")
    s.to_upstream.clear()
    s.upstream_data(b"_\r\n_\r\n")
    s.client_data(cmd("RESET") + cmd("AUTH", "u", "pw") + cmd("GET", "k:1"))
    assert s.shared and not s.resp3 and not s.link_resp3
    assert b"".join(s.to_upstream) == cmd("GET", "k:1")


def test_no_switch_of_protocol_reaches_a_shared_link():
    # AUTH + HELLO 3 + HELLO 2, or HELLO 3 + RESET, in one write: nothing but the data commands
    # goes to the links, each bound to the protocol it was judged under.
    for seq in ([cmd("HELLO", "3"), cmd("GET", "k:1"), cmd("HELLO", "2"), cmd("GET", "k:2")],
                [cmd("HELLO", "3"), cmd("HELLO", "2"), cmd("GET", "k:2")],
                [cmd("HELLO", "3"), cmd("GET", "k:1"), cmd("RESET"), cmd("AUTH", "u", "pw"),
                 cmd("GET", "k:2")]):
        s = fresh_session()
        s.client_data(cmd("AUTH", "u", "pw") + b"".join(seq))
        shared = b"".join(s.to_upstream)
        assert b"HELLO" not in shared and b"RESET" not in shared
        s.connected()
        s.upstream_data(b"+OK\r\n")   # (the proxy's AUTH; then what waited for it)
        assert b"HELLO\r\n$1\r\n2" not in b"".join(s.to_upstream)


def test_reset_on_a_shared_link_is_answered_by_the_proxy():
    s = shared_session()
    s.client_data(cmd("RESET") + cmd("GET", "k:1"))
    assert b"".join(s.to_client) == b"+RESET\r\n-NOAUTH Authentication required.\r\n"
    assert not s.to_upstream and s.shared


def test_what_may_share_a_link():
    def spec(*args):
        return TABLE.lookup([a.encode() for a in args])
    for ok in (("get",), ("evalsha",), ("lpush",), ("publish",), ("ping",), ("script", "load"),
               ("zadd",), ("command", "docs")):
        assert shareable(spec(*ok)), ok
    for no in (("blpop",), ("xread",), ("multi",), ("watch",), ("select",), ("wait",),
               ("client", "setname"), ("client", "id"), ("subscribe",), ("config", "set"),
               ("debug",), ("hello",), ("auth",), ("readonly",)):
        assert not shareable(spec(*no)), no


def test_multiplex_setting_is_checked():
    for bad in (-1, 65, "two", 1.5):
        with pytest.raises(ConfigError) as e:
            build_config({"upstream": {"address": "127.0.0.1:1", "multiplex": bad}, "users": {}})
        assert "upstream.multiplex" in str(e.value)
    for value, links in ((True, 1), (False, 0), (4, 4)):
        cfg = build_config({"upstream": {"address": "127.0.0.1:1", "multiplex": value},
                            "users": {"u": USER}})
        assert cfg.upstream.multiplex == links


# ---------------------------------------------------------------- end to end

USERS = {"u": f"on {pw_hash('pw')} ~k:* ~q:* +@all -@dangerous"}


@pytest.fixture(params=["7", "6.2", "5"])
def muxed(request):
    srv = request.getfixturevalue({"7": "redis7", "6.2": "redis62", "5": "redis5"}[request.param])
    runner = ProxyRunner({"upstream": dict(srv.upstream, multiplex=1), "users": USERS}).start()
    runner.srv = srv
    yield runner
    runner.stop()


def _proxy_links(srv) -> int:
    return sum(1 for c in srv.admin().client_list() if c.get("cmd") != "client|list"
               and c.get("name") != "admin")


def test_many_clients_share_one_upstream_connection(muxed):
    clients = [muxed.client("u", "pw") for _ in range(20)]
    before = _proxy_links(muxed.srv)
    for i, c in enumerate(clients):
        c.set(f"k:mux:{i}", i)
    after = _proxy_links(muxed.srv)
    assert after - before <= 1
    for c in clients:
        c.close()


def test_concurrent_pipelines_each_get_their_own_replies(muxed):
    errors = []

    def work(i: int) -> None:
        try:
            c = muxed.client("u", "pw")
            big = b"%d" % i * 50_000            # replies of many reads, among small ones
            c.set(f"k:big:{i}", big)
            c.delete(f"k:list:{i}")
            c.rpush(f"k:list:{i}", *range(2000))
            for round_ in range(20):
                p = c.pipeline(transaction=False)
                for j in range(10):
                    p.set(f"k:{i}:{j}", f"{i}-{j}-{round_}")
                    p.get(f"k:{i}:{j}")
                p.get(f"k:big:{i}")
                p.lrange(f"k:list:{i}", 0, -1)
                p.get("nope")                  # denied: answered by the proxy, in order
                got = p.execute(raise_on_error=False)
                for j in range(10):
                    assert got[2 * j] is True and got[2 * j + 1] == f"{i}-{j}-{round_}".encode()
                assert got[20] == big
                assert got[21] == [b"%d" % n for n in range(2000)]
                assert isinstance(got[22], redis.exceptions.NoPermissionError)
            c.close()
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]


def test_leaving_the_link_keeps_command_order(muxed):
    w = Wire(muxed.port)
    assert w.call("AUTH", "u", "pw") == b"OK"
    w.send(cmd("SET", "k:o", "1") + cmd("INCR", "k:o") + cmd("DEL", "q:empty") +
           cmd("BLPOP", "q:empty", "1") + cmd("INCR", "k:o") + cmd("MULTI") + cmd("INCR", "k:o") +
           cmd("EXEC") + cmd("GET", "k:o"))
    assert w.read(9) == [b"OK", 2, 0, None, 3, b"OK", b"QUEUED", [4], b"4"]
    # ...and the client keeps its own connection, state and all.
    assert w.call("CLIENT", "SETNAME", "own") == b"OK"
    assert w.call("GET", "k:o") == b"4"
    assert w.call("CLIENT", "GETNAME") == b"own"


def test_a_lost_link_fails_only_what_was_in_flight_and_comes_back(muxed):
    idle = muxed.client("u", "pw")
    assert idle.ping()
    victims = [c for c in muxed.srv.admin().client_list() if c.get("cmd") not in ("client|list", "client")]
    for c in victims:
        muxed.srv.admin().client_kill_filter(_id=c["id"])
    time.sleep(0.3)
    assert idle.ping()                    # the same client connection, a new shared link
    assert idle.set("k:after", "1")


def test_shared_link_setup_failure_is_a_clear_error(redis7):
    up = dict(redis7.upstream, password="wrong-password", multiplex=1)
    runner = ProxyRunner({"upstream": up, "users": USERS}).start()
    try:
        w = Wire(runner.port)
        assert w.call("AUTH", "u", "pw") == b"OK"
        reply = w.call("GET", "k:1")
        assert "upstream Redis unavailable" in str(reply)
        assert "wrong-password" not in str(reply)
        assert w.call("PING") is not None   # still connected; each try reconnects
    finally:
        runner.stop()


def test_unreachable_upstream_with_multiplex(redis7):
    runner = ProxyRunner({"upstream": {"address": f"127.0.0.1:{free_port()}", "multiplex": 1},
                          "users": USERS}).start()
    try:
        w = Wire(runner.port)
        assert w.call("AUTH", "u", "pw") == b"OK"
        assert "upstream Redis unavailable (connection refused)" in str(w.call("GET", "k:1"))
        assert "upstream Redis unavailable" in str(w.call("GET", "k:1"))
    finally:
        runner.stop()


def _handshake(port: int, resp3_upstream: bool) -> Wire:
    """go-redis v9's connection set-up (REDIS-USAGE.md section 6): HELLO 3 AUTH, or AUTH after
    Redis 5's unknown-command error; then CLIENT SETINFO twice, whose errors it ignores."""
    w = Wire(port)
    hello = w.call("HELLO", "3", "AUTH", "u", "pw")
    if resp3_upstream:
        assert hello[b"proto"] == 3 if isinstance(hello, dict) else 3 in hello
    else:
        assert str(hello).startswith("ERR unknown command `HELLO`")
        assert w.call("AUTH", "u", "pw") == b"OK"
    w.send(cmd("CLIENT", "SETINFO", "LIB-NAME", "go-redis(,go1.22.5)")
           + cmd("CLIENT", "SETINFO", "LIB-VER", "9.14.1"))
    w.read(2)
    return w


def test_go_redis_clients_share_links_of_their_protocol(muxed):
    resp3 = muxed.srv.version != "5"
    before = _proxy_links(muxed.srv)
    plain = Wire(muxed.port)   # a RESP2 client alongside: it gets RESP2, from a link of its own kind
    assert plain.call("AUTH", "u", "pw") == b"OK"
    wires = [_handshake(muxed.port, resp3) for _ in range(6)]
    for i, w in enumerate(wires + [plain]):
        start = len(w.raw_log)
        w.send(cmd("DEL", f"k:h:{i}") + cmd("HSET", f"k:h:{i}", "f", str(i))
               + cmd("HGETALL", f"k:h:{i}") + cmd("GET", "k:missing"))
        w.read(4)
        raw = bytes(w.raw_log[start:])
        if resp3 and w is not plain:
            assert raw.endswith(b"%%1\r\n$1\r\nf\r\n$1\r\n%d\r\n_\r\n" % i)
        else:
            assert raw.endswith(b"*2\r\n$1\r\nf\r\n$1\r\n%d\r\n$-1\r\n" % i)
    links = [c for c in muxed.srv.admin().client_list() if c.get("cmd") != "client|list"
             and c.get("name") != "admin"]
    assert len(links) - before <= (2 if resp3 else 1)
    if muxed.srv.version == "7":   # (CLIENT LIST shows the protocol since 7.0)
        assert {"2", "3"} <= {c.get("resp") for c in links}
    # A transaction takes one off the link, to a connection that still speaks its protocol.
    w = wires[0]
    start = len(w.raw_log)
    w.send(cmd("MULTI") + cmd("HGETALL", "k:h:0") + cmd("EXEC"))
    assert w.read(3)[:2] == [b"OK", b"QUEUED"]
    assert bytes(w.raw_log[start:]).endswith(
        b"*1\r\n%1\r\n$1\r\nf\r\n$1\r\n0\r\n" if resp3 else b"*1\r\n*2\r\n$1\r\nf\r\n$1\r\n0\r\n")
    for w in wires + [plain]:
        w.close()
