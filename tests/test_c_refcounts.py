"""Error paths of the C modules (redisgate._native._lane, redisgate._native._speedups): no reference leaked, no
SystemError.

Every entry point that takes Python objects and can fail half-way is called many times in a way
that fails, and the reference counts of the objects passed in must be what they were before: a
C function that takes a reference and then bails out without dropping it shows up as a count
that grows by the number of calls. Then the two bugs found in review, each pinned: `Lane.arm`
took its references before a lookup on the link that can fail (1,000 failed arms: a refcount of
4 became 1,004), and a negative `due` on a shared link came back as "returned NULL without
setting an exception" (SystemError) instead of a proper exception. (The link's books are a
_lane.LinkState's C fields now, which C no longer looks up by name: the same calls are pinned
against it.)
"""
from __future__ import annotations

import gc
import sys
import pytest

from wire import cmd

_lane = pytest.importorskip("redisgate._native._lane", reason="redisgate._native._lane is not built here")
_speedups = pytest.importorskip("redisgate._native._speedups", reason="redisgate._native._speedups is not built")

ROUNDS = 1000


NO_KEY = "allow"


def entry(fewest, most, pos, prefixes=(), exact=frozenset(), match=None, counter=None):
    """A memo entry (a _lane.Verdict, as tests/test_lane.py writes it)."""
    counter = _lane.Counter() if counter is None else counter
    if pos == NO_KEY:
        return _lane.Verdict.allow(spec=None, fewest=fewest, most=most, counter=counter)
    return _lane.Verdict.one_key(spec=None, fewest=fewest, most=most, pos=pos,
                                 prefixes=prefixes, exact=frozenset(exact), match=match,
                                 counter=counter)


def counts(objs):
    gc.collect()
    return [sys.getrefcount(o) for o in objs]


def no_leak(objs, call, error=Exception, rounds=ROUNDS):
    """Calls call() `rounds` times, each raising `error`; the refcounts of objs stay put."""
    call_error = None
    for _ in range(3):   # warm up: caches, interned strings, exception state
        with pytest.raises(error):
            call()
    before = counts(objs)
    for _ in range(rounds):
        try:
            call()
        except error as exc:
            call_error = exc
        else:
            raise AssertionError(f"{call!r} did not raise {error.__name__}")
    del call_error
    after = counts(objs)
    assert after == before, f"references leaked: {before} -> {after}"


def _raise(*args):
    raise OSError("write failed")


class Link:
    """A shared link's books (a _lane.LinkState, as server.SharedLink keeps them) with a
    recording connection."""

    def __init__(self, write=None, after_send=None):
        self.written = []
        self.state = _lane.LinkState(after_send or (lambda *args: None))
        self.state.attach(self, write or self.written.append)
        self.state.ready = True


class Owner:
    """A ClientConnection, as the link's books know it."""


KNOWN = {b"GET": entry(2, 2, 1, (b"k:",)), b"PING": entry(1, 2, NO_KEY)}


# ---------------------------------------------------------------- the two bugs, pinned

def test_a_failed_arm_on_something_that_is_not_a_link_state_leaks_nothing():
    lane = _lane.Lane(list().append, list().append)
    known, up, client, owner = dict(KNOWN), [].append, [].append, Owner()
    for link in (object(), Link()):   # (a SharedLink-like object is not its books)
        objs = [known, up, client, link, owner]
        no_leak(objs, lambda: lane.arm(known, up, client, 0, 16, 1 << 20, link, owner),
                TypeError)
    good = Link()
    no_leak([known, up, client, good], lambda: lane.arm(known, up, client, 0, 16, 1 << 20,
                                                        good.state), TypeError)   # no owner
    no_leak([known, up, client, owner], lambda: lane.arm(known, up, client, 0, 16, 1 << 20,
                                                         owner=owner), TypeError)   # no link
    assert not lane.armed
    # The lane is still usable afterwards, on a link's books.
    lane.arm(known, up, client, 0, 16, 1 << 20, link=good.state, owner=owner)
    assert lane.armed and lane.shared
    assert lane.disarm() == 0


