"""gate.py: what all sessions share (users, upstream version, ACL log, memos, HELLO templates).

No sockets but for the HELLO templates, which are checked against a real Redis 7.0's own
HELLO replies (a differential test: the proxy's reply to a shared-link client's HELLO must be
Redis's, with the proxy's connection id).
"""
from __future__ import annotations

import socket

from redisgate.protocol import commands
from redisgate.session import gate as gate_mod
from redisgate.telemetry import metrics
from redisgate.config import build_config
from redisgate.session.gate import AclLog, Gate
from redisgate.policy.learn import Learner

from proxy import pw_hash
from wire import cmd


def _config(users=None, **upstream):
    users = users or {"u": f"on {pw_hash('pw')} ~k:* +get"}
    return build_config({"upstream": {"address": "127.0.0.1:1", **upstream}, "users": users})


# --- AclLog ------------------------------------------------------------------------------------

def test_acl_log_groups_identical_entries_within_a_minute(monkeypatch):
    now = [1_000.0]
    monkeypatch.setattr(gate_mod.time, "time", lambda: now[0])
    log = AclLog()
    log.add("command", "toplevel", "flushall", "u", "addr=a")
    now[0] += 30
    log.add("command", "toplevel", "flushall", "u", "addr=b")
    assert len(log.entries) == 1
    e = log.entries[0]
    assert (e.count, e.client_info, e.entry_id) == (2, "addr=b", 0)
    assert (e.created_ms, e.updated_ms) == (1_000_000, 1_030_000)
    # 60 s after the last update (Redis's ACL_LOG_GROUPING_MAX_TIME_DELTA): a new entry.
    now[0] += 60
    log.add("command", "toplevel", "flushall", "u", "addr=c")
    assert [x.entry_id for x in log.entries] == [1, 0]
    # Any field of the four that differs: a new entry, newest first.
    log.add("command", "multi", "flushall", "u", "addr=c")
    log.add("key", "multi", "flushall", "u", "addr=c")
    log.add("key", "multi", "other", "u", "addr=c")
    log.add("key", "multi", "other", "v", "addr=c")
    assert [x.entry_id for x in log.entries] == [5, 4, 3, 2, 1, 0]


def test_acl_log_is_bounded_and_reset_keeps_counting_ids():
    log = AclLog(max_len=3)
    for i in range(10):
        log.add("key", "toplevel", f"k{i}", "u", "")
    assert [e.object for e in log.entries] == ["k9", "k8", "k7"]
    log.reset()
    assert not log.entries
    log.add("key", "toplevel", "k", "u", "")
    assert log.entries[0].entry_id == 10   # as Redis: ids are not reused after ACL LOG RESET


# --- versions and memos ------------------------------------------------------------------------

def test_a_configured_version_wins_over_the_probe():
    g = Gate(_config(version="5.0.6"), upstream_version=(7, 0, 15))
    assert g.upstream_version == (5, 0, 6)
    g.set_upstream_version((7, 2, 0))
    assert g.upstream_version == (5, 0, 6)
    assert Gate(_config()).upstream_version == (7, 0, 0)   # neither: Redis 7 wording


def test_a_new_upstream_version_empties_the_memos_in_place():
    g = Gate(_config(), upstream_version=(7, 0, 15))
    known = {b"get": object()}
    g.fast_commands["u"] = known
    g.fast_shared["u"] = shared = {b"get": object()}
    getex = commands.TABLE.lookup([b"getex"])
    assert g.available(getex) is True
    g.set_upstream_version((5, 0, 6))
    # Emptied, not only dropped: a C lane holding `known` must miss from now on.
    assert known == {} and shared == {} and g.fast_commands == {} and g.fast_shared == {}
    assert g.available(getex) is False           # GETEX is 6.2: the memo was cleared
    assert g.available(getex) is commands.available(getex, (5, 0, 6))


def test_reload_swaps_users_bumps_generation_and_empties_memos():
    g = Gate(_config(), upstream_version=(7, 0, 15))
    g.fast_commands["u"] = known = {b"get": object()}
    g.acl_log.add("key", "toplevel", "x", "u", "")
    new = _config(users={"u": f"on {pw_hash('pw')} ~k:* +set", "w": f"on {pw_hash('x')} +ping"},
                  version="6.2.14")
    new.acl_log_max_len = 1
    g.reload(new)
    assert g.generation == 1 and g.config is new and set(g.users) == {"u", "w"}
    assert known == {} and g.upstream_version == (6, 2, 14)
    assert g.acl_log.max_len == 1 and len(g.acl_log.entries) == 1   # the log itself is kept
    assert "w" in metrics._users                                   # labels follow the users


def test_learner_is_made_once_per_user():
    g = Gate(_config())
    a = g.learner("u")
    assert isinstance(a, Learner) and g.learner("u") is a and g.learner("v") is not a


# --- HELLO templates (shared links) ------------------------------------------------------------

def _hello(port: int, auth: tuple[str, str], proto: int) -> tuple[bytes, int]:
    """Redis's own reply to `HELLO <proto>` (after AUTH), raw, and this connection's id."""
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(cmd("AUTH", *auth) + cmd("CLIENT", "ID") + cmd("HELLO", proto))
        buf = b""
        while True:
            buf += s.recv(65536)
            head, _, rest = buf.partition(b"\r\n")          # +OK
            id_line, _, hello = rest.partition(b"\r\n")     # :<id>
            if head and id_line and hello.endswith(b"modules\r\n*0\r\n"):
                return hello, int(id_line[1:])


def test_hello_reply_is_redis_own_with_the_proxys_id(redis7):
    auth = (redis7.upstream["username"], redis7.upstream["password"])
    replies, ids = {}, {}
    for proto in (2, 3):
        replies[proto], ids[proto] = _hello(redis7.port, auth, proto)
    g = Gate(_config())
    g.set_hello_replies(replies)
    for proto in (2, 3):
        own_id = str(ids[proto]).encode()
        assert g.hello_reply(proto == 3, 42) == replies[proto].replace(
            b"$2\r\nid\r\n:" + own_id + b"\r\n", b"$2\r\nid\r\n:42\r\n")
    # Without a probe, the fields Redis sends, from the version alone: the same bytes here
    # (Debian's 7.0 has no modules loaded).
    version = tuple(int(x) for x in redis7.client(username=auth[0], password=auth[1])
                    .info("server")["redis_version"].split("."))
    bare = Gate(_config(), upstream_version=version)
    for proto in (2, 3):
        assert bare.hello_reply(proto == 3, ids[proto]) == replies[proto]


def test_a_hello_reply_without_an_id_is_not_a_template():
    g = Gate(_config(), upstream_version=(7, 0, 15))
    fallback = g.hello_reply(False, 7)
    g.set_hello_replies({2: b"*2\r\n$6\r\nserver\r\n$5\r\nredis\r\n",
                         3: b"%1\r\n$2\r\nid\r\n:x1\r\n"})
    assert g.hello_reply(False, 7) == fallback
    assert g.hello_reply(True, 7).startswith(b"%7\r\n")
