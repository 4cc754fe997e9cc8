"""resp.py: the strict request parser, the upstream reply scanner, the encoders.

Behaviour is checked byte-exact against Redis 7.0's networking.c, and the last tests compare
both the parser and the scanner with a real Redis 7 server.
"""
from __future__ import annotations

import socket
import tracemalloc

import pytest

from redisgate.protocol import resp
from redisgate.protocol.resp import (Frame, ProtocolError, ReplyScanner, Request, RequestParser,
                                     UpstreamProtocolError, encode_command)
from servers import RedisServer

# Every test here runs with the C scan and with its Python twin (conftest.both_scans).
pytestmark = pytest.mark.usefixtures("both_scans")

MiB = 1024 * 1024


def parse(chunks, **kw):
    """Feed `chunks`, draining as a server would; return (requests, error reply or None)."""
    kw.setdefault("authenticated", True)
    parser = RequestParser(**kw)
    requests = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while batch := parser.drain():
                requests += batch
    except ProtocolError as e:
        return requests, e.reply
    return requests, None


def whole(data, **kw):
    return parse([data], **kw)


def bytewise(data, **kw):
    return parse([data[i:i + 1] for i in range(len(data))], **kw)


def error_of(data, **kw):
    """The error reply for `data`, checking that byte-at-a-time feeding gives the same."""
    requests, reply = whole(data, **kw)
    assert bytewise(data, **kw) == (requests, reply)
    assert reply is not None, f"no error for {data!r}; parsed {requests}"
    return reply


def perr(condition):
    return b"-ERR Protocol error: " + condition + b"\r\n"


def args_of(requests):
    return [r.args for r in requests]


MIXED = (encode_command([b"SET", b"key", b"va\r\nlue"]) + b"PING\r\n" + b"*0\r\n"
         + encode_command([b"GET", b"x" * 2000]) + b"  echo 'a b' \"c\\x41\"\n" + b"\r\n"
         + encode_command([b"MSET"] + [b"k%d" % i for i in range(600)]) + b"*-1\r\n"
         + encode_command([b""]))


# --- multibulk requests ----------------------------------------------------------------------

def test_multibulk_request_parses_into_args_and_its_exact_raw_bytes():
    frame = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"
    assert whole(frame) == ([Request([b"SET", b"key", b"value"], frame)], None)


def test_pipelined_requests_come_out_in_order():
    cmds = [[b"GET", b"k%d" % i] for i in range(1000)]
    requests, err = whole(b"".join(encode_command(c) for c in cmds))
    assert err is None and args_of(requests) == cmds


def test_raw_equals_encode_command_of_args():
    requests, _ = whole(MIXED)
    for r in requests:
        if r.raw is not None:
            assert r.raw == encode_command(r.args)


def test_byte_at_a_time_feeding_gives_the_same_requests():
    assert bytewise(MIXED) == whole(MIXED)
    assert len(whole(MIXED)[0]) == 6


def test_any_split_into_two_reads_gives_the_same_requests():
    data = MIXED[:300]
    expected = whole(data)
    for i in range(len(data) + 1):
        assert parse([data[:i], data[i:]]) == expected, i


def test_payload_containing_crlf_parses():
    cmd = [b"SET", b"\r\n", b"a\r\nb\r\n$3\r\nfoo\r\n", b"\r"]
    assert args_of(whole(encode_command(cmd) * 3)[0]) == [cmd] * 3


def test_argument_longer_than_the_lookup_table_parses():
    cmd = [b"SET", b"k", b"v" * 100_000]
    assert args_of(whole(encode_command(cmd) * 2)[0]) == [cmd] * 2


def test_more_arguments_than_the_lookup_table_parse():
    cmd = [b"DEL"] + [b"%d" % i for i in range(5000)]
    assert args_of(whole(encode_command(cmd))[0]) == [cmd]


def test_next_returns_one_request_then_none_when_nothing_is_complete():
    parser = RequestParser(authenticated=True)
    parser.feed(encode_command([b"PING"]) * 2 + b"*1\r\n$4\r\nPI")
    assert parser.next().args == [b"PING"]
    assert parser.next().args == [b"PING"]
    assert parser.next() is None
    parser.feed(b"NG\r\n")
    assert parser.next() == Request([b"PING"], b"*1\r\n$4\r\nPING\r\n")


