"""redisgate in front of a real Redis Cluster (3 masters + 3 replicas of Redis 7.0), end to end:
redis-py and raw-socket clients see one ordinary Redis while their commands reach the master that
owns each slot. These tests do not change the cluster's shape (tests/test_cluster_failover.py
does, on a cluster of its own)."""
from __future__ import annotations

import random
import threading
import time

import hiredis
import pytest
import redis

from proxy import ProxyRunner, pw_hash
from redisgate.cluster.slots import key_slot
from redisgate.config import ConfigError, build_config
from test_policy_e2e import COMMANDS
from wire import Wire, cmd

USERS = {
    "ops": f"on {pw_hash('pw')} allkeys allchannels +@all",
    "app": f"on {pw_hash('pw')} ~app:* %R~shared:* &app.* +@read +@write +@pubsub -@dangerous "
           "+ping +acl|whoami +acl|log +acl|cat +select +multi +exec +sort +sort_ro",
    "fn": {"rules": f"on {pw_hash('pw')} allkeys +@all", "allow_function": True},
}


@pytest.fixture(scope="module")
def gate(redis_cluster):
    p = ProxyRunner({"upstream": dict(redis_cluster.upstream), "users": USERS}).start()
    yield p
    p.stop()


@pytest.fixture()
def ops(gate):
    c = gate.client("ops", "pw")
    yield c
    c.close()


def raw_node(port: int, *args) -> bytes:
    """The exact reply bytes of one command sent to one cluster node (as the gate user)."""
    w = Wire(port)
    try:
        assert w.call("AUTH", "gate", "gate-upstream-secret") == b"OK"
        w.raw_log.clear()
        w.send(cmd(*args))
        w.read(1)
        return bytes(w.raw_log)
    finally:
        w.close()


def raw_proxy(gate, *commands) -> bytes:
    """The exact bytes the proxy answers to `commands` (a pipeline), logged in as ops."""
    w = Wire(gate.port)
    try:
        assert w.call("AUTH", "ops", "pw") == b"OK"
        w.raw_log.clear()
        w.send(b"".join(cmd(*c) for c in commands))
        w.read(len(commands))
        return bytes(w.raw_log)
    finally:
        w.close()


def two_slot_keys(prefix: str = "k") -> tuple[str, str]:
    """Two keys whose slots belong to different masters (slots 0 and 16383 always do: the
    fixture's masters own thirds of the slot space)."""
    a = next(f"{prefix}{i}" for i in range(10000) if key_slot(f"{prefix}{i}".encode()) < 5000)
    b = next(f"{prefix}{i}" for i in range(10000) if key_slot(f"{prefix}{i}".encode()) > 11500)
    return a, b


# --- configuration -------------------------------------------------------------------------------

def problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        build_config(raw, allow_embedded=False)
    return e.value.problems


def test_config_cluster_forms():
    users = {"u": f"on {pw_hash('x')} +get ~*"}
    cfg = build_config({"upstream": {"cluster": {"seeds": ["127.0.0.1:7000", "[::1]:7001"],
                                                 "refresh": "10s"}}, "users": users})
    assert cfg.upstream.cluster.seeds == (("127.0.0.1", 7000), ("::1", 7001))
    assert cfg.upstream.cluster.refresh == 10.0
    assert build_config({"upstream": {"cluster": {"seeds": [7000]}},
                         "users": users}).upstream.cluster.refresh == 30.0
    assert "upstream: only one of address, cluster" in problems(
        {"upstream": {"address": "127.0.0.1:1", "cluster": {"seeds": ["127.0.0.1:2"]}},
         "users": users})
    assert "upstream: 'address', 'sentinel' or 'cluster' is required" in problems(
        {"upstream": {"username": "x"}, "users": users})
    assert "upstream.db: a Redis Cluster has only database 0" in problems(
        {"upstream": {"cluster": {"seeds": ["127.0.0.1:2"]}, "db": 3}, "users": users})
    assert "users.u.databases: a Redis Cluster has only database 0" in problems(
        {"upstream": {"cluster": {"seeds": ["127.0.0.1:2"]}},
         "users": {"u": {"rules": f"on {pw_hash('x')} +get ~*", "databases": [0, 2]}}})
    assert build_config({"upstream": {"cluster": {"seeds": ["127.0.0.1:2"]}, "multiplex": 2},
                         "users": users}).upstream.multiplex == 2
    assert any(p.startswith("upstream.cluster.seeds[0]:") for p in problems(
        {"upstream": {"cluster": {"seeds": ["nowhere"]}}, "users": users}))
    assert any(p.startswith("upstream.cluster.seeds:") for p in problems(
        {"upstream": {"cluster": {"seeds": []}}, "users": users}))
    assert any(p.startswith("upstream.cluster.seeds: required") for p in problems(
        {"upstream": {"cluster": {"refresh": 3}}, "users": users}))
    assert any(p.startswith("upstream.cluster.refresh:") for p in problems(
        {"upstream": {"cluster": {"seeds": ["127.0.0.1:2"], "refresh": "soon"}}, "users": users}))


