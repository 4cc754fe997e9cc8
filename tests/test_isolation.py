"""Nothing one client does reaches another client's stream, and a connection's state follows
its user: regression tests for issue 23's findings 1, 2, 3, 10, 11 and 12, each through a real
proxy in front of real Redis (7.0, and 6.2 / 5.0 where the behaviour differs by version).

tests/test_mux_differential.py compares whole random conversations on shared links with the
same on dedicated connections; the tests here pin the individual attacks.
"""
from __future__ import annotations

import re
import threading
import time

import pytest

from proxy import ProxyRunner, pw_hash
from wire import Wire, cmd

USERS = {
    # No command rights at all: AUTH, HELLO, RESET and QUIT are all it may send.
    "nobody": f"on {pw_hash('nobody-pw')} ~app:*",
    "app": f"on {pw_hash('app-pw')} ~app:* &chan:* +@all -@dangerous",
    "wide": f"on {pw_hash('wide-pw')} allkeys allchannels +@all",
    "multidb": {"rules": f"on {pw_hash('multidb-pw')} ~app:* &secret:* &chan:* +@all -@dangerous",
                "databases": [0, 2]},
    "asynq": f"on {pw_hash('asynq-pw')} ~asynq:* +@all -@dangerous",
}


def _proxy(srv, multiplex=0, users=USERS):
    return ProxyRunner({"upstream": dict(srv.upstream, multiplex=multiplex),
                        "users": users}).start()


@pytest.fixture(params=[0, 1], ids=["dedicated", "multiplex"])
def proxy7(request, redis7):
    runner = _proxy(redis7, request.param)
    runner.srv = redis7
    yield runner
    runner.stop()


def _drain(w: Wire) -> bytes:
    """Everything until the proxy closes the connection (after QUIT)."""
    w.sock.settimeout(10)
    return w.read_raw_until_closed()


# ---------------------------------------------------------------- 12: nothing after QUIT

@pytest.mark.parametrize("version", ["7", "5"])
@pytest.mark.parametrize("multiplex", [0, 1])
def test_nothing_pipelined_after_quit_is_executed(request, version, multiplex):
    srv = request.getfixturevalue({"7": "redis7", "5": "redis5"}[version])
    runner = _proxy(srv, multiplex)
    try:
        for i in range(40):
            w = Wire(runner.port)
            # Logged in, and (dedicated mode) its upstream connection open, as in the report.
            assert w.call("AUTH", "asynq", "asynq-pw") == b"OK"
            assert w.call("PING") == b"PONG"
            head = cmd("SET", f"asynq:before:{i}", 1) if i % 2 else b""
            w.send(head + cmd("QUIT") + cmd("SET", f"asynq:after:{i}", 1)
                   + cmd("GET", f"asynq:after:{i}"))
            out = _drain(w)
            assert out == (b"+OK\r\n" if i % 2 else b"") + b"+OK\r\n"
            w.close()
        time.sleep(0.2)
        admin = srv.admin()
        assert admin.keys("asynq:after:*") == []
        assert len(admin.keys("asynq:before:*")) == 20
        admin.delete(*admin.keys("asynq:before:*"))
    finally:
        runner.stop()


# ---------------------------------------------------------------- 1: a shared link's protocol

VICTIM_SETUP = [("DEL", "app:h", "app:z"), ("HSET", "app:h", "f", "v"), ("ZADD", "app:z", "1.5", "m"),
                ("DEL", "app:none")]   # (the first DEL: other tests share this Redis)
RESP2_REPLIES = b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n$3\r\n1.5\r\n$-1\r\n"
RESP3_REPLIES = b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n,1.5\r\n_\r\n"


def _victim_round(w: Wire) -> bytes:
    w.send(cmd("HGETALL", "app:h") + cmd("ZSCORE", "app:z", "m") + cmd("GET", "app:none"))
    out = b""
    w.sock.settimeout(10)
    while out.count(b"\r\n") < RESP2_REPLIES.count(b"\r\n") and not out.endswith(b"_\r\n"):
        out += w.sock.recv(65536)
    return out


