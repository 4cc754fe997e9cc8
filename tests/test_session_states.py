"""The session state machine at its boundary, without sockets: bytes in (``client_data``,
``upstream_data`` and the I/O layer's events), ``Session.actions()`` out, exact; every
``session.State`` and every transition between them (hypercorn style: the protocol alone)."""
from __future__ import annotations

import dataclasses

import pytest

from redisgate.session.actions import Actions
from redisgate.config import build_config
from redisgate.session.gate import Gate
from redisgate.session import FWD, LOCAL, Session, State
from redisgate.session.replies import Muting
from redisgate.session.upstream import Phase

from proxy import pw_hash
from wire import cmd

pytestmark = pytest.mark.usefixtures("both_scans")

RULES = "~k:* &* +get +set +ping +multi +exec +discard +subscribe +unsubscribe +client|reply +hello"
USERS = {"u": f"on {pw_hash('pw')} {RULES}"}
OK = b"+OK\r\n"
seen: set[State] = set()   # every state some test here reached (checked last)


def make(multiplex=0, version=(7, 0, 15), users=None, password=None, **extra) -> Session:
    upstream = {"address": "127.0.0.1:1", "multiplex": multiplex}
    if password:
        upstream["password"] = password
    cfg = build_config({"upstream": upstream, "users": users or USERS, **extra})
    return Session(Gate(cfg, upstream_version=version), "test")


def state(s: Session) -> State:
    seen.add(s.state)
    return s.state


def act(s: Session, **want) -> Actions:
    """s.actions(), checked against `want` (every other field at its default)."""
    got = s.actions()
    assert got == dataclasses.replace(Actions(), **want), got
    return got


def login(s: Session) -> None:
    s.client_data(cmd("AUTH", "u", "pw"))
    assert state(s) is State.CONNECTING
    act(s, to_client=OK, open_upstream=True)
    s.connected()
    assert state(s) is State.READY
    act(s, open_upstream=True)


def test_the_hot_paths_constructor_makes_the_same_frozen_actions():
    fields = (b"+OK\r\n", b"*1\r\n$4\r\nPING\r\n", True, 1, True, True, False, 0.5)
    a = Actions.new(*fields)
    assert type(a) is Actions   # (filled as a mutable draft, handed over as Actions)
    assert a == Actions(*fields) and hash(a) == hash(Actions(*fields))
    assert dataclasses.astuple(a) == fields
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.to_client = b""


