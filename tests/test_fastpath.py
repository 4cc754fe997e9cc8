"""The hot path's shortcuts decide exactly what the general code decides.

Each shortcut (resp.RequestParser.take_batch, ReplyScanner.count_flat, rules.User's compiled
verdicts, scripts' compiled contracts, commands' `single_key` / `plain_keys` shapes, session's
inlined judging and reply pass-through) exists only for speed; these tests run random inputs
through the shortcut and through the general code and require the same bytes, frames and
verdicts. The general code itself is proven elsewhere (against real Redis where it matters).
"""
from __future__ import annotations

import random
from itertools import accumulate
from types import SimpleNamespace
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redisgate import resp, scripts
from redisgate.commands import TABLE, KeyExtractionError
from redisgate.config import build_config
from redisgate.gate import Gate
from redisgate.resp import ReplyScanner, RequestParser, encode_command
from redisgate.rules import ALLOW, OneKey, parse_user, RuleError
from redisgate.scripts import KNOWN_SCRIPTS, QueueKey, ScriptPolicy, check_contract
from redisgate.session import DROP, FWD, Session

from proxy import pw_hash
from test_resp_fuzz import ARGS, SIZES, VALUES, mutated_commands, pieces
from test_rules_oracle import _command, _rule_set
from wire import cmd

# Every test here runs with the C scan and with its Python twin (conftest.both_scans).
pytestmark = pytest.mark.usefixtures("both_scans")

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- resp: take_batch is drain() in one piece --------------------------------------------------

def by_drain(chunks):
    p = RequestParser(authenticated=True)
    got = []
    try:
        for c in chunks:
            p.feed(c)
            while reqs := p.drain():
                got += [(r.args, r.raw) for r in reqs]
    except Exception as e:   # noqa: BLE001 - the same error either way
        return got, type(e), getattr(e, "reply", None)
    return got, None, None


def by_batches(chunks):
    """As the session reads: take_batch() while it gives something, else next()."""
    p = RequestParser(authenticated=True)
    got = []
    try:
        for c in chunks:
            p.feed(c)
            while True:
                batch = p.take_batch()
                if batch is not None:
                    raws = [batch.request(j).raw for j in range(len(batch.args))]
                    assert batch.raw() == b"".join(raws)
                    for j0 in range(len(raws)):
                        for j1 in range(j0, len(raws) + 1):
                            assert batch.raw(j0, j1) == b"".join(raws[j0:j1])
                    got += list(zip(batch.args, raws))
                    assert batch.rest == p.buffered
                    continue
                req = p.next()
                if req is None:
                    break
                got.append((req.args, req.raw))
    except Exception as e:   # noqa: BLE001
        return got, type(e), getattr(e, "reply", None)
    return got, None, None


@FUZZ
@given(mutated_commands(), SIZES, st.sampled_from([8192, 7, 24, 64]))
def test_take_batch_gives_what_drain_gives(data, sizes, window):
    with patch.object(resp, "_WINDOW", window):   # the window split() looks at
        assert by_batches([data]) == by_drain([data])
        assert by_batches(pieces(data, sizes)) == by_drain(pieces(data, sizes))


def by_next(chunks):
    """The reference: next() alone (its `_fast` and `_careful` paths never use take_batch)."""
    p = RequestParser(authenticated=True)
    got = []
    try:
        for c in chunks:
            p.feed(c)
            while (req := p.next()) is not None:
                got.append((req.args, req.raw))
    except Exception as e:   # noqa: BLE001
        return got, type(e), getattr(e, "reply", None)
    return got, None, None


