"""RESP, sans I/O: the strict client request parser, the upstream reply frame scanner, encoders.

This module contains no networking. Bytes go in (`RequestParser.feed`, `ReplyScanner.feed`),
parsed requests and reply frame boundaries come out, and the encoders return bytes to send.

* `RequestParser` reads what clients send. Clients are hostile, so it is strict: it accepts
  exactly what Redis 7.0 accepts (src/networking.c processMultibulkBuffer / processInlineBuffer),
  answers everything else with Redis's own protocol error text, and never allocates from a
  declared size.
* `ReplyScanner` reads what the upstream Redis sends. It does not parse replies, it only finds
  where each top-level reply ends, so the proxy can pass the bytes through unchanged and keep
  replies in order. It never buffers payloads.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, chain
from operator import itemgetter
from struct import Struct
from typing import Any, Callable, Iterator, NamedTuple, Sequence

# C versions of take_batch()'s scan and of count_flat()'s loop (setup.py builds them; optional).
# REDISGATE_PURE_PYTHON=1 turns them off, so the Python twins can be run and compared on a
# machine that has both.
_ScanFn = Callable[[bytes, int, int, int], "tuple[list[list[bytes]], bytes, int, int] | None"]
_c_scan: _ScanFn | None
_c_pending: Callable[[bytes, int, int, int], bool] | None
_c_count_flat: Callable[[bytes, int, int], tuple[int, int]] | None
try:
    from .._native._speedups import (count_flat as _c_count_flat, pending as _c_pending,
                                     scan as _c_scan)
except ImportError:   # not compiled here: the Python twins do the same
    _c_scan = _c_pending = _c_count_flat = None
if os.environ.get("REDISGATE_PURE_PYTHON"):
    _c_scan = _c_count_flat = None

__all__ = [
    "ProtocolError", "UpstreamProtocolError", "Request", "Batch", "RequestParser", "Frame",
    "ReplyScanner",
    "encode_command", "simple", "error", "bulk", "integer", "array",
    "map_", "set_", "push", "verbatim", "string2ll", "split_args",
]

KiB = 1024
MiB = 1024 * KiB

# Redis's defaults: proto-max-bulk-len (512 MB), PROTO_INLINE_MAX_SIZE (64 KB).
DEFAULT_MAX_BULK = 512 * MiB
DEFAULT_MAX_INLINE = 64 * KiB
# Redis accepts up to INT_MAX arguments; it grows argv as arguments arrive, but a client may
# still make it hold 2^31 small arguments. A proxy has no reason to: 1M arguments is far beyond
# any real command (an MSET of 500k pairs), and smaller than what would exhaust memory.
DEFAULT_MAX_ARGS = 1024 * 1024

# What Redis allows a client that has not authenticated (networking.c, "authRequired(c)").
PREAUTH_MAX_ARGS = 10
PREAUTH_MAX_BULK = 16384

_INT_MAX = 2**31 - 1
_SSIZE_MAX = sys.maxsize   # the largest Py_ssize_t (the C scan's limits)
_LLONG_MAX = 2**63 - 1
_LLONG_MIN = -(2**63)
_CRLF = b"\r\n"
_tuple_new = tuple.__new__


class ProtocolError(Exception):
    """A client broke the protocol. `.reply` is the exact error line Redis sends for it, e.g.
    ``b"-ERR Protocol error: invalid bulk length\\r\\n"``; the connection is closed after it."""

    def __init__(self, message: bytes | str):
        if isinstance(message, str):
            message = message.encode()
        self.message = message
        self.reply = b"-ERR " + message + _CRLF
        super().__init__(message.decode("utf-8", "backslashreplace"))


class UpstreamProtocolError(Exception):
    """The upstream sent bytes that are not RESP2/RESP3. The upstream connection is unusable."""


def _err(condition: str) -> ProtocolError:
    return ProtocolError("Protocol error: " + condition)


def string2ll(s: bytes | bytearray) -> int | None:
    """Redis's string2ll (src/util.c): a canonical decimal long long, else None.

    No sign but '-', no leading zeros, no spaces, no "-0", fewer than 21 characters. The one
    copy: the parser, the key extraction (commands.py), HELLO / SELECT (session.py) use it.
    """
    n = len(s)
    if n == 0 or n >= 21:
        return None
    if s[0] == 45:  # '-'
        digits = s[1:]
        if not digits.isdigit() or digits[0] == 48:
            return None
        v = -int(digits)
        return v if v >= _LLONG_MIN else None
    if not s.isdigit() or (s[0] == 48 and n > 1):
        return None
    v = int(s)
    return v if v <= _LLONG_MAX else None


# ---------------------------------------------------------------------------------------------
# Client requests
# ---------------------------------------------------------------------------------------------

class Request(NamedTuple):
    """One client command.

    `args[0]` is the command name as sent. `raw` is the exact bytes of the multibulk frame the
    client sent (every multibulk frame the parser accepts is canonical, so `raw ==
    encode_command(args)`), and None for an inline command: forward `encode_command(args)`.
    """
    args: list[bytes]
    raw: bytes | None


class Batch(NamedTuple):
    """Complete requests taken from a parser's buffer in one step (`RequestParser.take_batch`).

    `args[j]` is request j's argument list (`args[j][0]` the command name as sent). The requests
    are canonical multibulk frames lying back to back in the buffer, so the exact bytes of
    requests j0..j1-1 are one slice of it: `raw(j0, j1)`, which for the whole batch of a whole
    read is the read itself, not a copy. `request(j)` is request j as `drain()` returns it.
    `rest` is how many bytes the parser still held after the batch when it was taken (0: the
    batch was everything, there is nothing more to parse until the next feed()). `same`: when
    it is not 0, requests 0 .. same-1 are one layout, token for token (the same command name and
    the same "*n" and "$len" headers: a homogeneous pipeline), so request j's argument i is
    `tokens[j * width + 2 + 2 * i]` with width = 1 + 2 * len(args[0]).
    """
    args: list[list[bytes]]     # a ListRun (C scan) or a RunArgs (Python scan) when `same`
    buf: bytes
    start: int              # where request 0 starts in buf
    stop: int               # where the last request ends
    rest: int
    tokens: list[bytes] | None   # buf[start:...].split(CRLF): the batch is its first tokens
    same: int = 0
    ends: bytes | None = None    # from the C scan (instead of tokens): where each request ends

    def _offset(self, j: int) -> int:
        """Where request j starts in the buffer (j == len(args): where the batch ends)."""
        args = self.args
        if j <= 0:
            return self.start
        if j >= len(args):
            return self.stop
        if self.ends is not None:
            end: int = _END.unpack_from(self.ends, _END.size * (j - 1))[0]
            return end
        # Request m is 1 + 2 * len(args[m]) tokens ("*n", then "$len" and payload per argument),
        # each followed by CRLF.
        tokens = self.tokens
        assert tokens is not None   # (the Python scan's batch)
        if j <= self.same:
            t: int = j * args.width  # type: ignore[attr-defined]  # a RunArgs
        else:
            t = j + 2 * sum(map(len, args[:j]))
        return self.start + sum(map(len, tokens[:t])) + 2 * t

    def raw(self, j0: int = 0, j1: int | None = None) -> bytes:
        """The exact bytes of requests j0 .. j1-1 (default: to the end)."""
        if not j0 and j1 is None:
            return self.buf[self.start:self.stop]
        start = self._offset(j0)
        stop = self.stop if j1 is None else self._offset(j1)
        return self.buf[start:stop]   # bytes: the buffer itself when that is all of it

    def request(self, j: int) -> Request:
        return _tuple_new(Request, (self.args[j], self.raw(j, j + 1)))

    def requests(self) -> list[Request]:
        """Every request of the batch with its raw bytes (`request(j)` for each j), in one pass:
        the C scan's `ends`, or the tokens' lengths summed once."""
        args, buf, start = self.args, self.buf, self.start
        out: list[Request] = []
        emit = out.append
        if self.ends is not None:
            for a, stop in zip(args, memoryview(self.ends).cast("n")):  # type: ignore[call-overload]
                emit(_tuple_new(Request, (a, buf[start:stop])))
                start = stop
            return out
        tokens = self.tokens
        assert tokens is not None   # (the Python scan's batch)
        # ends[k - 1] + 2 * k: where token k starts, relative to the batch (one C-level pass).
        ends = list(accumulate(map(len, tokens[:2 * sum(map(len, args)) + len(args)])))
        base, t = start, 0
        for a in args:
            t += 1 + 2 * len(a)
            stop = base + ends[t - 1] + 2 * t
            emit(_tuple_new(Request, (a, buf[start:stop])))
            start = stop
        return out

    @classmethod
    def of(cls, request: Request) -> "Batch":
        """A batch of one multibulk request (`request.raw` is not None)."""
        raw = request.raw
        assert raw is not None
        batch: Batch = _tuple_new(cls, ([request.args], raw, 0, len(raw), 0, None, 0, None))
        return batch


@lru_cache(maxsize=None)
def _header_tables(max_args: int, max_bulk: int) -> tuple[dict[bytes, int], dict[bytes, int]]:
    """Lookup tables for the usual header lines ("*3", "$5") of frames that are within limits.

    One dict lookup both validates a header line and converts it, which is what makes the fast
    path fast. Lines that miss (longer values, errors) take the careful path.
    """
    counts = {b"*%d" % i: i for i in range(-1, min(max_args, 256) + 1)}
    bulks = {b"$%d" % i: i for i in range(0, min(max_bulk, 1024) + 1)}
    return counts, bulks


_WINDOW = 8192   # bytes RequestParser.take_batch() splits at a time
# next() leaves a request that is still arriving to the C scan up to this size; a larger one
# goes through the careful state machine, which never reads a byte twice.
_PENDING = 64 * 1024

# RequestParser states: what the bytes at `_pos` are.
_IDLE = 0      # the start of a new request (or nothing)
_COUNT = 1     # a multibulk's "*<count>" line, not complete yet
_ARGLEN = 2    # a "$<len>" line of the multibulk in progress
_ARGDATA = 3   # a bulk payload of `_bulklen` bytes and its CRLF
_INLINE = 4    # an inline command line, not complete yet
_STUCK = 5     # a line that can never end (see _find_line); waits for the too-big error


@dataclass(frozen=True, slots=True)
class ScanLimits:
    """An authenticated parser's limits as C's Py_ssize_t holds them (a larger limit is no limit
    anyway): what RequestParser.limits gives the C lane (redisgate._native._lane.Lane.arm)."""

    max_args: int
    max_bulk: int


class RequestParser:
    """Strict, incremental parser of the requests a client sends (RESP multibulk and inline).

    Feed it bytes with `feed(data)`; take requests with `next()` (one `Request` or None when no
    complete request is buffered) or `drain()` (every complete request buffered, in order).

    It accepts exactly what Redis 7.0 accepts and raises `ProtocolError` carrying Redis's reply
    for anything else: "invalid multibulk length", "invalid bulk length", "expected '$', got 'X'",
    "too big mbulk count string", "too big bulk count string", "too big inline request",
    "unbalanced quotes in request", "unauthenticated multibulk length", "unauthenticated bulk
    length". Beyond Redis, and stricter than it, where Redis would silently misread the stream:

    * a header line must end with CRLF, not CR followed by anything ("invalid multibulk length" /
      "invalid bulk length"), and a bulk payload must be followed by CRLF ("invalid bulk
      length": the declared length was wrong);
    * more than `max_args` arguments is "invalid multibulk length" (Redis: INT_MAX);
    * the 64 KB line limits are applied as if the bytes had arrived one at a time, so the result
      never depends on how the stream was split: a line longer than `max_inline` is too big even
      when its end arrived in the same read.

    Like Redis it skips empty inline lines and "*0" / "*-1" frames (no request), and treats a
    NUL byte before a line's end as Redis's strchr() does: the line never ends, so the client
    eventually gets the too-big error.

    Before authentication (the initial state, deny by default) Redis's pre-auth caps apply: more
    than 10 arguments or a bulk over 16384 bytes is a protocol error. Because those caps depend
    on whether the previous command authenticated, an unauthenticated parser hands out one
    request per `drain()` call; call `set_authenticated(True)` once AUTH/HELLO succeeded.

    After a `ProtocolError` the parser is dead: every later call raises the same error.

    Nothing is allocated from a declared size: arguments are sliced from received bytes only
    once they have all arrived, and a header claiming 512 MB costs nothing until 512 MB come.
    """

    def __init__(self, max_bulk: int = DEFAULT_MAX_BULK, max_args: int = DEFAULT_MAX_ARGS,
                 max_inline: int = DEFAULT_MAX_INLINE, *, authenticated: bool = False):
        for name, value in (("max_bulk", max_bulk), ("max_args", max_args),
                            ("max_inline", max_inline)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.max_bulk = max_bulk
        self.max_args = max_args
        self.max_inline = max_inline
        # The receive buffer. Like h11's ReceiveBuffer it is consumed by advancing offsets
        # (`_pos`, and `_start` for the request in progress), never by deleting bytes per
        # request; consumed bytes are dropped only when new bytes arrive (`feed`). It is a
        # `bytes` whenever possible, because slicing arguments out of bytes is one copy and
        # the fast path runs on bytes only. When a small read extends a large incomplete
        # request it becomes a bytearray, so appending stays amortised O(len(data)) instead of
        # copying the incomplete request again on every read; it turns back into bytes when that
        # request completes. Searches resume where the previous one stopped (`_scan`), so
        # byte-at-a-time feeding is linear too.
        self._buf: bytes | bytearray = b""
        self._pos = 0          # first byte not parsed yet
        self._start = 0        # first byte of the request in progress (state != _IDLE)
        self._scan = 0         # where the search for the current line's end resumes
        self._state = _IDLE
        self._remaining = 0    # bulks still to come in the multibulk in progress
        self._bulklen = 0      # length of the bulk payload expected at `_pos` (_ARGDATA)
        self._stuck: ProtocolError | None = None
        self._error: ProtocolError | None = None
        self._cscan: _ScanFn | None = None
        self.set_authenticated(authenticated)

    # -- public API ----------------------------------------------------------------------

    def set_authenticated(self, authenticated: bool) -> None:
        """Lift (True) or apply (False) Redis's pre-authentication caps for later requests."""
        self.authenticated = bool(authenticated)
        if self.authenticated:
            self._counts, self._bulks = _header_tables(self.max_args, self.max_bulk)
            self._cscan = _c_scan   # (only authenticated: the pre-auth caps are the careful path's)
            # Its limits, as C's Py_ssize_t can hold them (a larger limit is no limit anyway).
            self._climits = (min(self.max_args, _INT_MAX), min(self.max_bulk, _SSIZE_MAX))
            self.limits = ScanLimits(*self._climits)
        else:
            self._counts, self._bulks = _header_tables(min(self.max_args, PREAUTH_MAX_ARGS),
                                                       min(self.max_bulk, PREAUTH_MAX_BULK))
            self._cscan = None
            # (the pre-authentication caps: nothing in C scans by them, the lane is never armed)
            self.limits = ScanLimits(min(self.max_args, PREAUTH_MAX_ARGS),
                                     min(self.max_bulk, PREAUTH_MAX_BULK))

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as requests."""
        keep = self._pos if self._state == _IDLE else self._start
        return len(self._buf) - keep

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes. Parsing (and any `ProtocolError`) happens in next()/drain()."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        if not data:
            return
        buf = self._buf
        keep = self._pos if self._state == _IDLE else self._start
        left = len(buf) - keep
        if left <= 0:
            # Everything before was consumed (the usual case): the new bytes are the buffer.
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = self._start = self._scan = 0
            return
        new: bytes | bytearray
        if len(data) >= left:
            # The new bytes pay for copying the leftover: amortised linear.
            new = b"".join((memoryview(buf)[keep:], data))
        else:
            if isinstance(buf, bytes):
                buf = bytearray(memoryview(buf)[keep:])
            else:
                # O(1): CPython drops a bytearray's head by moving its start (bpo-19087).
                del buf[:keep]
            buf += data
            new = buf
        self._buf = new
        self._pos -= keep
        self._start -= keep
        self._scan -= keep

    def next(self) -> Request | None:
        """The next complete request, or None if none is buffered yet.

        Raises ProtocolError if the next thing buffered is a protocol violation.
        """
        if self._state == _IDLE and self._error is None:
            buf, pos = self._buf, self._pos
            if pos >= len(buf):
                return None
            if self._cscan is not None and type(buf) is bytes and len(buf) - pos <= _PENDING \
                    and _c_pending(buf, pos, *self._climits):  # type: ignore[misc]  # (with _cscan)
                # The start of a request the C scan will take whole once the rest has come
                # (a pipeline cut by the read size): wait for it, rather than carry it through
                # the careful state machine.
                return None
        reqs = self._parse(1)
        return reqs[0] if reqs else None

    def drain(self) -> list[Request]:
        """Every complete request buffered, in order ([] if none), taken exactly as the proxy
        takes them (Session.client_data): take_batch() while it hands out batches, else next().
        A convenience over those two for tests, tools and benchmarks; nothing else parses.

        If the bytes after them violate the protocol, they are returned and the *next* call
        raises the ProtocolError (as Redis runs the commands before a bad one, then replies with
        the error). Before authentication it returns at most one request per call. So call it
        until it returns [] (``while reqs := parser.drain(): ...``).
        """
        out: list[Request] = []
        while True:
            batch = self.take_batch()   # (None before authentication)
            if batch is not None:
                out += batch.requests()
                continue
            try:
                req = self.next()
            except ProtocolError:
                if out:
                    return out   # the parser keeps the error: the next call raises it
                raise
            if req is None:
                return out
            out.append(req)
            if not self.authenticated:
                return out

    def take_batch(self) -> Batch | None:
        """The run of complete requests at the head of the buffer, consumed, as one `Batch`; or
        None when the next request is not for this fast path: nothing or only part of a request
        is buffered, it is an inline command, not canonical, larger than the window (the Python
        scan's; the C one has none), or a protocol error, or the parser is not authenticated
        (see drain()). The requests are the
        ones drain() would return first, and drain() / next() carry on after them; take_batch()
        never raises: what it leaves, next() parses (or refuses) with Redis's exact checks.

        bytes.split(CRLF) cuts the buffer into header lines and payloads in C. A request "*n"
        is then the next 2n tokens, and it is valid exactly when each header token is a "$<len>"
        line whose len is the length of the payload token after it (a payload containing CRLF
        does not match, nor does any non-canonical header). Requests of two or three arguments
        are checked as they come; longer ones once for the whole run, with two C-level map()s
        (and only when that fails one by one, to find the first bad one). "*0" / "*-1" end the
        run (drain() skips them). The last token is never taken: no CRLF follows it.
        """
        if self._state != _IDLE or not self.authenticated or self._error is not None:
            return None
        buf, pos = self._buf, self._pos
        if pos >= len(buf) or type(buf) is not bytes:
            return None
        if self._cscan is not None:
            # The same scan in C (_speedups.c): it walks headers and skips payloads by length, so
            # it needs no window, and makes the argument lists directly.
            found = self._cscan(buf, pos, *self._climits)
            if found is None:
                return None
            out, ends, same, stop = found
            self._pos = stop
            if same:
                run = ListRun(out)
                run.same = same
                out = run
            batch: Batch = _tuple_new(Batch, (out, buf, pos, stop, len(buf) - stop, None, same,
                                              ends))
            return batch
        # At most a window of the buffer: split() searches every byte for CRLF (about 0.7 ns a
        # byte, 12 us for a 16 KB value), where next() skips payloads by their length. So a
        # request larger than the window goes to next() (a look at its headers tells), and a
        # long pipeline comes in batches.
        end = len(buf)      # where the bytes split end
        if end - pos <= _WINDOW:
            tokens = buf.split(_CRLF) if pos == 0 else buf[pos:].split(_CRLF)
        elif not self._fits(buf, pos, _WINDOW):
            return None
        else:
            end = pos + _WINDOW
            tokens = buf[pos:end].split(_CRLF)
        last = len(tokens) - 1     # never taken: no CRLF follows it (yet)
        counts = self._counts.get
        length = self._bulks.get
        same, i = self._same_layout(tokens, last) if last >= _SAME_MIN * 5 else (0, 0)
        run_end = i
        out = []   # after the homogeneous run, if any
        emit = out.append
        heads = None     # of the longer requests, checked after the loop
        while i < last:
            n = counts(tokens[i])
            if n is None:
                n = self._count_ok(tokens[i])
                if n is None:
                    break
            k = i + 1 + 2 * n
            if n <= 0 or k > last:
                break
            if n == 2:
                # GET, INCR, DEL k, ...: the most common sizes are checked right here.
                _, h0, a0, h1, a1 = tokens[i:k]
                if length(h0) == len(a0) and length(h1) == len(a1):
                    emit([a0, a1])
                    i = k
                    continue
            elif n == 3:
                _, h0, a0, h1, a1, h2, a2 = tokens[i:k]
                if length(h0) == len(a0) and length(h1) == len(a1) and length(h2) == len(a2):
                    emit([a0, a1, a2])
                    i = k
                    continue
            if heads is None:
                heads, payloads = [], []
            args = tokens[i + 2:k:2]
            emit(args)
            payloads.append(args)
            heads += tokens[i + 1:k:2]
            i = k
        if heads is not None and \
                list(map(length, heads)) != list(map(len, chain.from_iterable(payloads))):
            out, i = self._split_checked(tokens, out, run_end)
        if not out and not same:
            return None
        # Where the batch ends, counted from whichever side has fewer tokens: usually nothing
        # but the incomplete last token (b"" after a whole read) follows the batch.
        if i == last:
            stop = end - len(tokens[last])
        elif last - i < i:
            stop = end - sum(map(len, tokens[i:])) - 2 * (last - i)
        else:
            stop = pos + sum(map(len, tokens[:i])) + 2 * i
        self._pos = stop
        if same:
            out = RunArgs(tokens, same, run_end // same, out)  # type: ignore[assignment]
        batch = _tuple_new(Batch, (out, buf, pos, stop, len(buf) - stop, tokens, same, None))
        return batch

    def _same_layout(self, tokens: list[bytes], last: int) -> tuple[int, int]:
        """take_batch()'s shortcut for a homogeneous pipeline: (m, m * width) when the first m
        requests (all the whole ones, m >= _SAME_MIN) are the first one's command with as many
        arguments, and every payload is as long as its "$len" header says; else (0, 0). Each
        check covers the m requests with one strided slice: its cost is per read, not per
        request."""
        n = self._counts.get(tokens[0])
        if not n or n < 0:
            return 0, 0
        width = 1 + 2 * n
        m = last // width
        if m < _SAME_MIN:
            return 0, 0
        end = m * width
        length = self._bulks.get
        if tokens[0:end:width].count(tokens[0]) != m or tokens[2:end:width].count(tokens[2]) != m \
                or tokens[1:end:width].count(tokens[1]) != m or length(tokens[1]) != len(tokens[2]):
            return 0, 0
        for h in range(3, width, 2):
            heads = tokens[h:end:width]
            size = length(heads[0])
            if size is not None and heads.count(heads[0]) == m:   # one length: the usual case
                if list(map(len, tokens[h + 1:end:width])).count(size) != m:
                    return 0, 0
            elif list(map(length, heads)) != list(map(len, tokens[h + 1:end:width])):
                return 0, 0
        return m, end

    # -- parsing -------------------------------------------------------------------------

    def _parse(self, limit: int) -> list[Request]:
        if self._error is not None:
            raise self._error.with_traceback(None)
        out: list[Request] = []
        try:
            while len(out) < limit:
                if self._state == _IDLE and type(self._buf) is bytes:
                    self._pos = self._fast(self._buf, self._pos, out, limit)
                    if len(out) >= limit:
                        break
                if not self._careful(out):
                    break
        except ProtocolError as e:
            self._error = e
            self._buf = b""
            self._pos = self._start = self._scan = 0
            self._state = _IDLE
            if not out:
                raise
        return out

    def _split_checked(self, tokens: list[bytes], found: list[list[bytes]],
                       i: int = 0) -> tuple[list[list[bytes]], int]:
        """take_batch()'s run (from token i) when the header check over all of it failed: the
        requests before the first invalid one (lengths beyond the lookup table are checked with
        `_bulk_ok`)."""
        length = self._bulks.get
        for j, args in enumerate(found):
            k = i + 1 + 2 * len(args)
            sizes = [length(h) for h in tokens[i + 1:k:2]]
            if sizes != list(map(len, args)):
                if None not in sizes:
                    return found[:j], i
                sizes = [size if size is not None else self._bulk_ok(head)
                         for size, head in zip(sizes, tokens[i + 1:k:2])]
                if sizes != list(map(len, args)):
                    return found[:j], i
            i = k
        return found, i

    def _fast(self, buf: bytes, pos: int, out: list[Request], limit: int) -> int:
        """Parse complete, valid multibulk requests from `buf` at `pos` into `out`.

        The hot path of next() for what take_batch() leaves: one bytes.find, one dict lookup
        and two slices per argument. It stops,
        returning the offset of the request it did not take, at anything unusual (an inline
        command, an incomplete or invalid request, a header missing from the lookup tables),
        which `_careful` then handles with exact errors and incremental state.
        """
        end = len(buf)
        find = buf.find
        counts = self._counts
        bulks = self._bulks
        emit = out.append
        n_out = len(out)
        while pos < end and n_out < limit:
            r = find(_CRLF, pos, pos + 24)   # a valid count line is at most 21 bytes
            if r < 0:
                break
            n = counts.get(buf[pos:r])
            if n is None:
                n = self._count_ok(buf[pos:r])
                if n is None:
                    break
            p = r + 2
            if n <= 0:
                pos = p
                continue
            args: list[bytes] = []
            add = args.append
            for _ in range(n):
                r = find(_CRLF, p, p + 24)
                if r < 0:
                    break
                size = bulks.get(buf[p:r])
                if size is None:
                    size = self._bulk_ok(buf[p:r])
                    if size is None:
                        break
                p = r + 2 + size
                if buf[p:p + 2] != _CRLF:
                    break
                add(buf[r + 2:p])
                p += 2
            else:
                emit(_tuple_new(Request, (args, buf[pos:p])))
                n_out += 1
                pos = p
                continue
            break
        return pos

    def _fits(self, buf: bytes, pos: int, room: int) -> bool:
        """False if the multibulk request at `pos` ends beyond `room` bytes, as far as its
        header lines tell (read with find(), payloads skipped by length); True otherwise, also
        when they tell nothing (then the request is not for the fast paths anyway)."""
        find = buf.find
        r = find(_CRLF, pos, pos + 24)
        n = self._counts.get(buf[pos:r]) if r >= 0 else None
        if not n or n < 0:
            return True
        p = r + 2
        stop = pos + room
        for _ in range(n):
            r = find(_CRLF, p, p + 24)
            if r < 0:
                return True
            size = self._bulks.get(buf[p:r])
            if size is None:
                size = self._bulk_ok(buf[p:r])
                if size is None:
                    return True
            p = r + 4 + size
            if p > stop:
                return False
        return True

    def _count_ok(self, line: bytes) -> int | None:
        """The count of a "*<count>" line the fast path may take, else None (see _careful)."""
        if not line or line[0] != 42:
            return None
        n = string2ll(line[1:])
        if n is None or n > min(self.max_args, _INT_MAX):
            return None
        if n > PREAUTH_MAX_ARGS and not self.authenticated:
            return None
        return n

    def _bulk_ok(self, line: bytes) -> int | None:
        """The length of a "$<len>" line the fast path may take, else None (see _careful)."""
        if not line or line[0] != 36:
            return None
        n = string2ll(line[1:])
        if n is None or n < 0 or n > self.max_bulk:
            return None
        if n > PREAUTH_MAX_BULK and not self.authenticated:
            return None
        return n

    def _careful(self, out: list[Request]) -> bool:
        """Advance the state machine over at most one request, with Redis's exact checks.

        Returns True if it took a request (appended to `out`, or skipped as Redis skips "*0"
        and empty lines), False if it needs more bytes. Raises ProtocolError.
        """
        buf = self._buf
        end = len(buf)
        while True:
            state = self._state
            if state == _IDLE:
                pos = self._pos
                if pos >= end:
                    return False
                self._start = self._scan = pos
                # As Redis: a request starting with '*' is multibulk, anything else inline.
                state = self._state = _COUNT if buf[pos] == 42 else _INLINE

            if state == _COUNT:
                start = self._start
                r = self._find_line(buf, b"\r", start, "too big mbulk count string")
                if r < 0:
                    return False
                n = string2ll(buf[start + 1:r])
                if n is None or n > _INT_MAX:
                    raise _err("invalid multibulk length")
                if n > PREAUTH_MAX_ARGS and not self.authenticated:
                    raise _err("unauthenticated multibulk length")
                if n > self.max_args or buf[r + 1] != 10:
                    raise _err("invalid multibulk length")
                self._pos = self._scan = r + 2
                if n <= 0:
                    self._state = _IDLE
                    return True
                self._remaining = n
                state = self._state = _ARGLEN

            if state == _ARGLEN:
                pos = self._pos
                r = self._find_line(buf, b"\r", pos, "too big bulk count string")
                if r < 0:
                    return False
                if buf[pos] != 36:
                    got = buf[pos]
                    # Redis's addReplyErrorFormat turns CR and LF into spaces.
                    got = 32 if got in (10, 13) else got
                    raise ProtocolError(b"Protocol error: expected '$', got '%c'" % got)
                n = string2ll(buf[pos + 1:r])
                if n is None or n < 0 or n > self.max_bulk:
                    raise _err("invalid bulk length")
                if n > PREAUTH_MAX_BULK and not self.authenticated:
                    raise _err("unauthenticated bulk length")
                if buf[r + 1] != 10:
                    raise _err("invalid bulk length")
                self._bulklen = n
                self._pos = r + 2
                state = self._state = _ARGDATA

            if state == _ARGDATA:
                pos = self._pos
                stop = pos + self._bulklen
                if end < stop + 2:
                    return False
                if buf[stop] != 13 or buf[stop + 1] != 10:
                    raise _err("invalid bulk length")
                self._pos = self._scan = stop + 2
                self._remaining -= 1
                if self._remaining:
                    self._state = _ARGLEN
                    continue
                self._take_frame(out)
                return True

            if state == _INLINE:
                start = self._start
                r = self._find_line(buf, b"\n", start, "too big inline request", need_next=False)
                if r < 0:
                    return False
                stop = r - 1 if r > start and buf[r - 1] == 13 else r
                args = split_args(bytes(buf[start:stop]))
                if args is None:
                    raise _err("unbalanced quotes in request")
                self._pos = r + 1
                self._back_to_idle()
                if args:
                    out.append(_tuple_new(Request, (args, None)))
                return True

            if state == _STUCK:
                if end - self._start > self.max_inline:
                    assert self._stuck is not None   # (set with _STUCK)
                    raise self._stuck
                return False

    def _find_line(self, buf: bytes | bytearray, sep: bytes, start: int, too_big: str, need_next: bool = True) -> int:
        """Offset of the `sep` ending the line at `start`, or -1 if it has not arrived.

        Emulates Redis reading byte by byte: it searches with strchr(), so a line whose end is
        not within `max_inline` bytes is "too big" (raised here), and a NUL byte hides the end
        (the line waits until it is too big: state _STUCK). With `need_next`, the byte after
        `sep` must have arrived too (Redis needs "\\r" plus one byte).
        """
        end = len(buf)
        limit = start + self.max_inline + 1
        r = buf.find(sep, self._scan, limit)
        if r >= 0:
            if buf.find(b"\0", start, r) < 0:
                if not need_next or r + 1 < end:
                    return r
                self._scan = r
                return -1
            if self._state == _ARGLEN:
                # The request can never complete: keep only this line, which is all the
                # too-big check still needs (as Redis's qb_pos, it counts from the line).
                self._start = start
            self._stuck = _err(too_big)
            self._state = _STUCK
        elif end < limit:
            self._scan = end
            return -1
        if end - start > self.max_inline:
            raise _err(too_big)
        return -1

    def _take_frame(self, out: list[Request]) -> None:
        """The multibulk at [_start, _pos) is complete and valid: emit it, go back to _IDLE."""
        buf, start, stop = self._buf, self._start, self._pos
        if type(buf) is bytes:
            raw = buf[start:stop]   # the same object when the request is the whole buffer
        else:
            with memoryview(buf) as view:
                raw = view[start:stop].tobytes()
        self._back_to_idle()
        del buf
        # The frame is valid and within limits, so the fast path takes it whole.
        one: list[Request] = []
        self._fast(raw, 0, one, 1)
        if len(one) != 1:
            raise RuntimeError("resp: a validated multibulk did not parse")   # a bug, not input
        out.append(one[0])

    def _back_to_idle(self) -> None:
        self._state = _IDLE
        if type(self._buf) is not bytes:
            # Leave bytearray mode: the rest is at most what recent feeds appended.
            with memoryview(self._buf) as view:
                self._buf = view[self._pos:].tobytes()
            self._pos = self._start = self._scan = 0


_ISSPACE = frozenset(b" \t\n\v\f\r")       # C isspace()
_TOKEN_END = frozenset(b" \n\r\t\0")        # where sdssplitargs ends an unquoted token
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


# take_batch() looks for a homogeneous run (Batch.same) in reads of at least this many requests.
_SAME_MIN = 4


# count_flat() tries _count_integers on runs that may be this long or longer.
_INT_RUN_MIN = 4


def _count_integers(data: bytes, start: int, most: int) -> tuple[int, int] | None:
    """count_flat() of a run of non-negative integer replies (":17\r\n:18\r\n...", LPUSH and
    INCR pipelines), checked with C-level counts over the whole run instead of line by line:
    (how many, where they end), or None when the run has anything else (count_flat walks it)."""
    region = data[start:start + most * 21]   # a valid line is at most ":" + 18 digits + CRLF
    lines = region.split(_CRLF, most)
    del lines[-1]   # not followed by CRLF (or beyond `most`)
    count = len(lines)
    if count < 2:
        return None
    body = _CRLF.join(lines)
    if body.count(b"\r\n:") != count - 1 or body.count(b":") != count \
            or min(map(len, lines)) < 2 or max(map(len, lines)) > 19 \
            or not body.replace(b"\r\n:", b"")[1:].isdigit() \
            or body.count(b":0") != lines.count(b":0"):   # no leading zeros: as string2ll
        return None
    return count, start + len(body) + 2


class ListRun(list[list[bytes]]):
    """Batch.args from the C scan when a homogeneous run heads the batch (Batch.same): the
    argument lists, with RunArgs's first(), column() and tail."""
    __slots__ = ("same",)
    same: int

    def first(self) -> list[bytes]:
        return self[0]

    def column(self, i: int) -> list[bytes]:
        """Argument i of every request of the run."""
        return list(map(itemgetter(i), self[:self.same]))

    @property
    def tail(self) -> list[list[bytes]]:
        return self[self.same:]


_END = Struct("n")   # Batch.ends: one native Py_ssize_t per request


class RunArgs:
    """Batch.args of a batch that starts with a homogeneous run (Batch.same): the run's argument
    lists are made from the tokens only when asked for (the session's fast path does not ask
    when the whole run is allowed). A read-only sequence; `tail` holds the requests after it."""
    __slots__ = ("tokens", "same", "width", "tail", "_all")

    def __init__(self, tokens: list[bytes], same: int, width: int, tail: list[list[bytes]]):
        self.tokens, self.same, self.width, self.tail = tokens, same, width, tail
        self._all: list[list[bytes]] | None = None

    def first(self) -> list[bytes]:
        return self.tokens[2:self.width:2]

    def column(self, i: int) -> list[bytes]:
        """Argument i of every request of the run."""
        return self.tokens[2 + 2 * i:self.same * self.width:self.width]

    def _list(self) -> list[list[bytes]]:
        if self._all is None:
            end, width = self.same * self.width, self.width
            self._all = list(map(list, zip(*[self.tokens[p:end:width]
                                             for p in range(2, width, 2)]))) + self.tail
        return self._all

    def __len__(self) -> int:
        return self.same + len(self.tail)

    def __getitem__(self, j: int) -> list[bytes]:
        return self._list()[j]

    def __iter__(self) -> Iterator[list[bytes]]:
        return iter(self._list())

    def __eq__(self, other: Any) -> bool:
        return self._list() == list(other)

    def __repr__(self) -> str:
        return repr(self._list())


def split_args(line: bytes) -> list[bytes] | None:
    """Redis's sdssplitargs (src/sds.c): split an inline command or an ACL rule line (rules.py);
    None on unbalanced quotes, or a closing quote not followed by a space."""
    if b'"' not in line and b"'" not in line and b"\v" not in line and b"\f" not in line:
        # Without quotes, \v or \f, bytes.split() splits exactly where sdssplitargs does.
        return line.split()
    n = len(line)

    def at(k: int) -> int:   # C reads the terminating NUL past the end
        return line[k] if k < n else 0

    args: list[bytes] = []
    i = 0
    while True:
        while i < n and line[i] in _ISSPACE:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_dq = in_sq = done = False
        while not done:
            c = at(i)
            if in_dq:
                if c == 92 and at(i + 1) == 120 and at(i + 2) in _HEXDIGITS \
                        and at(i + 3) in _HEXDIGITS:                     # \xHH
                    current.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 92 and at(i + 1):
                    i += 1
                    current.append(_ESCAPES.get(line[i], line[i]))
                elif c == 34:
                    # A closing quote must be followed by a space or by nothing.
                    if at(i + 1) and at(i + 1) not in _ISSPACE:
                        return None
                    done = True
                elif c == 0:
                    return None
                else:
                    current.append(c)
            elif in_sq:
                if c == 92 and at(i + 1) == 39:
                    i += 1
                    current.append(39)
                elif c == 39:
                    if at(i + 1) and at(i + 1) not in _ISSPACE:
                        return None
                    done = True
                elif c == 0:
                    return None
                else:
                    current.append(c)
            elif c in _TOKEN_END:
                done = True
            elif c == 34:
                in_dq = True
            elif c == 39:
                in_sq = True
            else:
                current.append(c)
            if at(i):
                i += 1
        args.append(bytes(current))


# ---------------------------------------------------------------------------------------------
# Upstream replies
# ---------------------------------------------------------------------------------------------

class Frame(NamedTuple):
    """One top-level reply that ended inside the bytes passed to `ReplyScanner.feed`.

    `end`: offset in that `data` just past the reply. `kind`: its type byte (b"+", b"-", b"$",
    b"*", b">", ...; never b"|"). `head`: for an array or push reply, its first element when that
    is a bulk or simple string of at most 32 bytes (e.g. b"message", b"subscribe"), else None.
    """
    end: int
    kind: bytes
    head: bytes | None


_KIND = [bytes([i]) for i in range(256)]
_HEAD_MAX = 32
_LINE_MAX = 64                         # longest header line kept while it is incomplete
_TEXT = frozenset(b"+-,(")             # line types whose length is unbounded
_LENGTHS = {b"%d" % i: i for i in range(-1, 1025)}


def _upstream_int(body: bytes, what: str) -> int:
    n = _LENGTHS.get(body)
    if n is None:
        n = string2ll(body)
        if n is None:
            raise UpstreamProtocolError(f"invalid {what} {bytes(body)[:40]!r}")
    return n


class ReplyScanner:
    """Streaming frame counter over the bytes an upstream Redis sends (RESP2 and RESP3).

    `feed(data)` returns a `Frame` for each top-level reply that ends inside `data`, in order.
    It keeps only counters, a header line that is split across reads (at most 64 bytes) and up
    to 32 bytes of a `head`: bulk payloads are skipped by length, so a 64 MB reply fed in many
    pieces costs O(number of pieces). Nested aggregates of any depth are followed with a stack
    of counters; maps and attributes count two items per entry; attributes (`|`) are skipped and
    are not frames (they belong to the reply that follows them); push replies have kind b">".
    Streamed RESP3 aggregates (`*?`, `$?`), which Redis never sends, are rejected.

    Malformed bytes raise `UpstreamProtocolError`; after it the scanner is dead.
    `resp3` records the protocol the connection speaks; every type is accepted either way.
    """

    def __init__(self, resp3: bool = False):
        self.resp3 = resp3
        self._left: list[int] = []      # items still expected by each open aggregate
        self._isattr: list[bool] = []   # whether that aggregate is an attribute
        self._kind = 0                  # type byte of the top-level reply in progress
        self._head: bytes | None = None
        self._want_head = False         # the next depth-1 item is a top-level array's first
        self._skip = 0                  # bulk payload bytes still to skip, CRLF included
        self._tail = b""                # the part of the bulk's trailing CRLF seen so far
        self._capture: bytearray | None = None   # a bulk head being collected
        self._line: bytearray | None = None      # an incomplete header line
        self._line_long = False         # ... longer than _LINE_MAX (a text line, truncated)
        self._line_cr = False           # ... whose last byte so far is CR
        self._error: UpstreamProtocolError | None = None

    @property
    def idle(self) -> bool:
        """True between top-level replies: nothing of a reply is pending."""
        return not (self._left or self._skip or self._line is not None)

    def count_flat(self, data: bytes, most: int, start: int = 0) -> tuple[int, int]:
        """The whole flat replies at the head of `data` (from `start`), at most `most`: (how
        many, the offset where they end). Flat: simple strings, errors, integers, bulk strings
        of at most 1024 bytes and RESP3's null, complete in `data`, while no reply is pending
        from earlier bytes. It stops at anything else (or a malformed reply). feed() would give
        one Frame for each of them, ending at the same offsets, and would leave the scanner as
        it is (between replies): so a caller that needs only the count (the proxy's common case:
        replies passed on as they come) may skip feeding `data[start:end]`, and feed() the rest.
        The scanner is not changed.
        """
        if self._error is not None or self._left or self._skip or self._line is not None:
            return 0, start
        if _c_count_flat is not None and type(data) is bytes:
            return _c_count_flat(data, most, start)
        if most >= _INT_RUN_MIN and data[start:start + 1] == b":":
            taken = _count_integers(data, start, most)
            if taken is not None:
                return taken
        find = data.find
        get = _LENGTHS.get
        n = len(data)
        pos = start
        count = 0
        while count < most and pos < n:
            r = find(_CRLF, pos)
            if r < 0:
                break
            t = data[pos]
            if t == 36:   # $
                size = get(data[pos + 1:r])
                if size is None:
                    break
                if size < 0:   # -1: the null bulk
                    end = r + 2
                else:
                    end = r + 4 + size
                    if data[end - 2:end] != _CRLF:
                        break
            elif t == 43 or t == 45:   # + -
                end = r + 2
            elif t == 95:              # _ (RESP3's null)
                if r != pos + 1:
                    break
                end = r + 2
            elif t == 58:              # :
                body = data[pos + 1:r]
                # A count or a length: up to 18 digits without a leading zero is a valid long
                # long; the rest (a sign, 19 digits, junk) is string2ll's to judge.
                if not (body.isdigit() and len(body) < 19 and (body[0] != 48 or len(body) == 1)) \
                        and string2ll(body) is None:
                    break
                end = r + 2
            else:
                break
            pos = end
            count += 1
            if count == 1 and most > 1 and end < n:
                size = end - start
                k = min(most, (n - start) // size)
                if k > 1 and data[start:start + size * k] == data[start:end] * k:
                    # What follows is this reply again (a pipeline of SETs: "+OK\r\n" each):
                    # one comparison in C counts them all.
                    count, pos = k, start + size * k
        return count, pos

    def feed(self, data: bytes) -> list[Frame]:
        """The top-level replies that end inside `data`, in order (`Frame.end` is an offset in
        `data`). Raises UpstreamProtocolError on bytes that are not RESP."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        frames: list[Frame] = []
        emit = frames.append
        n = len(data)
        pos = 0
        find = data.find
        left = self._left
        try:
            while pos < n:
                if self._skip:
                    pos = self._skip_payload(data, pos, frames)
                    continue
                if self._line is not None:
                    pos = self._finish_line(data, pos, frames)
                    continue
                r = find(_CRLF, pos)
                if r < 0:
                    self._start_line(data, pos)
                    break
                t = data[pos]
                if t == 36:
                    # The most common item: a bulk string entirely in `data` (inlined _header).
                    size = _LENGTHS.get(data[pos + 1:r], -1)
                    stop = r + 2 + size
                    if size >= 0 and data[stop:stop + 2] == _CRLF:
                        pos = stop + 2
                        if not left:   # a whole reply (inlined _done)
                            emit(_tuple_new(Frame, (pos, b"$", None)))
                            continue
                        if self._want_head and len(left) == 1:
                            self._want_head = False
                            if size <= _HEAD_MAX:
                                self._head = data[r + 2:stop]
                        if left[-1] > 1:
                            left[-1] -= 1
                        else:
                            self._done(pos, frames)
                        continue
                elif not left and (t == 43 or t == 45):
                    # A whole simple string or error reply, +OK above all (inlined _header, _done).
                    pos = r + 2
                    emit(_tuple_new(Frame, (pos, _KIND[t], None)))
                    continue
                self._header(data[pos:r], r + 2, frames)
                pos = r + 2
        except UpstreamProtocolError as e:
            self._error = e
            raise
        return frames

    def _start_line(self, data: bytes, pos: int) -> None:
        self._line = bytearray()
        self._line_long = False
        self._line_cr = False
        self._add_line(data[pos:])

    def _add_line(self, part: bytes) -> None:
        line = self._line
        assert line is not None   # (_start_line)
        room = _LINE_MAX - len(line)
        if len(part) > room:
            if (line[0] if line else part[0]) not in _TEXT:
                raise UpstreamProtocolError(f"header line too long: {bytes(line + part[:40])!r}")
            line += part[:max(room, 0)]
            self._line_long = True
        else:
            line += part
        self._line_cr = part[-1] == 13

    def _finish_line(self, data: bytes, pos: int, frames: list[Frame]) -> int:
        """Continue the incomplete header line with `data[pos:]`; return where reading goes on."""
        assert self._line is not None   # (_start_line)
        if self._line_cr and data[pos] == 10:
            line = self._line[:-1]
            after = pos + 1
        else:
            r = data.find(_CRLF, pos)
            if r < 0:
                self._add_line(data[pos:])
                return len(data)
            line = self._line + data[pos:r] if not self._line_long else self._line
            after = r + 2
        if self._line_long:
            line = line[:_LINE_MAX]
        self._line = None
        self._header(bytes(line), after, frames)
        return after

    def _header(self, line: bytes, end: int, frames: list[Frame]) -> None:
        """A complete header line (CRLF excluded) that ends just before `end` in the data."""
        if not line:
            raise UpstreamProtocolError("empty line where a reply was expected")
        t = line[0]
        left = self._left
        if t != 124:   # an attribute is not an item: it annotates the one after it
            if not left:
                self._kind = t
            elif self._want_head and len(left) == 1:
                self._want_head = False
                if t == 43 and len(line) <= _HEAD_MAX + 1:
                    self._head = line[1:]
                elif t == 36:
                    self._capture = bytearray()   # kept only if the bulk is short
        if t == 43 or t == 45:             # + simple string, - error
            self._done(end, frames)
        elif t == 36 or t == 33 or t == 61:  # $ bulk, ! blob error, = verbatim
            size = _upstream_int(line[1:], "bulk length")
            if size < 0:
                if size != -1 or t != 36:
                    raise UpstreamProtocolError(f"invalid bulk length {line[:40]!r}")
                self._capture = None
                self._done(end, frames)
            else:
                if self._capture is not None and size > _HEAD_MAX:
                    self._capture = None
                self._skip = size + 2
        elif t == 58:                      # : integer
            _upstream_int(line[1:], "integer")
            self._done(end, frames)
        elif t == 42 or t == 37 or t == 126 or t == 62 or t == 124:  # * % ~ > |
            count = _upstream_int(line[1:], "aggregate length")
            if count <= 0:
                if count < -1 or (count == -1 and t != 42):
                    raise UpstreamProtocolError(f"invalid aggregate length {line[:40]!r}")
                if t != 124:
                    self._done(end, frames)
                return
            if t == 37 or t == 124:
                count *= 2
            if not left and (t == 42 or t == 62):
                self._want_head = True
            left.append(count)
            self._isattr.append(t == 124)
        elif t == 95:                      # _ null
            if len(line) != 1:
                raise UpstreamProtocolError(f"invalid null {line[:40]!r}")
            self._done(end, frames)
        elif t == 35:                      # # boolean
            if line != b"#t" and line != b"#f":
                raise UpstreamProtocolError(f"invalid boolean {line[:40]!r}")
            self._done(end, frames)
        elif t == 44 or t == 40:           # , double, ( big number
            self._done(end, frames)
        else:
            raise UpstreamProtocolError(f"unknown reply type {line[:40]!r}")

    def _skip_payload(self, data: bytes, pos: int, frames: list[Frame]) -> int:
        left = self._skip
        take = min(left, len(data) - pos)
        stop = pos + take
        payload_left = left - 2
        if self._capture is not None and payload_left > 0:
            self._capture += data[pos:pos + min(take, payload_left)]
        if left - take < 2:   # this piece reaches the trailing CRLF
            self._tail += data[pos + max(payload_left, 0):stop]
        self._skip = left - take
        if not self._skip:
            if self._tail != _CRLF:
                raise UpstreamProtocolError("bulk payload not followed by CRLF")
            self._tail = b""
            if self._capture is not None:
                self._head = bytes(self._capture)
                self._capture = None
            self._done(stop, frames)
        return stop

    def _done(self, end: int, frames: list[Frame]) -> None:
        """An item ended at `end`: count it, closing the aggregates it completes."""
        left = self._left
        while left:
            left[-1] -= 1
            if left[-1]:
                return
            left.pop()
            if self._isattr.pop():
                return   # an attribute is not an item of its parent
        frames.append(_tuple_new(Frame, (end, _KIND[self._kind], self._head)))
        self._head = None
        self._want_head = False


# ---------------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------------

def _b(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return b"%d" % value
    raise TypeError(f"cannot encode {type(value).__name__} as a RESP string")


def encode_command(args: Sequence[bytes | str | int]) -> bytes:
    """A command as the canonical multibulk every client sends (str is UTF-8, int decimal)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = _b(a)
        parts.append(b"$%d\r\n" % len(a))
        parts.append(a)
        parts.append(_CRLF)
    return b"".join(parts)


def simple(s: bytes | str) -> bytes:
    """A simple string reply (+OK). It must not contain CR or LF."""
    s = _b(s)
    if b"\r" in s or b"\n" in s:
        raise ValueError("a simple string cannot contain CR or LF")
    return b"+" + s + _CRLF


def error(s: bytes | str) -> bytes:
    """An error reply from its text without the '-', e.g. error("ERR unknown command").

    Like Redis's addReplyErrorFormat, CR and LF (which may come from client input) become spaces.
    """
    s = _b(s).replace(b"\r", b" ").replace(b"\n", b" ")
    return b"-" + s + _CRLF


def bulk(b: bytes | str | int | None, resp3: bool = False) -> bytes:
    """A bulk string reply; None is the null bulk ($-1, or _ in RESP3)."""
    if b is None:
        return b"_\r\n" if resp3 else b"$-1\r\n"
    b = _b(b)
    return b"$%d\r\n%b\r\n" % (len(b), b)


def integer(n: int) -> bytes:
    return b":%d\r\n" % n


def array(items: list[bytes]) -> bytes:
    """An array reply of already encoded items."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def map_(pairs: list[tuple[bytes, bytes]], resp3: bool = False) -> bytes:
    """A map reply of already encoded (key, value) pairs: RESP3 %, RESP2 a flat array."""
    head = b"%%%d\r\n" % len(pairs) if resp3 else b"*%d\r\n" % (2 * len(pairs))
    return head + b"".join(k + v for k, v in pairs)


def set_(items: list[bytes], resp3: bool = False) -> bytes:
    """A set reply of already encoded items: RESP3 ~, RESP2 an array."""
    return (b"~%d\r\n" if resp3 else b"*%d\r\n") % len(items) + b"".join(items)


def push(items: list[bytes], resp3: bool = False) -> bytes:
    """An out-of-band push (pub/sub message) of encoded items: RESP3 >, RESP2 an array."""
    return (b">%d\r\n" if resp3 else b"*%d\r\n") % len(items) + b"".join(items)


def verbatim(text: bytes | str, resp3: bool = False, fmt: bytes = b"txt") -> bytes:
    """A verbatim string (INFO, CLIENT INFO): RESP3 =, RESP2 a bulk string."""
    text = _b(text)
    if not resp3:
        return bulk(text)
    if len(fmt) != 3:
        raise ValueError("a verbatim format is 3 bytes")
    return b"=%d\r\n%b:%b\r\n" % (len(text) + 4, fmt, text)