@pytest.mark.parametrize("attack", [
    cmd("AUTH", "nobody", "nobody-pw") + cmd("HELLO", "3") + cmd("HELLO", "2"),
    cmd("AUTH", "nobody", "nobody-pw") + cmd("HELLO", "3") + cmd("RESET"),
    cmd("HELLO", "3", "AUTH", "nobody", "nobody-pw") + cmd("HELLO", "2") + cmd("HELLO", "3"),
    cmd("AUTH", "app", "app-pw") + cmd("GET", "app:1") + cmd("HELLO", "3") + cmd("GET", "app:2")
    + cmd("HELLO", "2") + cmd("RESET") + cmd("HELLO", "3", "AUTH", "app", "app-pw")
    + cmd("GET", "app:3"),
])
def test_no_client_can_switch_a_shared_links_protocol(redis7, attack):
    runner = _proxy(redis7, multiplex=1)
    try:
        admin = redis7.admin()
        for c in VICTIM_SETUP:
            admin.execute_command(*c)
        v2 = Wire(runner.port)
        assert v2.call("AUTH", "app", "app-pw") == b"OK"
        v3 = Wire(runner.port)
        v3.call("HELLO", "3", "AUTH", "app", "app-pw")
        assert _victim_round(v2) == RESP2_REPLIES
        assert _victim_round(v3) == RESP3_REPLIES
        for _ in range(20):
            a = Wire(runner.port)
            a.send(attack + cmd("QUIT"))
            _drain(a)
            a.close()
            assert _victim_round(v2) == RESP2_REPLIES
            assert _victim_round(v3) == RESP3_REPLIES
    finally:
        runner.stop()


def test_hello_on_a_shared_link_names_no_upstream_connection(redis7):
    runner = _proxy(redis7, multiplex=1)
    try:
        ids, wires = set(), []
        for proto in ("2", "3", "3"):
            w = Wire(runner.port)
            wires.append(w)
            reply = w.call("HELLO", proto, "AUTH", "app", "app-pw")
            w.call("GET", "app:x")   # (on the shared link now)
            fields = dict(zip(reply[::2], reply[1::2])) if isinstance(reply, list) else reply
            ids.add(fields[b"id"])
        # Each client gets its own proxy-side id (without the fix all named the links' ones).
        # Compared with the proxy's own connection ids, not with Redis's: both count up from 1,
        # so an equality with a link's id can be chance.
        assert len(ids) == 3
        assert ids == {c.id for c in list(runner.proxy.clients)}
        for w in wires:
            w.close()
    finally:
        runner.stop()


# ---------------------------------------------------------------- 2, 3: CLIENT TRACKING

@pytest.mark.parametrize("args", [
    ("ON",), ("ON", "BCAST"), ("ON", "BCAST", "PREFIX", "app:"), ("ON", "OPTIN"),
    ("ON", "REDIRECT", "1", "BCAST", "PREFIX", "app:"), ("OFF",),
])
def test_client_tracking_needs_allkeys(proxy7, args):
    w = Wire(proxy7.port)
    w.call("HELLO", "3", "AUTH", "app", "app-pw")
    reply = w.call("CLIENT", "TRACKING", *args)
    assert isinstance(reply, Exception) and str(reply).startswith("NOPERM")
    assert w.call("SET", "app:t", "1") == b"OK"
    assert w.call("GET", "app:t") == b"1"   # no invalidation push in between


def test_client_unblock_needs_allkeys(redis7):
    # It would end another client's BLPOP (a nil or an error in that client's stream).
    users = dict(USERS, all=f"on {pw_hash('all-pw')} ~app:* +@all")
    runner = _proxy(redis7, users=users)
    try:
        blocked = Wire(runner.port)
        blocked.call("AUTH", "app", "app-pw")
        victim_id = blocked.call("CLIENT", "ID")
        blocked.send(cmd("BLPOP", "app:queue", "2"))
        time.sleep(0.2)
        w = Wire(runner.port)
        w.call("AUTH", "all", "all-pw")
        reply = w.call("CLIENT", "UNBLOCK", victim_id, "ERROR")
        assert isinstance(reply, Exception) and str(reply).startswith("NOPERM")
        redis7.admin().rpush("app:queue", "job")
        assert blocked.read(1) == [[b"app:queue", b"job"]]
    finally:
        runner.stop()