_FRAME_EDITS = [
    lambda f: f, lambda f: f, lambda f: f.replace(b"$1\r\nv", b"$2\r\nv", 1),
    lambda f: f.replace(b"\r\nv\r\n", b"\r\nv\r\n\r\n", 1), lambda f: f.replace(b"$", b"$0", 1),
    lambda f: f.replace(b"*3", b"*03", 1), lambda f: f.replace(b"k:", b"k\r\n", 1),
    lambda f: f.replace(b"$3\r\nSET", b"$3\r\nGET", 1), lambda f: f[:-3],
    lambda f: f.replace(b"$1\r\nv", b"$-1", 1), lambda f: f.replace(b"\r\n", b"\n", 1),
]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 999), st.sampled_from(range(len(_FRAME_EDITS)))),
                min_size=4, max_size=30), SIZES, st.sampled_from([8192, 64]))
def test_take_batch_of_homogeneous_pipelines_with_one_odd_frame(frames, sizes, window):
    # Batch.same's strided checks against next(): runs of SETs with the odd broken frame.
    data = b"".join(_FRAME_EDITS[e](cmd("SET", f"k:{i:03d}", "v")) for i, e in frames)
    with patch.object(resp, "_WINDOW", window):
        assert by_batches([data]) == by_next([data])
        assert by_batches(pieces(data, sizes)) == by_next(pieces(data, sizes))


@FUZZ
@given(st.lists(ARGS, min_size=1, max_size=8), SIZES)
def test_take_batch_of_valid_pipelines(commands, sizes):
    data = b"".join(encode_command(a) for a in commands)
    want = [(a, encode_command(a)) for a in commands]
    assert by_batches([data]) == (want, None, None)
    assert by_batches(pieces(data, sizes)) == (want, None, None)


def test_take_batch_of_a_whole_read_forwards_the_read_itself():
    data = cmd("SET", "k", "v") + cmd("GET", "k") + cmd("HSET", "h", "f", "v", "g", "w")
    p = RequestParser(authenticated=True)
    p.feed(data)
    batch = p.take_batch()
    assert [a[0] for a in batch.args] == [b"SET", b"GET", b"HSET"]
    assert batch.raw() is data and batch.rest == 0


def test_take_batch_stops_where_the_careful_path_must_take_over():
    big = b"x" * 2000    # a length beyond the lookup table
    data = cmd("GET", "a") + b"*0\r\n" + cmd("GET", "b") + cmd("SET", "c", big) + b"PING\r\n"
    p = RequestParser(authenticated=True)
    p.feed(data)
    assert p.take_batch().args == [[b"GET", b"a"]]
    assert p.take_batch() is None                 # "*0": drain() skips it
    assert [r.args for r in p.drain()] == [[b"GET", b"b"], [b"SET", b"c", big], [b"PING"]]


def test_take_batch_takes_values_beyond_the_lookup_tables():
    big = b"v" * 2000
    data = cmd("SET", "k", big) + cmd("GET", "k") + cmd("HSET", "h", "f", big)
    p = RequestParser(authenticated=True)
    p.feed(data)
    batch = p.take_batch()
    assert batch.args == [[b"SET", b"k", big], [b"GET", b"k"], [b"HSET", b"h", b"f", big]]
    assert batch.raw() is data and batch.raw(1, 2) == cmd("GET", "k")


def test_take_batch_leaves_requests_larger_than_its_window_to_next():
    # The Python scan only (the C scan skips payloads by length and has no window).
    huge = b"v" * 16384     # not searched for CRLF: next() skips it by its length
    data = cmd("GET", "a") * 3 + cmd("SET", "k", huge) + cmd("GET", "b") * 1000
    with patch.object(resp, "_c_scan", None):
        p = RequestParser(authenticated=True)
    p.feed(data)
    assert len(p.take_batch().args) == 3
    assert p.take_batch() is None
    assert p.next().args == [b"SET", b"k", huge]
    taken = []
    while (batch := p.take_batch()) is not None:
        taken += batch.args
        assert len(batch.raw()) <= 8192
    assert taken == [[b"GET", b"b"]] * 1000 and p.buffered == 0


