"""`upstream.sentinel` with real processes: Debian's redis-sentinel x3, a master and a replica
(tests/sentinel.py), the proxy in front, traffic from several clients across a failover.

What is proven, for `SENTINEL FAILOVER` and for a SIGKILLed master, with a connection per client
and with `multiplex: 1`:
* every client works against the new master within 5 s of `+switch-master` (its first command
  that succeeds after the announcement comes sooner than that), and a fresh client's write through
  the proxy lands on the new master;
* for the graceful failover: no acknowledged write is lost and none is done twice. Each client
  INCRs its own counter and counts the replies it got; a command that failed (the proxy closed
  the connection, or said the upstream is unavailable) is sent again on a new connection. At the
  end each counter on the new master equals its client's count of replies: a command the proxy
  had forwarded always got its reply (else the retry would count twice), and nothing it
  acknowledged was lost (the proxy stops forwarding when the leader sentinel starts the
  failover, before the promotion).
Asynq across a failover: see test_asynq_workload_across_a_failover.

Failure reporting: the same tests read the proxy's JSON audit lines (`audit:` section) and its
/metrics (an admin endpoint on the proxy's loop): the fence, the +switch-master, the new master
(ROLE verified), the connections moved, a lost sentinel, unreachable sentinels and masters, a
failed resolution, a rejected master; each with the address concerned.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.request
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import asynq_workload as w
from proxy import ProxyRunner, pw_hash
from sentinel import MASTER_NAME, EventWatch, SentinelSetup, have_sentinel
from servers import free_port

pytestmark = pytest.mark.timeout(120)

APP_PASSWORD = "app-secret"


@pytest.fixture
def setup():
    if not have_sentinel():
        pytest.fail("/usr/bin/redis-sentinel is missing: apt-get install redis-sentinel "
                    "(scripts/test.sh installs it)")
    s = SentinelSetup().start()
    yield s
    s.stop()


def sentinel_upstream(s: SentinelSetup | None, master: str = MASTER_NAME,
                      addresses: list[str] | None = None, **extra) -> dict:
    """The upstream section for `master` through the sentinels at `addresses` (default: all of
    the setup's)."""
    return {"sentinel": {"master": master,
                         "addresses": s.sentinel_addresses if addresses is None else addresses,
                         "password": "${SENTINEL_TEST_PASSWORD}"},
            "password": "${DATA_TEST_PASSWORD}", "connect_timeout": "2s", **extra}


@pytest.fixture
def env(monkeypatch, setup):
    monkeypatch.setenv("SENTINEL_TEST_PASSWORD", setup.sentinel_password)
    monkeypatch.setenv("DATA_TEST_PASSWORD", setup.data_password)


def start_proxy(s: SentinelSetup | None, audit_path=None, **upstream) -> ProxyRunner:
    raw = {"upstream": sentinel_upstream(s, **upstream),
           "users": {"app": f"on {pw_hash(APP_PASSWORD)} ~* &* +@all"}}
    if audit_path is not None:
        raw["audit"] = {"path": str(audit_path), "rate": 0}
    return ProxyRunner(raw).start()


def read_audit(path) -> list[dict]:
    """The JSON audit lines written so far."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def events(path, kind: str, **fields) -> list[dict]:
    """The audit events of `kind` whose fields have these values."""
    return [e for e in read_audit(path) if e["event"] == kind
            and all(e.get(k) == v for k, v in fields.items())]


class Metrics:
    """/metrics of a ProxyRunner, over HTTP, from an admin endpoint on the proxy's loop. The
    counters are the test process's (every in-process proxy adds to them): compare two scrapes."""

    def __init__(self, runner: ProxyRunner):
        from redisgate.io.admin import Admin
        self.runner = runner

        def start():
            admin = Admin(runner.proxy, "127.0.0.1", 0)
            admin.start()
            return admin
        self.admin = runner.call(start)

    def scrape(self) -> dict:
        """{(sample name, frozenset of labels): value}"""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin.port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> None:
        self.runner.call(lambda: asyncio.ensure_future(self.admin.stop()))
        time.sleep(0.2)


def value(scrape: dict, name: str, **labels) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def addr(port: int) -> str:
    return f"127.0.0.1:{port}"


class Traffic:
    """`n` threads, each INCRing its own key through the proxy with its own redis-py client
    (no retries of its own: a failed command is retried here, on a new connection)."""

    def __init__(self, port: int, n: int, prefix: str):
        self.port, self.prefix = port, prefix
        self.acks = [0] * n
        self.ok_times: list[list[float]] = [[] for _ in range(n)]
        self.errors: list[list[str]] = [[] for _ in range(n)]
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, username="app",
                           password=APP_PASSWORD, protocol=2, socket_timeout=5,
                           retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))

    def _run(self, i: int) -> None:
        key = f"{self.prefix}:{i}"
        c = self.client()
        while not self.stop_flag.is_set():
            try:
                got = c.incr(key)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                    redis.exceptions.ResponseError) as e:
                self.errors[i].append(f"{type(e).__name__}: {e}")
                c.close()
                c = self.client()
                time.sleep(0.02)
                continue
            self.acks[i] += 1
            if got != self.acks[i]:   # (a lost or doubled INCR: checked at the end too)
                self.errors[i].append(f"INCR gave {got} after {self.acks[i]} replies")
            self.ok_times[i].append(time.monotonic())
            time.sleep(0.005)
        c.close()

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(10)