@pytest.mark.parametrize("due,error", [(-2, ValueError), (-(1 << 70), OverflowError),
                                       ("3", TypeError), (None, TypeError)])
def test_a_bad_due_on_a_shared_link_is_a_proper_exception(due, error):
    link, owner = Link(), Owner()
    lane = _lane.Lane(list().append, list().append)
    lane.arm(dict(KNOWN), None, [].append, 0, 16, 1 << 20, link.state, owner)
    st = link.state

    def set_due():
        st.due = due
    with pytest.raises(error):   # not SystemError ("returned NULL without setting an exception")
        set_due()
    no_leak([st, owner, lane], set_due, error)
    assert st.due == 0
    lane.client_data(cmd("GET", "k:1"))   # the books are sound: the lane writes the idle link
    assert link.written == [cmd("GET", "k:1")] and st.due == 1 and st.due_owners() == [owner]


# ---------------------------------------------------------------- every other failing entry point

def test_lane_constructor_failures_leak_nothing():
    slow, not_callable = [].append, object()
    no_leak([slow, not_callable], lambda: _lane.Lane(slow, not_callable), TypeError)
    no_leak([slow], lambda: _lane.Lane(slow), TypeError)


def test_lane_window_failures_leak_nothing():
    lane = _lane.Lane(list().append, list().append)
    text, big = "3", 1 << 70

    def set_window(value):
        lane.window = value
    no_leak([lane, text], lambda: set_window(text), TypeError)
    no_leak([lane, big], lambda: set_window(big), OverflowError)
    no_leak([lane], lambda: set_window(0), ValueError)
    no_leak([lane], lambda: delattr(lane, "window"), AttributeError)
    lane.window = 5
    assert lane.window == 5


def test_lane_arm_failures_leak_nothing():
    lane = _lane.Lane(list().append, list().append)
    known, up, client, link, owner = dict(KNOWN), [].append, [].append, Link().state, Owner()
    objs = [known, up, client, link, owner]
    no_leak(objs, lambda: lane.arm([known], up, client, 0, 16, 1), TypeError)
    no_leak(objs, lambda: lane.arm(known, up, client, -1, 16, 1), ValueError)
    no_leak(objs, lambda: lane.arm(known, up, client, 0, 0, 1), ValueError)
    no_leak(objs, lambda: lane.arm(known, up, client, 0, 16, 1, link), TypeError)
    no_leak(objs, lambda: lane.arm(known, up, client, 0, 16, 1, None, owner), TypeError)
    lane.arm(known, up, client, 0, 16, 1 << 20)
    no_leak(objs, lambda: lane.arm(known, up, client, 0, 16, 1), RuntimeError)
    no_leak(objs, lambda: lane.arm(known, up, client, 0, 16, 1, link, owner), RuntimeError)
    lane.disarm()
    before = counts(objs)
    for _ in range(ROUNDS):   # arm + disarm, on a link and not: balanced
        lane.arm(known, up, client, 0, 16, 1 << 20, link, owner)
        lane.disarm()
        lane.arm(known, up, client, 0, 16, 1 << 20)
        lane.disarm()
    assert counts(objs) == before


def test_lane_client_data_failures_leak_nothing():
    data = cmd("GET", "k:1") + cmd("PING")
    # the upstream write raises
    lane = _lane.Lane(list().append, list().append)
    known = dict(KNOWN)
    lane.arm(known, _raise, [].append, 0, 16, 1 << 20)
    no_leak([data, known, lane], lambda: lane.client_data(data), OSError)
    # a match callable raises (the key object made for it must go too)
    match_fails = {b"GET": entry(2, 2, 1, (), (), lambda k: 1 / 0)}
    lane = _lane.Lane(list().append, list().append)
    lane.arm(match_fails, [].append, [].append, 0, 16, 1 << 20)
    no_leak([data, match_fails, lane], lambda: lane.client_data(data), ZeroDivisionError)
    # the slow path raises (disarmed: everything goes there)
    lane = _lane.Lane(_raise, _raise)
    no_leak([data, lane], lambda: lane.client_data(data), OSError)
    # EVALSHA (a SCRIPT verdict) that fits its learnt form: the upstream write raises
    sha, queue = b"a" * 40, b"default"
    verdict = _lane.Verdict.script(spec=None, fewest=3, most=1 << 62, counter=_lane.Counter(),
                                   tag=b"q:{")
    form = _lane.ScriptForm(numkeys=b"1", need=5)
    form.prefix(3, b"q:{default}:t:")
    verdict.learn(sha, queue, form)
    script = {b"EVALSHA": verdict}
    call = cmd("EVALSHA", sha, "1", "q:{default}:t:1", "x")
    lane = _lane.Lane(list().append, list().append)
    lane.arm(script, _raise, [].append, 0, 16, 1 << 20)
    no_leak([call, verdict, form, script, lane], lambda: lane.client_data(call), OSError)