def test_the_c_scan_takes_large_values_and_long_pipelines_in_one_batch():
    try:
        from redisgate._speedups import scan
    except ImportError:
        pytest.skip("redisgate._speedups is not built here")
    huge = b"v" * 16384
    data = cmd("GET", "a") * 3 + cmd("SET", "k", huge) + cmd("GET", "b") * 1000
    with patch.object(resp, "_c_scan", scan):
        p = RequestParser(authenticated=True)
    p.feed(data)
    batch = p.take_batch()
    assert batch.args[3] == [b"SET", b"k", huge] and len(batch.args) == 1004
    assert batch.raw() is data and batch.raw(3, 4) == cmd("SET", "k", huge) and p.buffered == 0


def test_the_c_scan_allocates_nothing_from_declared_sizes():
    # What a hostile client declares costs nothing until the bytes are there, and a number
    # beyond the limits (or beyond 64 bits) ends the scan: the careful parser answers it.
    try:
        from redisgate._speedups import scan
    except ImportError:
        pytest.skip("redisgate._speedups is not built here")
    for data in (b"*1048576\r\n$1\r\na\r\n", b"*1\r\n$536870912\r\nxx", b"*1048577\r\n",
                 b"*99999999999999999999999\r\n", b"*1\r\n$99999999999999999999999\r\n",
                 b"*1\r\n$-1\r\n", b"*-1\r\n", b"*0\r\n", b"*+1\r\n", b"*1 \r\n", b"*1\r",
                 b"*1\r\n$1\r\nab\r\n", b"*1\r\n$1\r\na\n\n", b"", b"*", b"$1\r\na\r\n"):
        assert scan(data, 0, 1 << 20, 512 << 20) is None, data
    assert scan(cmd("GET", "a"), 0, 1, 512) is None          # more arguments than max_args
    assert scan(cmd("GET", "abc"), 0, 2, 2) is None          # a bulk longer than max_bulk
    assert scan(cmd("GET", "a"), 99, 2, 2) is None and scan(cmd("GET", "a"), -1, 2, 2) is None


def test_limits_beyond_what_c_holds_are_no_limit():
    p = RequestParser(max_bulk=10**30, max_args=10**30, authenticated=True)
    p.feed(cmd("SET", "k", "v") + b"*1\r\n$99999999999999999999\r\n")
    assert p.take_batch().args == [[b"SET", b"k", b"v"]]
    try:
        p.next()
    except resp.ProtocolError as e:   # as Redis: the number does not fit a long long
        assert e.reply == b"-ERR Protocol error: invalid bulk length\r\n"
    else:
        raise AssertionError("a bulk length beyond 64 bits was accepted")


@FUZZ
@given(st.binary(max_size=300), st.integers(0, 40))
def test_the_c_scan_never_fails_on_any_bytes(data, pos):
    try:
        from redisgate._speedups import scan
    except ImportError:
        return
    found = scan(data, pos, 16, 64)
    if found is not None:
        args, ends, same, stop = found
        assert args and pos < stop <= len(data) and b"".join(map(encode_command, args)) == data[pos:stop]


def test_take_batch_waits_for_authentication_and_never_raises():
    p = RequestParser()
    p.feed(cmd("AUTH", "u", "p") + cmd("GET", "k"))
    assert p.take_batch() is None                 # before AUTH: one request at a time
    p = RequestParser(authenticated=True)
    p.feed(cmd("GET", "k") + b"*1\r\n$x\r\n")
    assert p.take_batch().args == [[b"GET", b"k"]]
    assert p.take_batch() is None
    assert p.buffered == 8


# --- resp: count_flat counts what feed() would frame --------------------------------------------

@FUZZ
@given(st.lists(VALUES, min_size=1, max_size=6), SIZES, st.integers(0, 8))
def test_count_flat_then_feed_frames_what_feed_frames(values, sizes, most):
    data = b"".join(v for v, _ in values)
    whole = [f.end for f in ReplyScanner().feed(data)]
    for chunks in ([data], pieces(data, sizes)):
        scanner, ends, base = ReplyScanner(), [], 0
        for chunk in chunks:
            taken, end = scanner.count_flat(chunk, most)
            assert taken == 0 or end > 0
            ends += whole[len(ends):len(ends) + taken]
            assert not taken or ends[-1] == base + end
            ends += [base + end + f.end for f in scanner.feed(chunk[end:])]
            base += len(chunk)
        assert ends == whole


