"""A minimal uvloop TCP byte pipe: the floor for any Python proxy.

Every accepted client gets its own upstream connection; bytes are copied both ways without being
looked at. Nothing is parsed, nothing is buffered beyond the transports' own write buffers, and
back-pressure is the one thing it does besides copying: when one side's write buffer passes the
high-water mark, the other side stops reading until it drains.

Whatever redisgate costs above this pipe is the price of parsing and judging; whatever this pipe
costs above direct Redis is the price of one extra Python hop (asyncio Protocols on uvloop).

    python bench/bytepipe.py --listen 127.0.0.1:7000 --upstream 127.0.0.1:6379
"""
from __future__ import annotations

import argparse
import asyncio
import signal

HIGH_WATER = 256 * 1024          # per-transport write buffer before the peer is paused
LOW_WATER = 64 * 1024


class _Side(asyncio.Protocol):
    """One half of a pipe; `peer` is the other half once both are connected."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.early: list[bytes] = []  # data that arrived before the peer existed

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    # Our transport's write buffer is full: stop reading from the side that fills it.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        # close() flushes what is already buffered for the peer, then closes it.
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        self.peer = None


class Upstream(_Side):
    pass


class Client(_Side):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream_addr = upstream

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.pause_reading()           # nothing to forward to until upstream is up
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(Upstream, *self.upstream_addr)
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():
            up.transport.close()
            return
        up.peer, self.peer = self, up
        for chunk in self.early:
            up.transport.write(chunk)
        self.early.clear()
        self.transport.resume_reading()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve_until_signal(server) -> None:
    """Serve with `server` until SIGTERM or SIGINT (also bench/muxpipe.py's)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def run(main_coro) -> None:
    """Run a coroutine on uvloop (on asyncio's own loop if uvloop is missing: still a floor,
    only a slower one)."""
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main_coro)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream), *listen, backlog=4096)
    await serve_until_signal(server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="host:port to accept clients on")
    ap.add_argument("--upstream", required=True, help="host:port of Redis")
    args = ap.parse_args()
    run(serve(_addr(args.listen), _addr(args.upstream)))


if __name__ == "__main__":
    main()