def test_check_cli_names_the_cluster_problems(tmp_path, capsys):
    from redisgate import cli
    f = tmp_path / "c.yaml"
    f.write_text("upstream: {address: 127.0.0.1:1, cluster: {seeds: [127.0.0.1:2]}, db: 1}\n"
                 f"users: {{u: 'on {pw_hash('x')} +get'}}\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["check", "--config", str(f)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "upstream: only one of address, cluster" in err
    assert "upstream.db: a Redis Cluster has only database 0" in err


# --- routing -------------------------------------------------------------------------------------

def test_generated_keys_land_on_the_master_owning_their_slot(gate, ops, redis_cluster):
    rng = random.Random(18)
    keys = [f"r:{rng.getrandbits(40):x}" for _ in range(150)]
    keys += [f"asynq:{{q{i}}}:pending" for i in range(30)] + ["{}", "{x}y", "a{}b{c}"]
    for k in keys:
        assert ops.set(k, k) is True
    owners = {}
    for k in keys:
        slot = redis_cluster.client(redis_cluster.ports[0]).execute_command("CLUSTER", "KEYSLOT", k)
        assert slot == key_slot(k.encode())
        owners.setdefault(redis_cluster.port_for_slot(slot), []).append(k)
    assert len(owners) == 3
    for port, ks in owners.items():
        node = redis_cluster.client(port, username="gate", password="gate-upstream-secret")
        assert [node.get(k) for k in ks] == [k.encode() for k in ks]
    assert ops.delete(*keys) == len(keys)


def test_a_pipeline_across_nodes_comes_back_in_order(gate, redis_cluster):
    """Raw socket: 400 commands over every master, with local replies (denials, CROSSSLOT,
    splits) between them, in one write: the replies are exactly the ordered expectations."""
    w = Wire(gate.port)
    assert w.call("AUTH", "app", "pw") == b"OK"
    rng = random.Random(7)
    keys = [f"app:p{i}" for i in range(40)]
    w.call("DEL", *keys[:20])
    w.call("DEL", *keys[20:])
    counts: dict[str, int] = {}
    pipeline, expected = [], []
    a, b = two_slot_keys("app:x")
    for _ in range(400):
        r = rng.random()
        k = rng.choice(keys)
        if r < 0.6:
            counts[k] = counts.get(k, 0) + 1
            pipeline.append(("INCR", k))
            expected.append(counts[k])
        elif r < 0.75:
            pipeline.append(("GET", k))
            expected.append(str(counts[k]).encode() if k in counts else None)
        elif r < 0.85:
            pipeline.append(("GET", "other:" + k))
            expected.append("NOPERM")
        elif r < 0.92:
            pipeline.append(("SUNION", a, b))
            expected.append("CROSSSLOT")
        else:
            ks = rng.sample(keys, 3)
            pipeline.append(("MGET", *ks))
            expected.append([str(counts[x]).encode() if x in counts else None for x in ks])
    w.send(b"".join(cmd(*c) for c in pipeline))
    got = w.read(len(pipeline))
    for c, g, e in zip(pipeline, got, expected):
        if e == "NOPERM":
            assert isinstance(g, hiredis.ReplyError) and str(g).startswith("NOPERM"), (c, g)
        elif e == "CROSSSLOT":
            assert isinstance(g, hiredis.ReplyError) and str(g).startswith("CROSSSLOT"), (c, g)
        else:
            assert g == e, (c, g, e)
    w.call("DEL", *keys[:20])
    w.close()


def test_crossslot_is_byte_exact(gate, redis_cluster):
    a, b = two_slot_keys()
    port = redis_cluster.port_for_slot(key_slot(a.encode()))
    for c in (("SUNION", a, b), ("RENAME", a, b), ("EVAL", "return 1", "2", a, b),
              ("MSET", a, "1", b)):
        node = raw_node(port, *c)
        assert node.startswith(b"-CROSSSLOT") or c[0] == "MSET", node
        assert raw_proxy(gate, c) == node, c
    assert raw_proxy(gate, ("SUNION", a, b)) == \
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"


def test_split_commands_merge_per_key_answers(gate, ops):
    keys = [f"split:{i}" for i in range(30)]
    assert len({key_slot(k.encode()) for k in keys}) > 20
    assert ops.mset({k: i for i, k in enumerate(keys)}) is True
    assert ops.mget(keys + ["split:none"]) == [str(i).encode() for i in range(30)] + [None]
    assert ops.exists(*keys, "split:none", keys[0]) == 31
    assert ops.touch(*keys[:10]) == 10
    assert ops.delete(*keys[:15], "split:none") == 15
    assert ops.unlink(*keys[15:]) == 15
    assert ops.exists(*keys) == 0
    # RESP3 too
    r3 = redis.Redis(port=gate.port, username="ops", password="pw", protocol=3)
    r3.mset({"split:a": "1", "split:b": "2"})
    assert r3.mget("split:a", "split:b", "split:zz") == [b"1", b"2", None]
    assert r3.delete("split:a", "split:b") == 2
    r3.close()


def test_multi_is_pinned_to_one_slot(gate, ops):
    p = ops.pipeline(transaction=True)
    p.set("{acct}a", 5).incrby("{acct}a", 2).get("{acct}a").ping()
    assert p.execute() == [True, 7, b"7", True]
    a, b = two_slot_keys("tx")
    w = Wire(gate.port)
    assert w.call("AUTH", "ops", "pw") == b"OK"
    w.send(cmd("MULTI") + cmd("PING") + cmd("SET", a, "1") + cmd("SET", b, "2") + cmd("EXEC")
           + cmd("GET", a))
    multi, ping, q1, cross, ex, after = w.read(6)
    assert (multi, ping, q1) == (b"OK", b"QUEUED", b"QUEUED")
    assert str(cross) == "CROSSSLOT Keys in request don't hash to the same slot"
    assert str(ex) == "EXECABORT Transaction discarded because of previous errors."
    assert after is None
    # a transaction of keyless commands only runs on the home master
    w.send(cmd("MULTI") + cmd("PING") + cmd("ECHO", "x") + cmd("EXEC"))
    assert w.read(4) == [b"OK", b"QUEUED", b"QUEUED", [b"PONG", b"x"]]
    # WATCH pins too: a change by someone else makes EXEC answer nil
    assert w.call("WATCH", "{acct}a") == b"OK"
    ops.set("{acct}a", 100)
    w.send(cmd("MULTI") + cmd("INCR", "{acct}a") + cmd("EXEC"))
    assert w.read(3) == [b"OK", b"QUEUED", None]
    assert w.call("WATCH", "{acct}a") == b"OK"
    assert str(w.call("WATCH", a)).startswith("CROSSSLOT")
    w.send(cmd("MULTI") + cmd("INCR", "{acct}a") + cmd("EXEC"))
    assert w.read(3) == [b"OK", b"QUEUED", [101]]
    w.call("DEL", "{acct}a")
    w.close()


def test_scripts_go_to_their_keys_slot_and_script_commands_to_every_master(gate, ops,
                                                                           redis_cluster):
    sha = ops.script_load("return redis.call('incr', KEYS[1])")
    for port in redis_cluster.masters():
        node = redis_cluster.client(port, username="gate", password="gate-upstream-secret")
        assert node.script_exists(sha) == [True]
    assert ops.script_exists(sha, "0" * 40) == [True, False]
    keys = [f"ev{i}" for i in range(20)]
    for k in keys:
        assert ops.evalsha(sha, 1, k) == 1
        assert ops.eval("return redis.call('get', KEYS[1])", 1, k) == b"1"
    a, b = two_slot_keys("ev")
    with pytest.raises(redis.ResponseError, match="hash to the same slot"):
        ops.eval("return 1", 2, a, b)
    assert ops.eval("return 7", 0) == 7
    assert ops.delete(*keys) == 20


def test_function_load_goes_to_every_master_and_fcall_to_its_keys_slot(gate, redis_cluster):
    fn = gate.client("fn", "pw")
    lib = "#!lua name=rglib\nredis.register_function('rgincr', " \
          "function(keys) return redis.call('incr', keys[1]) end)"
    try:
        assert fn.execute_command("FUNCTION", "LOAD", "REPLACE", lib) == b"rglib"
        for port in redis_cluster.masters():
            node = redis_cluster.client(port, username="gate", password="gate-upstream-secret")
            assert node.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "rglib")
        keys = [f"fc{i}" for i in range(20)]
        assert len({redis_cluster.port_for_slot(key_slot(k.encode())) for k in keys}) == 3
        assert [fn.fcall("rgincr", 1, k) for k in keys] == [1] * 20
        a, b = two_slot_keys("fc")
        with pytest.raises(redis.ResponseError, match="hash to the same slot"):
            fn.fcall("rgincr", 2, a, b)
        assert fn.delete(*keys) == 20
        assert fn.execute_command("FUNCTION", "DELETE", "rglib") == b"OK"
        with pytest.raises(redis.ResponseError, match="Library not found"):
            fn.execute_command("FUNCTION", "DELETE", "rglib")
    finally:
        fn.close()


