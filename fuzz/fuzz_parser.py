"""Coverage-guided fuzz target for the request parser (redisgate.protocol.resp.RequestParser).

It drives the parser exactly as the production path does (session.Session.client_data): feed()
each read, then take_batch() while it hands out batches, else next(); a ProtocolError ends the
connection. That runs twice, with the C speedups (redisgate._native._speedups: take_batch's scan, next()'s
pending check) and with their pure-Python twins, and both must agree with a reference: the same
bytes fed whole to a pure-Python parser and read with next() alone (its own fast loop and the
careful state machine, never take_batch's scans). And on every input the two scans themselves
are compared: take_batch() once on the whole bytes, the Python scan's requests are the first of
the C scan's (the C scan skips payloads by length and so also takes a payload that holds a
CRLF, which the split-based Python scan leaves to next()), and where they take as many, they
stop at the same offset. (drain() is the production loop too, so it is no reference any more;
it is checked against it.)

The input: byte 0 chooses the mode (bit 0: authenticated from the start; bit 1: the small limits
max_bulk=64, max_args=8, max_inline=48 that random inputs can reach; bit 2: authenticate after
the first request, as a successful AUTH does), byte 1 is a count n (mod 16) of read sizes in the
next n bytes (1..255 each), the rest is what the client sends, cut into reads of those sizes (the
last read takes what is left).

Run it (see fuzz/README.md):  python fuzz/fuzz_parser.py -atheris_runs=1000000 [corpus dirs]
The harness function `check(data)` is also what tests/test_fuzz_short.py runs under hypothesis.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

# The redisgate of this checkout, not an installed one.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
    import atheris
except ImportError:   # the hypothesis-driven short run needs only check()
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports(include=["redisgate"]):
        from redisgate.protocol import resp
        from redisgate.protocol.resp import ProtocolError, RequestParser, encode_command
else:
    from redisgate.protocol import resp
    from redisgate.protocol.resp import ProtocolError, RequestParser, encode_command

try:
    from redisgate._native import _speedups
except ImportError:   # not built: the C side of the comparison is the Python twin again
    _speedups = None

SMALL = dict(max_bulk=64, max_args=8, max_inline=48)


class Mismatch(AssertionError):
    """The C and Python parsers, or the production loop and the reference, disagree."""


@contextmanager
def speedups(on: bool):
    """resp.py with (on) or without its C parts, as REDISGATE_PURE_PYTHON would choose at import.
    A parser picks its scan in set_authenticated(), so this must hold while it is used."""
    saved = resp._c_scan, resp._c_pending, resp._c_count_flat
    if on and _speedups is not None:
        resp._c_scan, resp._c_pending = _speedups.scan, _speedups.pending
        resp._c_count_flat = _speedups.count_flat
    else:
        resp._c_scan = resp._c_count_flat = None
    try:
        yield
    finally:
        resp._c_scan, resp._c_pending, resp._c_count_flat = saved


def decode(data: bytes):
    """(authenticated, limits, auth_after_first, reads) from a fuzz input."""
    if len(data) < 2:
        return False, {}, False, [data]
    flags, n = data[0], data[1] % 16
    sizes = [max(1, b) for b in data[2:2 + n]]
    body = data[2 + n:]
    reads, i = [], 0
    for size in sizes:
        if i >= len(body):
            break
        reads.append(body[i:i + size])
        i += size
    if i < len(body) or not reads:
        reads.append(body[i:])
    return bool(flags & 1), (SMALL if flags & 2 else {}), bool(flags & 4), reads


def production(reads, authenticated: bool, limits: dict, auth_after_first: bool):
    """The requests as Session.client_data takes them: [(args, raw)], and the error reply or None."""
    parser = RequestParser(authenticated=authenticated, **limits)
    out: list[tuple[list[bytes], bytes | None]] = []
    for data in reads:
        parser.feed(data)
        while True:
            batch = parser.take_batch()
            if batch is not None:
                count = len(batch.args)
                if count == 0:
                    raise Mismatch("take_batch() returned an empty batch")
                parts = [batch.request(j) for j in range(count)]
                whole = batch.raw()
                if b"".join(p.raw for p in parts) != whole:
                    raise Mismatch(f"batch.raw() is not its requests' bytes: {whole!r}")
                if batch.same and not all(list(p.args[0]) == list(parts[0].args[0])
                                          for p in parts[:batch.same]):
                    raise Mismatch("batch.same covers requests of different names")
                for j0 in {1, count // 2, count - 1}:
                    # (What Session._run forwards: slices of the batch between refused requests.)
                    if batch.raw(j0) != b"".join(p.raw for p in parts[j0:]):
                        raise Mismatch(f"batch.raw({j0}) is not the bytes of its requests")
                    if batch.raw(0, j0) != b"".join(p.raw for p in parts[:j0]):
                        raise Mismatch(f"batch.raw(0, {j0}) is not the bytes of its requests")
                out += [(list(p.args), p.raw) for p in parts]
                if batch.rest:
                    continue
                break
            try:
                req = parser.next()
            except ProtocolError as e:
                return out, e.reply
            if req is None:
                break
            out.append((list(req.args), req.raw))
            if auth_after_first and not parser.authenticated:
                parser.set_authenticated(True)
    return out, None


def reference(body: bytes, authenticated: bool, limits: dict, auth_after_first: bool):
    """Everything fed at once to the pure-Python parser, read with next() alone."""
    parser = RequestParser(authenticated=authenticated, **limits)
    out: list[tuple[list[bytes], bytes | None]] = []
    parser.feed(body)
    try:
        while (req := parser.next()) is not None:
            out.append((list(req.args), req.raw))
            if auth_after_first and not parser.authenticated:
                parser.set_authenticated(True)
    except ProtocolError as e:
        return out, e.reply
    return out, None


def drained(body: bytes, authenticated: bool, limits: dict, auth_after_first: bool):
    """Everything fed at once, read with drain() (the production loop, as tests use it)."""
    parser = RequestParser(authenticated=authenticated, **limits)
    out: list[tuple[list[bytes], bytes | None]] = []
    parser.feed(body)
    try:
        while reqs := parser.drain():
            out += [(list(r.args), r.raw) for r in reqs]
            if auth_after_first and not parser.authenticated:
                parser.set_authenticated(True)
    except ProtocolError as e:
        return out, e.reply
    return out, None


def scanned(body: bytes, limits: dict):
    """take_batch() once on the whole bytes, authenticated: (requests, where it stopped), or
    None when it took nothing."""
    parser = RequestParser(authenticated=True, **limits)
    parser.feed(body)
    batch = parser.take_batch()
    if batch is None:
        return None
    if batch.same and len({bytes(r.args[0]) for r in batch.requests()[:batch.same]}) != 1:
        raise Mismatch("batch.same covers requests of different names")
    return [(list(r.args), r.raw) for r in batch.requests()], batch.stop


def check(data: bytes) -> None:
    """Raise Mismatch (an AssertionError) when the parsers disagree or break a rule."""
    authenticated, limits, auth_after_first, reads = decode(data)
    body = b"".join(reads)
    with speedups(True):
        fast = production(reads, authenticated, limits, auth_after_first)
        fast_drained = drained(body, authenticated, limits, auth_after_first)
        c_scan = scanned(body, limits)
    with speedups(False):
        twin = production(reads, authenticated, limits, auth_after_first)
        ref = reference(body, authenticated, limits, auth_after_first)
        py_scan = scanned(body, limits)
    if py_scan is not None and (c_scan is None or c_scan[0][:len(py_scan[0])] != py_scan[0]
                                or len(c_scan[0]) == len(py_scan[0]) and c_scan[1] != py_scan[1]):
        raise Mismatch(f"C scan and Python scan disagree:\n C: {c_scan!r}\n Py: {py_scan!r}")
    if fast != twin:
        raise Mismatch(f"C speedups and Python twin disagree:\n C: {fast!r}\n Py: {twin!r}")
    if fast != ref:
        raise Mismatch(f"production loop and next() disagree:\n got: {fast!r}\n ref: {ref!r}")
    if fast_drained != fast:
        raise Mismatch(f"drain() and the production loop disagree:\n got: {fast_drained!r}\n"
                       f" ref: {fast!r}")
    requests, reply = fast
    for args, raw in requests:
        if not args or not all(type(a) is bytes for a in args):
            raise Mismatch(f"bad argument list {args!r}")
        if raw is not None and raw != encode_command(args):
            raise Mismatch(f"raw {raw!r} is not the canonical frame of {args!r}")
    if reply is not None and not (reply.startswith(b"-ERR Protocol error: ")
                                  and reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1):
        raise Mismatch(f"not a protocol error reply: {reply!r}")


def seeds() -> list[bytes]:
    """A few starting inputs: pipelines, split headers, inline commands, errors."""
    get = encode_command([b"GET", b"app:1"])
    setv = encode_command([b"SET", b"app:2", b"x" * 70])
    pipe = get * 20 + setv + encode_command([b"DEL", b"a", b"b", b"c"]) * 3
    return [
        bytes([1, 0]) + pipe,
        bytes([1, 3, 5, 7, 11]) + pipe,
        bytes([0, 2, 9, 40]) + encode_command([b"AUTH", b"u", b"pw"]) + pipe,
        bytes([4, 1, 30]) + encode_command([b"AUTH", b"u", b"pw"]) + pipe,
        bytes([3, 0]) + b"PING\r\nSET a 'b c'\r\n\r\n" + get,
        bytes([1, 0]) + b"*2\r\n$3\r\nGET\r\n$5\r\napp:1\r\n*1\r\n$4\r\nPI",
        bytes([1, 0]) + b"*1\r\n$4\r\nPING\r\n*x\r\n",
        bytes([3, 0]) + b"*9\r\n" + b"$1\r\na\r\n" * 9,
        bytes([1, 0]) + b"*-1\r\n*0\r\n" + get + b"$4\r\n",
    ]


def main() -> None:
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris (or '.[fuzz]')")
    atheris.Setup(sys.argv, lambda data: check(data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