def run_failover(setup: SentinelSetup, proxy: ProxyRunner, kill: bool) -> None:
    watch = EventWatch(setup)
    old = setup.current_master()
    traffic = Traffic(proxy.port, 4, f"k-{uuid.uuid4().hex[:6]}")
    try:
        time.sleep(0.5)
        assert all(traffic.acks), traffic.errors
        if kill:
            setup.kill_master()
        else:
            setup.failover()
        switched = watch.wait_for("+switch-master", 30)
        time.sleep(5.5)
    finally:
        traffic.stop()
        watch.stop()
    new = setup.current_master()
    assert new.port != old.port
    print(f"\n{'killed' if kill else 'failover'}: replies {traffic.acks}, failed commands "
          f"{[len(e) for e in traffic.errors]}, first reply after +switch-master (s): "
          f"{[round(min([t for t in ts if t > switched], default=-1) - switched, 3) for ts in traffic.ok_times]}")
    for i, times in enumerate(traffic.ok_times):
        after = [t for t in times if t > switched]
        assert after, f"client {i} never worked after +switch-master: {traffic.errors[i][-3:]}"
        assert after[0] - switched < 5, (i, after[0] - switched, traffic.errors[i][-3:])
    admin = new.client(decode_responses=True)
    if not kill:
        # No acknowledged INCR lost, none applied twice.
        for i, acks in enumerate(traffic.acks):
            assert int(admin.get(f"{traffic.prefix}:{i}")) == acks, (i, traffic.errors[i])
    # A fresh client works, and its write is on the new master.
    c = proxy.client("app", APP_PASSWORD)
    c.set("after-failover", "yes")
    assert admin.get("after-failover") == "yes"
    assert admin.execute_command("ROLE")[0] == "master"


@dataclass(frozen=True)
class Measured:
    """One failover under traffic through a proxy of its own: the masters before and after, the
    proxy's audit file, its metrics scraped before and after."""
    old: object
    new: object
    audit_path: Path
    before: dict
    after: dict


def measured_failover(setup: SentinelSetup, tmp_path, mux: int, kill: bool,
                      first: Callable[[], None] | None = None) -> Measured:
    """run_failover() through a proxy started for it (`first` runs before, metrics scraped
    around it), then the checks of check_failover_reported()."""
    old = setup.current_master()
    audit_path = tmp_path / "audit.log"
    proxy = start_proxy(setup, audit_path, multiplex=mux)
    metrics = Metrics(proxy)
    try:
        before = metrics.scrape()
        if first is not None:
            first()
        run_failover(setup, proxy, kill=kill)
        after = metrics.scrape()
    finally:
        metrics.stop()
        proxy.stop()
    new = setup.current_master()
    check_failover_reported(audit_path, before, after, old.port, new.port, setup)
    return Measured(old, new, audit_path, before, after)