def test_keyspace_wide_commands(gate, ops, redis_cluster):
    keys = [f"ks:{i}" for i in range(60)]
    ops.mset({k: "v" for k in keys})
    assert ops.dbsize() >= 60
    assert set(keys) <= {k.decode() for k in ops.keys("ks:*")}
    assert sorted(k.decode() for k in ops.scan_iter("ks:*", count=7)) == sorted(keys)
    assert set(ops.scan_iter("ks:*", count=1000)) == {k.encode() for k in keys}
    assert ops.randomkey() is not None
    # RANDOMKEY asks every master (so a key on any master is found), INFO only the home one
    nodes = [redis_cluster.client(p, username="gate", password="gate-upstream-secret")
             for p in redis_cluster.masters()]

    def calls(command):
        return [n.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)
                for n in nodes]
    assert ops.dbsize() == sum(n.dbsize() for n in nodes)   # DBSIZE: the masters' sum
    before = calls("randomkey")
    assert ops.randomkey() is not None
    assert [b - a for a, b in zip(before, calls("randomkey"))] == [1, 1, 1]
    before = calls("info")
    ops.info("server")
    # (each node's own INFO commandstats above counts one INFO too)
    assert sorted(b - a - 1 for a, b in zip(before, calls("info"))) == [0, 0, 1]
    assert "redis_version" in ops.info("server")
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        ops.execute_command("SCAN", "1023")
    ops.delete(*keys)


