"""resp.RequestParser.take_batch (the C scan and its Python twin) takes exactly what next() takes.

The shortcut's tests: see tests/shortcuts.py.
"""
from __future__ import annotations

from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redisgate.protocol import resp
from redisgate.protocol.resp import RequestParser, encode_command

from test_resp_fuzz import ARGS, SIZES, mutated_commands, pieces
from wire import cmd
from shortcuts import BOTH_SCANS, FUZZ

pytestmark = BOTH_SCANS


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
    # drain() is the production loop too (take_batch, else next): it checks Batch.requests()
    # against request(j); by_next, which never calls take_batch, is the reference.
    with patch.object(resp, "_WINDOW", window):   # the window split() looks at
        assert by_batches([data]) == by_drain([data]) == by_next([data])
        assert by_batches(pieces(data, sizes)) == by_drain(pieces(data, sizes)) \
            == by_next(pieces(data, sizes))


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
        from redisgate._native._speedups import scan
    except ImportError:
        pytest.skip("redisgate._native._speedups is not built here")
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
        from redisgate._native._speedups import scan
    except ImportError:
        pytest.skip("redisgate._native._speedups is not built here")
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
        from redisgate._native._speedups import scan
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
