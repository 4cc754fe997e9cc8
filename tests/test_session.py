"""The session state machine without sockets: bytes in, bytes out, exact."""
from __future__ import annotations

import pytest

from redisgate.config import build_config
from redisgate.session.gate import Gate
from redisgate.session import Session

from proxy import pw_hash
from wire import cmd

# Every test here runs with the C scan and with its Python twin (conftest.both_scans).
pytestmark = pytest.mark.usefixtures("both_scans")


def make_session(users=None, upstream=None, version=(7, 0, 15)):
    users = users or {"u": f"on {pw_hash('pw')} ~k:* +get +set +ping +multi +exec +subscribe "
                           "+unsubscribe +publish"}
    cfg = build_config({"upstream": upstream or {"address": "127.0.0.1:1"}, "users": users})
    gate = Gate(cfg, upstream_version=version)
    return Session(gate, "test")


def login(s: Session) -> None:
    s.client_data(cmd("AUTH", "u", "pw"))
    assert s.want_upstream
    s.connected()
    assert b"".join(s.to_client) == b"+OK\r\n"
    s.to_client.clear()


def out(buf: list) -> bytes:
    data = b"".join(buf)
    buf.clear()
    return data


def test_nothing_is_sent_upstream_before_authentication():
    s = make_session()
    s.client_data(cmd("GET", "k:1") + cmd("PING"))
    assert out(s.to_client) == b"-NOAUTH Authentication required.\r\n" * 2
    assert not s.want_upstream and not s.to_upstream


def test_upstream_gets_the_proxys_credentials_not_the_clients(monkeypatch):
    monkeypatch.setenv("GATE_PW", "gate-secret")
    s = make_session(upstream={"address": "127.0.0.1:1", "username": "gate", "password": "${GATE_PW}"})
    s.client_data(cmd("AUTH", "u", "pw") + cmd("GET", "k:1"))
    s.connected()
    sent = out(s.to_upstream)
    # The proxy's AUTH goes alone: the client's commands wait until Redis accepted it.
    assert sent == cmd("AUTH", "gate", "gate-secret")
    assert out(s.to_client) == b""
    s.upstream_data(b"+OK\r\n")
    sent = out(s.to_upstream)
    assert sent == cmd("GET", "k:1")
    assert b"pw" not in sent
    # The client's AUTH reply waited until the proxy's own AUTH succeeded (whose +OK is
    # swallowed).
    assert out(s.to_client) == b"+OK\r\n"
    s.upstream_data(b"$1\r\nv\r\n")
    assert out(s.to_client) == b"$1\r\nv\r\n"


def rotated_session(tmp_path, previous="old-pw", current="new-pw", db=0):
    """A session whose gate was reloaded from upstream password `previous` to `current` (a
    ${file:...} reference that now holds `current`)."""
    secret = tmp_path / "pw"
    secret.write_text(previous)
    secret.chmod(0o600)
    up = {"address": "127.0.0.1:1", "password": f"${{file:{secret}}}", "db": db}
    users = {"u": f"on {pw_hash('pw')} ~k:* +get +set +ping +select"}
    gate = Gate(build_config({"upstream": up, "users": users}), upstream_version=(5, 0, 6))
    secret.write_text(current)
    gate.reload(build_config({"upstream": up, "users": users}))
    return Session(gate, "test")


@pytest.mark.parametrize("refusal", [b"-ERR invalid password\r\n",
                                     b"-WRONGPASS invalid username-password pair or user is "
                                     b"disabled.\r\n"])
def test_a_refused_upstream_password_is_tried_again_with_the_previous_one(tmp_path, refusal):
    s = rotated_session(tmp_path, db=2)
    s.client_data(cmd("AUTH", "u", "pw") + cmd("GET", "k:1") + cmd("SET", "k:2", "v"))
    s.connected()
    assert out(s.to_upstream) == cmd("AUTH", "new-pw")
    s.upstream_data(refusal)
    # Nothing of the client's went out; the other password is tried, once.
    assert out(s.to_upstream) == cmd("AUTH", "old-pw")
    assert out(s.to_client) == b""
    s.upstream_data(b"+OK\r\n")
    assert out(s.to_upstream) == cmd("SELECT", "2") + cmd("GET", "k:1") + cmd("SET", "k:2", "v")
    s.upstream_data(b"+OK\r\n$-1\r\n+OK\r\n")   # (SELECT's is swallowed)
    assert out(s.to_client) == b"+OK\r\n$-1\r\n+OK\r\n"   # (the client's AUTH, GET, SET)
    assert s.upstream_ready and not s.close


