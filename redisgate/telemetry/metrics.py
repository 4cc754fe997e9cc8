"""Prometheus metrics (prometheus-client), served at the admin listener's /metrics.

Label values are bounded by the configuration, never chosen by a client: a `user` label is a
configured user's name or ``unknown`` (callers pass `audit.user_label(...)`; `inc` checks it
again against the users `set_users` was last given), a `command` label a name of the command
table (commands.TABLE) or ``other``, a `listener` label a configured listen address, the rest
fixed words.

Counting costs nothing on the fast path: what the C lane (redisgate._native._lane) forwards it counts in
C, in a `Counter` per (user, command) that the memo entry of the command holds (its 8th item,
`forwarded_counter`), and the client bytes and the sampled latency of each read in module-level
counters (`_lane.stats()`); `_Collector` reads them all when /metrics is scraped. The Python path
adds to the same Counters (one `add` per forwarded run of a command, per command when mixed) and
to `PY` (bytes, and the latency when the lane is not built).
"""
from __future__ import annotations

import os
import time
import weakref

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, \
    start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, \
    HistogramMetricFamily
from prometheus_client.metrics import MetricWrapperBase

try:
    from .._native import _lane
except ImportError:   # not compiled here: the same counters in Python
    _lane = None   # type: ignore[assignment]
if os.environ.get("REDISGATE_PURE_PYTHON"):
    _lane = None   # type: ignore[assignment]

# No `_created` twin of every counter series (it would double the scrape): a counter's reset shows
# as process_start_time_seconds moving.
disable_created_metrics()

CONNECTIONS = Counter("redisgate_connections", "Client connections accepted, by listener",
                      ["listener"])
# (With `serve --workers N`, prometheus-client's multiprocess mode: every Gauge needs a
# multiprocess_mode; "livesum" sums the live workers, a dead worker's value goes with it.)
ACTIVE = Gauge("redisgate_connections_active", "Client connections open now",
               multiprocess_mode="livesum")
AUTH_FAILURES = Counter("redisgate_auth_failures", "Failed AUTH/HELLO AUTH attempts, by the user "
                        "named (`unknown`: no configured user) and why (login.Outcome, or "
                        "locked-out)", ["user", "reason"])
DENIED = Counter("redisgate_commands_denied", "Commands refused (or reported, in report-only mode)",
                 ["user", "kind", "mode"])
REFUSED = Counter("redisgate_commands_refused", "Commands answered with an error by redisgate "
                  "instead of being forwarded (policy, unknown command, arity, NOAUTH, ...)",
                  ["user", "command"])
UPSTREAM_ERRORS = Counter("redisgate_upstream_errors", "Upstream connections that could not be "
                          "opened (stage=connect), did not answer the proxy's handshake "
                          "(stage=handshake) or were lost (stage=lost)", ["stage"])
UPSTREAM_CONNECTIONS = Counter("redisgate_upstream_connections", "Upstream connections opened: "
                               "a client's own (kind=client) or a shared link's (kind=shared)",
                               ["kind"])
UPSTREAM_RECONNECTS = Counter("redisgate_upstream_reconnects", "Shared links opened again after "
                              "they were lost (a client's own upstream connection is not: the "
                              "client is closed, as by a Redis restart)")
UPSTREAM_AUTH_FALLBACKS = Counter("redisgate_upstream_auth_fallbacks", "Upstream connections "
                                  "whose AUTH Redis refused and that tried the other password "
                                  "the proxy knows (password rotation): which one (source="
                                  "reference|current|previous) and whether Redis took it",
                                  ["source", "result"])
AUTH_LOCKOUTS = Counter("redisgate_auth_lockouts", "Lockouts started by auth_throttle, by what was "
                        "locked (a source address or a user name)", ["scope"])
AUTH_REFUSED_LOCKED = Counter("redisgate_auth_refused_locked",
                              "Login attempts refused unchecked during an auth_throttle lockout")