@FUZZ
@given(VALUES, st.integers(2, 40), st.integers(0, 48), st.integers(0, 8))
def test_count_flat_counts_a_repeated_reply_as_feed_frames_it(value, times, most, cut):
    # The same reply `times` times, maybe followed by an incomplete copy (a read ending in it).
    tail = value[0][:min(cut, len(value[0]) - 1)]
    ends = [f.end for f in ReplyScanner().feed(value[0] * times)]
    taken, end = ReplyScanner().count_flat(value[0] * times + tail, most)
    assert taken <= min(most, times) and (not taken or ends[taken - 1] == end)
    flat = value[0][:1] == value[1] and (value[1] in (b"+", b"-", b":", b"_") or
                                         (value[1] == b"$" and len(value[0]) <= 1024))
    if flat and times <= most:
        assert (taken, end) == (times, ends[-1])
    if flat and most:
        # ...and a run of them that goes on past `most` (a shared link: other clients' replies).
        assert (taken, end) == (min(most, times), ends[min(most, times) - 1])


@FUZZ
@given(st.lists(VALUES, min_size=1, max_size=6), st.binary(max_size=12), st.integers(0, 8))
def test_count_flat_from_an_offset_is_count_flat_of_the_rest(values, before, most):
    data = b"".join(v for v, _ in values)
    taken, end = ReplyScanner().count_flat(data, most)
    assert ReplyScanner().count_flat(before + data, most, len(before)) == \
        (taken, end + len(before))


INTEGER_LINES = st.one_of(st.integers(0, 10**18).map(lambda i: b":%d\r\n" % i),
                         st.integers(-10**6, -1).map(lambda i: b":%d\r\n" % i),
                         st.sampled_from([b":007\r\n", b":\r\n", b":1x\r\n", b":1:2\r\n",
                                          b":99999999999999999999\r\n", b"+OK\r\n", b"$1\r\n:\r\n"]))


@FUZZ
@given(st.lists(INTEGER_LINES, min_size=1, max_size=30), st.integers(0, 40), st.integers(0, 30),
       st.booleans())
def test_count_flat_of_integer_runs_counts_what_feed_frames(lines, most, cut, offset):
    # LPUSH / INCR pipelines: a run of integers counted at once, with the odd line in it that is
    # not a valid integer reply (feed() raises there, or frames something else).
    body = b"".join(lines)
    body = body[:len(body) - cut]
    base = 4 if offset else 0
    data = b"+x\r\n" * offset + body
    taken, end = ReplyScanner().count_flat(data, most, base)
    ends, pos = [], 0
    for line in lines:    # the frames of the longest run of whole lines feed() takes
        if pos + len(line) > len(body):
            break
        try:
            ends = [base + f.end for f in ReplyScanner().feed(body[:pos + len(line)])]
        except Exception:   # noqa: BLE001 - not RESP from here on
            break
        pos += len(line)
    assert taken <= min(most, len(ends)) and (not taken or ends[taken - 1] == end)
    valid = all(line[:1] == b":" and line[1:-2].isdigit() and len(line) <= 21 and
                (line[1:2] != b"0" or line == b":0\r\n") for line in lines)
    if valid and not cut:
        assert (taken, end) == (min(most, len(lines)), ends[min(most, len(lines)) - 1] if most else base)


