"""Prometheus metrics (prometheus-client). Counting is per event, never per forwarded byte.

Label values are bounded by the configuration, never chosen by a client: a `user` label is a
configured user's name or ``unknown`` (callers pass `audit.user_label(...)`; `inc` checks it
again against the users `set_users` was last given), `kind`/`mode`/`scope` are fixed words.
"""
from __future__ import annotations

import os

from prometheus_client import REGISTRY, Counter, Gauge, start_http_server

CONNECTIONS = Counter("redisgate_connections", "Client connections accepted")
# (With `serve --workers N`, prometheus-client's multiprocess mode: every Gauge needs a
# multiprocess_mode; "livesum" sums the live workers, a dead worker's value goes with it.)
ACTIVE = Gauge("redisgate_connections_active", "Client connections open now",
               multiprocess_mode="livesum")
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
CLIENTS_REFUSED = Counter("redisgate_clients_refused",
                          "Connections refused by limits.max_clients or max_clients_per_user",
                          ["limit"])
IDLE_TIMEOUTS = Counter("redisgate_idle_timeouts",
                        "Logged-in connections closed by limits.idle_timeout")

_BY_NAME = {"auth_failures": AUTH_FAILURES, "denied": DENIED, "upstream_errors": UPSTREAM_ERRORS,
            "auth_lockouts": AUTH_LOCKOUTS, "auth_refused_locked": AUTH_REFUSED_LOCKED,
            "auth_timeouts": AUTH_TIMEOUTS, "clients_refused": CLIENTS_REFUSED,
            "idle_timeouts": IDLE_TIMEOUTS}
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


# -- `serve --workers N`: collectors that are not prometheus-client metric objects

def multiprocess() -> bool:
    """Whether this process writes its metrics to prometheus-client's multiprocess directory (a
    worker of `serve --workers N`: the parent sets PROMETHEUS_MULTIPROC_DIR before it starts)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class CollectorMirror:
    """Copies what custom collectors (``REGISTRY.register(collector)``: values kept elsewhere,
    e.g. in C, read at scrape time) report into multiprocess-backed metrics, so that the parent's
    /metrics, which reads only the multiprocess files, sums them over the workers too.

    A worker calls `export()` every second and once when it stops. Counters are carried over by
    their increase since the last export (a dead worker's file keeps its last value, so the
    group's sum never goes down); gauges (and untyped values) are set, summed over live workers
    ("livesum"). Histograms, summaries and the like are not mirrored (none exist yet)."""

    SKIP = ("ProcessCollector", "PlatformCollector", "GCCollector")   # about one process

    def __init__(self, registry=REGISTRY):
        self.registry = registry
        self._metrics: dict[tuple, object] = {}
        self._last: dict[tuple, float] = {}

    def collectors(self) -> list:
        from prometheus_client.metrics import MetricWrapperBase
        mapping = getattr(self.registry, "_collector_to_names", {})
        with getattr(self.registry, "_lock"):
            found = list(mapping)
        return [c for c in found if not isinstance(c, MetricWrapperBase)
                and type(c).__name__ not in self.SKIP]

    def export(self) -> None:
        for collector in self.collectors():
            try:
                families = list(collector.collect())
            except Exception:   # noqa: BLE001 - one broken collector must not stop the others
                continue
            for family in families:
                if family.type == "counter":
                    self._counter(family)
                elif family.type in ("gauge", "unknown"):
                    self._gauge(family)

    def _metric(self, kind, family, labelnames: tuple):
        key = (kind.__name__, family.name, labelnames)
        metric = self._metrics.get(key)
        if metric is None:
            extra = {"multiprocess_mode": "livesum"} if kind is Gauge else {}
            metric = kind(family.name, family.documentation or family.name, list(labelnames),
                          registry=None, **extra)
            self._metrics[key] = metric
        return metric

    def _counter(self, family) -> None:
        for sample in family.samples:
            if sample.name != family.name + "_total":
                continue        # _created
            names = tuple(sorted(sample.labels))
            metric = self._metric(Counter, family, names)
            key = (family.name, names, tuple(sample.labels[n] for n in names))
            delta = sample.value - self._last.get(key, 0.0)
            if delta < 0:       # the source was reset: count again from there
                delta = sample.value
            if delta > 0:
                (metric.labels(*key[2]) if names else metric).inc(delta)
            self._last[key] = sample.value

    def _gauge(self, family) -> None:
        for sample in family.samples:
            if sample.name != family.name:
                continue
            names = tuple(sorted(sample.labels))
            metric = self._metric(Gauge, family, names)
            (metric.labels(*(sample.labels[n] for n in names)) if names else metric).set(
                sample.value)