AUTH_TIMEOUTS = Counter("redisgate_auth_timeouts",
                        "Connections closed by limits.auth_timeout before they logged in")
RELOADS = Counter("redisgate_config_reloads", "Configuration reloads (SIGHUP, `redisgate "
                  "reload`), by result", ["result"])
RELOAD_OK = Gauge("redisgate_config_last_reload_successful",
                  "1 if the last reload was applied (or there was none), 0 if it was rejected",
                  multiprocess_mode="livemin")
LOADED_AT = Gauge("redisgate_config_last_reload_success_timestamp_seconds",
                  "When the configuration in force was loaded (start or reload), Unix time: "
                  "its age is time() - this", multiprocess_mode="livemin")

CLIENTS_REFUSED = Counter("redisgate_clients_refused",
                          "Connections refused by limits.max_clients or max_clients_per_user",
                          ["limit"])
IDLE_TIMEOUTS = Counter("redisgate_idle_timeouts",
                        "Logged-in connections closed by limits.idle_timeout")

# upstream.sentinel (sentinel.py) and the failovers followed (server.Proxy.upstream_changed).
# The `sentinel` label is a configured sentinel address (upstream.sentinel.addresses); a master's
# address is never a label (a sentinel names it): it is in the audit events.
UPSTREAM_RESOLUTIONS = Counter("redisgate_upstream_resolutions", "Times the sentinels were asked "
                               "where the master is, by result: ok (a sentinel named a master "
                               "that said ROLE master) or failed (none did)", ["result"])
SENTINEL_ERRORS = Counter("redisgate_sentinel_errors", "A sentinel that could not be reached or "
                          "answered something unusable, by sentinel (a configured address) and "
                          "stage (query: GET-MASTER-ADDR-BY-NAME; subscription: the failover "
                          "events)", ["sentinel", "stage"])
MASTERS_REJECTED = Counter("redisgate_sentinel_masters_rejected", "Masters named by a sentinel "
                           "(or announced by +switch-master) that the proxy did not use, by "
                           "reason: unreachable, not_master (ROLE), failed (AUTH refused, ...)",
                           ["reason"])
FAILOVER_FENCES = Counter("redisgate_sentinel_failover_starts", "Failovers seen starting (a "
                          "sentinel's +try-failover ...): nothing more is forwarded to the old "
                          "master from then on")
FAILOVERS = Counter("redisgate_sentinel_failovers", "Failovers followed: a new master verified "
                    "(ROLE) and used in place of the old one")
UPSTREAM_MOVED = Counter("redisgate_upstream_moved", "Upstream connections taken off an old "
                         "master in a failover: a client's own closed (kind=client; its client "
                         "reconnects) or a shared link moved (kind=shared)", ["kind"])

# -- upstream.cluster (cluster/io.py's ClusterMap). Labels are fixed words: the nodes' addresses
# are in the audit events and the log, never in a label (a cluster's nodes come and go).
CLUSTER_REDIRECTS = Counter("redisgate_cluster_redirects", "MOVED / ASK replies the proxy "
                            "followed for its clients (never shown to them), by kind", ["kind"])
CLUSTER_REFRESHES = Counter("redisgate_cluster_refreshes", "Slot map refreshes (CLUSTER SLOTS), "
                            "by result: ok, or failed (no node asked answered)", ["result"])
CLUSTER_NODE_ERRORS = Counter("redisgate_cluster_node_errors", "Cluster nodes that could not be "
                              "reached or used, by stage: connect (a connection could not be "
                              "opened), lost (an open one was lost), refresh (no answer to "
                              "CLUSTER SLOTS), login (the node refused the proxy's login), "
                              "protocol (a malformed or unexpected reply)", ["stage"])
