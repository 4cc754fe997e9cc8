"""The policy through the proxy: same verdicts on every Redis version, ACL commands the proxy
answers itself in Redis's own shapes, report-only users."""
from __future__ import annotations

import hiredis
import pytest
import redis

from proxy import ProxyRunner, pw_hash
from redisgate.protocol.commands import TABLE, available
from wire import Wire

USERS = {
    "app": f"on {pw_hash('pw')} ~app:* %R~shared:* &app.* +@read +@write +@pubsub -@dangerous "
           "+ping +acl|whoami +acl|log +acl|cat +select +multi +exec +sort +sort_ro",
    "ops": f"on {pw_hash('pw')} allkeys allchannels +@all",
    "audit": {"rules": f"on {pw_hash('pw')} ~app:* +get", "report_only": True},
    "scripter": {"rules": f"on {pw_hash('pw')} ~app:* +script|flush +script|kill +evalsha",
                 "allow_flush": True},
}

# A mix of commands each policy allows or refuses for `app`, including stricter-than-Redis ones.
COMMANDS = [
    ["GET", "app:1"], ["SET", "app:1", "v"], ["GET", "other"], ["SET", "shared:1", "v"],
    ["GET", "shared:1"], ["MGET", "app:1", "other"], ["DEL", "app:1", "app:2"],
    ["RENAME", "app:1", "other:1"], ["SMOVE", "app:s", "other:s", "m"], ["SUNIONSTORE", "app:u", "shared:a"],
    ["SUNIONSTORE", "shared:u", "app:a"], ["LPUSH", "app:l", "x"], ["RPOPLPUSH", "app:l", "app:l2"],
    ["RPOPLPUSH", "app:l", "other"], ["ZUNIONSTORE", "app:z", "2", "app:a", "other"],
    ["PUBLISH", "app.news", "x"], ["PUBLISH", "other", "x"], ["KEYS", "*"], ["SCAN", "0"],
    ["FLUSHALL"], ["FLUSHDB"], ["CONFIG", "GET", "maxmemory"], ["DEBUG", "SLEEP", "0"],
    ["RANDOMKEY"], ["SELECT", "3"], ["SELECT", "0"], ["SORT", "app:l", "BY", "nosort", "STORE", "other"],
    ["SORT", "app:l", "STORE", "app:sorted"], ["OBJECT", "ENCODING", "app:1"],
    ["EVAL", "return 1", "0"], ["SCRIPT", "FLUSH"], ["CLIENT", "KILL", "ID", "999999"],
    ["CLIENT", "LIST"], ["INFO"], ["HSET", "app:h", "f", "v"], ["HGET", "other:h", "f"],
    ["XADD", "app:x", "*", "f", "v"], ["XREAD", "STREAMS", "app:x", "other:x", "0", "0"],
    ["BITOP", "AND", "app:d", "app:a", "other"], ["COPY", "app:1", "app:2"],
    ["GETDEL", "app:gd"], ["LMOVE", "app:l", "other", "LEFT", "LEFT"], ["ZADD", "app:z", "1", "m"],
    ["PING"], ["ECHO", "x"], ["TYPE", "other"], ["EXISTS", "app:1", "other"],
]


def verdicts(port: int, version) -> dict:
    w = Wire(port)
    assert w.call("AUTH", "app", "pw") == b"OK"
    out = {}
    for c in COMMANDS:
        spec = TABLE.lookup([x.encode() for x in c])
        if spec is None or not available(spec, version):
            continue
        r = w.call(*c)
        out[" ".join(c)] = "denied" if isinstance(r, hiredis.ReplyError) and str(r).startswith("NOPERM") \
            else "allowed"
        if c[0] == "SELECT":
            w.call("SELECT", "0")
    w.close()
    return out


@pytest.fixture(scope="module")
def proxies(redis7, redis62, redis5):
    runners = {}
    for name, srv in (("7", redis7), ("6.2", redis62), ("5", redis5)):
        runners[name] = ProxyRunner({"upstream": srv.upstream, "users": USERS}).start()
        runners[name].srv = srv
    yield runners
    for r in runners.values():
        r.stop()