@pytest.mark.parametrize("args", [
    ("ON", "REDIRECT", "{id}"), ("ON", "BCAST", "REDIRECT", "{id}"),
    ("ON", "redirect\0x", "{id}"), ("OFF", "REDIRECT", "{id}"),
    ("ON", "PREFIX", "x", "REDIRECT", "{id}"),
])
def test_client_tracking_redirect_is_refused_and_reveals_no_ids(proxy7, args):
    victim = Wire(proxy7.port)
    victim.call("HELLO", "3", "AUTH", "app", "app-pw")
    victim.call("CLIENT", "SETNAME", "victim")   # (its own connection, in both modes)
    victim_id = victim.call("CLIENT", "ID")
    attacker = Wire(proxy7.port)
    attacker.call("HELLO", "3", "AUTH", "wide", "wide-pw")
    for target in (victim_id, 0, 1, 10 ** 6):
        reply = attacker.call("CLIENT", "TRACKING", *(a.format(id=target) for a in args))
        assert isinstance(reply, Exception)
        assert "REDIRECT is not supported" in str(reply), reply
    attacker.call("SET", "app:x", "1")
    assert victim.call("GET", "app:x") == b"1"   # its next reply, not ">2 invalidate"
    # Tracking of its own (RESP3, no redirect) still works for a user with allkeys.
    assert attacker.call("CLIENT", "TRACKING", "ON") == b"OK"
    assert attacker.call("GET", "app:x") == b"1"


def test_a_tracking_attack_on_a_shared_link_leaves_every_client_working(redis7):
    runner = _proxy(redis7, multiplex=1)
    try:
        busy = [Wire(runner.port) for _ in range(8)]
        for b in busy:
            b.call("HELLO", "3", "AUTH", "app", "app-pw")
        stop = threading.Event()
        errors = []

        def work(w, n):
            try:
                i = 0
                while not stop.is_set():
                    w.send(cmd("SET", f"app:busy:{n}", i) + cmd("GET", f"app:busy:{n}"))
                    assert w.read(2) == [b"OK", str(i).encode()]
                    i += 1
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(b, n)) for n, b in enumerate(busy)]
        for t in threads:
            t.start()
        attacker = Wire(runner.port)
        hello = attacker.call("HELLO", "3", "AUTH", "wide", "wide-pw")
        named = hello[b"id"]   # (once the shared link's own id)
        targets = [named] + [t for t in range(max(1, named - 40), named + 40) if t != named]
        for target in targets:
            attacker.send(cmd("CLIENT", "TRACKING", "ON", "REDIRECT", target, "BCAST"))
            reply = attacker.read(1)[0]
            assert isinstance(reply, Exception) and "REDIRECT is not supported" in str(reply)
        for i in range(50):
            attacker.call("SET", f"app:busy:{i % 8}", "x")
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(10)
        assert errors == []
    finally:
        runner.stop()


# ---------------------------------------------------------------- 11: SUBSCRIBE inside MULTI

_HELLO_ID = re.compile(rb"\$2\r\nid\r\n:\d+\r\n")

