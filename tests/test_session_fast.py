"""Session's inlined judging and reply pass-through do what its careful path does.

The shortcut's tests: see tests/shortcuts.py.
"""
from __future__ import annotations


from hypothesis import given, settings
from hypothesis import strategies as st

from redisgate.config import build_config
from redisgate.session.gate import Gate
from redisgate.session import DROP, FWD, Session

from proxy import pw_hash
from test_resp_fuzz import SIZES, pieces
from wire import cmd
from shortcuts import BOTH_SCANS

pytestmark = BOTH_SCANS


# --- session: the inlined path does what the careful path does ----------------------------------

USERS = {
    "u": f"on {pw_hash('pw')} ~k:* ~asynq:{{default}}:* %R~r:* ~mylist &ch -@all +get +set +mget +del "
         "+ping +multi +exec +select +client|setname +hset +evalsha +subscribe +unsubscribe "
         "+publish +object|encoding",
}
POOL = [
    ["GET", "k:1"], ["get", "k:2"], ["GET", "x"], ["SET", "k:1", "v"], ["SET", "r:1", "v"],
    ["SET", "k:1", "v", "GET"], ["GET", "r:2"], ["MGET", "k:1", "k:2"], ["MGET", "k:1", "x"],
    ["DEL", "k:1"], ["PING"], ["ping", "hi"], ["GET"], ["SET", "k:1"], ["NOSUCH"],
    ["MULTI"], ["EXEC"], ["SELECT", "0"], ["SELECT", "1"], ["CLIENT", "SETNAME", "n"],
    ["CLIENT", "NOSUCH"], ["HSET", "k:h", "f", "v"], ["HSET", "x", "f", "v"], ["INCR", "k:1"],
    ["OBJECT", "ENCODING", "k:1"], ["PUBLISH", "ch", "m"], ["PUBLISH", "no", "m"],
    ["EVALSHA", "98d28b42650870a743450ffda9791e9e19c6991b", "2", "asynq:{default}:t:1",
     "asynq:{default}:pending", "m", "1", "2"],
]


def make(upstream=None):
    cfg = build_config({"upstream": upstream or {"address": "127.0.0.1:1"}, "users": USERS})
    s = Session(Gate(cfg, upstream_version=(7, 0, 15)), "t")
    s.client_data(cmd("AUTH", "u", "pw"))
    s.connected()
    s.to_client.clear()
    return s


def careful(s: Session) -> Session:
    """The same session without its shortcuts: every request through _handle, every reply
    through the frame loop."""
    s._inline = lambda args, known: None
    s.scanner.count_flat = lambda data, most: (0, 0)
    return s


def drive(s: Session, reads: list[bytes], reply_sizes: list[int]) -> tuple:
    sent = []
    for data in reads:
        s.client_data(data)
        sent.append(b"".join(s.to_upstream))
        s.to_upstream.clear()
    # One reply per forwarded command (and per setup command of the proxy's own), split across
    # reads as given.
    n = sum(slot[1] for slot in s.slots if slot[0] in (FWD, DROP))
    replies = b"".join(b":%d\r\n" % i if i % 3 else b"$2\r\nv%d\r\n" % (i % 10)
                       for i in range(n))
    got = []
    for piece in pieces(replies, reply_sizes):
        s.upstream_data(piece)
        got.append(b"".join(s.to_client))
        s.to_client.clear()
    return sent, b"".join(got), s.close, [list(x) for x in s.slots]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(range(len(POOL))), min_size=1, max_size=6),
                min_size=1, max_size=4), SIZES)
def test_inlined_session_path_matches_the_careful_path(reads, reply_sizes):
    data = [b"".join(cmd(*POOL[i]) for i in read) for read in reads]
    assert drive(make(), data, reply_sizes) == drive(careful(make()), data, reply_sizes)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from(range(len(POOL))), min_size=1, max_size=6),
                min_size=1, max_size=3), SIZES)
def test_inlined_path_matches_behind_the_proxys_own_setup_replies(reads, reply_sizes):
    # The proxy's AUTH and SELECT to the upstream: their replies are swallowed (DROP slots).
    up = {"address": "127.0.0.1:1", "password": "secret", "db": 2}
    data = [b"".join(cmd(*POOL[i]) for i in read) for read in reads]
    assert drive(make(up), data, reply_sizes) == drive(careful(make(up)), data, reply_sizes)


HOMOGENEOUS = [["GET", "@"], ["get", "@"], ["SET", "@", "v"], ["HSET", "@", "f", "v"], ["DEL", "@"],
               ["MGET", "@", "k:2"], ["PING"], ["SELECT", "0"], ["OBJECT", "ENCODING", "@"],
               ["EVALSHA", "98d28b42650870a743450ffda9791e9e19c6991b", "2", "@",
                "asynq:{default}:pending", "m", "1", "2"]]
KEYS = st.sampled_from(["k:1", "k:22", "x", "r:1", "asynq:{default}:t:1", "k:\r\n", "kk", "mylist"])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(HOMOGENEOUS), st.lists(KEYS, min_size=4, max_size=24), SIZES,
       st.sampled_from([0, 1]))
def test_homogeneous_pipelines_match_the_careful_path(template, keys, reply_sizes, multiplex):
    # One command, many keys, in one read: take_batch's Batch.same and _run's one-pass key check.
    data = [b"".join(cmd(*[k if a == "@" else a for a in template]) for k in keys)]
    up = {"address": "127.0.0.1:1", "multiplex": multiplex}
    assert drive(make(up), data, reply_sizes) == drive(careful(make(up)), data, reply_sizes)


def test_a_homogeneous_read_is_one_batch():
    from redisgate.protocol.resp import RequestParser
    p = RequestParser(authenticated=True)
    data = b"".join(cmd("SET", f"k:{i}", "v" * i) for i in range(8)) + cmd("GET", "k:1")
    p.feed(data + b"*2\r\n$3")
    batch = p.take_batch()
    assert batch.same == 8 and len(batch.args) == 9 and batch.raw() == data
    assert batch.args[3] == [b"SET", b"k:3", b"vvv"]
    p = RequestParser(authenticated=True)
    p.feed(b"".join(cmd("SET", f"k:{i}", "v") for i in range(3)) + cmd("SET", "k:3", "vv"))
    assert p.take_batch().same == 4
    p = RequestParser(authenticated=True)
    p.feed(b"".join(cmd("SET", f"k:{i}", "v") for i in range(3)) + cmd("GET", "k:3", "vv"))
    assert p.take_batch().same == 0   # another name: not one layout


def test_garbage_after_good_replies_fails_the_upstream_as_the_careful_path_does():
    for s in (make(), careful(make())):
        s.client_data(cmd("GET", "k:1") + cmd("GET", "k:2") + cmd("GET", "k:3"))
        s.upstream_data(b"$1\r\na\r\n+OK\r\n?what\r\n")
        assert s.close and b"".join(s.to_client) == \
            b"-ERR redisgate: upstream Redis unavailable (protocol error)\r\n" * 3


def test_inlined_path_forwards_the_clients_read_itself():
    s = make()
    data = cmd("SET", "k:1", "v") + cmd("GET", "k:1") + cmd("PING")
    s.client_data(data)
    assert s.to_upstream == [data] and s.to_upstream[0] is data
    reply = b"+OK\r\n$1\r\nv\r\n+PONG\r\n"
    s.upstream_data(reply)
    assert s.to_client == [reply] and s.to_client[0] is reply and not s.slots