def test_a_refused_upstream_password_is_tried_again_with_the_files_new_one(tmp_path):
    # The CONFIG SET before the reload: the proxy still has the old password, the file the new.
    secret = tmp_path / "pw"
    secret.write_text("old-pw")
    secret.chmod(0o600)
    up = {"address": "127.0.0.1:1", "password": f"${{file:{secret}}}"}
    gate = Gate(build_config({"upstream": up, "users": {"u": f"on {pw_hash('pw')} +get ~k:*"}}),
                upstream_version=(5, 0, 6))
    secret.write_text("new-pw")
    s = Session(gate, "test")
    s.client_data(cmd("AUTH", "u", "pw") + cmd("GET", "k:1"))
    s.connected()
    assert out(s.to_upstream) == cmd("AUTH", "old-pw")
    s.upstream_data(b"-ERR invalid password\r\n")
    assert out(s.to_upstream) == cmd("AUTH", "new-pw")
    s.upstream_data(b"+OK\r\n")
    assert out(s.to_upstream) == cmd("GET", "k:1")


def test_the_last_refusal_fails_the_connection_as_before(tmp_path):
    s = rotated_session(tmp_path)
    s.client_data(cmd("AUTH", "u", "pw") + cmd("GET", "k:1"))
    s.connected()
    assert out(s.to_upstream) == cmd("AUTH", "new-pw")
    s.upstream_data(b"-ERR invalid password\r\n")
    assert out(s.to_upstream) == cmd("AUTH", "old-pw")
    s.upstream_data(b"-ERR invalid password\r\n")
    # (the password may have moved while the retry was on its way: handshake.Passwords.MAX_RETRIES)
    assert out(s.to_upstream) == cmd("AUTH", "new-pw")
    s.upstream_data(b"-ERR invalid password\r\n")
    assert out(s.to_upstream) == b""                       # no fourth try
    assert out(s.to_client) == b"+OK\r\n-ERR redisgate: upstream Redis unavailable " \
                               b"(upstream authentication failed)\r\n"


def test_other_setup_errors_are_not_retried(tmp_path):
    s = rotated_session(tmp_path)
    s.client_data(cmd("AUTH", "u", "pw") + cmd("GET", "k:1"))
    s.connected()
    out(s.to_upstream)
    s.upstream_data(b"-ERR Client sent AUTH, but no password is set\r\n")
    assert out(s.to_upstream) == b""
    assert b"upstream authentication failed" in out(s.to_client)


def test_forwarded_bytes_are_exactly_the_judged_bytes():
    s = make_session()
    login(s)
    s.client_data(cmd("SET", "k:1", "v") + cmd("GET", "k:1"))
    assert out(s.to_upstream) == cmd("SET", "k:1", "v") + cmd("GET", "k:1")


def test_local_replies_interleave_in_command_order():
    s = make_session()
    login(s)
    s.client_data(cmd("GET", "k:1") + cmd("GET", "other") + cmd("GET", "k:2"))
    assert out(s.to_upstream) == cmd("GET", "k:1") + cmd("GET", "k:2")
    assert out(s.to_client) == b""           # the denial waits for the first reply
    s.upstream_data(b"$1\r")
    assert out(s.to_client) == b"$1\r"       # a partial forwarded reply streams on
    s.upstream_data(b"\na\r\n$1\r\nb\r\n")
    data = out(s.to_client)
    assert data.startswith(b"\na\r\n-NOPERM")
    assert data.endswith(b"$1\r\nb\r\n")


def test_denied_inside_multi_makes_exec_abort_and_discards_upstream():
    s = make_session()
    login(s)
    s.client_data(cmd("MULTI") + cmd("SET", "k:1", "v") + cmd("GET", "nope") + cmd("EXEC"))
    assert out(s.to_upstream) == cmd("MULTI") + cmd("SET", "k:1", "v") + b"*1\r\n$7\r\nDISCARD\r\n"
    s.upstream_data(b"+OK\r\n+QUEUED\r\n+OK\r\n")
    data = out(s.to_client)
    assert data.startswith(b"+OK\r\n+QUEUED\r\n-NOPERM")
    assert data.endswith(b"-EXECABORT Transaction discarded because of previous errors.\r\n")


