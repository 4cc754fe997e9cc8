"""resp.ReplyScanner.count_flat (C and Python) counts exactly what feed() frames.

The shortcut's tests: see tests/shortcuts.py.
"""
from __future__ import annotations

from unittest.mock import patch

from hypothesis import given
from hypothesis import strategies as st

from redisgate.protocol import resp
from redisgate.protocol.resp import ReplyScanner

from test_resp_fuzz import SIZES, VALUES, pieces
from shortcuts import BOTH_SCANS, FUZZ

pytestmark = BOTH_SCANS


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
        from redisgate._native._speedups import count_flat
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