def test_the_policy_refuses_the_same_things_as_in_single_node_mode(gate, redis7):
    """The same user, the same commands: what is refused in front of one Redis 7 is refused in
    front of the cluster, byte for byte."""
    single = ProxyRunner({"upstream": dict(redis7.upstream), "users": USERS}).start()
    try:
        for port in (single.port, gate.port):
            w = Wire(port)
            assert w.call("AUTH", "app", "pw") == b"OK"
        answers = {}
        for port in (single.port, gate.port):
            w = Wire(port)
            w.call("AUTH", "app", "pw")
            out = []
            for c in COMMANDS:
                if c[0] == "SELECT":
                    continue
                w.raw_log.clear()
                w.send(cmd(*c))
                w.read(1)
                out.append(bytes(w.raw_log))
            w.close()
            answers[port] = out
        refused = 0
        for c, one, clu in zip([c for c in COMMANDS if c[0] != "SELECT"], answers[single.port],
                               answers[gate.port]):
            if one.startswith(b"-NOPERM"):
                refused += 1
                assert clu == one, c
            else:
                assert not clu.startswith(b"-NOPERM"), c
        assert refused >= 10
    finally:
        single.stop()


def test_pubsub_blocking_and_resp3(gate, ops):
    sub = gate.client("app", "pw").pubsub()
    sub.subscribe("app.news")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    got = None
    for _ in range(3):   # PUBLISH goes to a master the subscriber may not be on: broadcast
        ops.publish("app.news", "hello")
        got = sub.get_message(timeout=2)
        if got:
            break
    assert got["data"] == b"hello"
    sub.close()
    # a blocked BLPOP on its key's node, woken by another client
    result = []
    blocker = gate.client("ops", "pw")
    t = threading.Thread(target=lambda: result.append(blocker.blpop(["bl:q"], timeout=5)))
    t.start()
    time.sleep(0.3)
    ops.rpush("bl:q", "job")
    t.join(10)
    assert result == [(b"bl:q", b"job")]
    blocker.close()
    # RESP3: HELLO 3 reaches every node connection the client opens later
    r3 = redis.Redis(port=gate.port, username="ops", password="pw", protocol=3)
    for i in range(20):
        r3.hset(f"h3:{i}", mapping={"a": 1})
    assert all(r3.hgetall(f"h3:{i}") == {b"a": b"1"} for i in range(20))
    r3.delete(*[f"h3:{i}" for i in range(20)])
    r3.close()