@pytest.mark.parametrize("mux", [0, 1], ids=["dedicated", "multiplex1"])
def test_sentinel_failover_under_traffic(setup, env, mux, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="redisgate")
    lost = setup.sentinels[2] if mux else None

    def kill_one_sentinel() -> None:
        # One sentinel dies: its subscription is lost (and logged, and tried again with
        # backoff); the other two still carry the failover.
        lost.proc.kill()
        lost.proc.wait(5)

    m = measured_failover(setup, tmp_path, mux, kill=False,
                          first=kill_one_sentinel if lost is not None else None)
    old, new, audit_path, before, after = m.old, m.new, m.audit_path, m.before, m.after
    moved = events(audit_path, "failover-moved", old=addr(old.port))
    assert len(moved) == 1, read_audit(audit_path)
    if mux:   # the one shared link moved; no client had a connection of its own
        assert (moved[0]["clients"], moved[0]["links"]) == (0, 1), moved
        assert delta(before, after, "redisgate_upstream_moved_total", kind="shared") == 1
        assert delta(before, after, "redisgate_upstream_moved_total", kind="client") == 0
    else:     # each client's own connection closed (the traffic's 4, the admin probe's not)
        assert moved[0]["clients"] >= 4 and moved[0]["links"] == 0, moved
        assert delta(before, after, "redisgate_upstream_moved_total", kind="client") == \
            moved[0]["clients"]
    if lost is not None:
        lost_errors = events(audit_path, "sentinel-error", sentinel=addr(lost.port),
                             stage="subscription", master=MASTER_NAME)
        reasons = [e["reason"] for e in lost_errors]
        assert reasons[0].startswith("subscription lost: "), reasons
        assert "unreachable: connection refused" in reasons[1:], reasons
        assert delta(before, after, "redisgate_sentinel_errors_total", sentinel=addr(lost.port),
                     stage="subscription") == len(lost_errors)
    text = caplog.text
    if lost is not None:
        assert f"sentinel 127.0.0.1:{lost.port} subscription lost" in text
        assert f"sentinel 127.0.0.1:{lost.port} unreachable: connection refused" in text
    assert f"sentinel master {MASTER_NAME} is 127.0.0.1:{old.port}" in text
    assert f"failover of sentinel master {MASTER_NAME}: 127.0.0.1:{old.port} -> " \
           f"127.0.0.1:{new.port}" in text
    assert "nothing more goes to it" in text          # the fence, with the sentinel's address
    closing = re.search(rf"closing (\d+) client connection\(s\) to 127.0.0.1:{old.port}", text)
    if mux:
        assert closing is None                        # shared links move; clients stay
    else:
        assert closing and int(closing.group(1)) >= 4   # each client's own connection
    assert setup.sentinel_password not in text and setup.data_password not in text


@pytest.mark.parametrize("mux", [0, 1], ids=["dedicated", "multiplex1"])
def test_killed_master_under_traffic(setup, env, mux, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="redisgate")
    m = measured_failover(setup, tmp_path, mux, kill=True)
    old, audit_path, before, after = m.old, m.audit_path, m.before, m.after
    assert f"upstream 127.0.0.1:{old.port} unreachable" in caplog.text
    # The dead master, while the sentinels had not yet seen it down: every dial to it failed
    # (the traffic's clients reconnecting, or the shared link), each one audited and counted.
    dials = events(audit_path, "upstream-unreachable", address=addr(old.port))
    assert dials and all(e["reason"] for e in dials), read_audit(audit_path)
    assert delta(before, after, "redisgate_upstream_errors_total", stage="connect") >= len(dials)