def test_verdict_and_script_form_constructors_that_fail_leak_nothing():
    """Every argument is checked before a Verdict or ScriptForm takes a reference."""
    spec, c, prefixes, exact, match = object(), _lane.Counter(), (b"k:",), frozenset({b"e"}), len
    objs = [spec, c, prefixes, exact, match]
    V = _lane.Verdict
    no_leak(objs, lambda: V.allow(spec=spec, fewest=0, most=1, counter=c), ValueError)
    no_leak(objs, lambda: V.allow(spec=spec, fewest=2, most=1, counter=c), ValueError)
    no_leak(objs, lambda: V.ask(spec=spec, fewest=1, most=1, counter=object()), TypeError)
    no_leak(objs, lambda: V.allow(spec=spec, fewest=1, counter=c), TypeError)
    no_leak(objs, lambda: V.one_key(spec=spec, fewest=2, most=2, pos=1, prefixes=[b"k:"],
                                    exact=exact, match=match, counter=c), TypeError)
    no_leak(objs, lambda: V.one_key(spec=spec, fewest=2, most=2, pos=1, prefixes=("k:",),
                                    exact=exact, match=match, counter=c), TypeError)
    no_leak(objs, lambda: V.one_key(spec=spec, fewest=2, most=2, pos=1, prefixes=prefixes,
                                    exact={b"e"}, match=match, counter=c), TypeError)
    no_leak(objs, lambda: V.one_key(spec=spec, fewest=2, most=2, pos=1, prefixes=prefixes,
                                    exact=exact, match=1, counter=c), TypeError)
    no_leak(objs, lambda: V.one_key(spec=spec, fewest=2, most=2, pos=2, prefixes=prefixes,
                                    exact=exact, match=match, counter=c), ValueError)
    no_leak(objs, lambda: V.one_key(spec=spec, fewest=2, most=2, pos=1, prefixes=prefixes,
                                    exact=exact, match=match, counter=None), TypeError)
    no_leak(objs, lambda: V.script(spec=spec, fewest=3, most=9, counter=c, tag=b""), ValueError)
    no_leak(objs, lambda: V.script(spec=spec, fewest=3, most=9, counter=c, tag="q:{"), TypeError)
    with pytest.raises(TypeError):
        V()   # (only its named constructors make one)
    # learn/knows: wrong kind of verdict, wrong types, an empty queue
    one = V.one_key(spec=spec, fewest=2, most=2, pos=1, prefixes=prefixes, exact=exact,
                    match=match, counter=c)
    script = V.script(spec=spec, fewest=3, most=9, counter=c, tag=b"q:{")
    form = _lane.ScriptForm(numkeys=b"1", need=5)
    sha, queue = b"a" * 40, b"default"
    objs = [one, script, form, sha, queue]
    no_leak(objs, lambda: one.learn(sha, queue, form), TypeError)
    no_leak(objs, lambda: one.knows(sha, queue), TypeError)
    no_leak(objs, lambda: script.learn(sha, "default", form), TypeError)
    no_leak(objs, lambda: script.learn(sha, queue, (b"1", 5, ())), TypeError)
    no_leak(objs, lambda: script.learn(sha, b"", form), ValueError)
    no_leak(objs, lambda: script.knows("a", queue), TypeError)
    assert script.knows(sha, queue) is False
    # ScriptForm: its constructor and each check's arguments
    numkeys, value, values = b"1", b"q:{default}:pending", (b"a", b"b")
    objs = [form, numkeys, value, values]
    no_leak(objs, lambda: _lane.ScriptForm(numkeys="1", need=5), TypeError)
    no_leak(objs, lambda: _lane.ScriptForm(numkeys=numkeys, need=65), ValueError)
    no_leak(objs, lambda: form.exact(0, value), ValueError)
    no_leak(objs, lambda: form.exact(64, value), ValueError)
    no_leak(objs, lambda: form.exact(3, "text"), TypeError)
    no_leak(objs, lambda: form.one_of(3, ()), TypeError)
    no_leak(objs, lambda: form.one_of(3, (b"a", "b")), TypeError)
    no_leak(objs, lambda: form.one_of(3, list(values)), TypeError)
    assert form.checks == 0
    for i in range(64):   # (the most checks a form holds)
        form.exact(1 + i % 63, value)
    no_leak(objs, lambda: form.date(3, value), ValueError)
    script.learn(sha, queue, form)
    assert script.knows(sha, queue) is True
    no_leak(objs, lambda: form.prefix(3, value), RuntimeError)   # (learnt: frozen)


