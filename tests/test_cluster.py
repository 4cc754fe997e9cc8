"""redisgate.cluster against a real Redis Cluster (3 masters + 3 replicas of Redis 7.0).

Slots are checked against CLUSTER KEYSLOT, the topology parsers against the raw bytes of
CLUSTER SLOTS / SHARDS and of real MOVED / ASK errors, and every routing plan against what the
cluster does with the command when it is sent where the plan says.
"""
from __future__ import annotations

import socket

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redisgate.protocol import resp
from redisgate.cluster import route, slots
from redisgate.cluster.route import (ANY_SLOT, CROSS_SLOT, AllMasters, Merge, SingleSlot, Split,
                                     merge, merge_split, plan)
from redisgate.cluster.topology import (NodeAddr, Redirect, RedirectKind, TopologyError,
                                        parse_redirect, parse_shards_reply, parse_slots_reply)
from redisgate.protocol.commands import TABLE

FIXTURE = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def raw_call(port: int, *args: bytes | str, hello3: bool = False) -> bytes:
    """The exact reply bytes of one command sent to one node over a raw socket."""
    reader = hiredis.Reader()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if hello3:
            s.sendall(resp.encode_command([b"HELLO", b"3"]))
            _read_one(s, reader)
        s.sendall(resp.encode_command([a.encode() if isinstance(a, str) else a for a in args]))
        return _read_one(s, reader)


def _read_one(s: socket.socket, reader: hiredis.Reader) -> bytes:
    buf = b""
    for _ in range(100000):
        chunk = s.recv(65536)
        assert chunk, "connection closed"
        buf += chunk
        reader.feed(chunk)
        if reader.gets() is not False:
            return buf
    raise AssertionError("no whole reply")


# --- the fixture ---------------------------------------------------------------------------------