def test_same_policy_same_verdicts_on_5_6_2_and_7(proxies):
    def version(srv):
        return tuple(int(x) for x in srv.admin().info("server")["redis_version"].split("."))
    by_version = {name: verdicts(r.port, version(r.srv)) for name, r in proxies.items()}
    base = by_version["7"]
    for name in ("6.2", "5"):
        for command, verdict in by_version[name].items():
            assert verdict == base[command], (name, command)
    # The policy really discriminates: both kinds of verdict occur.
    assert {"allowed", "denied"} <= set(base.values())
    assert base["KEYS *"] == base["FLUSHALL"] == base["SCAN 0"] == "denied"   # stricter than Redis
    assert base["RENAME app:1 other:1"] == "denied"                          # the second key counts


def test_acl_log_has_redis_7_field_layout(proxies, redis7):
    # Redis's own entry, produced by a real denial on the server...
    admin = redis7.admin()
    admin.execute_command("ACL", "SETUSER", "layout", "on", ">p", "~a", "+get")
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis7.client(username="layout", password="p").get("b")
    theirs = admin.execute_command("ACL", "LOG", "1")[0]
    admin.execute_command("ACL", "DELUSER", "layout")
    # ...and the proxy's.
    c = proxies["7"].client("app", "pw")
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.get("not-mine")
    ours = c.execute_command("ACL", "LOG", "1")[0]
    assert ours[0::2] == theirs[0::2]
    entry = dict(zip(ours[0::2], ours[1::2]))
    assert entry[b"reason"] == b"key" and entry[b"object"] == b"not-mine"
    assert entry[b"username"] == b"app" and entry[b"context"] == b"toplevel"


def test_acl_cat_matches_redis_7(proxies, redis7):
    c = proxies["7"].client("app", "pw")
    assert c.execute_command("ACL", "CAT") == redis7.admin().execute_command("ACL", "CAT")
    assert sorted(c.execute_command("ACL", "CAT", "dangerous")) == \
        sorted(redis7.admin().execute_command("ACL", "CAT", "dangerous"))


def test_acl_commands_need_the_users_permission(proxies):
    c = proxies["7"].client("app", "pw")
    assert c.execute_command("ACL", "WHOAMI") == b"app"
    with pytest.raises(redis.exceptions.NoPermissionError):
        c.execute_command("ACL", "USERS")
    ops = proxies["7"].client("ops", "pw")
    assert sorted(ops.execute_command("ACL", "USERS")) == [b"app", b"audit", b"ops", b"scripter"]
    assert any(line.startswith(b"user app on") for line in ops.execute_command("ACL", "LIST"))


def test_report_only_user_is_forwarded_but_logged(proxies):
    c = proxies["5"].client("audit", "pw")
    c.execute_command("SET", "elsewhere", "1")      # would be denied: forwarded, logged
    assert c.get("elsewhere") == b"1"
    ops = proxies["5"].client("ops", "pw")
    log = ops.execute_command("ACL", "LOG", "10")
    assert any(dict(zip(e[0::2], e[1::2]))[b"username"] == b"audit" for e in log)


@pytest.mark.parametrize("line", [
    ["SORT", "app:l", "BY", "app:w_*"],
    ["SORT", "app:l", "GET", "app:o_*"],
    ["SORT_RO", "app:l", "GET", "#"],
])
def test_sort_by_get_patterns_need_full_key_access_on_every_version(proxies, redis7, line):
    admin = redis7.admin()
    admin.execute_command("ACL", "SETUSER", "sorter", "on", ">p", "~app:*", "+@read", "+@write")
    with pytest.raises(redis.exceptions.ResponseError) as direct:
        redis7.client(username="sorter", password="p").execute_command(*line)
    admin.execute_command("ACL", "DELUSER", "sorter")
    for name in ("7", "5"):
        if line[0] == "SORT_RO" and name == "5":
            continue
        with pytest.raises(redis.exceptions.ResponseError) as via_proxy:
            proxies[name].client("app", "pw").execute_command(*line)
        assert str(via_proxy.value) == str(direct.value)
    # With full key access the same line runs.
    assert proxies["5"].client("ops", "pw").execute_command("SORT", "app:l", "BY", "nosort") == []


def test_script_flush_needs_the_explicit_allow_flag(proxies):
    c = proxies["5"].client("scripter", "pw")
    assert c.execute_command("SCRIPT", "FLUSH") in (True, b"OK")
    with pytest.raises(redis.exceptions.NoPermissionError) as e:
        c.execute_command("SCRIPT", "KILL")
    assert "allow_kill" in str(e.value)