_REPLY_PIECES = [b"+OK\r\n", b"-ERR x\r\n", b":0\r\n", b":-0\r\n", b":01\r\n", b":-1\r\n",
                 b":9223372036854775807\r\n", b":9223372036854775808\r\n",
                 b":-9223372036854775808\r\n", b":-9223372036854775809\r\n", b":\r\n",
                 b":12345678901234567890\r\n", b"$-1\r\n", b"$0\r\n\r\n", b"$3\r\nabc\r\n",
                 b"$3\r\nab\r\r\n", b"$03\r\nabc\r\n", b"$1024\r\n" + b"v" * 1024 + b"\r\n",
                 b"$1025\r\n" + b"v" * 1025 + b"\r\n", b"+a\rb\r\n", b"+\r\r\n", b"*1\r\n",
                 b"_\r\n", b"\r\n", b"+x", b"$3\r\nab", b"-", b"$-2\r\n"]


@FUZZ
@given(st.lists(st.sampled_from(_REPLY_PIECES), max_size=12), st.integers(0, 14),
       st.integers(0, 5), st.binary(max_size=3))
def test_the_c_count_flat_counts_what_the_python_loop_counts(pieces_, most, start, junk):
    try:
        from redisgate._speedups import count_flat
    except ImportError:
        return
    data = junk[:start] + b"".join(pieces_)
    start = min(start, len(junk))
    with patch.object(resp, "_c_count_flat", None):
        want = ReplyScanner().count_flat(data, most, start)
    assert count_flat(data, most, start) == want


def test_count_flat_leaves_the_scanner_as_it_was():
    s = ReplyScanner()
    s.feed(b"*2\r\n$1\r\na\r\n")      # an array in progress: nothing is flat now
    state = repr(vars(s))
    assert s.count_flat(b"+OK\r\n", 5) == (0, 0) and repr(vars(s)) == state
    assert s.feed(b"+OK\r\n")[0].kind == b"*"
    state = repr(vars(s))
    assert s.count_flat(b"+OK\r\n:1\r\n", 5) == (2, 9) and repr(vars(s)) == state
    assert [f.end for f in s.feed(b"+OK\r\n:1\r\n")] == [5, 9]


def test_count_flat_stops_at_anything_but_flat_replies():
    s = ReplyScanner()
    data = b"+OK\r\n:12345678901\r\n$3\r\nabc\r\n$-1\r\n-ERR x\r\n*1\r\n$1\r\na\r\n"
    assert s.count_flat(data, 99) == (5, data.index(b"*1"))
    assert s.count_flat(b"$5\r\nab", 9) == (0, 0)
    assert s.count_flat(b":x\r\n", 9) == (0, 0)          # malformed: feed() raises for it


# --- _lane's reply walker (_speedups.count_replies) frames what feed() frames ------------------

def _c_ends(count_replies, data: bytes) -> list[int]:
    """Where each reply the C lane would pass ends, one at a time."""
    ends, pos = [], 0
    while True:
        n, end = count_replies(data[pos:], 1)
        if not n:
            return ends
        pos += end
        ends.append(pos)


def _framed(data: bytes):
    """feed()'s frames of data, whole: [(end, kind)], or None if it refuses the bytes."""
    try:
        return [(f.end, f.kind) for f in ReplyScanner(resp3=True).feed(data)]
    except resp.UpstreamProtocolError:
        return None


@FUZZ
@given(st.lists(VALUES, min_size=1, max_size=6), st.integers(0, 8), st.integers(0, 200),
       st.binary(max_size=3), st.integers(0, 2))
def test_the_lanes_replies_end_where_feed_ends_them(values, most, at, junk, how):
    try:
        from redisgate._speedups import count_replies
    except ImportError:
        pytest.skip("redisgate._speedups is not built here")
    data = b"".join(v for v, _ in values)
    if how:   # corrupt it: bytes inserted, or replaced
        at = min(at, len(data))
        data = data[:at] + junk + data[at + (len(junk) if how == 2 else 0):]
    ends = _c_ends(count_replies, data)
    n, end = count_replies(data, most)
    assert n == min(most, len(ends)) and end == (ends[n - 1] if n else 0)
    if ends:
        # What the lane passes, feed() frames the same way: whole replies, none of them a push.
        framed = _framed(data[:ends[-1]])
        assert framed is not None and [e for e, _ in framed] == ends
        assert all(kind != b">" for _, kind in framed)
    if not how and ends and len(ends) < len(values):
        # It stopped early only at a push, an attribute, a blob error or verbatim string, or
        # deep nesting.
        rest = data[ends[-1]:]
        assert any(c in rest for c in (b">", b"|", b"!", b"="))


