"""How fast does resp.RequestParser parse pipelined commands? (a measurement, not a test)

Compares, on one buffer of N pipelined commands:
  strict   RequestParser.drain() with the C scan (redisgate/_native/_speedups.c), as the proxy runs it
           (validates, makes the argument lists; drain() then slices each raw request)
  python   the same with the C scan turned off: the strict pure-Python parser; its batch path
           splits each read on CRLF in C and checks lengths with map()
  hiredis+ the same validation as a scan that slices nothing, then hiredis.Reader builds the
           argument lists ("validate, then use": hiredis never sees unchecked input, so its
           leniency and its preallocation from declared sizes cannot be reached)
  proof    the other order ("use, then prove"): hiredis parses first, then C-level counts prove
           that the bytes it consumed were the canonical multibulk encoding of what it returned
           (see HiredisThenProof); not airtight against hiredis's array preallocation on hostile
           declared sizes, so a measurement of the best case only
  hiredis  hiredis.Reader alone: lenient, no raw bytes, unsafe on hostile input; a lower bound

Run: python bench/resp_parse.py [N]
"""
from __future__ import annotations

import sys
import timeit
from itertools import accumulate, chain, repeat
from operator import add

import hiredis

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from redisgate.protocol import resp  # noqa: E402
from redisgate.protocol.resp import RequestParser, Request, encode_command, _CRLF, _tuple_new  # noqa: E402

SHA = b"a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
EVALSHA = [b"evalsha", SHA, b"4", b"asynq:{default}:pending", b"asynq:{default}:paused",
           b"asynq:{default}:active", b"asynq:{default}:lease", b"1732800000",
           b"asynq:{default}:t:"]
SETGET = [[b"set", b"key:000123", b"value-0123456789"], [b"get", b"key:000123"]]


class HiredisAfterScan(RequestParser):
    """The candidate alternative: Python validates frame boundaries (the find-based loop of
    RequestParser._fast without its slicing), then hiredis splits the validated region."""

    def _batch(self, buf, pos, out):
        limit = 1 << 62
        end = len(buf)
        find = buf.find
        counts, bulks = self._counts, self._bulks
        bounds = []
        first = pos
        while pos < end and len(bounds) + len(out) < limit:
            r = find(_CRLF, pos, pos + 24)
            if r < 0:
                break
            n = counts.get(buf[pos:r])
            if n is None:
                n = self._count_ok(buf[pos:r])
                if n is None:
                    break
            p = r + 2
            if n <= 0:
                break   # keep the hiredis region free of skipped frames
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
                p += 2
            else:
                bounds.append((pos, p))
                pos = p
                continue
            break
        if bounds:
            reader = hiredis.Reader()
            reader.feed(buf, first, pos - first)
            gets = reader.gets
            emit = out.append
            for s, e in bounds:
                emit(_tuple_new(Request, (gets(), buf[s:e])))
        return self._fast(buf, pos, out, limit)


# Canonical header lengths, "*<n>\r\n" and "$<len>\r\n" plus the payload's CRLF.
_CL = [len(b"*%d\r\n" % n) for n in range(100)]
_HL = [len(b"$%d\r\n" % n) + 2 for n in range(1 << 16)]


