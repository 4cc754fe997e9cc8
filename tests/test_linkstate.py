"""redisgate.protocol.linkstate: a shared link's books (whose replies come next, what is due, what waits for
the turn's flush), in C (redisgate._native._lane.LinkState) and in its pure-Python twin (PyLinkState).
The same random operations on both give the same results, and each is checked against a plain
model; then the send/flush cases one by one."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redisgate.protocol.linkstate import PyLinkState

try:
    from redisgate._native._lane import Lane
    from redisgate._native._lane import LinkState as CLinkState
except ImportError:   # not built here: the twin alone
    CLinkState = Lane = None

IMPLS = [pytest.param(PyLinkState, id="py")] + (
    [pytest.param(CLinkState, id="c")] if CLinkState is not None else [])


class Books:
    """A link's books with a recording connection and after_send."""

    def __init__(self, impl):
        self.written: list[bytes] = []
        self.told: list[tuple] = []
        self.state = impl(lambda *args: self.told.append(args))
        self.conn = object()

    def attach(self):
        self.state.attach(self.conn, self.written.append)


@pytest.mark.parametrize("impl", IMPLS)
def test_send_writes_an_idle_ready_link_at_once_and_queues_the_rest(impl):
    b = Books(impl)
    s = b.state
    assert (s.due, s.pending, s.ready, s.clean, s.flush_soon, s.out, s.conn) == \
        (0, 0, False, True, False, [], None)
    # Not ready (connecting): queued, after_send told every time, flush writes nothing.
    s.send("a", b"1", 1)
    s.send("a", b"2", 2)
    assert b.told == [("a", 1, 1), ("a", 1, 2)] and s.out == [b"1", b"2"] and not s.flush_soon
    assert s.due == 3 and s.due_owners() == ["a"] * 3
    s.flush()
    assert b.written == [] and s.out == [b"1", b"2"]
    # Opened: the link's own command goes first; flush writes everything at once.
    b.attach()
    s.put_first("setup", 1)
    s.ready = True
    assert s.conn is b.conn and s.due_owners() == ["setup", "a", "a", "a"] and s.pending == 4
    s.flush()
    assert b.written == [b"12"] and s.out == []
    # Replies: took() walks the head.
    assert s.head_owner == "setup" and s.head_due == 1 and s.took(1) == 0
    assert s.head_owner == "a" and s.took(2) == 1 and s.took(1) == 0
    assert s.head_owner is None and s.head_due == 0 and s.pending == 0
    s.due = 0
    # Idle and ready: written at once, nothing told.
    s.send("b", b"3", 1)
    assert b.written[-1] == b"3" and s.out == [] and len(b.told) == 2
    # Busy: the turn's first queued bytes tell after_send (which schedules the flush), the
    # others join the queue.
    s.send("c", b"4", 1)
    s.send("b", b"5", 0)   # (no reply: nothing due, still written in order)
    assert b.told[2:] == [("c", 1, 1)] and s.flush_soon and s.out == [b"4", b"5"]
    assert s.due_owners() == ["b", "c"] and s.due == 2
    s.flush()
    assert b.written[-1] == b"45" and not s.flush_soon
    # Lost: forget() names each owner once, oldest first.
    s.send("b", b"6", 1)
    assert s.forget() == ["b", "c"] and s.pending == 0 and s.clean
    s.attach(None, None)
    assert s.conn is None


@pytest.mark.parametrize("impl", IMPLS)
def test_a_failing_after_send_does_not_leave_the_flush_marked_scheduled(impl):
    def fail(*args):
        raise OSError("no loop")
    s = impl(fail)
    s.attach(object(), [].append)
    s.ready = True
    s.due = 1
    with pytest.raises(OSError):
        s.send("a", b"x", 1)
    assert not s.flush_soon and s.out == [b"x"] and s.due == 2


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_arguments_are_refused_with_proper_exceptions(impl):
    s = impl(lambda *args: None)
    with pytest.raises(ValueError):
        s.took(1)
    with pytest.raises(ValueError):
        s.put_first("a", 0)
    with pytest.raises(ValueError):
        s.send("a", b"x", -1)
    with pytest.raises(TypeError):
        s.attach(object(), None)
    with pytest.raises(TypeError):
        s.attach(None, print)
    s.sent("a", 2)
    with pytest.raises(ValueError):
        s.took(3)
    with pytest.raises(TypeError):
        impl(None)


_ops = st.lists(st.one_of(
    st.tuples(st.just("sent"), st.integers(0, 3), st.integers(-1, 4)),
    st.tuples(st.just("put_first"), st.integers(0, 3), st.integers(1, 3)),
    st.tuples(st.just("took"), st.integers(1, 4)),
    st.tuples(st.just("send"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("ready"), st.booleans()),
    st.tuples(st.just("flush"),),
    st.tuples(st.just("forget"),),
), max_size=40)


@pytest.mark.skipif(CLinkState is None, reason="redisgate._native._lane is not built here")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_the_c_link_state_and_its_python_twin_agree(ops):
    owners = ["a", "b", "c", "d"]
    books = [Books(PyLinkState), Books(CLinkState)]
    for b in books:
        b.attach()
    model: list[list] = []   # [owner, n], the queue as mux.Demux once kept it
    for op in ops:
        results = []
        for b in books:
            s = b.state
            try:
                if op[0] == "sent":
                    r = s.sent(owners[op[1]], op[2])
                elif op[0] == "put_first":
                    r = s.put_first(owners[op[1]], op[2])
                elif op[0] == "took":
                    r = s.took(op[1])
                elif op[0] == "send":
                    r = s.send(owners[op[1]], b"%d" % op[2], op[2])
                elif op[0] == "ready":
                    s.ready = op[1]
                    r = None
                elif op[0] == "flush":
                    r = s.flush()
                else:
                    r = s.forget()
            except ValueError:
                r = "ValueError"
            results.append((r, s.due, s.pending, s.ready, s.flush_soon, list(s.out),
                            s.due_owners(), s.head_owner, s.head_due, list(b.written),
                            list(b.told)))
        assert results[0] == results[1], op
        # The model: what the queue must be.
        if op[0] in ("sent", "send") and (op[2] if op[0] == "sent" else op[2]) > 0:
            who, n = owners[op[1]], op[2]
            if model and model[-1][0] == who:
                model[-1][1] += n
            else:
                model.append([who, n])
        elif op[0] == "put_first":
            model.insert(0, [owners[op[1]], op[2]])
        elif op[0] == "took" and results[0][0] != "ValueError":
            model[0][1] -= op[1]
            if not model[0][1]:
                model.pop(0)
        elif op[0] == "forget":
            model.clear()
        assert results[0][6] == [who for who, n in model for _ in range(n)]


@pytest.mark.skipif(Lane is None, reason="redisgate._native._lane is not built here")
def test_the_c_state_takes_only_a_lane_as_lane():
    s = CLinkState(lambda *args: None)
    lane = Lane(print, print)
    s.sent("a", 1, lane)
    s.sent("a", 1, None)
    with pytest.raises(TypeError):
        s.sent("a", 1, "not a lane")
    with pytest.raises(TypeError):
        s.send("a", b"x", 1, object())
    assert s.due_owners() == ["a", "a"]


@pytest.mark.parametrize("env", ["REDISGATE_NO_LANE", "REDISGATE_PURE_PYTHON"])
def test_the_python_twin_is_used_where_the_lane_is_off(env):
    code = ("from redisgate.protocol import linkstate; from redisgate.io import server; "
            "assert linkstate.LinkState is linkstate.PyLinkState; "
            "assert server.Lane is None and server.Router is None")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, **{env: "1"}))
