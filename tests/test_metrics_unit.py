"""metrics.py, in process: label values stay bounded by the configuration (a client-chosen user
name is counted as `unknown`), and the connection gauge follows opens and closes. (The
/metrics endpoint end to end is tests/test_admin.py's and tests/test_metrics.py's.)"""
from __future__ import annotations

from prometheus_client import REGISTRY

from redisgate.telemetry import metrics


def _value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_user_label_is_a_configured_name_or_unknown():
    metrics.set_users(["metrics-unit-alice"])
    r = "wrong-password"
    before = {u: _value("redisgate_auth_failures_total", user=u, reason=r)
              for u in ("metrics-unit-alice", "unknown")}
    metrics.inc("auth_failures", "metrics-unit-alice", r)
    metrics.inc("auth_failures", "metrics-unit-mallory\r\n", r)   # chosen by a client
    assert _value("redisgate_auth_failures_total", user="metrics-unit-alice", reason=r) \
        == before["metrics-unit-alice"] + 1
    assert _value("redisgate_auth_failures_total", user="unknown", reason=r) \
        == before["unknown"] + 1
    assert REGISTRY.get_sample_value("redisgate_auth_failures_total",
                                     {"user": "metrics-unit-mallory\r\n", "reason": r}) is None
    # The other labels of a user-labelled metric are kept as given (fixed words).
    d0 = _value("redisgate_commands_denied_total", user="unknown", kind="key", mode="enforce")
    metrics.inc("denied", "metrics-unit-nobody", "key", "enforce")
    assert _value("redisgate_commands_denied_total", user="unknown", kind="key",
                  mode="enforce") == d0 + 1


def test_unlabelled_counters_and_the_connection_gauge():
    up0 = _value("redisgate_upstream_errors_total", stage="lost")
    metrics.inc("upstream_errors", "lost")
    assert _value("redisgate_upstream_errors_total", stage="lost") == up0 + 1
    c0 = _value("redisgate_connections_total", listener="")
    a0 = _value("redisgate_connections_active")
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.connection_closed()
    assert _value("redisgate_connections_total", listener="") == c0 + 2
    assert _value("redisgate_connections_active") == a0 + 1
    metrics.connection_closed()
    assert _value("redisgate_connections_active") == a0
