"""cluster/router.py without sockets: the order of replies whatever order the nodes answer in,
redirects followed and bounded, ASKING before an ASK's retry, a lost node failing only its
commands, the pub/sub move. (The same paths against a real cluster: test_cluster_proxy.py.)"""
from __future__ import annotations

import random

from redisgate.cluster.router import MAX_REDIRECTS, Hop, Router
from redisgate.cluster.slots import key_slot
from redisgate.cluster.topology import NodeAddr, RedirectKind
from wire import cmd

A, B, C = NodeAddr("127.0.0.1", 7000), NodeAddr("127.0.0.1", 7001), NodeAddr("127.0.0.1", 7002)


class View:
    """Slots 0-5460 on A, 5461-10922 on B, the rest on C; MOVED recorded."""

    def __init__(self):
        self.moves = []

    def master_for(self, slot):
        return A if slot <= 5460 else B if slot <= 10922 else C

    def masters(self):
        return (A, B, C)

    def moved(self, r):
        self.moves.append(r)

    def setup_commands(self):
        return [cmd("AUTH", "gate", "pw")]

    def refresh_soon(self):
        pass


def key_on(node, prefix="k"):
    v = View()
    return next(f"{prefix}{i}" for i in range(10000) if v.master_for(key_slot(f"{prefix}{i}".encode())) == node)


def router():
    r = Router(View(), rng=random.Random(1))
    return r


def sent(r):
    return {n: b"".join(c) for n, c in r.take_sends().items()}


def test_replies_come_back_in_command_order_whatever_order_the_nodes_answer():
    r = router()
    ka, kb, kc = key_on(A), key_on(B), key_on(C)
    r.submit(cmd("GET", ka) + cmd("GET", kb) + cmd("GET", kc) + cmd("GET", ka))
    s = sent(r)
    assert s[A] == cmd("AUTH", "gate", "pw") + cmd("GET", ka) + cmd("GET", ka)
    assert s[B].endswith(cmd("GET", kb)) and s[C].endswith(cmd("GET", kc))
    r.node_data(C, b"+OK\r\n$1\r\nc\r\n")
    r.node_data(B, b"+OK\r\n$1\r\nb\r\n")
    assert r.take_out() == []
    r.node_data(A, b"+OK\r\n$1\r\na")       # a reply split across reads
    assert r.take_out() == []
    r.node_data(A, b"\r\n$2\r\na2\r\n")
    assert b"".join(r.take_out()) == b"$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$2\r\na2\r\n"


def test_moved_is_followed_at_most_five_times_then_the_error_goes_out():
    r = router()
    ka = key_on(A)
    slot = key_slot(ka.encode())
    r.submit(cmd("GET", ka))
    sent(r)
    r.node_data(A, b"+OK\r\n")
    node = A
    for i in range(MAX_REDIRECTS):
        nxt = B if node != B else C
        r.node_data(node, b"-MOVED %d 127.0.0.1:%d\r\n" % (slot, nxt.port))
        s = sent(r)
        assert s[nxt].endswith(cmd("GET", ka)), i
        if nxt not in (A,) and s[nxt].startswith(cmd("AUTH", "gate", "pw")):
            r.node_data(nxt, b"+OK\r\n")
        node = nxt
        assert r.take_out() == []
    last = b"-MOVED %d 127.0.0.1:7000\r\n" % slot
    r.node_data(node, last)
    assert r.take_out() == [last]
    assert sent(r) == {}
    assert len(r.view.moves) == MAX_REDIRECTS
    # each redirect followed is noted for the I/O layer (metrics, storms): kind, from, to
    assert sum(r.redirected.values()) == MAX_REDIRECTS
    assert r.redirected[Hop(RedirectKind.MOVED, A, B)] >= 1
    assert all(h.kind is RedirectKind.MOVED for h in r.redirected)