_RESP_COMMON = st.recursive(
    st.one_of(st.binary(max_size=2000).map(resp.bulk), st.just(b"$-1\r\n"), st.just(b"*-1\r\n"),
              st.just(b"_\r\n"), st.just(b"#t\r\n"), st.just(b",1.5\r\n"),
              st.integers(-2**63, 2**63 - 1).map(resp.integer), st.just(b"+OK\r\n"),
              st.just(b"-ERR no\r\n")),
    lambda inner: st.one_of(st.lists(inner, max_size=4).map(resp.array),
                            st.lists(st.tuples(inner, inner), max_size=3).map(
                                lambda ps: resp.map_(ps, True))),
    max_leaves=12)


@FUZZ
@given(st.lists(_RESP_COMMON, min_size=1, max_size=8), st.integers(1, 9), SIZES)
def test_the_lane_passes_every_whole_reply_redis_sends_commands(replies, most, sizes):
    try:
        from redisgate._speedups import count_replies
    except ImportError:
        pytest.skip("redisgate._speedups is not built here")
    data = b"".join(replies)
    ends = list(accumulate(map(len, replies)))
    assert count_replies(data, most) == (min(most, len(ends)), ends[min(most, len(ends)) - 1])
    # A read that ends inside a reply: the whole ones before it.
    cut = min(sum(sizes), len(data) - 1)
    whole = [e for e in ends if e <= cut]
    assert count_replies(data[:cut], 99) == (len(whole), whole[-1] if whole else 0)


# --- commands: single_key shapes are what keys() returns ----------------------------------------

def test_single_key_shapes_match_key_extraction():
    rng = random.Random(7)
    pool = [b"k", b"GET", b"STORE", b"1", b"-1", b"x", b"BY", b"STREAMS"]
    checked = 0
    for spec in TABLE:
        shape = getattr(spec.keys, "single_key", None)
        if shape is None:
            continue
        pos, flags, most = shape.pos, shape.flags, shape.most
        for _ in range(20):
            n = rng.randint(pos + 1, min(most, pos + 8))
            args = [spec.name.encode()] + [rng.choice(pool) for _ in range(n - 1)]
            if not spec.check_arity(len(args)):
                continue
            assert spec.keys(args) == [(args[pos], flags)], (spec.name, args)
            checked += 1
    assert checked > 1000


# --- rules: the compiled verdicts are the walk's ------------------------------------------------

def outcome(fn, *a):
    try:
        d = fn(*a)
    except KeyExtractionError as e:
        return "raises", e.reply
    return None if d is None else (d.kind, d.object, d.reason, d.command, d.user)


def test_judge_shortcuts_agree_with_the_general_walk():
    rng = random.Random(20240601)
    judged = shortcut_allowed = 0
    for _ in range(400):
        try:
            user = parse_user("u", _rule_set(rng))
        except RuleError:
            continue
        for _ in range(40):
            args = _command(rng)
            spec = TABLE.lookup(args)
            fast = outcome(user.judge, spec, args, 0)
            assert fast == outcome(user._walk, spec, args, 0), (user.describe(), args)
            judged += 1
            short = user.verdict(spec)
            if short is ALLOW or (type(short) is OneKey and short.pos < len(args) <= short.most
                                  and (args[short.pos].startswith(short.prefixes)
                                       or args[short.pos] in short.exact
                                       or short.match(args[short.pos]))):
                shortcut_allowed += 1
                assert fast is None, (user.describe(), args)
    assert judged > 10000 and shortcut_allowed > 500


# --- scripts: compiled contracts say yes only where check_contract does -------------------------