CLUSTER_OWNER_CHANGES = Counter("redisgate_cluster_slot_owner_changes", "Slot owner changes seen "
                                "in a refresh, one per (old master, new master) pair, by kind: "
                                "failover (the old master's replica took over), reshard (another "
                                "node), unserved (no master now)", ["kind"])
CLUSTER_SLOTS_CHANGED = Counter("redisgate_cluster_slots_changed", "Slots whose master changed, "
                                "by kind (as redisgate_cluster_slot_owner_changes_total)",
                                ["kind"])
CLUSTER_STORMS = Counter("redisgate_cluster_redirect_storms", "MOVED/ASK storms: seconds in which "
                         "the proxy followed more than 100 redirects (one per second at most)")

_BY_NAME = {"auth_failures": AUTH_FAILURES, "denied": DENIED, "upstream_errors": UPSTREAM_ERRORS,
            "auth_lockouts": AUTH_LOCKOUTS, "auth_refused_locked": AUTH_REFUSED_LOCKED,
            "auth_timeouts": AUTH_TIMEOUTS, "refused": REFUSED,
            "upstream_connections": UPSTREAM_CONNECTIONS, "upstream_reconnects": UPSTREAM_RECONNECTS,
            "clients_refused": CLIENTS_REFUSED, "idle_timeouts": IDLE_TIMEOUTS,
            "upstream_resolutions": UPSTREAM_RESOLUTIONS, "sentinel_errors": SENTINEL_ERRORS,
            "masters_rejected": MASTERS_REJECTED, "failover_starts": FAILOVER_FENCES,
            "failovers": FAILOVERS, "upstream_moved": UPSTREAM_MOVED,
            "upstream_auth_fallbacks": UPSTREAM_AUTH_FALLBACKS}
_USER_LABELLED = frozenset({"auth_failures", "denied", "refused"})   # first label: a user name
_users: set[str] = set()
UNKNOWN = "unknown"
OTHER = "other"   # the command label of a name that is not in the command table


def set_users(names) -> None:
    """The configured users' names (a Gate calls this at start and on reload). Names of users
    configured by any gate of this process stay allowed: a reload does not drop a label set."""
    _users.update(names)


def inc(name: str, *labels: str) -> None:
    metric = _BY_NAME[name]
    if labels and name in _USER_LABELLED and labels[0] not in _users:
        labels = (UNKNOWN,) + labels[1:]
    (metric.labels(*labels) if labels else metric).inc()


def connection_opened(listener: str = "") -> None:
    CONNECTIONS.labels(listener).inc()
    ACTIVE.inc()


def connection_closed() -> None:
    ACTIVE.dec()


def config_loaded(ok: bool, reload: bool = True) -> None:
    """A configuration was loaded at start (reload=False) or a reload applied (ok) or rejected."""
    if reload:
        RELOADS.labels("ok" if ok else "failed").inc()
    RELOAD_OK.set(1 if ok else 0)
    if ok:
        LOADED_AT.set(time.time())


# -- commands forwarded: Counters kept in C (or in Python without the C module)

class PyCounter:
    """_lane.Counter's Python twin (the C module is not built, or REDISGATE_PURE_PYTHON)."""
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def add(self, n: int, /) -> None:
        self.value += n


_Counter = _lane.Counter if _lane is not None else PyCounter
_forwarded: dict[tuple[str, str], object] = {}


def forwarded_counter(user: str | None, command: str):
    """The Counter of commands `command` (a command table name) forwarded for `user` (a
    configured user's name, else counted as `unknown`). One per pair for the process's life, so
    a reload (which empties the memos holding them) loses no count; bounded by the configured
    users times the command table."""
    if user not in _users:
        user = UNKNOWN
    key = (user, command)
    counter = _forwarded.get(key)
    if counter is None:
        counter = _forwarded[key] = _Counter()
    return counter


# -- client bytes and the sampled latency of a read: C (_lane.stats()) plus the Python path's