def check_failover_reported(audit_path, before: dict, after: dict, old: int, new: int,
                            setup: SentinelSetup) -> None:
    """What the audit and the metrics say of one failover from `old` to `new` (ports)."""
    text = audit_path.read_text()
    assert setup.sentinel_password not in text and setup.data_password not in text
    sentinels = set(setup.sentinel_addresses)
    # At start: the master one sentinel named, ROLE checked.
    first = events(audit_path, "master-changed", old=None, new=addr(old))
    assert len(first) == 1 and first[0]["master"] == MASTER_NAME, read_audit(audit_path)
    assert first[0]["reason"].startswith("ROLE master, named by sentinel 127.0.0.1:")
    # The failover's first event fenced the old master; +switch-master was seen; the new master
    # was verified and used, after the fence.
    started = events(audit_path, "failover-started", old=addr(old), master=MASTER_NAME)
    assert len(started) == 1 and started[0]["sentinel"] in sentinels, started
    assert started[0]["channel"] in ("+try-failover", "+failover-state-select-slave",
                                     "+selected-slave", "+failover-state-send-slaveof-noone")
    switches = events(audit_path, "switch-master", old=addr(old), new=addr(new))
    assert switches and all(e["sentinel"] in sentinels for e in switches), read_audit(audit_path)
    changed = events(audit_path, "master-changed", old=addr(old), new=addr(new))
    assert len(changed) == 1, read_audit(audit_path)
    assert re.fullmatch(r"ROLE master, \+switch-master from sentinel 127\.0\.0\.1:\d+",
                        changed[0]["reason"]), changed
    kinds = [e["event"] for e in read_audit(audit_path)]
    assert kinds.index("failover-started") < kinds.index("switch-master") < \
        len(kinds) - 1 - kinds[::-1].index("master-changed")
    assert delta(before, after, "redisgate_sentinel_failovers_total") == 1
    # (On a loaded machine the sentinels may also start, and abort, a failover of the NEW master
    # they briefly saw down (`-failover-abort-no-good-slave`): each start is counted and audited.)
    all_started = events(audit_path, "failover-started", master=MASTER_NAME)
    assert delta(before, after, "redisgate_sentinel_failover_starts_total") == len(all_started)


def test_unreachable_sentinels_are_logged_and_clients_told(caplog, monkeypatch, tmp_path):
    """No sentinel answers: the proxy starts, says so per sentinel (log, audit, metrics), and a
    client's command gets the upstream-unavailable error instead of a hang."""
    caplog.set_level(logging.INFO, logger="redisgate")
    monkeypatch.setenv("SENTINEL_TEST_PASSWORD", "x")
    monkeypatch.setenv("DATA_TEST_PASSWORD", "y")
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    audit_path = tmp_path / "audit.log"
    proxy = start_proxy(None, audit_path, addresses=dead, connect_timeout="500ms")
    metrics = Metrics(proxy)
    try:
        before = metrics.scrape()
        c = proxy.client("app", APP_PASSWORD)
        with pytest.raises(redis.exceptions.RedisError, match="upstream Redis unavailable"):
            c.ping()
        after = metrics.scrape()
    finally:
        metrics.stop()
        proxy.stop()
    for a in dead:
        assert f"sentinel {a} unreachable" in caplog.text
        # asked at start (query) and followed (subscription), each failure audited and counted
        query = events(audit_path, "sentinel-error", sentinel=a, stage="query",
                       master=MASTER_NAME, reason="unreachable: connection refused")
        assert query, read_audit(audit_path)
        assert events(audit_path, "sentinel-error", sentinel=a, stage="subscription",
                      reason="unreachable: connection refused")
        assert value(after, "redisgate_sentinel_errors_total", sentinel=a, stage="query") >= 1
        assert value(after, "redisgate_sentinel_errors_total", sentinel=a,
                     stage="subscription") >= 1
    assert f"no sentinel named a usable master for {MASTER_NAME}" in caplog.text
    failed = events(audit_path, "resolution-failed", master=MASTER_NAME)
    assert failed[0]["reason"] == ("no sentinel named a usable master (start; asked "
                                   f"{dead[0]}, {dead[1]})"), failed
    assert value(after, "redisgate_upstream_resolutions_total", result="failed") >= 1
    # The client's command: no master to dial (no address: none is known).
    told = events(audit_path, "upstream-unreachable",
                  reason=f"no sentinel named a usable master for {MASTER_NAME}")
    assert told and "address" not in told[0], read_audit(audit_path)
    assert delta(before, after, "redisgate_upstream_errors_total", stage="connect") >= 1


