"""The C lane's reply walker (_speedups.count_replies, _respscan.h) ends replies where feed() does.

The shortcut's tests: see tests/shortcuts.py.
"""
from __future__ import annotations

from itertools import accumulate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redisgate.protocol import resp
from redisgate.protocol.resp import ReplyScanner

from test_resp_fuzz import SIZES, VALUES
from shortcuts import BOTH_SCANS, FUZZ

pytestmark = BOTH_SCANS


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
        from redisgate._native._speedups import count_replies
    except ImportError:
        pytest.skip("redisgate._native._speedups is not built here")
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
        from redisgate._native._speedups import count_replies
    except ImportError:
        pytest.skip("redisgate._native._speedups is not built here")
    data = b"".join(replies)
    ends = list(accumulate(map(len, replies)))
    assert count_replies(data, most) == (min(most, len(ends)), ends[min(most, len(ends)) - 1])
    # A read that ends inside a reply: the whole ones before it.
    cut = min(sum(sizes), len(data) - 1)
    whole = [e for e in ends if e <= cut]
    assert count_replies(data[:cut], 99) == (len(whole), whole[-1] if whole else 0)
