"""Prometheus metrics (prometheus-client). Counting is per event, never per forwarded byte.

Label values are bounded by the configuration, never chosen by a client: a `user` label is a
configured user's name or ``unknown`` (callers pass `audit.user_label(...)`; `inc` checks it
again against the users `set_users` was last given), `kind`/`mode`/`scope` are fixed words.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

CONNECTIONS = Counter("redisgate_connections", "Client connections accepted")
ACTIVE = Gauge("redisgate_connections_active", "Client connections open now")
AUTH_FAILURES = Counter("redisgate_auth_failures", "Failed AUTH/HELLO AUTH attempts", ["user"])
DENIED = Counter("redisgate_commands_denied", "Commands refused (or reported, in report-only mode)",
                 ["user", "kind", "mode"])
UPSTREAM_ERRORS = Counter("redisgate_upstream_errors", "Upstream connections that failed or were lost")
AUTH_LOCKOUTS = Counter("redisgate_auth_lockouts", "Lockouts started by auth_throttle, by what was "
                        "locked (a source address or a user name)", ["scope"])
AUTH_REFUSED_LOCKED = Counter("redisgate_auth_refused_locked",
                              "Login attempts refused unchecked during an auth_throttle lockout")
AUTH_TIMEOUTS = Counter("redisgate_auth_timeouts",
                        "Connections closed by limits.auth_timeout before they logged in")

_BY_NAME = {"auth_failures": AUTH_FAILURES, "denied": DENIED, "upstream_errors": UPSTREAM_ERRORS,
            "auth_lockouts": AUTH_LOCKOUTS, "auth_refused_locked": AUTH_REFUSED_LOCKED,
            "auth_timeouts": AUTH_TIMEOUTS}
_USER_LABELLED = frozenset({"auth_failures", "denied"})   # their first label is a user name
_users: set[str] = set()


def set_users(names) -> None:
    """The configured users' names (a Gate calls this at start and on reload). Names of users
    configured by any gate of this process stay allowed: a reload does not drop a label set."""
    _users.update(names)


def inc(name: str, *labels: str) -> None:
    metric = _BY_NAME[name]
    if labels and name in _USER_LABELLED and labels[0] not in _users:
        labels = ("unknown",) + labels[1:]
    (metric.labels(*labels) if labels else metric).inc()


def connection_opened() -> None:
    CONNECTIONS.inc()
    ACTIVE.inc()


def connection_closed() -> None:
    ACTIVE.dec()


def start_http(host: str, port: int) -> None:
    start_http_server(port, addr=host)