def test_shared_lane_failures_leak_nothing():
    data = cmd("GET", "k:1")

    def armed(link):
        owner = Owner()
        lane = _lane.Lane(list().append, list().append)
        lane.arm(dict(KNOWN), None, [].append, 0, 16, 1 << 20, link.state, owner)
        return lane, owner

    # an idle link whose transport's write raises
    link = Link(write=_raise)
    lane, owner = armed(link)

    def idle_write():
        link.state.due = 0   # (the failed write left the books saying the command went)
        link.state.forget()
        lane.client_data(data)
    no_leak([data, link.state, owner, lane], idle_write, OSError)
    # a busy link (the turn's first queued bytes) whose after_send raises
    link = Link(after_send=_raise)
    lane, owner = armed(link)
    link.state.due = 1

    def busy():
        link.state.out.clear()
        lane.client_data(data)
    no_leak([data, link.state, owner, lane], busy, OSError)
    # a link that is not ready, likewise
    link.state.ready = False
    no_leak([data, link.state, owner, lane], busy, OSError)


def test_link_state_failures_leak_nothing():
    no_leak([_raise], lambda: _lane.LinkState(1), TypeError)
    no_leak([], lambda: _lane.LinkState(), TypeError)
    link, owner, data, text = Link(), Owner(), b"+x", "text"
    st = link.state
    lane = _lane.Lane(list().append, list().append)
    objs = [st, owner, data, text, lane]
    no_leak(objs, lambda: st.sent(owner, 1, text), TypeError)           # not a Lane
    no_leak(objs, lambda: st.sent(owner, "1"), TypeError)
    no_leak(objs, lambda: st.send(owner, text, 1), TypeError)           # not bytes
    no_leak(objs, lambda: st.send(owner, data, 1, text), TypeError)
    no_leak(objs, lambda: st.send(owner, data, -1), ValueError)
    no_leak(objs, lambda: st.put_first(owner, 0), ValueError)
    no_leak(objs, lambda: st.took(1), ValueError)                       # nothing is due
    no_leak(objs, lambda: st.attach(owner, None), TypeError)
    no_leak(objs, lambda: st.attach(None, text.upper), TypeError)
    no_leak(objs, lambda: st.attach(owner, text), TypeError)            # not callable
    no_leak(objs, lambda: setattr(st, "ready", 1), TypeError)
    no_leak(objs, lambda: setattr(st, "clean", None), TypeError)
    no_leak(objs, lambda: delattr(st, "due"), AttributeError)
    # too many replies due
    st.sent(owner, sys.maxsize - 1, lane)
    no_leak(objs, lambda: st.sent(owner, 2, lane), OverflowError)
    no_leak(objs, lambda: st.put_first(owner, 2), ValueError)
    st.due = sys.maxsize - 1
    no_leak(objs, lambda: st.send(owner, data, 2, lane), OverflowError)
    assert st.forget() == [owner] and st.pending == 0
    # a flush whose write raises, or whose queue holds what is not bytes
    st.due = 0
    link = Link(write=_raise)
    st = link.state

    def flush():
        st.out[:] = [data, data]
        st.flush()
    no_leak([st, data], flush, OSError)
    st.out[:] = [data, text]
    no_leak([st, data, text], st.flush, TypeError)
    # successful calls are balanced too
    st = Link(write=lambda data: None).state
    before = counts([st, owner, data, lane])
    for _ in range(ROUNDS):
        st.send(owner, data, 2, lane)
        st.put_first(text, 1)
        assert st.took(1) == 0 and st.took(1) == 1
        st.flush()
        st.forget()
        st.due = 0
    assert counts([st, owner, data, lane]) == before