def _key(shape, head: bytes, rng: random.Random) -> bytes:
    if isinstance(shape, QueueKey):
        suffix = rng.choice(shape.suffixes)
        tail = {None: b"", "any": b"t%d" % rng.randint(0, 99), "date": b"2024-05-31"}[shape.tail]
        return head + suffix + tail
    if isinstance(shape, scripts.TaggedKey):
        return shape.prefix + b"{h1}"
    if isinstance(shape, scripts.PrefixedKey):
        return shape.prefix + b"x"
    if isinstance(shape, scripts.ExactKey):
        return rng.choice(shape.names)
    return _key(rng.choice(shape.shapes), head, rng)   # AnyOf


def _valid_call(contract, q: bytes, rng: random.Random) -> list[bytes]:
    head = b"asynq:{" + q + b"}:"
    keys = [_key(shape, head, rng) for shape in contract.keys]
    need = max([p.index for p in contract.prefixes] + [contract.min_argv, 1])
    argv = [b"%d" % rng.randint(0, 9) for _ in range(need + rng.randint(0, 2))]
    for p in contract.prefixes:
        argv[p.index - 1] = head + p.suffix
    return [b"evalsha", contract.sha1.encode(), b"%d" % len(keys)] + keys + argv


def _mutate(args: list[bytes], rng: random.Random) -> list[bytes]:
    args = list(args)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(2, len(args))
        choice = rng.random()
        if choice < 0.3:
            args[i] = args[i].replace(b"default", rng.choice([b"other", b"", b"de}f"]))
        elif choice < 0.5:
            args[i] = args[i][:rng.randint(0, len(args[i]))]
        elif choice < 0.6:
            args[i] = rng.choice([b"02", b"x", b"-1", b"99"])
        elif choice < 0.7 and len(args) > 4:
            del args[rng.randrange(3, len(args))]
        elif choice < 0.8:
            args[i] = args[i] + rng.choice([b"x", b":", b"-13"])
        else:
            args[i] = args[i].upper()
    return args


def _random_call(contract, queues: list[bytes], rng: random.Random, mutate: float,
                 ro: float) -> list[bytes]:
    """A valid call of `contract` for one of `queues`, mutated with probability `mutate`, sent
    as EVALSHA_RO with probability `ro`."""
    args = _valid_call(contract, rng.choice(queues), rng)
    if rng.random() < mutate:
        args = _mutate(args, rng)
    if rng.random() < ro:
        args[0] = b"evalsha_ro"
    return args


def test_compiled_contracts_agree_with_check_contract():
    rng = random.Random(5)
    users = [parse_user("w", "on nopass ~asynq:{default}:* +@all"),
             parse_user("r", "on nopass %R~asynq:{default}:* +@all"),
             parse_user("a", "on nopass allkeys +@all"),
             SimpleNamespace(has_allkeys=False, check_key=lambda key, write=False: not write)]
    fast_yes = 0
    for contract in KNOWN_SCRIPTS.values():
        fast = scripts._FastContract.compile(contract)
        if fast is None:
            assert contract.variadic or any(
                type(s) is not QueueKey or (s.tail and len(s.suffixes) > 1) for s in contract.keys)
            continue
        for _ in range(60):
            q = rng.choice([b"default", b"default", b"critical", b"q:1"])
            args = _valid_call(contract, q, rng)
            if rng.random() < 0.6:
                args = _mutate(args, rng)
            for user in users:
                honoured = fast.honoured(args, user)
                if honoured:
                    fast_yes += 1
                    assert check_contract(contract, args, user) is None, (contract.name, args)
                elif args[2] == b"%d" % len(contract.keys) and \
                        check_contract(contract, args, user) is None:
                    # the fast shape covers every well-formed call with canonical numkeys
                    raise AssertionError((contract.name, args))
    assert fast_yes > 1000