def test_a_sentinel_naming_a_replica_is_not_believed(setup, env, caplog, tmp_path):
    """ROLE is checked before use: the proxy never sends data to a node that is not master
    (here: the sentinels are asked for a master name whose 'master' is our replica)."""
    caplog.set_level(logging.INFO, logger="redisgate")
    replica = next(n for n in setup.nodes if n.port != setup.master_address()[1])
    for i in range(3):
        setup.sentinel(i).execute_command("SENTINEL", "MONITOR", "other", "127.0.0.1",
                                          str(replica.port), 2)
    audit_path = tmp_path / "audit.log"
    proxy = start_proxy(None, audit_path, master="other",
                        addresses=setup.sentinel_addresses[:1], connect_timeout="1s")
    metrics = Metrics(proxy)
    try:
        with pytest.raises(redis.exceptions.RedisError, match="upstream Redis unavailable"):
            proxy.client("app", APP_PASSWORD).ping()
        after = metrics.scrape()
    finally:
        metrics.stop()
        proxy.stop()
    assert f"names 127.0.0.1:{replica.port} as master other, but ROLE says 'slave'" in caplog.text
    rejected = events(audit_path, "master-rejected", master="other", address=addr(replica.port),
                      sentinel=setup.sentinel_addresses[0])
    assert rejected and rejected[0]["reason"] == "ROLE says 'slave', not master", \
        read_audit(audit_path)
    assert value(after, "redisgate_sentinel_masters_rejected_total", reason="not_master") >= 1
    assert not events(audit_path, "master-changed")


def test_sentinel_failover_with_two_workers(setup, env, tmp_path):
    """`serve --workers 2` in front of the Sentinel set-up: each worker follows the master on
    its own (its own subscriptions, resolver and upstream connections), the same checks as
    above hold across a SENTINEL FAILOVER, and the parent's /metrics sums the workers' counts
    (each worker followed the one failover: 2), each worker's events in the one audit file."""
    from types import SimpleNamespace

    from test_workers import Group
    port = free_port()
    audit_path = tmp_path / "audit.log"
    raw = {"listen": addr(port), "upstream": sentinel_upstream(setup),
           "users": {"app": f"on {pw_hash(APP_PASSWORD)} ~* &* +@all"},
           "admin": {"listen": addr(free_port())}, "audit": {"path": str(audit_path), "rate": 0},
           "auth_throttle": {"max_failures": 1_000_000}}
    g = Group(tmp_path, raw, "--workers", "2")
    old = setup.current_master()
    try:
        g.wait_ready()
        assert len(g.workers()) == 2
        assert g.metric("redisgate_sentinel_failovers_total") == 0
        assert len(events(audit_path, "master-changed", old=None, new=addr(old.port))) == 2
        proxy = SimpleNamespace(port=port, client=lambda user, pw: redis.Redis(
            port=port, username=user, password=pw, protocol=2, socket_timeout=10))
        run_failover(setup, proxy, kill=False)
        new = setup.current_master()
        assert g.metric("redisgate_sentinel_failovers_total") == 2
        assert g.metric("redisgate_sentinel_failover_starts_total") == 2
        assert g.metric("redisgate_upstream_resolutions_total") >= 2
        assert len(events(audit_path, "master-changed", old=addr(old.port),
                          new=addr(new.port))) == 2
        assert len(events(audit_path, "failover-started", old=addr(old.port))) == 2
        log = g.log()
    finally:
        pids = [w.pid for w in g.workers()]
        g.stop()
        for pid in pids:
            try:
                __import__("psutil").Process(pid).wait(10)
            except Exception:   # noqa: BLE001 - gone already
                pass
    assert re.search(r"redisgate\[worker 0\]: upstream: failover of sentinel master", log)
    assert re.search(r"redisgate\[worker 1\]: upstream: failover of sentinel master", log)
    text = audit_path.read_text()
    assert setup.data_password not in log + text and setup.sentinel_password not in log + text


