"""A minimal uvloop TCP byte pipe: the floor for any Python proxy.

Every accepted client gets its own upstream connection; bytes are copied both ways without being
looked at. Nothing is parsed, nothing is buffered beyond the transports' own write buffers, and
back-pressure is the one thing it does besides copying: when one side's write buffer passes the
high-water mark, the other side stops reading until it drains.

Whatever redisgate costs above this pipe is the price of parsing and judging; whatever this pipe
costs above direct Redis is the price of one extra Python hop (asyncio Protocols on uvloop).

    python bench/bytepipe.py --listen 127.0.0.1:7000 --upstream 127.0.0.1:6379
    python bench/bytepipe.py ... --tls uvloop|engine|c --cert server.crt --key server.key

With --tls it terminates TLS first, one of three ways, to measure the routes to a fast TLS
listener side by side on the same floor: `uvloop` (the loop's own TLS transport,
`create_server(ssl=...)`: its SSLProtocol, in Cython; it hides failed handshakes from the
application), `engine` (redisgate.tls.TLSEngine in Python: ssl.SSLObject over MemoryBIOs, the
route redisgate took before redisgate._native._tlsrec) and `c` (the engine's handshake, then
redisgate._native._tlsrec.Record's records in C, as redisgate does now).
"""
from __future__ import annotations

import argparse
import asyncio
import signal

HIGH_WATER = 256 * 1024          # per-transport write buffer before the peer is paused
LOW_WATER = 64 * 1024


class _Side(asyncio.Protocol):
    """One half of a pipe; `peer` is the other half once both are connected."""

    closed = False   # (read by redisgate._native._tlsrec.Record: is plaintext still wanted?)

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


class _EngineTransport:
    """What the pipe's client side sees of an engine-terminated TLS connection."""

    def __init__(self, raw, engine) -> None:
        self.raw, self.engine = raw, engine

    def write(self, data: bytes) -> None:
        self.engine.send(data)
        self.raw.write(self.engine.data_to_send())

    def close(self) -> None:
        self.engine.close()
        self.raw.write(self.engine.data_to_send())
        self.raw.close()

    def set_write_buffer_limits(self, high, low) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def is_closing(self) -> bool:
        return self.raw.is_closing()


class TLSClient(asyncio.Protocol):
    """The engine routes: the handshake in redisgate.tls.TLSEngine, then the records there
    (`engine`) or in redisgate._native._tlsrec.Record (`c`); plaintext goes to a Client."""

    def __init__(self, upstream, context, record_cls) -> None:
        self.upstream, self.context, self.inner = upstream, context, None
        self.record = record_cls(self._data_received) if record_cls else None
        if self.record is not None:
            self.data_received = self.record.data_received

    def connection_made(self, transport) -> None:
        from redisgate.tls import TLSEngine
        self.raw = transport
        self.engine = TLSEngine(self.context)

    def _data_received(self, data: bytes) -> None:
        from redisgate.tls import TLSHandshakeError, TLSRecordError
        try:
            plain = self.engine.receive(data)
        except (TLSHandshakeError, TLSRecordError):
            self.raw.write(self.engine.data_to_send())
            self.raw.close()
            return
        out = self.engine.data_to_send()
        if out:
            self.raw.write(out)
        if self.inner is None:
            if not self.engine.handshake_done:
                return
            self.inner = Client(self.upstream)
            wrapped = _EngineTransport(self.raw, self.engine)
            if self.record is not None and self.engine.hand_over(
                    self.record, self.raw.write, self.inner, self.inner.data_received,
                    lambda reason: self.raw.close(), self.raw.close):
                wrapped.write = self.record.write
            self.inner.connection_made(wrapped)
        if plain:
            self.inner.data_received(plain)
        if self.engine.peer_closed:
            self.raw.close()

    data_received = _data_received

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        if self.inner is not None:
            self.inner.closed = True
            self.inner.connection_lost(exc)


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


async def serve(listen: tuple[str, int], upstream: tuple[str, int], tls: str | None = None,
                cert: str | None = None, key: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    if tls is None:
        server = await loop.create_server(lambda: Client(upstream), *listen, backlog=4096)
    else:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_TICKET   # as redisgate's listeners
        ctx.load_cert_chain(cert, key)
        if tls == "uvloop":
            server = await loop.create_server(lambda: Client(upstream), *listen, backlog=4096,
                                              ssl=ctx, ssl_handshake_timeout=10.0)
        else:
            record_cls = None
            if tls == "c":
                from redisgate.tls import record_layer
                record_cls = record_layer()
                if record_cls is None:
                    raise SystemExit("redisgate._native._tlsrec is not built or not usable here")
            server = await loop.create_server(lambda: TLSClient(upstream, ctx, record_cls),
                                              *listen, backlog=4096)
    await serve_until_signal(server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="host:port to accept clients on")
    ap.add_argument("--upstream", required=True, help="host:port of Redis")
    ap.add_argument("--tls", choices=("uvloop", "engine", "c"), help="terminate TLS this way")
    ap.add_argument("--cert", help="server certificate (PEM), with --tls")
    ap.add_argument("--key", help="its private key (PEM), with --tls")
    args = ap.parse_args()
    if args.tls and not (args.cert and args.key):
        ap.error("--tls needs --cert and --key")
    run(serve(_addr(args.listen), _addr(args.upstream), args.tls, args.cert, args.key))


if __name__ == "__main__":
    main()
