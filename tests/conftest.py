"""Shared fixtures: real Redis servers of the three versions that matter (7.0, 6.2, 5.0)."""
from __future__ import annotations

import pytest

from servers import RedisServer, redis_binary

UPSTREAM_USER = "gate"
UPSTREAM_PASSWORD = "gate-upstream-secret"
LEGACY_PASSWORD = "legacy-requirepass-secret"


def _need(version: str) -> None:
    if redis_binary(version) is None:
        if version == "5":
            pytest.fail("legacy redis-server 5.0 is missing: run scripts/test.sh, which builds it")
        pytest.fail(f"redis-server {version} is missing: run scripts/test.sh")


@pytest.fixture(scope="session")
def redis7():
    """Redis 7.0 with an ACL user `gate` (all commands, all keys) as the proxy's upstream identity."""
    _need("7")
    srv = RedisServer("7").start()
    srv.client().execute_command("ACL", "SETUSER", UPSTREAM_USER, "on", f">{UPSTREAM_PASSWORD}",
                                 "allkeys", "allchannels", "+@all")
    srv.client().execute_command("ACL", "SETUSER", "default", "off")
    srv.upstream = {"address": f"127.0.0.1:{srv.port}", "username": UPSTREAM_USER,
                    "password": UPSTREAM_PASSWORD}
    srv.admin = lambda **kw: srv.client(username=UPSTREAM_USER, password=UPSTREAM_PASSWORD, **kw)
    yield srv
    srv.stop()


def _requirepass_server(version: str) -> RedisServer:
    """Redis `version` with requirepass LEGACY_PASSWORD, the proxy's upstream by that password."""
    _need(version)
    srv = RedisServer(version, password=LEGACY_PASSWORD).start()
    srv.upstream = {"address": f"127.0.0.1:{srv.port}", "password": LEGACY_PASSWORD}
    srv.admin = lambda **kw: srv.client(**kw)
    return srv


@pytest.fixture(scope="session")
def redis62():
    srv = _requirepass_server("6.2")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def redis5():
    """Legacy Redis 5.0.6: requirepass only, no ACLs, no RESP3."""
    srv = _requirepass_server("5")
    yield srv
    srv.stop()


@pytest.fixture(params=["7", "5"])
def any_upstream(request):
    """Parametrises a test over Redis 7.0 (ACL user upstream) and legacy 5.0 (requirepass)."""
    return request.getfixturevalue({"7": "redis7", "5": "redis5", "6.2": "redis62"}[request.param])


@pytest.fixture(scope="module", params=["c", "python"])
def both_scans(request):
    """Runs a module's tests with the C parts of resp.py (redisgate._native._speedups: take_batch's scan,
    count_flat's loop) and with their Python twins. Such modules say
    `pytestmark = pytest.mark.usefixtures("both_scans")`. (Module scope: hypothesis refuses
    function-scoped fixtures.)"""
    from redisgate.protocol import resp
    scan = count_flat = None
    if request.param == "c":
        try:
            from redisgate._native._speedups import count_flat, scan
        except ImportError:
            pytest.skip("redisgate._native._speedups is not built here")
    saved = resp._c_scan, resp._c_count_flat
    resp._c_scan, resp._c_count_flat = scan, count_flat
    yield request.param
    resp._c_scan, resp._c_count_flat = saved


@pytest.fixture(scope="session")
def redis_cluster():
    """A real Redis Cluster (Redis 7.0): 3 masters + 3 replicas on loopback, ~10 s to create.

    Every node has the ACL user `gate` (as `redis7`). Tests that change the cluster (a failover, a
    migration) must put it back or start their own `cluster.RedisCluster`."""
    _need("7")
    from cluster import RedisCluster
    c = RedisCluster(acl_user=UPSTREAM_USER, acl_password=UPSTREAM_PASSWORD).start()
    c.upstream = {"cluster": {"seeds": c.seeds}, "username": UPSTREAM_USER,
                  "password": UPSTREAM_PASSWORD}   # the config shape issue 18 proposes
    yield c
    c.stop()