def test_reset_and_select(gate):
    w = Wire(gate.port)
    assert w.call("AUTH", "ops", "pw") == b"OK"
    a, b = two_slot_keys("rs")
    w.call("SET", a, "1")
    w.call("SET", b, "1")
    assert w.call("SELECT", "0") == b"OK"
    assert w.call("RESET") == b"RESET"
    assert str(w.call("GET", a)).startswith("NOAUTH")
    assert w.call("AUTH", "ops", "pw") == b"OK"
    assert w.call("GET", a) == b"1" and w.call("GET", b) == b"1"
    assert w.call("DEL", a, b) == 2
    w.close()


def test_check_prints_the_cluster_and_serve_survives_unreachable_seeds(tmp_path, capsys, caplog):
    import logging

    from redisgate import cli
    from servers import free_port
    dead = [free_port(), free_port()]
    f = tmp_path / "c.yaml"
    f.write_text(f"upstream: {{cluster: {{seeds: [127.0.0.1:{dead[0]}, 127.0.0.1:{dead[1]}]}}}}\n"
                 f"users: {{u: 'on {pw_hash('x')} +get ~*'}}\n")
    assert cli.main(["check", "--config", str(f)]) == 0
    assert f"upstream Redis Cluster, seeds 127.0.0.1:{dead[0]}, 127.0.0.1:{dead[1]}" in \
        capsys.readouterr().out
    caplog.set_level(logging.INFO, logger="redisgate")
    p = ProxyRunner({"upstream": {"cluster": {"seeds": [f"127.0.0.1:{d}" for d in dead]}},
                     "users": {"u": f"on {pw_hash('x')} +get ~*"}}).start()
    try:
        w = Wire(p.port)
        assert w.call("AUTH", "u", "x") == b"OK"
        assert str(w.call("GET", "k")) == ("ERR redisgate: upstream Redis unavailable (no node of "
                                           "the cluster answered CLUSTER SLOTS)")
        w.close()
    finally:
        p.stop()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"cluster: refreshing the slot map failed: 127.0.0.1:{dead[0]} (connection refused); " \
           f"127.0.0.1:{dead[1]} (connection refused)" in logged


def test_multiplex_shares_links_per_master(redis_cluster):
    """upstream.multiplex with a cluster: stateless commands of every client share N links per
    master (per protocol); a transaction moves its client to connections of its own; a lost link
    costs only its own node's in-flight commands and is opened again."""
    p = ProxyRunner({"upstream": {**redis_cluster.upstream, "multiplex": 2},
                     "users": USERS}).start()
    try:
        clients = [p.client("ops", "pw") for _ in range(12)]
        keys = [f"mx:{i}" for i in range(40)]
        for i, c in enumerate(clients):
            pipe = c.pipeline(transaction=False)
            for k in keys:
                pipe.set(f"{k}:{i}", i).get(f"{k}:{i}")
            assert pipe.execute() == [True, str(i).encode()] * len(keys)
        cmap = p.proxy.cluster
        masters = {f"127.0.0.1:{port}" for port in redis_cluster.masters()}
        assert {str(node) for node, resp3 in cmap._links} == masters
        assert all(len(links) == 2 for links in cmap._links.values())
        assert not any(c.upstream is not None for c in p.proxy.clients)   # nobody has its own
        # one master's links are lost: the next commands open them again
        victim = next(iter(cmap._links.values()))
        p.call(lambda: [link.conn.transport.abort() for link in victim if link.conn is not None])
        time.sleep(0.2)
        for i, c in enumerate(clients):
            assert c.mget([f"{k}:{i}" for k in keys]) == [str(i).encode()] * len(keys)
        # a transaction needs a connection of its own (per node), and gets it
        tx = clients[0].pipeline(transaction=True)
        tx.incr("{mx}a").incr("{mx}a")
        assert tx.execute() == [1, 2]
        assert sum(c.upstream is not None for c in p.proxy.clients) == 1
        assert clients[0].delete("{mx}a", *[f"{k}:{i}" for k in keys for i in range(12)]) == \
            1 + 40 * 12
        for c in clients:
            c.close()
    finally:
        p.stop()
