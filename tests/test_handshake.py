"""handshake.Passwords.after_refusal: the one decision of what the proxy's AUTH does after Redis
refused it (sessions, shared links and the probes ask it), sans I/O; and a session that meets
the rotation race, bytes in and Actions out."""
from __future__ import annotations

from redisgate.config import build_config
from redisgate.session.gate import Gate
from redisgate.protocol.handshake import Passwords
from redisgate.session import Session

from wire import cmd

WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
INVALID = b"-ERR invalid password\r\n"


class Up:
    def __init__(self, password: bytes | None, reread=None):
        self.password = password
        self.password_reread = reread


def rotated() -> Passwords:
    """A reload replaced `old` by `new` (the reload-first order of a rotation)."""
    p = Passwords(Up(b"old"))
    p.reloaded(Up(b"new"))
    return p


def test_a_refused_password_is_retried_with_the_other_one():
    f = rotated().after_refusal(WRONGPASS, b"new", 0)
    assert f is not None and (f.password, f.source) == (b"old", "previous")
    f = rotated().after_refusal(INVALID, b"new", 0)   # (Redis 5's requirepass wording)
    assert f is not None and f.password == b"old"


def test_the_password_moving_again_meanwhile_gets_one_more_retry():
    """The race: `new` refused (Redis still on `old`), `old` retried, Redis switches to `new`
    meanwhile and refuses `old` too: the second retry sends `new` again."""
    f = rotated().after_refusal(WRONGPASS, b"old", 1)
    assert f is not None and (f.password, f.source) == (b"new", "current")


def test_retries_are_bounded():
    assert rotated().after_refusal(WRONGPASS, b"new", Passwords.MAX_RETRIES) is None


def test_only_a_refused_password_is_retried():
    p = rotated()
    assert p.after_refusal(b"-ERR max number of clients reached\r\n", b"new", 0) is None
    assert p.after_refusal(b"-NOAUTH Authentication required.\r\n", b"new", 0) is None
    assert p.after_refusal(WRONGPASS, None, 0) is None


def test_no_other_password_known_means_no_retry():
    assert Passwords(Up(b"only")).after_refusal(WRONGPASS, b"only", 0) is None


def test_a_session_retries_twice_across_the_race_then_its_commands_go():
    cfg = build_config({"upstream": {"address": "127.0.0.1:1", "password": "old"},
                        "users": {"default": "on nopass +get ~k:*"}})
    gate = Gate(cfg, upstream_version=(7, 0, 15))
    gate.passwords.reloaded(Up(b"new"))   # the proxy learnt `new`, Redis still has `old`
    gate.config.upstream.password = b"new"
    s = Session(gate, "test")
    s.client_data(cmd("GET", "k:1"))
    s.connected()
    assert s.actions().to_upstream == cmd("AUTH", "new")
    s.upstream_data(WRONGPASS)
    assert s.actions().to_upstream == cmd("AUTH", "old")
    s.upstream_data(WRONGPASS)   # Redis switched to `new` meanwhile
    assert s.actions().to_upstream == cmd("AUTH", "new")
    s.upstream_data(b"+OK\r\n")
    assert s.actions().to_upstream == cmd("GET", "k:1")
    s.upstream_data(b"$1\r\nv\r\n")
    assert s.actions().to_client == b"$1\r\nv\r\n"


def test_a_session_gives_up_after_the_retries():
    cfg = build_config({"upstream": {"address": "127.0.0.1:1", "password": "old"},
                        "users": {"default": "on nopass +get ~k:*"}})
    gate = Gate(cfg, upstream_version=(7, 0, 15))
    gate.passwords.reloaded(Up(b"new"))
    gate.config.upstream.password = b"new"
    s = Session(gate, "test")
    s.client_data(cmd("GET", "k:1"))
    s.connected()
    for _ in range(1 + Passwords.MAX_RETRIES):
        assert s.actions().to_upstream.startswith(b"*2\r\n$4\r\nAUTH\r\n")
        s.upstream_data(WRONGPASS)
    a = s.actions()
    assert a.to_upstream == b"" and b"-ERR" in a.to_client and a.close