def test_lane_upstream_data_failures_leak_nothing():
    data = b"+OK\r\n"
    lane = _lane.Lane(list().append, list().append)
    lane.arm(dict(KNOWN), [].append, _raise, 1 << 40, 16, 1 << 20)
    no_leak([data, lane], lambda: lane.upstream_data(data), OSError)
    lane = _lane.Lane(_raise, _raise)
    no_leak([data, lane], lambda: lane.upstream_data(data), OSError)


def test_router_failures_leak_nothing():
    slow, conn = [].append, object()
    for link in (object(), Link()):   # (the link's books, not the link)
        no_leak([link, conn, slow], lambda: _lane.Router(link, conn, slow), TypeError)
    link = Link()
    no_leak([link.state, conn], lambda: _lane.Router(link.state, conn, 1), TypeError)
    # the slow path raises
    link = Link()
    router = _lane.Router(link.state, link, _raise)
    data = b"+OK\r\n"
    no_leak([data, link.state, router], lambda: router.data_received(data), OSError)
    # the owner's client write raises
    link, owner = Link(), Owner()
    lane = _lane.Lane(list().append, list().append)
    lane.arm(dict(KNOWN), None, _raise, 1 << 40, 16, 1 << 20, link.state, owner)
    router = _lane.Router(link.state, link, list().append)

    def once():
        link.state.forget()
        link.state.sent(owner, 1, lane)
        link.state.due = 1
        router.data_received(data)
    no_leak([data, link.state, owner, lane, router], once, OSError)


def test_speedups_failures_leak_nothing():
    buf, text = b"*1\r\n$4\r\nPING\r\n", "*1\r\n$4\r\nPING\r\n"
    for fn in (_speedups.scan, _speedups.pending):
        no_leak([buf, text], lambda: fn(text, 0, 16, 1 << 20), TypeError)
        no_leak([buf], lambda: fn(buf, "0", 16, 1 << 20), TypeError)
        no_leak([buf], lambda: fn(buf, 1 << 70, 16, 1 << 20), OverflowError)
    no_leak([buf, text], lambda: _speedups.count_flat(text, 1, 0), TypeError)
    no_leak([buf], lambda: _speedups.count_flat(buf, 1), TypeError)
    no_leak([buf, text], lambda: _speedups.count_replies(text, 1), TypeError)
    no_leak([buf], lambda: _speedups.count_replies(buf, None), TypeError)
    # and their successful calls are balanced too
    before = counts([buf])
    for _ in range(ROUNDS):
        _speedups.scan(buf, 0, 16, 1 << 20)
        _speedups.pending(buf, 0, 16, 1 << 20)
        _speedups.count_flat(buf, 1, 0)
        _speedups.count_replies(buf, 1)
    assert counts([buf]) == before


@pytest.mark.parametrize("size", [0, 1, 5, 1024])
def test_count_flat_stops_at_a_bulk_shorter_than_its_header_says(size):
    # flat_end compares lengths, not pointers past the end (the sanitizer run checks the rest)
    whole = b"$%d\r\n%s\r\n" % (size, b"x" * size)
    for cut in range(len(whole)):
        assert _speedups.count_flat(whole[:cut], 1, 0) == (0, 0)
    assert _speedups.count_flat(whole, 1, 0) == (1, len(whole))


# ---------------------------------------------------------------- metrics kept in C (issue 17)

def counted(fewest, most, pos, prefixes=(), counter=None):
    """A memo entry with the _lane.Counter the lane adds to."""
    return entry(fewest, most, pos, prefixes, counter=counter)