def test_star_zero_and_negative_counts_are_skipped_like_redis():
    requests, err = whole(b"*0\r\n*-1\r\n*-5\r\n" + encode_command([b"PING"]))
    assert err is None and args_of(requests) == [[b"PING"]]


def test_empty_argument_parses():
    assert args_of(whole(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n")[0]) == [[b"ECHO", b""]]


def test_feed_accepts_bytearray_and_memoryview():
    frame = encode_command([b"GET", b"k"])
    assert parse([bytearray(frame[:5]), memoryview(frame[5:])]) == whole(frame)


def test_buffered_counts_bytes_not_handed_out():
    parser = RequestParser(authenticated=True)
    parser.feed(encode_command([b"PING"]) + b"*2\r\n$3\r\nGET")
    assert parser.buffered == 14 + 11
    parser.drain()
    assert parser.buffered == 11


def test_small_reads_after_a_large_partial_request_parse():
    frame = encode_command([b"SET", b"k", b"x" * 5000, b"y" * 3000])
    chunks = [frame[:4000]] + [frame[i:i + 7] for i in range(4000, len(frame), 7)]
    assert parse(chunks + [frame]) == whole(frame * 2)


# --- protocol errors, each with Redis's exact text -------------------------------------------

@pytest.mark.parametrize("data", [b"*x\r\n", b"*+1\r\n", b"*01\r\n", b"* 1\r\n", b"*1 \r\n",
                                  b"*-0\r\n", b"*\r\n", b"*2147483648\r\n",
                                  b"*99999999999999999999\r\n"])
def test_malformed_count_is_invalid_multibulk_length(data):
    assert error_of(data) == perr(b"invalid multibulk length")


def test_count_above_max_args_is_invalid_multibulk_length():
    assert error_of(b"*1000000000\r\n") == perr(b"invalid multibulk length")
    assert error_of(b"*5\r\n", max_args=4) == perr(b"invalid multibulk length")


def test_count_line_ending_in_cr_without_lf_is_invalid_multibulk_length():
    # Redis skips whatever byte follows the CR; we refuse to guess.
    assert error_of(b"*1\rX$4\r\nPING\r\n") == perr(b"invalid multibulk length")


@pytest.mark.parametrize("data", [b"$-1\r\n", b"$01\r\n", b"$+1\r\n", b"$ 1\r\n", b"$1 \r\n",
                                  b"$-0\r\n", b"$\r\n", b"$x\r\n", b"$536870913\r\n"])
def test_malformed_bulk_length_is_invalid_bulk_length(data):
    assert error_of(b"*1\r\n" + data) == perr(b"invalid bulk length")


def test_bulk_above_max_bulk_is_invalid_bulk_length():
    assert error_of(b"*1\r\n$11\r\n", max_bulk=10) == perr(b"invalid bulk length")


def test_bulk_length_line_ending_in_cr_without_lf_is_invalid_bulk_length():
    assert error_of(b"*1\r\n$4\rXPING\r\n") == perr(b"invalid bulk length")


@pytest.mark.parametrize("after", [b"xy", b"\rx", b"\n\r", b"PING\r\n"])
def test_payload_not_followed_by_crlf_is_invalid_bulk_length(after):
    # Redis skips two bytes unseen; a wrong declared length must not desynchronise the stream.
    assert error_of(b"*1\r\n$4\r\nPING" + after) == perr(b"invalid bulk length")


@pytest.mark.parametrize("element, got", [(b":1\r\n", b":"), (b"*1\r\n", b"*"),
                                          (b"+OK\r\n", b"+"), (b"PING\r\n", b"P"),
                                          (b"\xff\r\n", b"\xff")])
def test_non_bulk_element_is_expected_dollar(element, got):
    reply = b"-ERR Protocol error: expected '$', got '" + got + b"'\r\n"
    assert error_of(b"*2\r\n$4\r\nECHO\r\n" + element) == reply


def test_expected_dollar_shows_cr_and_lf_as_spaces():
    assert error_of(b"*1\r\n\r\n") == b"-ERR Protocol error: expected '$', got ' '\r\n"
    assert error_of(b"*1\r\n\n\r\n") == b"-ERR Protocol error: expected '$', got ' '\r\n"


def test_count_line_without_cr_over_64k_is_too_big_mbulk_count_string():
    assert error_of(b"*" + b"1" * 65536) == perr(b"too big mbulk count string")
    assert whole(b"*" + b"1" * 65535) == ([], None)   # 64 KB exactly: still waiting, as Redis


def test_bulk_length_line_without_cr_over_64k_is_too_big_bulk_count_string():
    assert error_of(b"*1\r\n$" + b"1" * 65536) == perr(b"too big bulk count string")


def test_inline_line_over_64k_is_too_big_inline_request():
    assert error_of(b"A" * 65537) == perr(b"too big inline request")
    assert whole(b"A" * 65536) == ([], None)


def test_a_line_too_long_is_too_big_even_when_its_end_arrived_in_the_same_read():
    # As Redis reading byte by byte: the outcome never depends on how reads were split.
    assert error_of(b"GET " + b"A" * 65533 + b"\r\n") == perr(b"too big inline request")
    assert error_of(b"*" + b"1" * 65536 + b"\r\n") == perr(b"too big mbulk count string")


def test_line_limits_follow_max_inline():
    assert error_of(b"ECHO " + b"a" * 20, max_inline=16) == perr(b"too big inline request")
    assert args_of(whole(b"ECHO " + b"a" * 10 + b"\r\n", max_inline=16)[0]) == [[b"ECHO", b"a" * 10]]


def test_nul_before_line_end_hides_it_until_the_line_is_too_big():
    # Redis finds line ends with strchr(), which stops at a NUL: such a line never completes.
    for data, condition in ((b"PING\x00\r\n", b"too big inline request"),
                            (b"*1\x00\r\n", b"too big mbulk count string"),
                            (b"*1\r\n$4\x00\r\n", b"too big bulk count string")):
        assert whole(data) == ([], None)
        assert error_of(data + b"x" * 65536) == perr(condition)


def test_unbalanced_quotes_is_an_error():
    assert error_of(b"SET k \"abc\r\n") == perr(b"unbalanced quotes in request")
    assert error_of(b"SET k 'abc\r\n") == perr(b"unbalanced quotes in request")


def test_closing_quote_followed_by_a_non_space_is_unbalanced_quotes():
    assert error_of(b"ECHO \"a\"b\r\n") == perr(b"unbalanced quotes in request")


def test_requests_before_an_error_are_returned_then_the_error_is_raised():
    parser = RequestParser(authenticated=True)
    parser.feed(encode_command([b"PING"]) * 2 + b"*x\r\n")
    assert len(parser.drain()) == 2
    with pytest.raises(ProtocolError) as exc:
        parser.drain()
    assert exc.value.reply == perr(b"invalid multibulk length")


def test_parser_is_dead_after_an_error():
    parser = RequestParser(authenticated=True)
    parser.feed(b"*x\r\n")
    for call in (parser.drain, parser.next, lambda: parser.feed(encode_command([b"PING"]))):
        with pytest.raises(ProtocolError) as exc:
            call()
        assert exc.value.reply == perr(b"invalid multibulk length")


def test_protocol_error_message_is_its_text():
    assert str(ProtocolError("Protocol error: invalid bulk length")) == \
        "Protocol error: invalid bulk length"


# --- pre-authentication caps -------------------------------------------------------------------

def test_unauthenticated_more_than_10_args_is_unauthenticated_multibulk_length():
    assert error_of(b"*11\r\n", authenticated=False) == perr(b"unauthenticated multibulk length")


def test_unauthenticated_bulk_over_16384_is_unauthenticated_bulk_length():
    assert error_of(b"*1\r\n$16385\r\n", authenticated=False) == \
        perr(b"unauthenticated bulk length")


def test_unauthenticated_10_args_of_16384_bytes_are_allowed():
    cmd = [b"x" * 16384] * 10
    assert args_of(whole(encode_command(cmd), authenticated=False)[0]) == [cmd]


def test_parser_starts_unauthenticated():
    parser = RequestParser()
    parser.feed(b"*11\r\n")
    with pytest.raises(ProtocolError):
        parser.drain()


def test_invalid_count_beats_the_unauthenticated_cap_as_in_redis():
    assert error_of(b"*2147483648\r\n", authenticated=False) == perr(b"invalid multibulk length")
    assert error_of(b"*1\r\n$536870913\r\n", authenticated=False) == perr(b"invalid bulk length")


def test_unauthenticated_drain_hands_out_one_request_per_call():
    parser = RequestParser()
    parser.feed(encode_command([b"PING"]) * 3)
    assert [len(parser.drain()) for _ in range(4)] == [1, 1, 1, 0]


def test_authenticating_lifts_the_caps_for_the_next_pipelined_request():
    parser = RequestParser()
    big = encode_command([b"SET", b"k", b"v" * 100_000])
    parser.feed(encode_command([b"AUTH", b"user", b"pw"]) + big)
    assert parser.drain()[0].args[0] == b"AUTH"
    parser.set_authenticated(True)
    assert parser.drain() == [Request([b"SET", b"k", b"v" * 100_000], big)]


def test_inline_requests_have_no_preauth_caps():
    line = b"ECHO " + b" ".join([b"a" * 2000] * 20) + b"\r\n"
    assert len(whole(line, authenticated=False)[0][0].args) == 21


# --- bounded memory ----------------------------------------------------------------------------

def _peak_while(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_huge_declared_count_allocates_nothing():
    parser = RequestParser(authenticated=True, max_args=2**31 - 1)
    peak = _peak_while(lambda: (parser.feed(b"*2147483647\r\n$3\r\nGET\r\n"), parser.drain()))
    assert peak < 100_000 and parser.buffered == 22


def test_huge_declared_bulk_allocates_nothing():
    parser = RequestParser(authenticated=True)
    peak = _peak_while(lambda: (parser.feed(b"*1\r\n$536870912\r\nabc"), parser.drain()))
    assert peak < 100_000


def test_64mib_bulk_fed_in_64kib_chunks_parses():
    size = 64 * MiB
    frame = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%b\r\n" % (size, b"\xab" * size)
    view = memoryview(frame)
    (request,), err = parse(view[i:i + 65536] for i in range(0, len(frame), 65536))
    assert err is None and request.raw == frame
    assert len(request.args[2]) == size and view[-2 - size:-2] == request.args[2]


# --- inline requests ---------------------------------------------------------------------------

def test_inline_command_splits_on_whitespace_and_has_no_raw():
    assert whole(b"SET  key\tvalue \r\n") == ([Request([b"SET", b"key", b"value"], None)], None)


def test_inline_line_may_end_with_lf_alone():
    assert args_of(whole(b"PING\nPING\r\n")[0]) == [[b"PING"], [b"PING"]]


def test_empty_and_blank_inline_lines_are_skipped():
    assert args_of(whole(b"\r\n\n   \r\n\t\r\nPING\r\n")[0]) == [[b"PING"]]


def test_inline_double_quotes_take_escapes():
    line = b'ECHO "a b\\x41\\x4a\\n\\r\\t\\b\\a\\"\\\\\\q"\r\n'
    assert args_of(whole(line)[0]) == [[b"ECHO", b'a bAJ\n\r\t\x08\x07"\\q']]


def test_inline_bad_hex_escape_is_taken_literally():
    assert args_of(whole(b'ECHO "\\x4g"\r\n')[0]) == [[b"ECHO", b"x4g"]]


def test_inline_single_quotes_only_escape_a_single_quote():
    assert args_of(whole(b"ECHO 'a\\'b\\n'\r\n")[0]) == [[b"ECHO", b"a'b\\n"]]


def test_inline_quotes_join_the_surrounding_token():
    assert args_of(whole(b'ECHO ab"c d" \'\'\r\n')[0]) == [[b"ECHO", b"abc d", b""]]


def test_inline_vertical_tab_and_form_feed_are_part_of_a_token():
    # sdssplitargs skips them between tokens (isspace) but does not end a token on them.
    assert args_of(whole(b"ECHO a\vb\x0c \x0bc\r\n")[0]) == [[b"ECHO", b"a\vb\x0c", b"c"]]


def test_inline_line_starting_with_dollar_is_a_command_named_so():
    assert args_of(whole(b"$4\r\n")[0]) == [[b"$4"]]


# --- the upstream reply scanner ----------------------------------------------------------------

RESP2_SAMPLES = [
    (b"+OK\r\n", b"+", None),
    (b"-ERR unknown command 'x'\r\n", b"-", None),
    (b":-42\r\n", b":", None),
    (b"$5\r\nhello\r\n", b"$", None),
    (b"$0\r\n\r\n", b"$", None),
    (b"$-1\r\n", b"$", None),
    (b"*-1\r\n", b"*", None),
    (b"*0\r\n", b"*", None),
    (b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n", b"*", b"message"),
    (b"*2\r\n*1\r\n:1\r\n$3\r\nabc\r\n", b"*", None),
    (b"*2\r\n$33\r\n" + b"x" * 33 + b"\r\n:1\r\n", b"*", None),
    (b"*2\r\n+QUEUED\r\n$-1\r\n", b"*", b"QUEUED"),
    (b"*2\r\n$-1\r\n:1\r\n", b"*", None),
]

RESP3_SAMPLES = [
    (b"_\r\n", b"_", None),
    (b",3.14\r\n", b",", None),
    (b",-inf\r\n", b",", None),
    (b"#t\r\n", b"#", None),
    (b"#f\r\n", b"#", None),
    (b"(3492890328409238509324850943850943825024385\r\n", b"(", None),
    (b"!21\r\nSYNTAX invalid syntax\r\n", b"!", None),
    (b"=15\r\ntxt:Some string\r\n", b"=", None),
    (b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", b"%", None),
    (b"%1\r\n$1\r\nk\r\n%1\r\n+nested\r\n*2\r\n:1\r\n%0\r\n", b"%", None),
    (b"~3\r\n+a\r\n+b\r\n+c\r\n", b"~", None),
    (b"~0\r\n", b"~", None),
    (b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n", b">", b"subscribe"),
    (b">2\r\n+invalidate\r\n*1\r\n$3\r\nkey\r\n", b">", b"invalidate"),
    (b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n"
     b"*2\r\n:2039123\r\n:9543892\r\n", b"*", None),
    (b"*2\r\n|1\r\n+ttl\r\n:3600\r\n$7\r\nmessage\r\n:1\r\n", b"*", b"message"),
    (b"*3\r\n:1\r\n|1\r\n+a\r\n*1\r\n:2\r\n:3\r\n:4\r\n", b"*", None),
    (b"|0\r\n+OK\r\n", b"+", None),
]

SAMPLES = RESP2_SAMPLES + RESP3_SAMPLES
STREAM = b"".join(s for s, _, _ in SAMPLES)


def expected_frames():
    frames, end = [], 0
    for sample, kind, head in SAMPLES:
        end += len(sample)
        frames.append(Frame(end, kind, head))
    return frames


def scan(chunks, resp3=False):
    """Frames with `end` as offsets in the concatenated stream."""
    scanner, frames, base = ReplyScanner(resp3), [], 0
    for chunk in chunks:
        frames += [Frame(base + f.end, f.kind, f.head) for f in scanner.feed(chunk)]
        base += len(chunk)
    assert scanner.idle
    return frames


@pytest.mark.parametrize("sample, kind, head", SAMPLES)
def test_scanner_reports_one_frame_per_reply_with_kind_and_head(sample, kind, head):
    assert ReplyScanner(resp3=True).feed(sample) == [Frame(len(sample), kind, head)]


def test_scanner_reports_frames_of_a_pipelined_stream_in_order():
    assert scan([STREAM]) == expected_frames()


def test_scanner_gives_the_same_frames_for_any_split_into_two_feeds():
    expected = expected_frames()
    for i in range(len(STREAM) + 1):
        assert scan([STREAM[:i], STREAM[i:]]) == expected, i


def test_scanner_gives_the_same_frames_byte_at_a_time():
    assert scan([STREAM[i:i + 1] for i in range(len(STREAM))]) == expected_frames()


def test_scanner_attribute_alone_is_not_a_frame():
    scanner = ReplyScanner(resp3=True)
    assert scanner.feed(b"|1\r\n+a\r\n:1\r\n") == []
    assert scanner.feed(b":7\r\n") == [Frame(4, b":", None)]


def test_scanner_head_is_none_for_a_string_over_32_bytes():
    thirty_two = b"*1\r\n$32\r\n" + b"m" * 32 + b"\r\n"
    assert ReplyScanner().feed(thirty_two)[0].head == b"m" * 32
    assert ReplyScanner().feed(b"*1\r\n+" + b"s" * 33 + b"\r\n")[0].head is None


def test_scanner_head_of_a_bulk_split_across_feeds():
    data = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n"
    for i in range(len(data)):
        assert scan([data[:i], data[i:]])[0].head == b"message", i


def test_scanner_resp3_can_be_switched_at_runtime():
    scanner = ReplyScanner()
    assert scanner.feed(b"+OK\r\n") == [Frame(5, b"+", None)]
    scanner.resp3 = True
    assert scanner.feed(b"%1\r\n+a\r\n_\r\n") == [Frame(11, b"%", None)]


def test_scanner_64mib_bulk_in_many_feeds_keeps_no_payload():
    chunk = b"\0" * 65536
    scanner = ReplyScanner()

    def feed_all():
        assert scanner.feed(b"$%d\r\n" % (1024 * len(chunk))) == []
        for _ in range(1024):
            assert scanner.feed(chunk) == []
        assert scanner.feed(b"\r\n+OK\r\n") == [Frame(2, b"$", None), Frame(7, b"+", None)]

    assert _peak_while(feed_all) < 50_000


def test_scanner_long_simple_string_split_across_feeds_keeps_no_payload():
    line = b"+" + b"s" * 1_000_000 + b"\r\n"
    frames = scan([line[i:i + 1000] for i in range(0, len(line), 1000)])
    assert frames == [Frame(len(line), b"+", None)]


@pytest.mark.parametrize("data", [
    b"?1\r\n", b"x\r\n", b"\r\n", b"$abc\r\n", b"$-2\r\n", b"$01\r\n", b"*-2\r\n", b"%-1\r\n",
    b"!-1\r\n", b":1.5\r\n", b"_x\r\n", b"#x\r\n", b"$3\r\nabcd\r\n", b"$?\r\n", b"*?\r\n",
    b":" + b"1" * 100,
])
def test_scanner_rejects_malformed_replies(data):
    with pytest.raises(UpstreamProtocolError):
        ReplyScanner().feed(data)
    with pytest.raises(UpstreamProtocolError):
        scan([data[i:i + 1] for i in range(len(data))] + [b"\r\n"])


def test_scanner_is_dead_after_an_error():
    scanner = ReplyScanner()
    with pytest.raises(UpstreamProtocolError):
        scanner.feed(b"?\r\n")
    with pytest.raises(UpstreamProtocolError):
        scanner.feed(b"+OK\r\n")


# --- encoders ----------------------------------------------------------------------------------

def test_encode_command_is_canonical_multibulk():
    assert encode_command([b"SET", "ké", 12]) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$2\r\n12\r\n"


def test_encoded_command_parses_back_to_its_args_and_raw():
    cmd = [b"EVALSHA", b"a" * 40, b"1", b"asynq:{default}:pending", b"", b"\r\n\x00"]
    frame = encode_command(cmd)
    assert whole(frame) == ([Request(cmd, frame)], None)


@pytest.mark.parametrize("encoded, expected", [
    (resp.simple("OK"), b"+OK\r\n"),
    (resp.error("ERR unknown command"), b"-ERR unknown command\r\n"),
    (resp.error(b"ERR bad\r\narg\n"), b"-ERR bad  arg \r\n"),
    (resp.bulk(b"abc"), b"$3\r\nabc\r\n"),
    (resp.bulk(b""), b"$0\r\n\r\n"),
    (resp.bulk(None), b"$-1\r\n"),
    (resp.bulk(None, resp3=True), b"_\r\n"),
    (resp.integer(-7), b":-7\r\n"),
    (resp.array([resp.integer(1), resp.bulk(b"x")]), b"*2\r\n:1\r\n$1\r\nx\r\n"),
    (resp.array([]), b"*0\r\n"),
    (resp.map_([(resp.bulk(b"k"), resp.integer(1))], True), b"%1\r\n$1\r\nk\r\n:1\r\n"),
    (resp.map_([(resp.bulk(b"k"), resp.integer(1))], False), b"*2\r\n$1\r\nk\r\n:1\r\n"),
    (resp.set_([resp.bulk(b"a")], True), b"~1\r\n$1\r\na\r\n"),
    (resp.set_([resp.bulk(b"a")], False), b"*1\r\n$1\r\na\r\n"),
    (resp.push([resp.bulk(b"message")], True), b">1\r\n$7\r\nmessage\r\n"),
    (resp.push([resp.bulk(b"message")], False), b"*1\r\n$7\r\nmessage\r\n"),
    (resp.verbatim("hi", True), b"=6\r\ntxt:hi\r\n"),
    (resp.verbatim("hi", False), b"$2\r\nhi\r\n"),
])
def test_encoder_output_is_exact_and_one_frame(encoded, expected):
    assert encoded == expected
    assert [f.end for f in ReplyScanner(resp3=True).feed(encoded)] == [len(encoded)]


def test_simple_string_refuses_newlines():
    with pytest.raises(ValueError):
        resp.simple("OK\r\n+INJECTED")


# --- against a real Redis 7 ----------------------------------------------------------------------

def _exchange(port, data, expect_close):
    """Send `data` on a fresh connection; read until Redis closes it or `expect_close` is False
    and the reply to the trailing sentinel ECHO arrived."""
    sentinel = b"$12\r\nend-sentinel\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while not (not expect_close and received.endswith(sentinel)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


AUTH = encode_command([b"AUTH", b"gate", b"gate-upstream-secret"])
SENTINEL = encode_command([b"ECHO", b"end-sentinel"])

DIFFERENTIAL = [
    b"*1\r\n$4\r\nPING\r\nPING\r\n*0\r\n*-7\r\n\r\n  \r\n",
    b"ECHO \"a\\x41\\n\" 'b\\'c'\r\nECHO a\vb\r\n",
    b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n$4\r\nPING\r\n",
    b"*x\r\n", b"*+1\r\n", b"*01\r\n", b"*2147483648\r\n",
    b"*1\r\n$-1\r\n", b"*1\r\n$01\r\n", b"*1\r\n$536870913\r\n", b"*1\r\n$ 4\r\n",
    b"*1\r\n:1\r\n", b"*2\r\n*1\r\n", b"*1\r\n\r\n", b"*1\r\n\xff\r\n",
    b"ECHO \"unterminated\r\n", b"ECHO \"a\"b\r\n", b"ECHO 'a'b\r\n",
    b"*1\r\n$" + b"1" * 70000, b"*" + b"1" * 70000, b"PING" * 20000,
]


@pytest.mark.parametrize("stream", DIFFERENTIAL, ids=lambda s: repr(s[:24]))
def test_parser_agrees_with_redis7(redis7, stream):
    requests, reply = whole(stream)
    received = _exchange(redis7.port, AUTH + stream + (SENTINEL if reply is None else b""),
                         expect_close=reply is not None)
    frames = ReplyScanner().feed(received)
    assert received[:frames[0].end] == b"+OK\r\n"
    # One reply per request, then the sentinel's reply or the protocol error (and EOF).
    assert len(frames) == 1 + len(requests) + 1 and frames[-1].end == len(received)
    if reply is not None:
        assert received[frames[-2].end:] == reply


@pytest.mark.parametrize("stream", [b"*11\r\n", b"*1\r\n$16385\r\n"])
def test_preauth_caps_agree_with_redis7(redis7, stream):
    received = _exchange(redis7.port, stream, expect_close=True)
    assert received == whole(stream, authenticated=False)[1]


def _replies(port, commands, resp3):
    """Raw reply bytes of `commands` sent on one connection (after HELLO), sentinel-terminated."""
    hello = [b"HELLO", b"3" if resp3 else b"2", b"AUTH", b"gate", b"gate-upstream-secret"]
    data = b"".join(encode_command(c) for c in [hello] + commands) + SENTINEL
    return _exchange(port, data, expect_close=False)


COMMANDS = [
    [b"SET", b"s", b"v"], [b"GET", b"s"], [b"GET", b"missing"], [b"INCR", b"n"],
    [b"DEL", b"h", b"z", b"st"], [b"HSET", b"h", b"a", b"1", b"b", b"2"], [b"HGETALL", b"h"],
    [b"SADD", b"st", b"x", b"y"], [b"SMEMBERS", b"st"],
    [b"ZADD", b"z", b"1.5", b"m1", b"2", b"m2"], [b"ZRANGE", b"z", b"0", b"-1", b"WITHSCORES"],
    [b"ZSCORE", b"z", b"m1"], [b"EXISTS", b"s", b"h"], [b"LRANGE", b"nolist", b"0", b"-1"],
    [b"NOSUCHCOMMAND"], [b"CLIENT", b"INFO"], [b"COMMAND", b"INFO", b"get", b"evalsha"],
    [b"CONFIG", b"GET", b"maxmemory*"], [b"EVAL", b"return {1, {2, 'x'}, redis.pcall('x')}", b"0"],
    [b"MULTI"], [b"SET", b"s", b"w"], [b"GET", b"s"], [b"EXEC"],
    [b"SET", b"big", b"b" * 200_000], [b"GET", b"big"], [b"INFO", b"server"],
]


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
def test_scanner_finds_one_frame_per_command_from_redis7(redis7, resp3):
    received = _replies(redis7.port, COMMANDS, resp3)
    frames = scan([received], resp3)
    assert len(frames) == 1 + len(COMMANDS) + 1 and frames[-1].end == len(received)
    assert frames[0].kind == (b"%" if resp3 else b"*")
    assert scan([received[i:i + 7] for i in range(0, len(received), 7)], resp3) == frames


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
def test_scanner_heads_of_pubsub_replies_from_redis7(redis7, resp3):
    received = _replies(redis7.port, [[b"SUBSCRIBE", b"ch"], [b"PSUBSCRIBE", b"c*"],
                                      [b"PUBLISH", b"ch", b"hi"] if resp3 else [b"PING"],
                                      [b"UNSUBSCRIBE"], [b"PUNSUBSCRIBE"]], resp3)
    heads = [(f.kind, f.head) for f in scan([received], resp3)[1:]]
    kind = b">" if resp3 else b"*"
    if resp3:
        assert heads[:5] == [(kind, b"subscribe"), (kind, b"psubscribe"),
                             (kind, b"message"), (kind, b"pmessage"), (b":", None)]
        heads = heads[5:]
    else:
        assert heads[:3] == [(kind, b"subscribe"), (kind, b"psubscribe"), (kind, b"pong")]
        heads = heads[3:]
    assert heads == [(kind, b"unsubscribe"), (kind, b"punsubscribe"), (b"$", None)]


@pytest.fixture(scope="module")
def redis7_debug():
    """A Redis 7 that allows DEBUG PROTOCOL, which sends every RESP3 type."""
    server = RedisServer("7", extra=["--enable-debug-command", "yes"]).start()
    yield server
    server.stop()


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
def test_scanner_handles_every_type_debug_protocol_sends(redis7_debug, resp3):
    types = [b"string", b"integer", b"double", b"bignum", b"null", b"array", b"set", b"map",
             b"attrib", b"push", b"verbatim", b"true", b"false"]
    commands = [[b"HELLO", b"3" if resp3 else b"2"]] + [[b"DEBUG", b"PROTOCOL", t] for t in types]
    data = b"".join(encode_command(c) for c in commands) + SENTINEL
    received = _exchange(redis7_debug.port, data, expect_close=False)
    frames = scan([received], resp3)
    # DEBUG PROTOCOL push sends a push and then a reply: one frame more than commands.
    assert len(frames) == len(commands) + 1 + (1 if resp3 else 0)
    assert frames[-1].end == len(received)
    if resp3:
        kinds = [f.kind for f in frames[1:-1]]
        # attrib: |1 ... then a bulk; push: >2 ... then a bulk (debug.c).
        assert kinds == [b"$", b":", b",", b"(", b"_", b"*", b"~", b"%", b"$", b">", b"$",
                         b"=", b"#", b"#"]
    assert scan([received[i:i + 1] for i in range(len(received))], resp3) == frames