def test_actions_are_frozen_and_handed_over_once():
    s = make()
    s.client_data(cmd("PING"))
    a = act(s, to_client=b"-NOAUTH Authentication required.\r\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.close = True
    act(s)   # nothing new


def test_login_refused_then_accepted_then_upstream_connected():
    s = make()
    assert state(s) is State.LOGIN
    s.client_data(cmd("GET", "k:1") + cmd("AUTH", "u", "nope"))
    assert state(s) is State.LOGIN
    act(s, to_client=b"-NOAUTH Authentication required.\r\n"
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    # LOGIN -> CONNECTING: the command after AUTH waits for the connection being opened.
    s.client_data(cmd("AUTH", "u", "pw") + cmd("GET", "k:1"))
    assert state(s) is State.CONNECTING
    act(s, to_client=OK, open_upstream=True)
    assert s.held_bytes() == len(cmd("GET", "k:1"))
    # CONNECTING -> READY: what waited goes, the reply comes back.
    s.connected()
    assert state(s) is State.READY
    act(s, to_upstream=cmd("GET", "k:1"), open_upstream=True)
    s.upstream_data(b"$1\r\nv\r\n")
    act(s, to_client=b"$1\r\nv\r\n", open_upstream=True)
    assert s.replies_due() == 0 and s.quiet()


def test_the_proxys_own_setup_goes_first_and_its_replies_are_swallowed():
    s = make(password="gate-secret")
    s.client_data(cmd("AUTH", "u", "pw") + cmd("GET", "k:1"))
    act(s, to_client=b"", open_upstream=True)   # +OK waits behind the proxy's own AUTH
    s.connected()
    # The proxy's AUTH goes alone: nothing of the client's before Redis accepted it.
    act(s, to_upstream=cmd("AUTH", "gate-secret"), open_upstream=True)
    s.upstream_data(b"+OK\r\n")
    act(s, to_client=OK, to_upstream=cmd("GET", "k:1"), open_upstream=True)
    s.upstream_data(b"$1\r\nv\r\n")
    act(s, to_client=b"$1\r\nv\r\n", open_upstream=True)


def test_stalled_by_the_throttle_until_resumed():
    s = make(auth_throttle={"max_failures": 1, "window": 60, "lockout": 60})
    s.client_data(cmd("AUTH", "u", "nope") + cmd("PING"))
    assert state(s) is State.STALLED
    a = s.actions()
    assert a.stall > 0 and a.to_client == b"" and not a.close
    assert s.owes_replies()
    # STALLED -> LOGIN: the held reply, then what the client sent meanwhile.
    s.resume()
    assert state(s) is State.LOGIN
    act(s, to_client=b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        b"-NOAUTH Authentication required.\r\n")


def test_multi_and_back():
    s = make()
    login(s)
    s.client_data(cmd("MULTI") + cmd("SET", "k:1", "v"))
    assert state(s) is State.MULTI
    act(s, to_upstream=cmd("MULTI") + cmd("SET", "k:1", "v"), open_upstream=True)
    s.client_data(cmd("EXEC"))
    assert state(s) is State.READY
    act(s, to_upstream=cmd("EXEC"), open_upstream=True)
    s.upstream_data(b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n")
    act(s, to_client=b"+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n", open_upstream=True)
    # MULTI -> READY by DISCARD, and a refusal inside dooms the transaction.
    s.client_data(cmd("MULTI") + cmd("GET", "other") + cmd("DISCARD"))
    assert state(s) is State.READY


def test_subscribed_and_back():
    s = make()
    login(s)
    s.client_data(cmd("SUBSCRIBE", "c"))
    assert state(s) is State.SUBSCRIBED
    act(s, to_upstream=cmd("SUBSCRIBE", "c"), open_upstream=True)
    confirm = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"
    message = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n"
    s.upstream_data(confirm + message)
    act(s, to_client=confirm + message, open_upstream=True)
    assert not s.quiet()   # (limits.idle_timeout leaves a subscriber alone)
    s.client_data(cmd("UNSUBSCRIBE", "c"))
    s.upstream_data(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:0\r\n")
    assert state(s) is State.READY


def test_exec_of_a_subscribing_transaction_waits_for_its_reply():
    s = make()
    login(s)
    s.client_data(cmd("MULTI") + cmd("SUBSCRIBE", "c") + cmd("EXEC") + cmd("PING"))
    assert state(s) is State.EXEC_WAIT
    # PING waits (parsed, not judged) until EXEC's reply says whether the subscription holds.
    act(s, to_upstream=cmd("MULTI") + cmd("SUBSCRIBE", "c") + cmd("EXEC"), open_upstream=True)
    s.upstream_data(b"+OK\r\n+QUEUED\r\n*1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n")
    assert state(s) is State.SUBSCRIBED
    a = s.actions()
    assert a.to_upstream == cmd("PING")


def test_client_reply_off_mutes_until_on():
    s = make()
    login(s)
    s.client_data(cmd("CLIENT", "REPLY", "OFF") + cmd("GET", "k:1"))
    assert state(s) is State.MUTED
    act(s, to_upstream=cmd("GET", "k:1"), open_upstream=True)   # CLIENT REPLY stays here
    s.upstream_data(b"$1\r\nv\r\n")
    act(s, open_upstream=True)   # swallowed
    s.client_data(cmd("CLIENT", "REPLY", "ON"))
    assert state(s) is State.READY
    act(s, to_client=OK, open_upstream=True)


def test_quit_closes_after_the_replies_due():
    s = make()
    login(s)
    s.client_data(cmd("GET", "k:1") + cmd("QUIT") + cmd("GET", "k:2"))
    assert state(s) is State.CLOSED
    act(s, to_upstream=cmd("GET", "k:1"), open_upstream=True)   # nothing after QUIT
    s.upstream_data(b"$-1\r\n")
    act(s, to_client=b"$-1\r\n" + OK, open_upstream=True, close=True)


def test_a_protocol_error_closes():
    s = make()
    s.client_data(b"*1\r\n$x\r\n")
    assert state(s) is State.CLOSED
    act(s, to_client=b"-ERR Protocol error: invalid bulk length\r\n", close=True)


def test_abort_is_how_the_io_layer_closes():
    s = make()
    login(s)
    s.abort()
    assert state(s) is State.CLOSED
    assert s.actions().close


def test_reset_logs_out():
    s = make()
    login(s)
    s.client_data(cmd("RESET"))
    assert state(s) is State.LOGIN
    act(s, to_upstream=cmd("RESET"), open_upstream=True)
    s.upstream_data(b"+RESET\r\n")
    act(s, to_client=b"+RESET\r\n", open_upstream=True)


def test_an_upstream_never_reached_leaves_the_client_unconnected_then_it_asks_again():
    s = make()
    s.client_data(cmd("AUTH", "u", "pw") + cmd("GET", "k:1"))
    act(s, to_client=OK, open_upstream=True)
    s.upstream_failed("connection refused")
    assert state(s) is State.UNCONNECTED
    act(s, to_client=b"-ERR redisgate: upstream Redis unavailable (connection refused)\r\n")
    s.client_data(cmd("GET", "k:1"))
    assert state(s) is State.CONNECTING
    act(s, open_upstream=True)


def test_an_upstream_lost_closes_the_client():
    s = make()
    login(s)
    s.client_data(cmd("GET", "k:1"))
    s.actions()
    s.upstream_failed("connection lost")
    assert state(s) is State.CLOSED
    act(s, to_client=b"-ERR redisgate: upstream Redis unavailable (connection lost)\r\n",
        close=True)


def test_a_shared_link_lost_with_replies_in_flight_closes_the_client():
    s = make(multiplex=1)
    s.client_data(cmd("AUTH", "u", "pw") + cmd("GET", "k:1"))
    s.actions()
    s.upstream_failed("connection lost", established=True)
    assert state(s) is State.CLOSED and s.actions().close


def test_shared_then_leaving_for_a_connection_of_its_own():
    s = make(multiplex=2)
    s.client_data(cmd("AUTH", "u", "pw"))
    assert state(s) is State.SHARED
    act(s, to_client=OK, via_link=True)
    s.client_data(cmd("GET", "k:1") + cmd("GET", "k:2"))
    act(s, to_upstream=cmd("GET", "k:1") + cmd("GET", "k:2"), via_link=True, link_replies=2)
    # SHARED -> CONNECTING: MULTI needs a connection of its own; it waits for it (and for the
    # shared replies); the I/O layer still routes the last shared replies from the link.
    s.client_data(cmd("GET", "k:3") + cmd("MULTI"))
    assert state(s) is State.CONNECTING
    act(s, to_upstream=cmd("GET", "k:3"), via_link=True, link_replies=1, open_upstream=True)
    s.upstream_replies(b"$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n", 3)
    act(s, to_client=b"$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n", open_upstream=True)
    s.connected()
    assert state(s) is State.MULTI
    act(s, to_upstream=cmd("MULTI"), open_upstream=True)


def test_a_shared_session_binds_its_commands_to_its_protocol():
    s = make(multiplex=1)
    s.client_data(cmd("AUTH", "u", "pw") + cmd("HELLO", "3"))
    assert state(s) is State.SHARED
    a = s.actions()
    assert a.link_resp3 and a.via_link and a.to_client.startswith(OK + b"%")


def test_a_reload_that_removes_the_user_closes():
    s = make()
    login(s)
    gate = s.gate
    gate.reload(build_config({"upstream": {"address": "127.0.0.1:1"},
                              "users": {"other": f"on {pw_hash('pw')} +get"}}))
    s.reloaded()
    assert state(s) is State.CLOSED
    assert s.actions().close


def test_client_reply_skip_mutes_the_next_command_only():
    s = make()
    login(s)
    s.client_data(cmd("CLIENT", "REPLY", "SKIP"))
    assert state(s) is State.MUTED and s.replies.muting is Muting.SKIP
    act(s, open_upstream=True)   # SKIP replies nothing
    s.client_data(cmd("GET", "k:1"))
    assert state(s) is State.READY and s.replies.muting is Muting.NONE
    act(s, to_upstream=cmd("GET", "k:1"), open_upstream=True)
    s.client_data(cmd("GET", "k:2"))
    act(s, to_upstream=cmd("GET", "k:2"), open_upstream=True)
    s.upstream_data(b"$1\r\na\r\n$1\r\nb\r\n")
    act(s, to_client=b"$1\r\nb\r\n", open_upstream=True)   # the skipped one's swallowed


def test_the_upstream_phases_of_a_connection_of_its_own():
    """upstream.Upstream.phase, the upstream side of Session.state: NONE -> OPENING (asked of
    the I/O layer) -> HANDSHAKE (open, the proxy's AUTH awaited) -> READY; a RESET on 6.2+ goes
    back to HANDSHAKE (its AUTH again), a failure before it was ever established to NONE."""
    s = make(password="gate-secret")
    assert s.up.phase is Phase.NONE and state(s) is State.LOGIN
    s.client_data(cmd("AUTH", "u", "pw"))
    assert s.up.phase is Phase.OPENING and state(s) is State.CONNECTING
    s.connected()
    assert s.up.phase is Phase.HANDSHAKE and state(s) is State.CONNECTING
    act(s, to_upstream=cmd("AUTH", "gate-secret"), open_upstream=True)
    s.upstream_data(OK)
    assert s.up.phase is Phase.READY and state(s) is State.READY
    act(s, to_client=OK, open_upstream=True)
    s.client_data(cmd("RESET"))
    assert s.up.phase is Phase.HANDSHAKE and state(s) is State.LOGIN
    act(s, to_upstream=cmd("RESET") + cmd("AUTH", "gate-secret"), open_upstream=True)
    s.upstream_data(b"+RESET\r\n+OK\r\n")
    assert s.up.phase is Phase.READY
    act(s, to_client=b"+RESET\r\n", open_upstream=True)

    s = make()
    s.client_data(cmd("AUTH", "u", "pw"))
    s.upstream_failed("refused")
    assert s.up.phase is Phase.NONE and state(s) is State.UNCONNECTED


def test_the_upstream_phase_on_a_shared_link():
    s = make(multiplex=2)
    s.client_data(cmd("AUTH", "u", "pw"))
    assert s.up.phase is Phase.SHARED and state(s) is State.SHARED
    s.client_data(cmd("MULTI"))   # (a connection of its own)
    assert s.up.phase is Phase.OPENING and state(s) is State.CONNECTING


def test_the_transaction_object_follows_multi_exec_discard():
    s = make()
    login(s)
    tx = s.tx
    s.client_data(cmd("MULTI") + cmd("GET", "k:1") + cmd("GET", "x:1"))   # x:1: refused
    assert tx.active and tx.dirty and state(s) is State.MULTI
    s.client_data(cmd("EXEC"))
    assert not tx.active and not tx.dirty and state(s) is State.READY
    act(s, to_upstream=cmd("MULTI") + cmd("GET", "k:1") + cmd("DISCARD"), open_upstream=True)
    s.upstream_data(b"+OK\r\n+QUEUED\r\n+OK\r\n")
    assert s.actions().to_client.endswith(b"-EXECABORT Transaction discarded because of "
                                          b"previous errors.\r\n")
    s.client_data(cmd("MULTI") + cmd("SUBSCRIBE", "c"))
    assert tx.subs and tx.subs[0].kind == "chan" and tx.subs[0].subscribe
    s.client_data(cmd("DISCARD"))
    assert not tx.active and not tx.subs


def test_the_reply_order_counts_what_the_client_is_owed():
    s = make()
    login(s)
    s.client_data(cmd("GET", "k:1") + cmd("GET", "k:2") + cmd("NOPE") + cmd("GET", "k:3"))
    order = s.replies
    assert [slot[0] for slot in order.slots] == [FWD, LOCAL, FWD]
    assert order.due() == 4 == s.replies_due()
    s.upstream_data(b"$1\r\na\r\n$1\r\nb\r\n")
    assert order.due() == 1


def test_every_state_is_reached():
    """The scenarios above, together, reach each state at least once (run here again, so that
    this holds whatever order or selection of tests ran)."""
    seen.clear()
    for name, test in list(globals().items()):
        if name.startswith("test_") and test is not test_every_state_is_reached:
            test()
    assert seen == set(State)