if _lane is not None:
    LATENCY_BOUNDS_NS: tuple[int, ...] = _lane.LATENCY_BOUNDS_NS
    LATENCY_SAMPLE: int = _lane.LATENCY_SAMPLE
else:
    LATENCY_BOUNDS_NS = (5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
                         5000000, 10000000, 25000000, 50000000, 100000000)
    LATENCY_SAMPLE = 64


class PyStats:
    """What the Python path moves itself: client bytes it read (its data_received: the C lane
    gave them up) and wrote (pump), and, where the C lane is not built at all, the sampled read
    latency (the C entry points time every read otherwise, the slow path included)."""

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.reads = 0
        self.buckets = [0] * (len(LATENCY_BOUNDS_NS) + 1)
        self.latency_count = 0
        self.latency_sum_ns = 0

    def sample(self) -> bool:
        """Whether this read is the one in LATENCY_SAMPLE to time."""
        self.reads += 1
        return not self.reads % LATENCY_SAMPLE

    def observe(self, ns: int) -> None:
        i = 0
        for bound in LATENCY_BOUNDS_NS:
            if ns <= bound:
                break
            i += 1
        self.buckets[i] += 1
        self.latency_count += 1
        self.latency_sum_ns += ns


PY = PyStats()


def stats() -> dict:
    """The C counters and the Python path's, added up."""
    total = {"bytes_in": PY.bytes_in, "bytes_out": PY.bytes_out,
             "latency_buckets": list(PY.buckets), "latency_count": PY.latency_count,
             "latency_sum_ns": PY.latency_sum_ns}
    if _lane is not None:
        c = _lane.stats()
        total["bytes_in"] += c["bytes_in"]
        total["bytes_out"] += c["bytes_out"]
        total["latency_buckets"] = [a + b for a, b in zip(total["latency_buckets"],
                                                          c["latency_buckets"])]
        total["latency_count"] += c["latency_count"]
        total["latency_sum_ns"] += c["latency_sum_ns"]
    return total


# -- the scrape-time collector

_proxies: "weakref.WeakSet" = weakref.WeakSet()


def watch(proxy) -> None:
    """Report this Proxy's open connections (client and upstream) at scrape time."""
    _proxies.add(proxy)


def _snapshot(items):
    """A list of a set or dict view the event loop thread may change meanwhile (the scrape runs
    in the admin thread): list() of a set or dict copies under the GIL; retry if it moved."""
    for _ in range(5):
        try:
            return list(items)
        except RuntimeError:   # (changed size during iteration)
            continue
    return []


class _Collector:
    """Everything counted outside prometheus-client's own metrics, read when scraped."""

    def describe(self):   # (no collect() at registration)
        return []

    def collect(self):
        fwd = CounterMetricFamily("redisgate_commands_forwarded", "Commands forwarded to the "
                                  "upstream, by user and command (the C lane's counted in C)",
                                  labels=["user", "command"])
        for (user, command), counter in sorted(_snapshot(_forwarded.items())):
            fwd.add_metric([user, command], counter.value)
        yield fwd

        s = stats()
        yield CounterMetricFamily("redisgate_client_received_bytes", "Bytes read from clients",
                                  value=s["bytes_in"])
        yield CounterMetricFamily("redisgate_client_sent_bytes", "Bytes written to clients",
                                  value=s["bytes_out"])
        cumulative, buckets = 0, []
        for bound, n in zip(LATENCY_BOUNDS_NS + (None,), s["latency_buckets"]):
            cumulative += n
            buckets.append(("+Inf" if bound is None else repr(bound / 1e9), cumulative))
        yield HistogramMetricFamily(
            "redisgate_added_latency_seconds",
            f"Time the proxy spends on one read from a client or the upstream, from the moment "
            f"the event loop hands it the bytes until they are written on (judging and "
            f"forwarding included; waiting in the event loop or the kernel not); one read in "
            f"{LATENCY_SAMPLE} is timed", buckets=buckets, sum_value=s["latency_sum_ns"] / 1e9)

        open_ = GaugeMetricFamily("redisgate_connections_open", "Client connections open now, by "
                                  "listener and logged-in user (`unknown`: not logged in)",
                                  labels=["listener", "user"])
        upstream = GaugeMetricFamily("redisgate_upstream_connections_open", "Upstream connections "
                                     "open now: clients' own (kind=client) and shared links' "
                                     "(kind=shared)", labels=["kind"])
        by: dict[tuple[str, str], int] = {}
        own = shared = 0
        for proxy in _snapshot(_proxies):
            for client in _snapshot(proxy.clients):
                session = client.session
                name = session.username if session is not None and session.user_entry else None
                key = (client.listener, name if name in _users else UNKNOWN)
                by[key] = by.get(key, 0) + 1
                own += client.upstream is not None
            for link in proxy.links + proxy.links3:
                shared += link.conn is not None
        for (listener, user), n in sorted(by.items()):
            open_.add_metric([listener, user], n)
        upstream.add_metric(["client"], own)
        upstream.add_metric(["shared"], shared)
        yield open_
        yield upstream