def test_redisgate_check_rejects_address_and_sentinel_together(tmp_path):
    import subprocess
    import sys
    import yaml
    cfg = tmp_path / "redisgate.yaml"
    cfg.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:6380", "users": {"a": "on nopass +ping"},
        "upstream": {"address": "127.0.0.1:6379",
                     "sentinel": {"master": "m", "addresses": ["127.0.0.1:26379"]}}}))
    done = subprocess.run([sys.executable, "-m", "redisgate", "check", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines()[1:] == ["  upstream: only one of address, sentinel"], done
    cfg.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:6380", "users": {"a": "on nopass +ping"},
        "upstream": {"sentinel": {"master": "m", "addresses": ["127.0.0.1:26379"]}}}))
    done = subprocess.run([sys.executable, "-m", "redisgate", "check", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "upstream sentinel master m" in done.stdout, done


# --- Asynq across a failover --------------------------------------------------------------------

def test_asynq_workload_across_a_failover(setup, env, tmp_path):
    """Producer -> worker -> done, the scheduler and the inspector (each its own user with its
    Asynq profile) through `redisgate serve` in front of the Sentinel pair, a `SENTINEL FAILOVER`
    in the middle of it. Each role is a go-redis-shaped client (asynq_workload.GoRedisConn) that,
    as go-redis's pool does, replaces a connection the proxy closed and runs the operation again.

    No task lost: every task the producer enqueued was dequeued and done, and at the end nothing
    is pending or active on the new master and its `processed` counter equals the number of
    tasks. No task run twice: the worker records every task id it dequeued (each dequeue is one
    run of the task's handler); a dequeue whose effect was lost in the failover would hand the
    same task out again, and one replayed after its reply was lost would show as a dequeue of a
    task with no other copy pending, so the id would appear twice in the record, or `done` would
    fail with NOT FOUND. The record must hold each id exactly once. A retried operation whose
    first attempt had in fact run would also show: enqueue with the same id returns 0 (a
    conflict) and done NOT FOUND, and either fails the test."""
    from test_asynq_e2e import Gate

    queue = f"q-{uuid.uuid4().hex[:6]}"
    gate = Gate(tmp_path, {**sentinel_upstream(setup), "password": setup.data_password}, queue)
    n_tasks = 60
    produced: list[str] = []
    runs: list[str] = []
    done_ids: list[str] = []
    retries = Counter()
    failures: list[str] = []
    producer_done = threading.Event()

    def with_retry(role: str, op, state: dict):
        deadline = time.monotonic() + 20
        while True:
            try:
                if state.get("conn") is None:
                    state["conn"] = gate.connect(role)
                return op(state["conn"])
            except (ConnectionError, OSError, w.ConnectFailed, w.ReplyError) as e:
                if isinstance(e, w.ReplyError) and "upstream Redis unavailable" not in str(e):
                    raise
                retries[role] += 1
                if state.get("conn") is not None:
                    state["conn"].close()
                state["conn"] = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def producer():
        state: dict = {}
        try:
            for i in range(n_tasks):
                task_id = f"task-{i}"
                with_retry("producer", lambda c: w.enqueue(c, queue, task_id=task_id), state)
                produced.append(task_id)
                time.sleep(0.05)
        except Exception as e:   # noqa: BLE001 - reported by the test
            failures.append(f"producer: {e!r}")
        finally:
            producer_done.set()

    def worker():
        state: dict = {}
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                msg = with_retry("worker", lambda c: w.dequeue(c, [queue]), state)
                if msg is None:
                    if producer_done.is_set() and len(done_ids) >= len(produced):
                        return
                    time.sleep(0.02)
                    continue
                runs.append(msg.id)                      # the handler runs here
                with_retry("worker", lambda c: w.done(c, msg), state)
                done_ids.append(msg.id)
        except Exception as e:   # noqa: BLE001
            failures.append(f"worker: {e!r}")

    scheduler_state: dict = {}
    sid = f"sched-{uuid.uuid4().hex[:6]}"
    with_retry("scheduler", lambda c: w.scheduler_heartbeat(c, sid, [b"entry"]), scheduler_state)
    watch = EventWatch(setup)
    threads = [threading.Thread(target=producer), threading.Thread(target=worker)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        setup.failover()
        watch.wait_for("+switch-master", 30)
        at_switch = len(produced), len(done_ids)
        for t in threads:
            t.join(60)
        # The scheduler and the inspector after the failover, on new connections or old ones.
        with_retry("scheduler", lambda c: w.scheduler_enqueue(c, "entry-1", queue),
                   scheduler_state)
        with_retry("scheduler", lambda c: w.scheduler_shutdown(c, sid, ["entry-1"]),
                   scheduler_state)
        stats, _ = with_retry("inspector", lambda c: w.queue_info(c, queue), {})
    finally:
        watch.stop()
        log = (tmp_path / "redisgate.log").read_text(errors="replace")
        gate.stop()
    assert not failures, (failures, log[-3000:])
    print("tasks produced, done at +switch-master:", at_switch, "retries:", dict(retries))
    # The failover came in the middle of the work, and the clients' connections were moved.
    assert 0 < at_switch[0] < n_tasks and at_switch[1] < n_tasks
    assert retries["producer"] and retries["worker"]
    assert len(produced) == n_tasks
    assert Counter(runs) == Counter(produced), \
        ([k for k, v in Counter(runs).items() if v > 1], set(produced) - set(runs))
    assert sorted(done_ids) == sorted(produced)
    new = setup.current_master()
    admin = new.client()
    assert admin.execute_command("ROLE")[0] == b"master"
    assert admin.llen(w.qkey(queue, "active")) == 0
    # (the scheduler's one enqueued task is pending; nothing else)
    assert admin.llen(w.qkey(queue, "pending")) == 1
    assert int(admin.get(w.qkey(queue, "processed")) or 0) == n_tasks
    assert stats is not None
    assert "failover of sentinel master" in log and f"127.0.0.1:{new.port}" in log
    assert setup.data_password not in log and setup.sentinel_password not in log


# --- configuration ------------------------------------------------------------------------------

def _problems(upstream) -> list[str]:
    from redisgate.config import ConfigError, build_config
    try:
        build_config({"upstream": upstream, "users": {"a": "on nopass +ping"}},
                     allow_embedded=False)
    except ConfigError as e:
        return e.problems
    return []


def test_check_validates_the_sentinel_keys(monkeypatch):
    from redisgate.config import build_config
    monkeypatch.setenv("SENTINEL_TEST_PASSWORD", "s3cret-sentinel")
    monkeypatch.delenv("NO_SUCH_SENTINEL_PW", raising=False)
    good = {"master": "mymaster", "addresses": ["127.0.0.1:26379", "[::1]:26380"],
            "username": "watcher", "password": "${SENTINEL_TEST_PASSWORD}", "tls": True}
    cfg = build_config({"upstream": {"sentinel": good, "password": "${SENTINEL_TEST_PASSWORD}"},
                        "users": {"a": "on nopass +ping"}}, allow_embedded=False)
    sen = cfg.upstream.sentinel
    assert (sen.master, sen.addresses, sen.username, sen.password, sen.tls) == \
        ("mymaster", [("127.0.0.1", 26379), ("::1", 26380)], "watcher", b"s3cret-sentinel", {})
    assert _problems({"address": "127.0.0.1:6379", "sentinel": good}) == \
        ["upstream: only one of address, sentinel"]
    assert _problems({"password": "x"}) == \
        ["upstream: 'address', 'sentinel' or 'cluster' is required"]
    assert _problems({"address": "127.0.0.1:6379", "sentinel": good,
                      "cluster": {"seeds": ["127.0.0.1:7000"]}}) == \
        ["upstream: only one of address, sentinel, cluster"]
    problems = _problems({"sentinel": {"addresses": ["127.0.0.1:0"], "bogus": 1,
                                       "password": "${NO_SUCH_SENTINEL_PW}"}})
    assert "upstream.sentinel.master: required" in problems
    assert "upstream.sentinel.addresses[0]: port must be 1-65535, got '0'" in problems
    assert any(p.startswith("upstream.sentinel.bogus: unknown setting") for p in problems)
    assert "upstream.sentinel.password: environment variable NO_SUCH_SENTINEL_PW is not set" \
        in problems
    assert _problems({"sentinel": {"master": "m", "addresses": []}})[0].startswith(
        "upstream.sentinel.addresses: expected a list of sentinel addresses")
    assert not any("s3cret" in p for p in _problems({"sentinel": {**good, "tls": 3}}))