TRANSACTIONS = [
    [("MULTI",), ("SUBSCRIBE", "chan:1"), ("EXEC",), ("GET", "app:k"), ("PING",)],
    [("MULTI",), ("SUBSCRIBE", "chan:1", "chan:2"), ("GET", "app:k"), ("EXEC",),
     ("GET", "app:k"), ("PING",), ("UNSUBSCRIBE",), ("GET", "app:k")],
    [("MULTI",), ("GET", "app:k"), ("PSUBSCRIBE", "chan:*"), ("SUBSCRIBE", "chan:1", "chan:2"),
     ("EXEC",), ("PING", "x"), ("PUNSUBSCRIBE",), ("UNSUBSCRIBE",), ("GET", "app:k")],
    [("MULTI",), ("SUBSCRIBE", "chan:1"), ("DISCARD",), ("GET", "app:k"), ("PING",)],
    [("SET", "app:k", "v"), ("WATCH", "app:k"), ("MULTI",), ("SUBSCRIBE", "chan:1", "chan:2"),
     ("EXEC",), ("GET", "app:k")],
    [("MULTI",), ("SUBSCRIBE", "chan:1"), ("UNSUBSCRIBE", "chan:1"), ("UNSUBSCRIBE",),
     ("EXEC",), ("GET", "app:k")],
    # EXEC that does not run (its WATCH fired): no subscriptions, nothing spills.
    [("WATCH", "app:k"), ("SET", "app:k", "v2"), ("MULTI",), ("SUBSCRIBE", "chan:1", "chan:2"),
     ("EXEC",), ("GET", "app:k"), ("UNSUBSCRIBE",), ("PING",)],
]


def _conversation(port, login, commands, resp3):
    w = Wire(port)
    w.send(login + (cmd("HELLO", "3") if resp3 else b"") + b"".join(cmd(*c) for c in commands)
           + cmd("QUIT"))
    out = _drain(w)
    w.close()
    return _HELLO_ID.sub(b"$2\r\nid\r\n:ID\r\n", out)


@pytest.mark.parametrize("version", ["7", "6.2", "5"])
@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
@pytest.mark.parametrize("n", range(len(TRANSACTIONS)))
def test_subscribe_inside_multi_is_what_redis_does(request, version, resp3, n):
    if resp3 and version == "5":
        pytest.skip("no RESP3 on Redis 5")
    srv = request.getfixturevalue({"7": "redis7", "6.2": "redis62", "5": "redis5"}[version])
    up = srv.upstream
    login = cmd("AUTH", *([up["username"]] if "username" in up else []), up["password"])
    runner = _proxy(srv)
    try:
        srv.admin().delete("app:k")
        direct = _conversation(srv.port, login, TRANSACTIONS[n], resp3)
        srv.admin().delete("app:k")
        proxied = _conversation(runner.port, cmd("AUTH", "app", "app-pw"), TRANSACTIONS[n], resp3)
        assert proxied == direct
    finally:
        runner.stop()


@pytest.mark.parametrize("end", ["EXEC", "DISCARD"])
def test_a_refusal_after_subscribe_inside_multi_keeps_its_place(redis7, end):
    runner = _proxy(redis7)
    try:
        w = Wire(runner.port)
        w.send(cmd("AUTH", "app", "app-pw") + cmd("MULTI") + cmd("SUBSCRIBE", "chan:1")
               + cmd(end) + cmd("GET", "secret:1") + cmd("PING") + cmd("QUIT"))
        replies = w.read(7 if end == "EXEC" else 7)
        assert replies[:3] == [b"OK", b"OK", b"QUEUED"]
        assert str(replies[4]).startswith("NOPERM")
        assert replies[5] == ([b"pong", b""] if end == "EXEC" else b"PONG")
        assert replies[6] == b"OK"
    finally:
        runner.stop()


# ---------------------------------------------------------------- 10: re-AUTH

@pytest.mark.parametrize("version", ["7", "5"])
def test_reauth_returns_to_a_database_the_new_user_may_use(request, version):
    srv = request.getfixturevalue({"7": "redis7", "5": "redis5"}[version])
    runner = _proxy(srv)
    try:
        admin = srv.admin()
        w = Wire(runner.port)
        w.send(cmd("AUTH", "multidb", "multidb-pw") + cmd("SELECT", "2")
               + cmd("SET", "app:db", "two") + cmd("AUTH", "app", "app-pw")
               + cmd("SET", "app:db", "zero") + cmd("AUTH", "multidb", "multidb-pw")
               + cmd("GET", "app:db"))
        assert w.read(7) == [b"OK"] * 6 + [b"zero"]   # (multidb may use 0: it stays there)
        assert admin.get("app:db") == b"zero"
        assert srv.admin(db=2).get("app:db") == b"two"
        admin.delete("app:db")
        srv.admin(db=2).delete("app:db")
    finally:
        runner.stop()


