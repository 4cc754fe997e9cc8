"""A minimal multiplexing uvloop Redis proxy: the floor of a multiplexing Python proxy.

It exists to show whether beating twemproxy by 1.2x is reachable from Python at all. Like
twemproxy (and unlike bench/bytepipe.py, which opens one upstream connection per client), it
funnels every client onto ONE shared upstream connection (or ``--links N``, clients assigned
round-robin at accept time). Each client read is appended to its link's output while a FIFO
records ``(client, number_of_commands)``; replies coming back are split at reply boundaries and
handed out in FIFO order, one write per client per upstream read.

This is an experiment, not a proxy anyone should run:

- Requests are assumed to be canonical multibulk (``*N`` then ``$len`` args), as redis-benchmark
  sends them. ``--count walk`` walks the ``*N``/``$len`` headers with ``bytes.find`` (right for
  any canonical RESP); ``--count stride`` gives the same answer but, when a read is k frames of
  one header layout, checks each header byte in all k frames with one strided slice;
  ``--count fast`` counts ``\\r\\n*`` with ``bytes.count`` and only walks the
  last frame (right only while no argument contains ``\\r\\n*``, true of redis-benchmark's
  SET/GET traffic). An incomplete trailing frame is held until it is complete.
- Replies are split for ``+ - : $`` (incl. ``$-1``) and, on the slow path, ``*`` arrays; RESP3
  types are not handled.
- AUTH is NOT checked: the upstream links authenticate themselves (``--auth user:pass``) and a
  client's leading AUTH (first read only) is answered ``+OK`` locally. Nothing else is
  judged, parsed for meaning or routed.
- ``--flush soon`` collects a turn's client reads per link and writes them once per event-loop
  turn (``call_soon``); ``--flush now`` writes each client read to the link immediately.

    python bench/muxpipe.py --listen 127.0.0.1:7001 --upstream 127.0.0.1:6379 \\
        --auth bench:bench-password [--links 1] [--flush soon|now] [--count walk|stride|fast]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections import deque

from bytepipe import _addr, run, serve_until_signal   # bench/ is sys.path[0] when run as a script

HIGH_WATER = 1024 * 1024         # link write buffer before its clients are paused
LOW_WATER = 256 * 1024


def resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def reply_end(b: bytes, pos: int) -> int:
    """End of the reply starting at `pos`, or -1 if it is not complete in `b`."""
    if pos >= len(b):
        return -1
    e = b.find(b"\r\n", pos)
    if e < 0:
        return -1
    t = b[pos]
    if t == 36:                                   # $len\r\n<data>\r\n, $-1\r\n
        ln = int(b[pos + 1:e])
        if ln < 0:
            return e + 2
        e += ln + 4
        return e if e <= len(b) else -1
    if t == 42:                                   # *N: only CONFIG GET and the like, slow path
        p = e + 2
        for _ in range(int(b[pos + 1:e])):
            p = reply_end(b, p)
            if p < 0:
                return -1
        return p
    return e + 2                                  # + - :


def frames_walk(b: bytes) -> tuple[int, int]:
    """(complete canonical multibulk frames in b, end offset of the last complete one)."""
    n = pos = 0
    size = len(b)
    find = b.find
    while pos < size:
        e = find(b"\r\n", pos)
        if e < 0:
            break
        p = e + 2
        for _ in range(int(b[pos + 1:e])):
            e = find(b"\r\n", p)
            if e < 0:
                return n, pos
            p = e + 4 + int(b[p + 1:e])
        if p > size:
            break
        n += 1
        pos = p
    return n, pos


def frames_fast(b: bytes) -> tuple[int, int]:
    """Same answer as frames_walk while no argument contains b'\\r\\n*' (redis-benchmark)."""
    last = b.rfind(b"\r\n*") + 2                  # start of the last frame
    if last == 1:                                 # only one frame (or none) in b
        return frames_walk(b)
    if frames_walk(b[last:])[1] == len(b) - last:  # the common case: ends on a frame boundary
        return b.count(b"\r\n*") + 1, len(b)
    return b.count(b"\r\n*", 0, last) + 1, last   # hold the incomplete last frame


_layouts: dict = {}


def frames_stride(b: bytes) -> tuple[int, int]:
    """frames_walk's answer, cheaper when b is k frames with one header layout (redis-benchmark's
    batches): the first frame is walked, then every header byte of it is checked in all k frames
    at once with a strided slice. Exact for canonical RESP (the walk reads only the headers)."""
    size = len(b)
    find = b.find
    e = find(b"\r\n")
    if e < 0:
        return 0, 0
    heads, starts = [b[:e + 2]], [0]
    p = e + 2
    for _ in range(int(b[1:e])):
        e = find(b"\r\n", p)
        if e < 0:
            return 0, 0
        heads.append(b[p:e + 2])
        starts.append(p)
        p = e + 4 + int(b[p + 1:e])
    k, rest = divmod(size, p)
    if rest or k == 1:
        return frames_walk(b)
    key = (k, *heads)
    checks = _layouts.get(key)
    if checks is None:
        if len(_layouts) > 1024:
            _layouts.clear()
        checks = _layouts[key] = [(s + j, h[j:j + 1] * k)
                                  for s, h in zip(starts, heads) for j in range(len(h))]
    for j, want in checks:
        if b[j::p] != want:
            return frames_walk(b)
    return k, size


COUNTERS = {"walk": frames_walk, "stride": frames_stride, "fast": frames_fast}


class Link(asyncio.Protocol):
    """One shared upstream connection."""

    def __init__(self, flush: str) -> None:
        self.transport = None
        self.fifo: deque = deque()                 # (client or None, commands)
        self.left = 0                              # replies still owed to fifo[0]
        self.buf = b""                             # an incomplete reply from the last read
        self.out: list[bytes] = []
        self.clients: set = set()
        self.paused = False
        self.ready = asyncio.get_running_loop().create_future()
        self.loop = asyncio.get_running_loop()
        self.send = self.send_soon if flush == "soon" else self.send_now

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    # -- requests ---------------------------------------------------------------------------

    def send_now(self, client, data: bytes, n: int) -> None:
        if not self.fifo:
            self.left = n
        self.fifo.append((client, n))
        self.transport.write(data)

    def send_soon(self, client, data: bytes, n: int) -> None:
        if not self.fifo:
            self.left = n
        self.fifo.append((client, n))
        if not self.out:
            self.loop.call_soon(self.flush)
        self.out.append(data)

    def flush(self) -> None:
        self.transport.writelines(self.out)
        self.out = []

    # -- replies ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        b = self.buf + data if self.buf else data
        size, pos, fifo, left = len(b), 0, self.fifo, self.left
        while fifo:
            client = fifo[0][0]
            start = pos
            e = reply_end(b, pos)
            if e < 0:
                break
            # Fast path: the client's next `left` replies are one reply repeated (+OK, $3 xxx).
            r = e - pos
            stop = pos + r * left
            if stop <= size and (left == 1 or b[e:stop] == b[pos:e] * (left - 1)):
                pos, left = stop, 0
            else:
                pos, left = e, left - 1
                while left and (e := reply_end(b, pos)) >= 0:
                    pos, left = e, left - 1
            if client is None:                     # the link's own AUTH
                if b[start:pos] != b"+OK\r\n":
                    sys.exit(f"muxpipe: upstream AUTH answered {b[start:pos]!r}")
                self.ready.set_result(None)
            elif client.alive:
                client.transport.write(b[start:pos])
            if left:
                break
            fifo.popleft()
            if fifo:
                left = fifo[0][1]
        self.left = left
        self.buf = b[pos:] if pos < size else b""

    # -- back-pressure ----------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.paused = True
        for c in self.clients:
            c.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        for c in self.clients:
            c.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        print(f"muxpipe: upstream link lost ({exc})", file=sys.stderr)
        for c in list(self.clients):
            c.transport.close()
        asyncio.get_running_loop().stop()


class Client(asyncio.Protocol):
    def __init__(self, link: Link, count: str) -> None:
        self.link = link
        self.count = COUNTERS[count]
        self.transport = None
        self.held = b""
        self.first = True
        self.alive = True

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.link.clients.add(self)
        if self.link.paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.held:
            data = self.held + data
        if self.first:
            # Answer a leading AUTH locally (the link is authenticated already).
            if data[:14].upper() in (b"*2\r\n$4\r\nAUTH\r\n", b"*3\r\n$4\r\nAUTH\r\n"):
                end = _first_frame_end(data)
                if end < 0:
                    self.held = data
                    return
                self.transport.write(b"+OK\r\n")
                data = data[end:]
            self.first = False
            if not data:
                self.held = b""
                return
        n, end = self.count(data)
        if end == len(data):
            self.held = b""
        else:
            self.held = data[end:]
            data = data[:end]
        if n:
            self.link.send(self, data, n)

    def connection_lost(self, exc) -> None:
        self.alive = False
        self.link.clients.discard(self)


def _first_frame_end(b: bytes) -> int:
    """End of the first multibulk frame in b, or -1 if it is incomplete."""
    e = b.find(b"\r\n")
    if e < 0:
        return -1
    p = e + 2
    for _ in range(int(b[1:e])):
        e = b.find(b"\r\n", p)
        if e < 0:
            return -1
        p = e + 4 + int(b[p + 1:e])
    return p if p <= len(b) else -1


async def serve(args) -> None:
    loop = asyncio.get_running_loop()
    links = []
    for _ in range(args.links):
        _, link = await loop.create_connection(lambda: Link(args.flush), *_addr(args.upstream))
        if args.auth:
            user, _, password = args.auth.partition(":")
            creds = (user.encode(), password.encode()) if password else (user.encode(),)
            link.fifo.append((None, 1))
            link.left = 1
            link.transport.write(resp(b"AUTH", *creds))
            await link.ready
        links.append(link)
    count = args.count
    turn = iter(range(1 << 62))
    server = await loop.create_server(
        lambda: Client(links[next(turn) % len(links)], count), *_addr(args.listen), backlog=4096)
    await serve_until_signal(server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="host:port to accept clients on")
    ap.add_argument("--upstream", required=True, help="host:port of Redis")
    ap.add_argument("--auth", default="", help="user:password (or password) for the upstream links")
    ap.add_argument("--links", type=int, default=1, help="shared upstream connections (default 1)")
    ap.add_argument("--flush", choices=("soon", "now"), default="soon",
                    help="soon: one link write per loop turn; now: one per client read")
    ap.add_argument("--count", choices=tuple(COUNTERS), default="walk",
                    help="how commands in a client read are counted (see the docstring)")
    run(serve(ap.parse_args()))


if __name__ == "__main__":
    main()