class HiredisThenProof(RequestParser):
    """hiredis parses a region that ends at a frame boundary (hiredis then holds nothing), and
    counts made in C prove what it returned is what the strict parser would: the region is the
    canonical encoding of lists of bytes. hiredis reads every aggregate type as a list and
    `+`, `=` (verbatim) elements as bytes, and skips the two bytes after a bulk unchecked; every
    other type fails the join. A verbatim element hides a ':' of its format, a `+` element lacks
    its '$', a `>`/`~`/`|` frame its '*', a non-CRLF pair after a payload its CRLF (unless the
    payload ends in CR: refused here), a non-canonical header adds bytes: so the counts below
    hold exactly for canonical input. One gap it does not close: hiredis preallocates arrays
    from their declared size before the elements arrive."""

    @staticmethod
    def _hiredis(buf, pos, end):
        """Everything hiredis makes of buf[pos:end], and whether it was left holding bytes."""
        reader = hiredis.Reader()
        reader.feed(buf, pos, end - pos)
        got = []
        while (x := reader.gets()) is not False:
            got.append(x)
        return got, reader.has_data()

    def _batch(self, buf, pos, out):
        end = len(buf)
        got, partial = self._hiredis(buf, pos, end)
        if partial:
            # Not a boundary: retry up to the last "\r\n*" (a boundary, or hiredis holds data).
            end = buf.rfind(b"\r\n*", pos, end) + 2
            if end <= pos + 2:
                return self._fast(buf, pos, out, 1 << 62)
            got, partial = self._hiredis(buf, pos, end)
            if partial:
                return self._fast(buf, pos, out, 1 << 62)
        try:
            if not got or set(map(type, got)) != {list}:
                raise TypeError
            counts = list(map(len, got))
            flat = list(chain.from_iterable(got))
            joined = b"\0".join(flat)                 # TypeError unless every element is bytes
            lens = list(map(len, flat))
            widths = list(map(add, map(_HL.__getitem__, lens), lens))   # IndexError: too long
            heads = list(map(_CL.__getitem__, counts)) if min(counts) > 0 else None
        except (TypeError, IndexError):
            return self._fast(buf, pos, out, 1 << 62)
        nargs = len(flat)
        if heads is None or sum(heads) + sum(widths) != end - pos \
                or buf.count(b"*", pos, end) != len(got) + joined.count(b"*") \
                or buf.count(b"$", pos, end) != nargs + joined.count(b"$") \
                or buf.count(b":", pos, end) != joined.count(b":") \
                or buf.count(_CRLF, pos, end) != len(got) + 2 * nargs + joined.count(_CRLF) \
                or b"\r\0" in joined or flat[-1].endswith(b"\r"):
            return self._fast(buf, pos, out, 1 << 62)
        # Where each request ends: its header plus its arguments' widths, accumulated in C.
        arg_end = list(accumulate(widths))
        stops = list(map(add, accumulate(heads),
                         map(arg_end.__getitem__, map((-1).__add__, accumulate(counts)))))
        starts = [0] + stops[:-1]
        raws = map(buf.__getitem__, map(slice, map(pos.__add__, starts), map(pos.__add__, stops)))
        out += map(_tuple_new, repeat(Request, len(got)), zip(got, raws))
        return self._fast(buf, end, out, 1 << 62)


CHUNK = 64 * 1024   # what one socket read typically hands the protocol


def bench(name, commands, n):
    buf = b"".join(encode_command(c) for c in commands) * (n // len(commands))
    count = (n // len(commands)) * len(commands)
    chunks = [buf[i:i + CHUNK] for i in range(0, len(buf), CHUNK)]

    def run(parser_class, c_scan=None):
        def fn():
            saved = resp._c_scan
            resp._c_scan = c_scan    # read when the parser is made
            try:
                p = parser_class(authenticated=True)
            finally:
                resp._c_scan = saved
            got = 0
            for chunk in chunks:
                p.feed(chunk)
                got += len(p.drain())
            assert got == count
        return fn

    def hiredis_alone():
        r = hiredis.Reader()
        got = 0
        for chunk in chunks:
            r.feed(chunk)
            while r.gets() is not False:
                got += 1
        assert got == count

    p1, p2 = RequestParser(authenticated=True), HiredisAfterScan(authenticated=True)
    p3 = HiredisThenProof(authenticated=True)
    p1.feed(buf), p2.feed(buf), p3.feed(buf)
    assert p1.drain() == p2.drain() == p3.drain()
    print(f"{name}: {count} pipelined commands of {len(buf) / count:.0f} bytes, "
          f"fed in {CHUNK // 1024} KiB reads")
    rows = [("python  ", run(RequestParser)), ("hiredis+", run(HiredisAfterScan)),
            ("proof   ", run(HiredisThenProof)), ("hiredis ", hiredis_alone)]
    if resp._c_scan is not None:
        rows.insert(0, ("strict  ", run(RequestParser, resp._c_scan)))
    for label, fn in rows:
        best = min(timeit.repeat(fn, number=1, repeat=7))
        print(f"  {label} {count / best / 1e6:6.2f} M commands/s  ({best / count * 1e9:5.0f} ns each)")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    bench("EVALSHA (asynq dequeue shape)", [EVALSHA], n)
    bench("SET/GET", SETGET, n)
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from judge import asynq_commands
    bench("judge.py's Asynq mix", asynq_commands(9), n)
