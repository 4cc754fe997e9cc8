"""The admin HTTP endpoint (``admin: {listen}``; ``metrics: {address}`` is the same listener).

    GET /metrics   Prometheus text (prometheus-client's own WSGI app)
    GET /healthz   200 while the process serves
    GET /readyz    200 only while every listener accepts and the upstream answered PING through
                   an authenticated connection within the last READY_WINDOW seconds; 503 with a
                   one-line reason otherwise, and from the moment shutdown starts

HTTP is wsgiref's server (standard library) in a thread of its own, so a slow scrape never
touches the event loop; it reads the proxy's state (plain attributes) and the probe's last result.
The probe is a task on the proxy's loop, kept in ``Admin.tasks`` and cancelled by ``stop()``.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from . import dial

log = logging.getLogger("redisgate")

PROBE_INTERVAL = 1.0   # seconds between two upstream PINGs
READY_WINDOW = 5.0     # /readyz wants a PONG no older than this


class _Handler(WSGIRequestHandler):
    timeout = 10   # a client that sends nothing does not keep its thread

    def log_message(self, *args) -> None:   # probes every few seconds: not worth a log line
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class UpstreamProbe:
    """PING through a freshly authenticated upstream connection, every PROBE_INTERVAL."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.last_ok: float | None = None        # time.monotonic() of the last PONG
        self.last_error = "no answer to PING yet"

    async def run(self) -> None:
        while True:
            try:
                timeout = self.proxy.config.upstream.connect_timeout
                await asyncio.wait_for(self._ping(), timeout)
                self.last_ok = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as e:   # noqa: BLE001 - every failure is a reason to report
                if isinstance(e, asyncio.TimeoutError):
                    reason = "PING timed out"
                else:
                    reason = str(e) or e.__class__.__name__
                self.last_error = f"upstream {self.proxy.config.upstream.address}: {reason}"
            await asyncio.sleep(PROBE_INTERVAL)

    async def _ping(self) -> None:
        proxy = self.proxy
        host, port = proxy.probe_address()
        ssl_ctx, server_hostname = proxy.upstream_ssl(host)
        reader, writer = await asyncio.open_connection(host, port,
                                                       ssl=ssl_ctx, server_hostname=server_hostname)
        try:
            replies = await dial.ask(reader, writer, proxy.config.upstream, [b"PING"],
                                          read_size=4096, passwords=proxy.gate.passwords)
            for r in replies:
                if isinstance(r, Exception):
                    # (Redis's error text: never a secret; first line, bounded)
                    raise RuntimeError(f"answered -{str(r).splitlines()[0][:100]}")
            if replies[-1] != b"PONG":
                raise RuntimeError("PING was not answered PONG")
        finally:
            writer.close()


def proxy_readiness(proxy, probe: UpstreamProbe) -> str | None:
    """None when `proxy` is ready, else the one-line reason (/readyz; a worker of `serve
    --workers N` reports it to the parent)."""
    if proxy.shutting_down:
        return "shutting down"
    listeners = proxy.listeners   # (those running: a reload does not move them)
    for srv, lst in zip(proxy.servers, listeners):
        if not srv.is_serving():
            return f"listener {lst.host}:{lst.port} is not accepting"
    if len(proxy.servers) < len(listeners):
        return "listeners are not all up yet"
    last = probe.last_ok
    if last is None or time.monotonic() - last > READY_WINDOW:
        return probe.last_error
    return None


class Admin:
    """The HTTP listener and the readiness probe of one Proxy; or, for the supervising parent of
    `serve --workers N` (proxy None), of the process group: `readiness` and `registry` given."""

    def __init__(self, proxy, host: str, port: int, *, readiness=None, registry=None):
        self.proxy = proxy
        self.host, self.port = host, port
        self.probe = UpstreamProbe(proxy) if proxy is not None else None
        self._readiness = readiness
        self.tasks: set[asyncio.Task] = set()
        self._metrics = make_wsgi_app(registry) if registry is not None else make_wsgi_app()
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- what the endpoints answer (also called directly by tests)

    def readiness(self) -> str | None:
        """None when ready, else the one-line reason."""
        if self._readiness is not None:
            return self._readiness()
        return proxy_readiness(self.proxy, self.probe)

    def app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path not in ("/healthz", "/readyz"):
            return _text(start_response, "404 Not Found", "not found: try /metrics, /healthz, /readyz")
        if method not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "only GET")
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok")
        reason = self.readiness()
        if reason is None:
            return _text(start_response, "200 OK", "ready")
        return _text(start_response, "503 Service Unavailable", reason)

    # -- lifecycle

    def start(self) -> None:
        """Bind (an OSError if the address is taken), serve in a thread, start the probe."""
        server_class = _Server6 if ":" in self.host else _Server
        self._httpd = make_server(self.host, self.port, self.app, server_class=server_class,
                                  handler_class=_Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                         name="redisgate-admin", daemon=True)
        self._thread.start()
        if self.probe is not None:
            task = asyncio.get_running_loop().create_task(self.probe.run())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        log.info("admin endpoint on http://%s:%d (/metrics, /healthz, /readyz)", self.host, self.port)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._httpd is not None:
            httpd, self._httpd = self._httpd, None
            await asyncio.get_running_loop().run_in_executor(None, httpd.shutdown)
            httpd.server_close()


def _text(start_response, status: str, body: str):
    data = (body + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data)))])
    return [data]