REGISTRY.register(_Collector())


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
    ("livesum"); histograms (the sampled added latency) by the increase of each bucket's count and
    of the sum, into a multiprocess Histogram with the same bounds, which the parent's collector
    adds up over the workers like a counter. Summaries are not mirrored (none exist)."""

    SKIP = ("ProcessCollector", "PlatformCollector", "GCCollector")   # about one process

    def __init__(self, registry=REGISTRY):
        self.registry = registry
        self._metrics: dict[tuple, object] = {}
        self._last: dict[tuple, float] = {}

    def collectors(self) -> list:
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
                elif family.type == "histogram":
                    self._histogram(family)

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

    def _histogram(self, family) -> None:
        """prometheus-client has no public way to add a count to a bucket (only observe() one
        value): the increases go to the Histogram's bucket and sum values themselves."""
        series: dict[tuple, dict] = {}
        for sample in family.samples:
            labels = dict(sample.labels)
            if sample.name == family.name + "_bucket":
                le = float(labels.pop("le"))
                key = tuple(sorted(labels.items()))
                series.setdefault(key, {"buckets": [], "sum": 0.0})["buckets"].append(
                    (le, sample.value))
            elif sample.name == family.name + "_sum":
                key = tuple(sorted(labels.items()))
                series.setdefault(key, {"buckets": [], "sum": 0.0})["sum"] = sample.value
        for key, found in series.items():
            bounds = sorted(found["buckets"])
            if not bounds:
                continue
            names = tuple(n for n, _ in key)
            mkey = ("Histogram", family.name, names, tuple(b for b, _ in bounds))
            metric = self._metrics.get(mkey)
            if metric is None:
                metric = self._metrics[mkey] = Histogram(
                    family.name, family.documentation or family.name, list(names),
                    buckets=[b for b, _ in bounds], registry=None)
            child = metric.labels(*(v for _, v in key)) if names else metric
            previous = 0.0
            for i, (_, cumulative) in enumerate(bounds):
                self._add(child._buckets[i], (family.name, key, i), cumulative - previous)
                previous = cumulative
            self._add(child._sum, (family.name, key, "sum"), found["sum"])

    def _add(self, value, key: tuple, now: float) -> None:
        """Carry a counted value over by its increase since the last export."""
        delta = now - self._last.get(key, 0.0)
        if delta < 0:       # the source was reset: count again from there
            delta = now
        if delta > 0:
            value.inc(delta)
        self._last[key] = now

    def _gauge(self, family) -> None:
        for sample in family.samples:
            if sample.name != family.name:
                continue
            names = tuple(sorted(sample.labels))
            metric = self._metric(Gauge, family, names)
            (metric.labels(*(sample.labels[n] for n in names)) if names else metric).set(
                sample.value)