def test_counter_failures_leak_nothing():
    c = _lane.Counter()
    big, neg, text = 1 << 64, -1, "1"
    no_leak([c, big], lambda: c.add(big), OverflowError)
    no_leak([c, neg], lambda: c.add(neg), OverflowError)
    no_leak([c, text], lambda: c.add(text), TypeError)
    no_leak([text], lambda: _lane.Counter(text), TypeError)
    assert c.value == 0
    c.add(5)
    assert c.value == 5


def test_counted_requests_that_fail_half_way_leak_no_counter_and_count_nothing():
    """The lane holds a reference to each counter of a read until it forwards the read whole
    (then adds) or gives it up (slow path, error, too many names): every way out drops them."""
    get_c, ping_c = _lane.Counter(), _lane.Counter()
    data = cmd("GET", "k:1") + cmd("PING")
    # the upstream write raises: the read was forwarded (counted), the error is the write's
    lane = _lane.Lane(list().append, list().append)
    known = {b"GET": counted(2, 2, 1, (b"k:",), get_c), b"PING": counted(1, 2, NO_KEY, (), ping_c)}
    lane.arm(known, _raise, [].append, 0, 16, 1 << 20)
    no_leak([data, known, lane, get_c, ping_c], lambda: lane.client_data(data), OSError)
    assert get_c.value == ping_c.value == ROUNDS + 3
    # a later request's match callable raises: nothing counted for the earlier ones
    get_c, ping_c = _lane.Counter(), _lane.Counter()
    fails = {b"PING": counted(1, 2, NO_KEY, (), ping_c),
             b"GET": entry(2, 2, 1, match=lambda k: 1 / 0, counter=get_c)}
    lane = _lane.Lane(list().append, list().append)
    lane.arm(fails, [].append, [].append, 0, 16, 1 << 20)
    both = cmd("PING") + cmd("GET", "x")
    no_leak([both, fails, lane, get_c, ping_c], lambda: lane.client_data(both), ZeroDivisionError)
    assert get_c.value == ping_c.value == 0
    # given up (an unknown name after counted ones): the slow path raises, nothing counted
    lane = _lane.Lane(_raise, _raise)
    lane.arm(known, [].append, [].append, 0, 16, 1 << 20)
    more = cmd("PING") + cmd("GET", "k:1") + cmd("NOPE")
    before = (get_c.value, ping_c.value)
    no_leak([more, known, lane, get_c, ping_c], lambda: lane.client_data(more), OSError)
    assert (get_c.value, ping_c.value) == before


def test_more_names_in_a_read_than_the_lane_tallies_go_to_python_and_leak_nothing():
    counters = [_lane.Counter() for _ in range(17)]
    known = {b"C%d" % i: counted(1, 1, NO_KEY, (), c) for i, c in enumerate(counters)}
    lane = _lane.Lane(_raise, _raise)
    lane.arm(known, [].append, [].append, 0, 16, 1 << 20)
    seventeen = b"".join(cmd("C%d" % i) for i in range(17))
    no_leak([seventeen, known, lane, *counters], lambda: lane.client_data(seventeen), OSError)
    assert all(c.value == 0 for c in counters)
    sixteen = b"".join(cmd("C%d" % i) for i in range(16)) * 2
    lane.client_data(sixteen)
    assert [c.value for c in counters] == [2] * 16 + [0]
    # an entry that is no Verdict: the lane gives up on it
    odd = {b"PING": (None, 1, 1, -1, (), (), None, "not a counter")}
    lane = _lane.Lane(_raise, _raise)
    lane.arm(odd, [].append, [].append, 0, 16, 1 << 20)
    ping = cmd("PING")
    no_leak([ping, odd, lane], lambda: lane.client_data(ping), OSError)


def test_stats_is_a_fresh_snapshot():
    before = _lane.stats()
    assert set(before) == {"bytes_in", "bytes_out", "reads", "latency_buckets", "latency_count",
                           "latency_sum_ns"}
    assert len(before["latency_buckets"]) == len(_lane.LATENCY_BOUNDS_NS) + 1
    objs = [before["latency_buckets"]]
    c = counts(objs)
    for _ in range(ROUNDS):
        _lane.stats()
    assert counts(objs) == c