def test_ask_retries_with_asking_and_keeps_the_map():
    r = router()
    ka = key_on(A)
    slot = key_slot(ka.encode())
    r.submit(cmd("INCR", ka))
    sent(r)
    r.node_data(A, b"+OK\r\n-ASK %d 127.0.0.1:7001\r\n" % slot)
    s = sent(r)
    assert s[B] == cmd("AUTH", "gate", "pw") + b"*1\r\n$6\r\nASKING\r\n" + cmd("INCR", ka)
    r.node_data(B, b"+OK\r\n+OK\r\n:1\r\n")
    assert r.take_out() == [b":1\r\n"]
    assert r.view.moves == []
    assert r.redirected == {Hop(RedirectKind.ASK, A, B): 1}


def test_a_lost_node_fails_only_its_commands():
    r = router()
    ka, kb = key_on(A), key_on(B)
    r.submit(cmd("GET", ka) + cmd("GET", kb) + cmd("GET", ka))
    sent(r)
    r.node_data(B, b"+OK\r\n$1\r\nb\r\n")
    r.node_failed(A, "connection lost")
    out = b"".join(r.take_out())
    err = b"-ERR redisgate: cluster node 127.0.0.1:7000 unavailable (connection lost)\r\n"
    assert out == err + b"$1\r\nb\r\n" + err
    assert r.fatal is None
    r.submit(cmd("GET", ka))   # a new connection, logged in again
    assert sent(r)[A] == cmd("AUTH", "gate", "pw") + cmd("GET", ka)


def test_split_and_fanout_merge():
    r = router()
    ka, kb = key_on(A), key_on(B)
    r.submit(cmd("MGET", kb, ka, kb) + cmd("DBSIZE"))
    s = sent(r)
    assert s[A].endswith(cmd("MGET", ka) + cmd("DBSIZE"))
    assert s[B].endswith(cmd("MGET", kb, kb) + cmd("DBSIZE"))
    r.node_data(A, b"+OK\r\n*1\r\n$1\r\na\r\n:3\r\n")
    r.node_data(C, b"+OK\r\n:4\r\n")
    r.node_data(B, b"+OK\r\n*2\r\n$1\r\nb\r\n$-1\r\n:5\r\n")
    assert b"".join(r.take_out()) == b"*3\r\n$1\r\nb\r\n$1\r\na\r\n$-1\r\n:12\r\n"


def test_randomkey_asks_every_master_and_answers_a_key_when_any_has_one():
    r = router()
    r.submit(cmd("RANDOMKEY") + cmd("RANDOMKEY") + cmd("RANDOMKEY"))
    s = sent(r)
    assert all(s[n].endswith(cmd("RANDOMKEY") * 3) for n in (A, B, C))
    # the first: only B has keys; the second: nobody; the third: an error wins
    r.node_data(A, b"+OK\r\n$-1\r\n$-1\r\n$-1\r\n")
    r.node_data(B, b"+OK\r\n$2\r\nkb\r\n$-1\r\n-ERR x\r\n")
    r.node_data(C, b"+OK\r\n$-1\r\n$-1\r\n$2\r\nkc\r\n")
    assert b"".join(r.take_out()) == b"$2\r\nkb\r\n$-1\r\n-ERR x\r\n"


def test_subscribe_waits_for_earlier_replies_then_passes_bytes_through():
    r = router()
    kb = key_on(B)
    r.submit(cmd("GET", kb) + cmd("SUBSCRIBE", "ch") + cmd("PING"))
    s = sent(r)
    assert list(s) == [B]               # SUBSCRIBE waits for GET's reply
    r.node_data(B, b"+OK\r\n$1\r\nb\r\n")
    assert r.take_out() == [b"$1\r\nb\r\n"]
    home = r.home
    s = sent(r)
    assert s[home].endswith(cmd("SUBSCRIBE", "ch") + cmd("PING"))
    if s[home].startswith(cmd("AUTH", "gate", "pw")):
        r.node_data(home, b"+OK\r\n")
    msg = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n*3\r\n$7\r\nmes"
    r.node_data(home, msg)
    r.node_data(home, b"sage\r\n")
    assert b"".join(r.take_out()) == msg + b"sage\r\n"