def test_resp2_messages_are_out_of_band_while_subscribed():
    s = make_session(users={"u": f"on {pw_hash('pw')} &c +subscribe +ping +get ~k"})
    login(s)
    s.client_data(cmd("SUBSCRIBE", "c"))
    s.upstream_data(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n")
    assert out(s.to_client).startswith(b"*3\r\n$9\r\nsubscribe")
    s.client_data(cmd("PING") + cmd("GET", "x"))      # the GET is denied locally
    # A message arrives before the PING reply: it must not count as the PING's reply.
    s.upstream_data(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n")
    assert out(s.to_client) == b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"
    s.upstream_data(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
    data = out(s.to_client)
    assert data.startswith(b"*2\r\n$4\r\npong") and b"-NOPERM" in data


def test_resp3_push_frames_pass_immediately():
    s = make_session()
    login(s)
    s.pubsub.ever = True   # (it subscribed: pub/sub pushes are ones it asked for; tests/test_isolation)
    s.client_data(cmd("GET", "k:1"))
    s.upstream_data(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n")
    assert out(s.to_client).startswith(b">3")
    s.upstream_data(b"_\r\n")
    assert out(s.to_client) == b"_\r\n"


def test_protocol_error_replies_and_closes_after_earlier_commands():
    s = make_session()
    login(s)
    s.client_data(cmd("GET", "k:1") + b"*1\r\n$-3\r\n")
    assert out(s.to_upstream) == cmd("GET", "k:1")
    assert not s.close
    s.upstream_data(b"$-1\r\n")
    assert out(s.to_client) == b"$-1\r\n-ERR Protocol error: invalid bulk length\r\n"
    assert s.close


def test_upstream_failure_answers_pending_commands_in_order():
    s = make_session()
    s.client_data(cmd("AUTH", "u", "pw") + cmd("GET", "k:1") + cmd("GET", "zzz"))
    s.upstream_failed("connection refused")
    data = out(s.to_client)
    assert data.startswith(b"+OK\r\n-ERR redisgate: upstream Redis unavailable (connection refused)")
    assert data.endswith(b"this user has no permissions to access one of the keys used as arguments\r\n")
    assert not s.close           # never connected: the client may try again


def test_legacy_upstream_refuses_hello_3_so_clients_fall_back():
    """Redis 5 has no HELLO: its own unknown-command error, the prefix go-redis v9.0 needs to fall
    back, with the credentials left out. Nothing logs in, nothing reaches the upstream."""
    s = make_session(version=(5, 0, 6))
    s.client_data(cmd("HELLO", "3", "AUTH", "u", "pw"))
    assert out(s.to_client) == b"-ERR unknown command `HELLO`, with args beginning with: `3`, \r\n"
    assert s.user_entry is None and not s.want_upstream
    s.client_data(cmd("AUTH", "u", "pw") + cmd("PING"))   # the fallback
    assert s.user_entry is not None


@pytest.mark.parametrize("args, shown", [
    ((b"HELLO",), b""),
    ((b"HELLO", b"2"), b"`2`, "),
    ((b"hello", b"3"), b"`3`, "),
    ((b"HELLO", b"4"), b"`4`, "),
    ((b"HELLO", b"x"), b"`x`, "),
    ((b"HELLO", b"3", b"SETNAME", b"n1"), b"`3`, `SETNAME`, `n1`, "),
    ((b"HELLO", b"3", b"SETNAME", b"n1", b"AUTH", b"u", b"pw"), b"`3`, `SETNAME`, `n1`, "),
    ((b"HELLO", b"3", b"aUtH", b"u", b"pw", b"SETNAME", b"n1"), b"`3`, "),
    ((b"HELLO", b"3", b"AUTH\0junk", b"u", b"pw"), b"`3`, "),     # strcasecmp stops at the NUL
    ((b"HELLO", b"AUTH", b"u", b"pw"), b""),
    ((b"HELLO", b"3", b"AUTH"), b"`3`, "),
    ((b"HELLO", b"3", b"AUTHX", b"u"), b"`3`, `AUTHX`, `u`, "),
], ids=repr)
def test_legacy_hello_any_form_is_unknown_and_never_echoes_credentials(args, shown):
    name = args[0].decode()
    for logged_in in (False, True):
        s = make_session(version=(5, 0, 6))
        if logged_in:
            login(s)
        s.client_data(cmd(*args))
        assert out(s.to_client) == (b"-ERR unknown command `" + name.encode()
                                    + b"`, with args beginning with: " + shown + b"\r\n")
        assert not s.to_upstream and (s.user_entry is not None) == logged_in


def test_legacy_hello_in_multi_dooms_the_transaction_and_pipelines_are_judged_as_before():
    s = make_session(version=(5, 0, 6))
    s.client_data(cmd("HELLO", "3", "AUTH", "u", "pw") + cmd("GET", "k:1"))
    assert out(s.to_client) == (b"-ERR unknown command `HELLO`, with args beginning with: `3`, \r\n"
                                b"-NOAUTH Authentication required.\r\n")
    login(s)
    s.client_data(cmd("MULTI") + cmd("HELLO", "2") + cmd("EXEC"))
    assert out(s.to_upstream) == cmd("MULTI") + cmd("DISCARD")
    s.upstream_data(b"+OK\r\n+OK\r\n")
    assert out(s.to_client) == (b"+OK\r\n-ERR unknown command `HELLO`, with args beginning with: "
                                b"`2`, \r\n-EXECABORT Transaction discarded because of previous "
                                b"errors.\r\n")


# ---------------------------------------------------------------- never a crash

import pytest
from hypothesis import given, settings, strategies as st  # noqa: E402

_NAMES = st.sampled_from([b"GET", b"set", b"AUTH", b"HELLO", b"MULTI", b"EXEC", b"SUBSCRIBE",
                          b"unsubscribe", b"SELECT", b"ACL", b"CLIENT", b"EVAL", b"RESET", b"QUIT",
                          b"PING", b"nosuch", b"SORT", b"XREAD", b"DISCARD", b"WATCH"])
_ARGS = st.lists(st.one_of(st.binary(max_size=12), st.sampled_from(
    [b"k:1", b"u", b"pw", b"3", b"0", b"AUTH", b"STREAMS", b"BY", b"*", b"LOG", b"WHOAMI"])),
    max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, _ARGS), max_size=12), st.binary(max_size=64), st.data())
def test_any_command_sequence_and_reply_bytes_never_raise(commands, garbage, data):
    s = make_session()
    stream = b"".join(cmd(name, *args) for name, args in commands) + garbage
    cut = data.draw(st.integers(0, len(stream)))
    s.client_data(stream[:cut])
    if s.want_upstream:
        s.connected()
    s.client_data(stream[cut:])
    # Whatever Redis answers (here: a plausible mix), the session routes it without raising.
    replies = data.draw(st.lists(st.sampled_from(
        [b"+OK\r\n", b"-ERR x\r\n", b":1\r\n", b"$1\r\nv\r\n", b"*0\r\n", b"_\r\n", b"+QUEUED\r\n",
         b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n", b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"]),
        max_size=20))
    for r in replies:
        s.upstream_data(r)
    assert isinstance(b"".join(s.to_client), bytes)


@pytest.mark.parametrize("index, db", [(b"2", 2), (b"05", 0), (b"+3", 0), (b"-1", 0),
                                       (b"3\x00", 0), (b" 4", 0), (b"0", 0)])
def test_select_tracks_the_database_as_redis_reads_the_index(index, db):
    """Redis reads SELECT's index with string2ll: `SELECT 05` and `+3` switch nothing."""
    s = make_session(users={"u": f"on {pw_hash('pw')} allkeys +@all"})
    login(s)
    s.client_data(cmd("SELECT", index))
    assert s.db == db


def test_select_in_resp2_subscribed_mode_is_refused_and_switches_nothing():
    """Redis refuses SELECT in RESP2 subscribed mode: the session must not take it as a switch."""
    s = make_session(users={"u": f"on {pw_hash('pw')} allkeys allchannels +@all"})
    login(s)
    s.client_data(cmd("SUBSCRIBE", "c"))
    s.client_data(cmd("SELECT", "2"))
    assert s.db == 0
    assert b"SELECT" not in b"".join(s.to_upstream).upper()
