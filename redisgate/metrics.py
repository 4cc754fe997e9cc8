"""Prometheus metrics (prometheus-client). Counting is per event, never per forwarded byte."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

CONNECTIONS = Counter("redisgate_connections", "Client connections accepted")
ACTIVE = Gauge("redisgate_connections_active", "Client connections open now")
AUTH_FAILURES = Counter("redisgate_auth_failures", "Failed AUTH/HELLO AUTH attempts", ["user"])
DENIED = Counter("redisgate_commands_denied", "Commands refused (or reported, in report-only mode)",
                 ["user", "kind", "mode"])
UPSTREAM_ERRORS = Counter("redisgate_upstream_errors", "Upstream connections that failed or were lost")

_BY_NAME = {"auth_failures": AUTH_FAILURES, "denied": DENIED, "upstream_errors": UPSTREAM_ERRORS}


def inc(name: str, *labels: str) -> None:
    metric = _BY_NAME[name]
    (metric.labels(*labels) if labels else metric).inc()


def connection_opened() -> None:
    CONNECTIONS.inc()
    ACTIVE.inc()


def connection_closed() -> None:
    ACTIVE.dec()


def start_http(host: str, port: int) -> None:
    start_http_server(port, addr=host)
