"""Fuzzing resp.py with hypothesis.

The invariant, as in h11's fuzz harness: any input, fed whole, byte by byte or in random
pieces, either parses to the same requests or raises the same ProtocolError, never anything
else. Likewise for the reply scanner and UpstreamProtocolError.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redisgate.protocol import resp
from redisgate.protocol.resp import (ProtocolError, ReplyScanner, RequestParser,
                                     UpstreamProtocolError, encode_command)

# Every test here runs with the C scan and with its Python twin (conftest.both_scans).
pytestmark = pytest.mark.usefixtures("both_scans")

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Small limits so that random inputs reach every limit check.
LIMITS = dict(max_bulk=64, max_args=8, max_inline=48)


def outcome(chunks, authenticated=True, **limits):
    parser = RequestParser(authenticated=authenticated, **limits)
    requests = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while batch := parser.drain():
                if not authenticated:
                    parser.set_authenticated(True)   # as if the first command was AUTH
                requests += batch
    except ProtocolError as e:
        return requests, e.reply
    return requests, None


def pieces(data, sizes):
    out, i = [], 0
    for size in sizes:
        out.append(data[i:i + size])
        i += size
    out.append(data[i:])
    return out


def check_request_invariant(data, sizes, authenticated, **limits):
    whole = outcome([data], authenticated, **limits)
    assert outcome([data[i:i + 1] for i in range(len(data))], authenticated, **limits) == whole
    assert outcome(pieces(data, sizes), authenticated, **limits) == whole
    requests, reply = whole
    for r in requests:
        assert all(type(a) is bytes for a in r.args) and r.args
        if r.raw is not None:
            assert r.raw == encode_command(r.args)
    if reply is not None:
        assert reply.startswith(b"-ERR Protocol error: ") and reply.endswith(b"\r\n")


SIZES = st.lists(st.integers(1, 40), max_size=20)
RESPISH = st.lists(st.sampled_from([b"*", b"$", b"\r\n", b"\r", b"\n", b"1", b"0", b"-", b"3",
                                    b"10", b"\x00", b" ", b'"', b"'", b"\\", b"x", b"a", b"+",
                                    b":", b"\t"]), max_size=60).map(b"".join)


@FUZZ
@given(st.binary(max_size=200), SIZES, st.booleans())
def test_arbitrary_bytes_parse_the_same_however_fed(data, sizes, authenticated):
    check_request_invariant(data, sizes, authenticated, **LIMITS)


@FUZZ
@given(RESPISH, SIZES, st.booleans())
def test_resp_like_bytes_parse_the_same_however_fed(data, sizes, authenticated):
    check_request_invariant(data, sizes, authenticated, **LIMITS)


ARGS = st.lists(st.binary(max_size=70), min_size=1, max_size=10)


@st.composite
def mutated_commands(draw):
    """Valid pipelines with a few random byte edits: inputs near the valid ones."""
    data = bytearray(b"".join(encode_command(a) for a in draw(st.lists(ARGS, max_size=4))))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from([b"\r", b"\n", b"$", b"*", b"0", b"9", b"\x00", b"x"]))
        if op == "insert":
            data[i:i] = byte
        elif i < len(data):
            data[i:i + 1] = b"" if op == "delete" else byte
    return bytes(data)


@FUZZ
@given(mutated_commands(), SIZES, st.booleans())
def test_mutated_commands_parse_the_same_however_fed(data, sizes, authenticated):
    check_request_invariant(data, sizes, authenticated, **LIMITS)


@FUZZ
@given(mutated_commands(), SIZES)
def test_mutated_commands_parse_the_same_with_default_limits(data, sizes):
    check_request_invariant(data, sizes, True)


@FUZZ
@given(st.lists(ARGS, min_size=1, max_size=5), SIZES)
def test_encode_command_round_trips(commands, sizes):
    data = b"".join(encode_command(a) for a in commands)
    requests, reply = outcome(pieces(data, sizes))
    assert reply is None
    assert [r.args for r in requests] == commands
    assert [r.raw for r in requests] == [encode_command(a) for a in commands]


INLINE_TOKEN = st.binary(min_size=1, max_size=12).filter(
    lambda b: not any(c in b for c in b" \t\r\n\v\f\x00\"'"))


@FUZZ
@given(st.lists(st.lists(INLINE_TOKEN, min_size=1, max_size=6)
                .filter(lambda c: not c[0].startswith(b"*")),   # that would be multibulk
                min_size=1, max_size=4))
def test_plain_inline_commands_split_on_spaces(commands):
    data = b"".join(b" ".join(c) + b"\r\n" for c in commands)
    requests, reply = outcome([data])
    assert reply is None and [r.args for r in requests] == commands
    assert all(r.raw is None for r in requests)


# --- the reply scanner -----------------------------------------------------------------------

LINE_TEXT = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
SCALARS = st.one_of(
    st.binary(max_size=50).map(lambda b: (resp.bulk(b), b"$")),
    LINE_TEXT.map(lambda b: (resp.simple(b), b"+")),
    LINE_TEXT.map(lambda b: (b"-" + b + b"\r\n", b"-")),
    st.integers(-2**63, 2**63 - 1).map(lambda n: (resp.integer(n), b":")),
    st.sampled_from([(b"_\r\n", b"_"), (b"$-1\r\n", b"$"), (b"*-1\r\n", b"*"),
                     (b"#t\r\n", b"#"), (b"#f\r\n", b"#"), (b",-inf\r\n", b","),
                     (b"(123456789012345678901234567890\r\n", b"(")]),
    st.floats(allow_nan=False).map(lambda f: (b",%r\r\n" % f, b",")),
    st.binary(max_size=30).map(lambda b: (b"!%d\r\n%b\r\n" % (len(b), b), b"!")),
    st.binary(max_size=30).map(lambda b: (resp.verbatim(b, True), b"=")),
)


def _aggregates(children):
    items = st.lists(children, max_size=4)
    pairs = st.lists(st.tuples(children, children), max_size=3)
    return st.one_of(
        items.map(lambda xs: (resp.array([x for x, _ in xs]), b"*")),
        items.map(lambda xs: (resp.set_([x for x, _ in xs], True), b"~")),
        items.map(lambda xs: (resp.push([x for x, _ in xs], True), b">")),
        pairs.map(lambda ps: (resp.map_([(k, v) for (k, _), (v, _) in ps], True), b"%")),
        # An attribute, then the value it annotates: the frame has the value's kind.
        st.tuples(pairs, children).map(
            lambda t: (b"|%d\r\n" % len(t[0]) + b"".join(k + v for (k, _), (v, _) in t[0])
                       + t[1][0], t[1][1])),
    )


VALUES = st.recursive(SCALARS, _aggregates, max_leaves=15)


def frames_of(chunks):
    scanner, frames, base = ReplyScanner(resp3=True), [], 0
    for chunk in chunks:
        frames += [(base + f.end, f.kind) for f in scanner.feed(chunk)]
        base += len(chunk)
    return frames, scanner.idle


@FUZZ
@given(st.lists(VALUES, min_size=1, max_size=5), SIZES)
def test_scanner_finds_each_encoded_reply_however_fed(values, sizes):
    data = b"".join(v for v, _ in values)
    expected, end = [], 0
    for value, kind in values:
        end += len(value)
        expected.append((end, kind))
    assert frames_of([data]) == (expected, True)
    assert frames_of(pieces(data, sizes)) == (expected, True)
    assert frames_of([data[i:i + 1] for i in range(len(data))]) == (expected, True)


def scan_outcome(chunks):
    try:
        return frames_of(chunks)
    except UpstreamProtocolError:
        return "error"


@FUZZ
@given(st.one_of(st.binary(max_size=120), RESPISH), SIZES)
def test_scanner_on_arbitrary_bytes_frames_or_raises_the_same_however_fed(data, sizes):
    whole = scan_outcome([data])
    assert scan_outcome([data[i:i + 1] for i in range(len(data))]) == whole
    assert scan_outcome(pieces(data, sizes)) == whole