def test_policy_fast_path_gives_the_general_paths_verdict():
    rng = random.Random(11)
    rules = "on nopass ~asynq:{default}:* ~asynq:{critical}:* -@all +evalsha +evalsha_ro +eval"
    user = parse_user("w", rules)
    user.scripts = ScriptPolicy(allowed_shas=list(KNOWN_SCRIPTS)[:40])
    bare = ScriptPolicy(allowed_shas=list(KNOWN_SCRIPTS)[:40])
    bare.by_sha = {}                              # the same policy without its fast path
    slow_user = parse_user("w", rules)            # User.judge's shortcut then finds no check
    slow_user.scripts = bare
    for contract in KNOWN_SCRIPTS.values():
        for _ in range(20):
            args = _random_call(contract, [b"default", b"critical", b"low"], rng, 0.5, 0.2)
            spec = TABLE.lookup(args)
            got = user.scripts.judge(user, spec, args)
            want = bare.judge(user, spec, args)
            assert (got is None) == (want is None) and (got is None or got == want), args
            if spec.check_arity(len(args)):
                assert user.judge(spec, args) == slow_user.judge(spec, args), args


def test_evalsha_key_coverage_memo_gives_the_general_paths_verdict():
    # User.judge lets a compiled contract vouch for an EVALSHA's KEYS (memoised per user, command
    # and queue). Read-only, write-only, partial and non-prefix patterns, EVALSHA and EVALSHA_RO
    # mixed on the same user objects: the verdicts are those of the policy without the shortcut.
    rng = random.Random(12)
    patterns = ["~asynq:{default}:*", "%R~asynq:{default}:*", "%W~asynq:{default}:*",
                "~asynq:{default}:t:* ~asynq:{default}:pending", "~asynq:{def*}:*",
                "%R~asynq:{default}:* %W~asynq:{default}:t:*", "~asynq:{critical}:* %R~asynq:*",
                "allkeys", "~asynq:{default}:active ~asynq:{default}:lease"]
    shas = list(KNOWN_SCRIPTS)
    allowed = 0
    for keys in patterns:
        rules = f"on nopass {keys} -@all +evalsha +evalsha_ro"
        user, slow_user = parse_user("w", rules), parse_user("w", rules)
        user.scripts = ScriptPolicy(allowed_shas=shas)
        slow_user.scripts = ScriptPolicy(allowed_shas=shas)
        slow_user.scripts.by_sha = {}
        for _ in range(600):
            contract = KNOWN_SCRIPTS[rng.choice(shas)]
            args = _random_call(contract, [b"default", b"default", b"critical"], rng, 0.2, 0.5)
            spec = TABLE.lookup(args)
            if not spec.check_arity(len(args)):
                continue
            got = outcome(user.judge, spec, args, 0)
            assert got == outcome(slow_user.judge, spec, args, 0), (keys, args)
            allowed += got is None
    assert allowed > 500


def test_profile_users_evalsha_keys_are_vouched_for_by_the_contract():
    # asynq-worker without `queues:` has glob patterns (~asynq:{*}:*), not plain prefixes: the
    # contract still vouches for every task key under asynq:{q}:t: (glob.covers_prefix), and
    # not for a user whose patterns leave some KEYS out.
    cfg = build_config({"upstream": {"address": "127.0.0.1:1"}, "users": {
        "w": {"rules": "on nopass", "profile": "asynq-worker"},
        "narrow": {"rules": "on nopass", "profile": "asynq-worker", "queues": ["critical"]}}})
    checked = 0
    for name, want in (("w", True), ("narrow", False)):
        user = cfg.users[name].user
        for contract in KNOWN_SCRIPTS.values():
            sha = contract.sha1.encode()
            fast = user.scripts.by_sha.get(sha)
            if fast is None or fast is True or contract.name != "dequeueCmd":
                continue
            args = _valid_call(contract, b"default", random.Random(1))
            spec = TABLE.lookup(args)
            assert fast.honoured(args, user, user.verdict(spec)) is want, (name, contract.sha1)
            assert (user.judge(spec, args) is None) is want
            checked += 1
    assert checked >= 2


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
    from redisgate.resp import RequestParser
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