def test_cluster_fixture_is_ok(redis_cluster):
    assert len(redis_cluster.nodes) == 6
    assert len(redis_cluster.masters()) == 3
    for port in redis_cluster.ports:
        assert port <= 45000 and port + 10000 <= 55000
        info = redis_cluster.client(port).execute_command("CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info
        gate = redis_cluster.client(port, username=redis_cluster.upstream["username"],
                                    password=redis_cluster.upstream["password"])
        assert len(gate.execute_command("CLUSTER", "SLOTS")) == 3


# --- slots ---------------------------------------------------------------------------------------

def test_crc16_reference_values():
    assert slots.crc16(b"123456789") == 0x31C3 == slots.crc16_table(b"123456789")
    assert slots.crc16(b"") == 0
    assert slots.key_slot(b"foo") == 12182                      # Redis's cluster spec example
    assert slots.key_slot(b"{user1000}.following") == slots.key_slot(b"user1000")
    assert slots.key_slot(b"foo{}{bar}") == slots.crc16(b"foo{}{bar}") & 16383
    assert slots.key_slot(b"foo{{bar}}zap") == slots.key_slot(b"{bar")
    assert slots.key_slot(b"foo{bar}{zap}") == slots.key_slot(b"bar")
    assert slots.hash_tag(b"asynq:{default}:pending") == b"default"


@given(st.binary(max_size=300))
def test_crc16_table_equals_binascii(data):
    assert slots.crc16_table(data) == slots.crc16(data)


_BRACES = st.lists(st.sampled_from([b"{", b"}", b"\0", b"a", b"b", b"", b"\xff", b"{}", b"}{",
                                    "é".encode(), "日本".encode(), b"asynq:", b"\r\n", b" "]),
                   max_size=12).map(b"".join)
KEYS = st.one_of(_BRACES, st.binary(max_size=64),
                 st.text(max_size=20).map(lambda t: t.encode("utf-8")))

EDGE_KEYS = [b"", b"{", b"}", b"{}", b"}{", b"{{}}", b"{a", b"a}", b"{a}", b"{}a", b"a{}b{c}",
             b"{\0}", b"\0{x}", b"{x\0}y", b"{" * 100 + b"}", "{ключ}".encode(),
             b"asynq:{default}:pending", b"asynq:{critical}:t:123"]


def test_key_slot_edge_cases_equal_cluster_keyslot(redis_cluster):
    c = redis_cluster.client(redis_cluster.ports[0])
    for key in EDGE_KEYS:
        assert slots.key_slot(key) == c.execute_command("CLUSTER", "KEYSLOT", key), key


@pytest.fixture(scope="module")
def node0(redis_cluster):
    return redis_cluster.client(redis_cluster.ports[0])


@settings(max_examples=400, deadline=None, suppress_health_check=FIXTURE)
@given(key=KEYS)
def test_key_slot_equals_cluster_keyslot(node0, key):
    c = node0
    assert slots.key_slot(key) == c.execute_command("CLUSTER", "KEYSLOT", key)


# --- topology: CLUSTER SLOTS / SHARDS ------------------------------------------------------------

def _owner_map(redis_cluster) -> dict[int, int]:
    owners = {}
    for r in redis_cluster.client(redis_cluster.ports[0]).execute_command("CLUSTER", "SLOTS"):
        for s in range(int(r[0]), int(r[1]) + 1):
            owners[s] = int(r[2][1])
    return owners


def _check_topology(topo, redis_cluster):
    owners = _owner_map(redis_cluster)
    assert topo.covered
    assert sorted(m.port for m in topo.masters) == redis_cluster.masters()
    for s in range(slots.SLOTS):
        assert topo.master_for(s) == NodeAddr("127.0.0.1", owners[s])
    all_nodes = sorted(n.port for n in topo.nodes())
    assert all_nodes == sorted(redis_cluster.ports)
    for shard in topo.shards:
        assert len(shard.replicas) == 1 and shard.master_id and len(shard.master_id) == 40


def test_cluster_slots_from_every_node(redis_cluster):
    for port in redis_cluster.ports:
        raw = raw_call(port, "CLUSTER", "SLOTS")
        _check_topology(parse_slots_reply(raw, NodeAddr("127.0.0.1", port)), redis_cluster)


@pytest.mark.parametrize("hello3", [False, True], ids=["resp2", "resp3"])
def test_cluster_shards_from_every_node(redis_cluster, hello3):
    for port in redis_cluster.ports:
        raw = raw_call(port, "CLUSTER", "SHARDS", hello3=hello3)
        if hello3:
            assert raw.startswith(b"*3\r\n%")
        _check_topology(parse_shards_reply(raw, NodeAddr("127.0.0.1", port)), redis_cluster)


def test_unknown_endpoint_type_uses_the_asked_host(redis_cluster):
    """cluster-preferred-endpoint-type unknown-endpoint: NULL endpoints and `-MOVED s :port`."""
    port = redis_cluster.ports[0]
    c = redis_cluster.client(port)
    c.config_set("cluster-preferred-endpoint-type", "unknown-endpoint")
    try:
        asked = NodeAddr("127.0.0.1", port)
        raw = raw_call(port, "CLUSTER", "SLOTS")
        assert b"$-1\r\n" in raw
        _check_topology(parse_slots_reply(raw, asked), redis_cluster)
        with pytest.raises(TopologyError, match="empty endpoint"):
            parse_slots_reply(raw)
        key = _key_not_on(redis_cluster, port)
        err = raw_call(port, "GET", key)
        assert err.startswith(b"-MOVED ") and b" :" in err
        red = parse_redirect(err, asked)
        assert red.node == NodeAddr("127.0.0.1", redis_cluster.port_for_slot(red.slot))
    finally:
        c.config_set("cluster-preferred-endpoint-type", "ip")


def _key_not_on(redis_cluster, port: int) -> bytes:
    for i in range(10000):
        key = b"k%d" % i
        if redis_cluster.port_for_slot(slots.key_slot(key)) != port:
            return key
    raise AssertionError("no such key")


HOSTILE = [
    b"", b"*", b"*1\r\n", b"+OK\r\n", b"-ERR This instance has cluster support disabled\r\n",
    b":1\r\n", b"*1\r\n:1\r\n", b"*1\r\n*2\r\n:0\r\n:5\r\n",
    b"*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n",
    b"*1\r\n*3\r\n:5\r\n:4\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n",
    b"*1\r\n*3\r\n:0\r\n:4\r\n*2\r\n$9\r\n127.0.0.1\r\n:0\r\n",
    b"*1\r\n*3\r\n:0\r\n:4\r\n*2\r\n$9\r\n127.0.0.1\r\n:70000\r\n",
    b"*1\r\n*3\r\n:0\r\n:4\r\n*2\r\n$1\r\n?\r\n:7000\r\n",
    b"*1\r\n*3\r\n:0\r\n:4\r\n*2\r\n$3\r\na b\r\n:7000\r\n",
    b"*1\r\n*3\r\n:0\r\n:4\r\n*2\r\n$2\r\n\xc3\xa9\r\n:7000\r\n",
    b"*1\r\n*3\r\n:0\r\n:4\r\n*2\r\n:1\r\n:7000\r\n",
    b"*1\r\n*3\r\n:0\r\n:4\r\n*2\r\n$1\r\na\r\n$4\r\n7000\r\n",
    b"*2\r\n*3\r\n:0\r\n:4\r\n*2\r\n$1\r\na\r\n:1\r\n*3\r\n:4\r\n:9\r\n*2\r\n$1\r\nb\r\n:1\r\n",
    b"*1\r\n*3\r\n:0\r\n:4\r\n-ERR x\r\n",
    b"*1\r\n*3\r\n:0\r\n:4\r\n*2\r\n$1\r\na\r\n:1\r\n+OK\r\n",
    b"*1\r\n*3\r\n:0\r\n:4\r\n*2\r\n$1\r\na\r\n:1\r\n\r\n",
    b"*-1\r\n", b"$5\r\nhello\r\n", b"%1\r\n+a\r\n+b\r\n",
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_hostile_replies_raise_topology_error(raw):
    with pytest.raises(TopologyError):
        parse_slots_reply(raw, NodeAddr("127.0.0.1", 7000))
    with pytest.raises(TopologyError):
        parse_shards_reply(raw, NodeAddr("127.0.0.1", 7000))


def test_topology_error_is_a_value_error():
    assert issubclass(TopologyError, ValueError)
    with pytest.raises(TopologyError):
        parse_slots_reply("not bytes")                       # type: ignore[arg-type]


@pytest.fixture(scope="module")
def captured(redis_cluster):
    port = redis_cluster.ports[0]
    return (raw_call(port, "CLUSTER", "SLOTS"), raw_call(port, "CLUSTER", "SHARDS"),
            raw_call(port, "CLUSTER", "SHARDS", hello3=True))


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURE)
@given(which=st.integers(0, 2), data=st.data())
def test_mutated_real_replies_parse_or_raise_topology_error(captured, which, data):
    raw = bytearray(captured[which])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "dup", "del"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            raw = raw[:i]
        elif op == "dup":
            raw[i:i] = raw[i:i + data.draw(st.integers(1, 40))]
        else:
            del raw[i:i + data.draw(st.integers(1, 40))]
        if not raw:
            break
    parse = parse_slots_reply if which == 0 else parse_shards_reply
    try:
        topo = parse(bytes(raw), NodeAddr("127.0.0.1", 7000))
    except TopologyError:
        return
    for s in range(0, slots.SLOTS, 97):
        m = topo.master_for(s)
        assert m is None or isinstance(m, NodeAddr)


# --- MOVED / ASK ---------------------------------------------------------------------------------

def test_real_moved_is_parsed(redis_cluster):
    port = redis_cluster.ports[0]
    for i in range(20):
        key = _key_not_on(redis_cluster, port) + b"-%d" % i
        if redis_cluster.port_for_slot(slots.key_slot(key)) == port:
            continue
        err = raw_call(port, "GET", key)
        red = parse_redirect(err, NodeAddr("127.0.0.1", port))
        assert red == Redirect(RedirectKind.MOVED, slots.key_slot(key),
                               NodeAddr("127.0.0.1", redis_cluster.port_for_slot(red.slot)))
        assert parse_redirect(err[1:-2].decode()) == red      # hiredis's ReplyError text


def test_real_ask_during_a_migration(redis_cluster):
    key = b"{ask-test}key"
    slot = slots.key_slot(key)
    src = redis_cluster.port_for_slot(slot)
    dst = next(p for p in redis_cluster.masters() if p != src)
    s, d = redis_cluster.client(src), redis_cluster.client(dst)
    src_id = s.execute_command("CLUSTER", "MYID").decode()
    dst_id = d.execute_command("CLUSTER", "MYID").decode()
    d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    try:
        err = raw_call(src, "GET", key)          # the key is not on the source: ASK
        red = parse_redirect(err, NodeAddr("127.0.0.1", src))
        assert red == Redirect(RedirectKind.ASK, slot, NodeAddr("127.0.0.1", dst))
    finally:
        s.execute_command("CLUSTER", "SETSLOT", slot, "NODE", src_id)
        d.execute_command("CLUSTER", "SETSLOT", slot, "NODE", src_id)


def test_redirect_forms():
    asked = NodeAddr("10.0.0.9", 7000)
    assert parse_redirect(b"-MOVED 3999 127.0.0.1:6381\r\n") == Redirect(
        RedirectKind.MOVED, 3999, NodeAddr("127.0.0.1", 6381))
    assert parse_redirect(b"-ASK 0 :6381\r\n", asked) == Redirect(
        RedirectKind.ASK, 0, NodeAddr("10.0.0.9", 6381))
    assert parse_redirect(b"MOVED 16383 ::1:7001") == Redirect(
        RedirectKind.MOVED, 16383, NodeAddr("::1", 7001))
    assert str(NodeAddr("::1", 7001)) == "[::1]:7001"
    assert parse_redirect(b"-MOVED 1 redis-0.example:7000\r\n").node.host == "redis-0.example"
    for other in [b"-ERR unknown command\r\n", b"-CROSSSLOT Keys in request\r\n",
                  b"-TRYAGAIN Multiple keys\r\n", b"-MOVEDX 1 a:1\r\n", b"-moved 1 a:1\r\n",
                  b"", "ERR é"]:
        assert parse_redirect(other) is None


@pytest.mark.parametrize("bad", [
    b"-MOVED\r\n", b"-MOVED 1\r\n", b"-MOVED 1 a\r\n", b"-MOVED 16384 a:1\r\n", b"-MOVED -1 a:1\r\n",
    b"-MOVED x a:1\r\n", b"-MOVED 1 a:0\r\n", b"-MOVED 1 a:65536\r\n", b"-MOVED 1 a:x\r\n",
    b"-MOVED 1 a:1 extra\r\n", b"-MOVED  1 a:1\r\n", b"-ASK 1 :1\r\n", b"-ASK 1 ?:1\r\n",
    b"-MOVED 1 a\x00b:1\r\n", b"-MOVED 1 \xff:1\r\n", b"-MOVED 999999999999 a:1\r\n",
    b"-MOVED 1 a:99999999999999\r\n",
])
def test_malformed_redirects_raise(bad):
    with pytest.raises(TopologyError):
        parse_redirect(bad)


@given(st.binary(max_size=60))
def test_any_error_line_is_none_a_redirect_or_topology_error(line):
    for data in (line, b"-MOVED " + line, b"-ASK " + line):
        try:
            r = parse_redirect(data, NodeAddr("127.0.0.1", 1))
        except TopologyError:
            continue
        assert r is None or isinstance(r, Redirect)


# --- routing plans -------------------------------------------------------------------------------

def P(*args):
    a = [x.encode() if isinstance(x, str) else x for x in args]
    return plan(TABLE.lookup(a), a)


def test_plans():
    ks = slots.key_slot
    assert P("GET", "foo") == SingleSlot(ks(b"foo"))
    assert P("PING") is ANY_SLOT and P("DBSIZE") is ANY_SLOT and P("PUBLISH", "c", "m") is ANY_SLOT
    assert P("MGET", "{a}1", "{a}2") == SingleSlot(ks(b"a"))
    assert P("RENAME", "a", "b") is CROSS_SLOT
    assert P("SUNIONSTORE", "{q}d", "{q}a", "x") is CROSS_SLOT
    assert P("EVAL", "return 1", "0") is ANY_SLOT
    assert P("EVAL", "return 1", "2", "{t}a", "{t}b", "argv") == SingleSlot(ks(b"t"))
    assert P("EVALSHA", "a" * 40, "2", "a", "b") is CROSS_SLOT
    assert P("FCALL", "f", "1", "k") == SingleSlot(ks(b"k"))
    assert P("SPUBLISH", "ch", "m") == SingleSlot(ks(b"ch"))
    assert P("SSUBSCRIBE", "a", "b") is CROSS_SLOT
    assert P("SUNSUBSCRIBE") is ANY_SLOT
    assert P("SCRIPT", "LOAD", "return 1") == AllMasters(Merge.SAME)
    assert P("script", "exists", "x", "y") == AllMasters(Merge.AND)
    assert P("SCRIPT", "FLUSH") == AllMasters(Merge.OK)
    assert P("MSET", "a", "1", "b") is CROSS_SLOT          # odd: Redis's own arity error later


def test_split_groups_keep_positions():
    sp = P("MSET", "a", "1", "b", "2", "{a}x", "3")
    assert isinstance(sp, Split) and sp.merge is Merge.OK and sp.nkeys == 3
    by_slot = {g.slot: g for g in sp.groups}
    ga = by_slot[slots.key_slot(b"a")]
    assert ga.positions == (0, 2) and ga.args == (b"MSET", b"a", b"1", b"{a}x", b"3")
    assert by_slot[slots.key_slot(b"b")].args == (b"MSET", b"b", b"2")
    sp = P("del", "a", "b", "a")
    assert sp.merge is Merge.SUM and sp.groups[0].args == (b"del", b"a", b"a")
    for cmd, rule in [("MGET", Merge.ARRAY_IN_ORDER), ("UNLINK", Merge.SUM),
                      ("EXISTS", Merge.SUM), ("TOUCH", Merge.SUM)]:
        assert P(cmd, "a", "b").merge is rule


def test_merges():
    assert merge(Merge.SUM, [b":1\r\n", b":2\r\n"]) == b":3\r\n"
    assert merge(Merge.OK, [b"+OK\r\n", b"+OK\r\n"]) == b"+OK\r\n"
    assert merge(Merge.AND, [b"*2\r\n:1\r\n:1\r\n", b"*2\r\n:1\r\n:0\r\n"]) == b"*2\r\n:1\r\n:0\r\n"
    assert merge(Merge.SAME, [b"$2\r\nab\r\n"] * 3) == b"$2\r\nab\r\n"
    assert merge(Merge.SUM, [b":1\r\n", b"-ERR boom\r\n", b"-ERR two\r\n"]) == b"-ERR boom\r\n"
    sp = P("MGET", "a", "b", "{a}c")
    by = {g.slot: g for g in sp.groups}
    replies = [b"*2\r\n$1\r\nA\r\n$-1\r\n" if g.slot == slots.key_slot(b"a") else b"*1\r\n$1\r\nB\r\n"
               for g in sp.groups]
    assert merge_split(sp, replies) == b"*3\r\n$1\r\nA\r\n$1\r\nB\r\n$-1\r\n"
    replies3 = [r.replace(b"$-1", b"_") for r in replies]
    assert merge_split(sp, replies3, resp3=True) == b"*3\r\n$1\r\nA\r\n$1\r\nB\r\n_\r\n"
    assert len(by) == 2
    for bad in [[b":1\r\n", b"+OK\r\n"], [b":1\r\n", b":1\r\n:2\r\n"], [b":1\r\n", b"*"],
                [b":1\r\n", b"xx\r\n"]]:
        with pytest.raises(route.MergeError):
            merge(Merge.SUM, bad)
    with pytest.raises(route.MergeError):
        merge(Merge.SAME, [b"$1\r\na\r\n", b"$1\r\nb\r\n"])
    with pytest.raises(route.MergeError):
        merge_split(sp, [b"*1\r\n$1\r\nA\r\n", b"*1\r\n$1\r\nB\r\n"])   # a key without a reply


# --- plans agree with the real cluster -----------------------------------------------------------

TAGS = [b"{q1}", b"{q2}", b"{asynq:default}", b""]
CKEY = st.tuples(st.sampled_from(TAGS), st.binary(max_size=6)).map(lambda t: t[0] + t[1])


def _commands():
    k, ks = CKEY, st.lists(CKEY, min_size=1, max_size=5)
    v = st.binary(max_size=5)
    return st.one_of(
        k.map(lambda a: [b"GET", a]),
        st.tuples(k, v).map(lambda t: [b"SET", t[0], t[1]]),
        ks.map(lambda a: [b"MGET", *a]),
        ks.map(lambda a: [b"DEL", *a]),
        ks.map(lambda a: [b"EXISTS", *a]),
        ks.map(lambda a: [b"TOUCH", *a]),
        ks.map(lambda a: [b"UNLINK", *a]),
        st.lists(st.tuples(CKEY, v), min_size=1, max_size=4).map(
            lambda kv: [b"MSET", *[x for p in kv for x in p]]),
        ks.map(lambda a: [b"SUNION", *a]),
        st.tuples(k, k).map(lambda t: [b"RENAME", t[0], t[1]]),   # no such key: harmless
        ks.map(lambda a: [b"EVAL", b"return 1", b"%d" % len(a), *a]),
        k.map(lambda a: [b"SPUBLISH", a, b"m"]),
        st.just([b"PING"]),
        st.just([b"DBSIZE"]),
        st.just([b"PUBLISH", b"chan", b"m"]),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE)
@given(args=_commands(), pick=st.randoms(use_true_random=False))
def test_plans_agree_with_the_cluster(redis_cluster, args, pick):
    owner = redis_cluster.port_for_slot
    p = plan(TABLE.lookup(args), args)
    if isinstance(p, SingleSlot):
        r = raw_call(owner(p.slot), *args)
        assert not r.startswith((b"-MOVED", b"-ASK", b"-CROSSSLOT")), r
        other = next(m for m in redis_cluster.masters() if m != owner(p.slot))
        r = raw_call(other, *args)                  # any other master redirects to that slot
        assert r.startswith(b"-MOVED %d 127.0.0.1:%d\r\n" % (p.slot, owner(p.slot))), r
    elif p is ANY_SLOT:
        r = raw_call(pick.choice(redis_cluster.masters()), *args)
        assert not r.startswith(b"-"), r
    elif p is CROSS_SLOT:
        first = [k for k, _ in TABLE.lookup(args).keys(args)][0]
        r = raw_call(owner(slots.key_slot(first)), *args)
        assert r == route.CROSSSLOT_REPLY, r
    else:
        assert isinstance(p, Split)
        replies = []
        for g in p.groups:
            replies.append(raw_call(owner(g.slot), *g.args))
            assert not replies[-1].startswith(b"-"), replies[-1]
        merged = merge_split(p, replies)
        assert not merged.startswith(b"-")
        if args[0] == b"MGET":     # the merged array equals one GET per key, in order
            want = [raw_call(owner(slots.key_slot(key)), b"GET", key) for key in args[1:]]
            assert merged == resp.array(want)


def test_split_mset_then_mget_round_trip(redis_cluster):
    keys = [b"rt-%d" % i for i in range(30)]
    mset = [b"MSET", *[x for k in keys for x in (k, k[::-1])]]
    sp = plan(TABLE.lookup(mset), mset)
    assert isinstance(sp, Split) and len({g.slot for g in sp.groups}) > 3
    replies = [raw_call(redis_cluster.port_for_slot(g.slot), *g.args) for g in sp.groups]
    assert merge_split(sp, replies) == b"+OK\r\n"
    mget = [b"MGET", *keys, b"rt-missing"]
    sp = plan(TABLE.lookup(mget), mget)
    replies = [raw_call(redis_cluster.port_for_slot(g.slot), *g.args) for g in sp.groups]
    assert merge_split(sp, replies) == resp.array([resp.bulk(k[::-1]) for k in keys] + [b"$-1\r\n"])
    dl = [b"DEL", *keys, b"rt-missing", keys[0]]
    sp = plan(TABLE.lookup(dl), dl)
    replies = [raw_call(redis_cluster.port_for_slot(g.slot), *g.args) for g in sp.groups]
    assert merge_split(sp, replies) == b":30\r\n"


def test_script_on_all_masters(redis_cluster):
    masters = redis_cluster.masters()
    load = [b"SCRIPT", b"LOAD", b"return 'cluster-test'"]
    assert plan(TABLE.lookup(load), load) == AllMasters(Merge.SAME)
    sha = merge(Merge.SAME, [raw_call(p, *load) for p in masters])
    sha = hiredis_one(sha)
    ex = [b"SCRIPT", b"EXISTS", sha, b"0" * 40]
    assert merge(Merge.AND, [raw_call(p, *ex) for p in masters]) == b"*2\r\n:1\r\n:0\r\n"
    # on one master only: AND says 0
    raw_call(masters[0], "SCRIPT", "FLUSH")
    assert merge(Merge.AND, [raw_call(p, *ex) for p in masters]) == b"*2\r\n:0\r\n:0\r\n"
    assert merge(Merge.OK, [raw_call(p, "SCRIPT", "FLUSH") for p in masters]) == b"+OK\r\n"


def hiredis_one(raw: bytes):
    r = hiredis.Reader()
    r.feed(raw)
    return r.gets()



def test_a_master_with_several_ranges_is_one_shard():
    raw = (b"*2\r\n"
           b"*4\r\n:0\r\n:99\r\n*3\r\n$1\r\na\r\n:1\r\n$1\r\nX\r\n*2\r\n$1\r\nr\r\n:2\r\n"
           b"*3\r\n:200\r\n:299\r\n*3\r\n$1\r\na\r\n:1\r\n$1\r\nX\r\n")
    topo = parse_slots_reply(raw)
    assert len(topo.shards) == 1 and not topo.covered
    shard = topo.shards[0]
    assert [(r.start, r.end) for r in shard.ranges] == [(0, 99), (200, 299)]
    assert shard.replicas == (NodeAddr("r", 2),) and shard.master_id == "X"
    assert topo.master_for(250) == NodeAddr("a", 1) and topo.master_for(150) is None


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4), st.sampled_from(list(Merge)))
def test_merge_of_any_bytes_is_bytes_or_merge_error(parts, rule):
    try:
        out = merge(rule, parts, positions=[[0]] * len(parts), nkeys=1)
    except route.MergeError:
        return
    assert isinstance(out, bytes)