def test_reauth_drops_subscriptions_the_new_user_may_not_hold(redis7):
    runner = _proxy(redis7)
    try:
        w = Wire(runner.port)
        w.send(cmd("HELLO", "3", "AUTH", "multidb", "multidb-pw")
               + cmd("SUBSCRIBE", "secret:payroll", "chan:ok"))
        w.read(3)
        w.send(cmd("AUTH", "app", "app-pw") + cmd("PING"))
        assert w.read(2) == [b"OK", b"PONG"]
        admin = redis7.admin()
        assert admin.publish("secret:payroll", "ceo") == 0
        assert admin.publish("chan:ok", "hi") == 1
        assert w.read(1) == [[b"message", b"chan:ok", b"hi"]]
    finally:
        runner.stop()


@pytest.mark.parametrize("version", ["7", "6.2", "5"])
def test_auth_in_resp2_subscribed_mode_is_refused_as_by_redis(request, version):
    srv = request.getfixturevalue({"7": "redis7", "6.2": "redis62", "5": "redis5"}[version])
    up = srv.upstream
    login = cmd("AUTH", *([up["username"]] if "username" in up else []), up["password"])
    runner = _proxy(srv)
    try:
        seq = [("SUBSCRIBE", "chan:1"), ("AUTH", "x"), ("PING",)]
        if version != "5":   # (HELLO: an unknown command there)
            seq[2:2] = [("AUTH", "x", "y"), ("HELLO", "2")]
        direct = _conversation(srv.port, login, seq, False)
        proxied = _conversation(runner.port, cmd("AUTH", "app", "app-pw"), seq, False)
        assert proxied == direct
    finally:
        runner.stop()


# ---------------------------------------------------------------- pushes nobody asked for

def _session(resp3=True):
    from redisgate.config import build_config
    from redisgate.session.gate import Gate
    from redisgate.session import Session
    cfg = build_config({"upstream": {"address": "127.0.0.1:1"}, "users": USERS})
    s = Session(Gate(cfg, upstream_version=(7, 0, 15)), "test")
    s.client_data(cmd("HELLO", "3", "AUTH", "wide", "wide-pw") if resp3
                  else cmd("AUTH", "wide", "wide-pw"))
    s.connected()
    s.upstream_data(b"%1\r\n$5\r\nproto\r\n:3\r\n" if resp3 else b"")
    s.to_client.clear()
    s.to_upstream.clear()
    return s


INVALIDATE = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$15\r\nsecret:payroll1\r\n"
MESSAGE = b">3\r\n$7\r\nmessage\r\n$6\r\nchan:1\r\n$2\r\nhi\r\n"


@pytest.mark.parametrize("push", [INVALIDATE, MESSAGE])
def test_a_push_the_client_did_not_ask_for_is_dropped_wherever_it_is_cut(push):
    stream = b"$1\r\n1\r\n" + push + b"$1\r\n2\r\n" + push
    for cut in range(len(stream) + 1):
        s = _session()
        s.client_data(cmd("GET", "app:1") + cmd("GET", "app:2"))
        s.upstream_data(stream[:cut])
        s.upstream_data(stream[cut:])
        assert b"".join(s.to_client) == b"$1\r\n1\r\n$1\r\n2\r\n", cut


def test_pushes_the_client_asked_for_pass():
    s = _session()
    s.client_data(cmd("CLIENT", "TRACKING", "ON") + cmd("GET", "app:1"))
    assert b"".join(s.to_upstream) == cmd("CLIENT", "TRACKING", "ON") + cmd("GET", "app:1")
    s.upstream_data(b"+OK\r\n" + INVALIDATE + b"$1\r\n1\r\n")
    assert b"".join(s.to_client) == b"+OK\r\n" + INVALIDATE + b"$1\r\n1\r\n"
    s = _session()
    s.client_data(cmd("SUBSCRIBE", "chan:1"))
    s.upstream_data(b">3\r\n$9\r\nsubscribe\r\n$6\r\nchan:1\r\n:1\r\n" + MESSAGE)
    assert b"".join(s.to_client).endswith(MESSAGE)
