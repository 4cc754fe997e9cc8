"""Metrics (issue 17): every family moves as it should, scraped over HTTP from the admin listener
of a real proxy in front of a real Redis, including for what the C lane forwards (counted in C,
read at scrape time); and the label sets stay bounded by the configuration whatever clients send.

The proxies run in this process (tests/proxy.py) with their admin endpoint on their own loop, so
that a test can see that its traffic really went through the lane (`Lane.passed`); the registry
is the process's, shared by every test, so each check is a difference between two scrapes. The
last test runs `redisgate serve` for real and checks every family's name in its scrape.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import asynq_workload as w
from proxy import ProxyRunner, pw_hash, stop_serve
from servers import free_port
from wire import Wire, cmd

from redisgate.telemetry import metrics
from redisgate.io import server
from redisgate.io.admin import Admin

PW = pw_hash("pw")
USERS = {"app": f"on {PW} ~k:* +get +set +ping +client|setname -@dangerous",
         "off": f"off {PW} ~k:* +get"}

LANE = server.Lane is not None


class Scraper:
    """A proxy (ProxyRunner) with its admin endpoint, scraped over HTTP."""

    def __init__(self, raw: dict):
        self.runner = ProxyRunner(raw).start()
        self.admin = self.runner.call(self._start_admin)

    def _start_admin(self):
        admin = Admin(self.runner.proxy, "127.0.0.1", 0)
        admin.start()
        return admin

    @property
    def port(self) -> int:
        return self.runner.port

    @property
    def listener(self) -> str:
        return f"127.0.0.1:{self.runner.port}"

    def text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin.port}/metrics", timeout=10) as r:
            assert r.status == 200
            return r.read().decode()

    def scrape(self) -> dict:
        """{(sample name, frozenset of labels): value} of one scrape."""
        out = {}
        for family in text_string_to_metric_families(self.text()):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def clients(self):
        return self.runner.call(lambda: list(self.runner.proxy.clients))

    def stop(self) -> None:
        try:
            fut = self.runner.call(lambda: __import__("asyncio").ensure_future(self.admin.stop()))
            deadline = time.monotonic() + 5
            while not fut.done() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            self.runner.stop()


def value(scrape: dict, name: str, **labels) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def login(port: int, user: str = "app") -> Wire:
    c = Wire(port)
    assert c.call("AUTH", user, "pw") == b"OK"
    return c


@pytest.fixture(params=[0, 1], ids=["dedicated", "shared"])
def mux(request):
    return request.param


# ---------------------------------------------------------------- commands, bytes, latency

def test_commands_the_c_lane_forwards_are_counted_in_c_per_user_and_command(redis7, mux):
    p = Scraper({"upstream": dict(redis7.upstream, multiplex=mux), "users": USERS})
    try:
        c = login(p.port)
        assert c.call("SET", "k:m", "v") == b"OK"
        for _ in range(5):   # (the lane is armed from here on)
            assert c.call("GET", "k:m") == b"v"
        [conn] = p.clients()
        if LANE:
            assert p.runner.call(lambda: conn.lane.armed)
            passed = conn.lane.passed
        before = p.scrape()
        n, rounds = 16, 100
        for _ in range(rounds):   # redis-benchmark -P 16: one read of 16 GETs at a time
            c.send(cmd("GET", "k:m") * n)
            assert c.read(n) == [b"v"] * n
        after = p.scrape()
        assert delta(before, after, "redisgate_commands_forwarded_total", user="app",
                     command="get") == n * rounds
        if LANE:   # nearly all of them through the C lane (a read split by TCP goes to Python)
            assert p.runner.call(lambda: conn.lane.passed) - passed >= n * rounds * 0.9
        sent = n * rounds * len(cmd("GET", "k:m"))
        assert delta(before, after, "redisgate_client_received_bytes_total") >= sent
        assert delta(before, after, "redisgate_client_sent_bytes_total") >= n * rounds * 7
        # At least 2 * rounds reads went through (requests and replies): some were timed.
        timed = delta(before, after, "redisgate_added_latency_seconds_count")
        assert timed >= 2 * rounds // metrics.LATENCY_SAMPLE - 1
        assert delta(before, after, "redisgate_added_latency_seconds_bucket", le="+Inf") == timed
        assert delta(before, after, "redisgate_added_latency_seconds_sum") > 0 or not timed
        # (the other user's series did not move)
        assert delta(before, after, "redisgate_commands_forwarded_total", user="off",
                     command="get") == 0
    finally:
        p.stop()


def test_pipelined_asynq_evalsha_through_the_lane_is_counted(redis7, mux):
    enqueue = w.script("enqueueCmd")
    redis7.admin().script_load(enqueue.body)
    producer = {"rules": f"on {PW}", "profile": "asynq-producer", "queues": ["default"],
                "scripts": w.entries_for_profiles("asynq-producer")}
    p = Scraper({"upstream": dict(redis7.upstream, multiplex=mux), "users": {"p": producer}})
    try:
        c = login(p.port, "p")

        def batch(k: int) -> bytes:
            out = b""
            for _ in range(k):
                tid = str(uuid.uuid4())
                out += cmd("EVALSHA", enqueue.sha, "2", f"asynq:{{default}}:t:{tid}",
                           "asynq:{default}:pending", "msg", tid, str(time.time_ns()))
            return out

        c.send(batch(4))   # (judged in Python: the lane learns the call's form)
        assert c.read(4) == [1] * 4
        [conn] = p.clients()
        passed = conn.lane.passed if LANE else 0
        before = p.scrape()
        for _ in range(50):   # go-redis's BatchEnqueue: 16 EVALSHAs in one write
            c.send(batch(16))
            assert c.read(16) == [1] * 16
        after = p.scrape()
        assert delta(before, after, "redisgate_commands_forwarded_total", user="p",
                     command="evalsha") == 800
        if LANE:
            assert p.runner.call(lambda: conn.lane.passed) - passed >= 700
    finally:
        p.stop()


def test_refused_commands_by_user_and_command(redis7):
    p = Scraper({"upstream": redis7.upstream, "users": USERS})
    try:
        anon = Wire(p.port)
        before = p.scrape()
        assert "NOAUTH" in str(anon.call("GET", "k:1"))
        c = login(p.port)
        assert "NOPERM" in str(c.call("GET", "z:1"))          # a key outside the user's
        assert "NOPERM" in str(c.call("FLUSHALL"))            # a command outside the user's
        assert "unknown command" in str(c.call("NOSUCHCOMMAND", "x"))
        assert "wrong number" in str(c.call("GET"))
        assert c.call("GET", "k:none") is None                 # (forwarded, not refused)
        after = p.scrape()
        refused = "redisgate_commands_refused_total"
        assert delta(before, after, refused, user="unknown", command="get") == 1
        assert delta(before, after, refused, user="app", command="get") == 2
        assert delta(before, after, refused, user="app", command="flushall") == 1
        assert delta(before, after, refused, user="app", command="other") == 1
        assert delta(before, after, "redisgate_commands_denied_total", user="app", kind="key",
                     mode="denied") == 1
        assert delta(before, after, "redisgate_commands_forwarded_total", user="app",
                     command="get") == 1
    finally:
        p.stop()


# ---------------------------------------------------------------- logins

def test_auth_failures_by_user_and_reason_and_lockouts(redis7):
    p = Scraper({"upstream": redis7.upstream, "users": USERS,
                 "auth_throttle": {"max_failures": 3, "window": 60, "lockout": 60}})
    try:
        before = p.scrape()
        c = Wire(p.port)
        assert "WRONGPASS" in str(c.call("AUTH", "nobody", "pw"))
        assert "WRONGPASS" in str(c.call("AUTH", "off", "pw"))
        assert "WRONGPASS" in str(c.call("AUTH", "app", "bad"))   # the 3rd from 127.0.0.1: lockout
        assert "WRONGPASS" in str(c.call("AUTH", "app", "pw"))    # locked out: refused unchecked
        after = p.scrape()
        failures = "redisgate_auth_failures_total"
        assert delta(before, after, failures, user="unknown", reason="unknown-user") == 1
        assert delta(before, after, failures, user="off", reason="disabled") == 1
        assert delta(before, after, failures, user="app", reason="wrong-password") == 1
        assert delta(before, after, failures, user="app", reason="locked-out") == 1
        assert delta(before, after, "redisgate_auth_lockouts_total", scope="address") >= 1
        assert delta(before, after, "redisgate_auth_refused_locked_total") == 1
    finally:
        p.stop()


# ---------------------------------------------------------------- connections and upstream

def test_connections_by_listener_and_user_and_upstream_connections(redis7, mux):
    p = Scraper({"upstream": dict(redis7.upstream, multiplex=mux), "users": USERS})
    try:
        before = p.scrape()
        anon = Wire(p.port)
        assert "NOAUTH" in str(anon.call("GET", "k:1"))
        apps = [login(p.port) for _ in range(3)]
        for a in apps:
            assert a.call("PING") == b"PONG"
        after = p.scrape()
        assert delta(before, after, "redisgate_connections_total", listener=p.listener) == 4
        assert value(after, "redisgate_connections_open", listener=p.listener, user="app") == 3
        assert value(after, "redisgate_connections_open", listener=p.listener, user="unknown") == 1
        kind = "shared" if mux else "client"
        assert value(after, "redisgate_upstream_connections_open", kind=kind) >= (1 if mux else 3)
        assert delta(before, after, "redisgate_upstream_connections_total", kind=kind) >= 1
        for a in apps + [anon]:
            a.close()
        deadline = time.monotonic() + 10
        while p.clients() and time.monotonic() < deadline:
            time.sleep(0.05)
        last = p.scrape()
        assert value(last, "redisgate_connections_open", listener=p.listener, user="app") == 0
        assert value(last, "redisgate_upstream_connections_open", kind="client") == 0
    finally:
        p.stop()


def test_upstream_errors_and_shared_link_reconnects(redis7):
    p = Scraper({"upstream": dict(redis7.upstream, multiplex=1), "users": USERS})
    try:
        c = login(p.port)
        assert c.call("PING") == b"PONG"
        before = p.scrape()
        # The shared link's connection is killed on the Redis side (the proxy's own `AUTH`
        # user; the test's redis-py client is another): the link is lost, then reopened.
        admin = redis7.admin()
        mine = admin.client_id()
        for info in admin.client_list():
            if int(info["id"]) != mine and info.get("user") == redis7.upstream["username"]:
                admin.client_kill_filter(_id=info["id"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if c.call("PING") == b"PONG" and delta(before, p.scrape(),
                                                       "redisgate_upstream_reconnects_total"):
                    break
            except (ConnectionError, OSError):   # (a client with replies due is closed)
                c = login(p.port)
            time.sleep(0.05)
        after = p.scrape()
        assert delta(before, after, "redisgate_upstream_errors_total", stage="lost") >= 1
        assert delta(before, after, "redisgate_upstream_reconnects_total") >= 1
    finally:
        p.stop()
    dead = Scraper({"upstream": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 1},
                    "users": USERS})
    try:
        before = dead.scrape()
        c = login(dead.port)
        assert isinstance(c.call("PING"), Exception)   # (the proxy's error: no upstream)
        after = dead.scrape()
        assert delta(before, after, "redisgate_upstream_errors_total", stage="connect") >= 1
    finally:
        dead.stop()


# ---------------------------------------------------------------- reloads

def test_reloads_ok_and_failed_and_the_configs_age(redis7, tmp_path):
    import yaml
    raw = {"upstream": redis7.upstream, "users": USERS}
    path = tmp_path / "redisgate.yaml"
    path.write_text(yaml.safe_dump(raw))
    p = Scraper(raw)
    try:
        p.runner.proxy.config.path = path
        before = p.scrape()
        loaded = value(before, "redisgate_config_last_reload_success_timestamp_seconds")
        assert 0 < loaded <= time.time()
        time.sleep(0.05)
        assert p.runner.call(p.runner.proxy.reload) is True
        mid = p.scrape()
        assert delta(before, mid, "redisgate_config_reloads_total", result="ok") == 1
        assert value(mid, "redisgate_config_last_reload_successful") == 1
        assert value(mid, "redisgate_config_last_reload_success_timestamp_seconds") > loaded
        path.write_text("users: [not, a, mapping\n")
        assert p.runner.call(p.runner.proxy.reload) is False
        after = p.scrape()
        assert delta(mid, after, "redisgate_config_reloads_total", result="failed") == 1
        assert value(after, "redisgate_config_last_reload_successful") == 0
        assert value(after, "redisgate_config_last_reload_success_timestamp_seconds") == \
            value(mid, "redisgate_config_last_reload_success_timestamp_seconds")
    finally:
        p.stop()


# ---------------------------------------------------------------- bounded label sets

def _series(scrape: dict) -> set:
    return set(scrape)


def test_label_sets_stay_bounded_under_unique_user_and_command_names(redis7):
    # (limits.auth_timeout: the anonymous connection takes a while to send 10,000 AUTHs)
    p = Scraper({"upstream": redis7.upstream, "users": USERS, "limits": {"auth_timeout": 600}})
    try:
        c = Wire(p.port, timeout=120)   # (10,000 replies each: slow under ASan on a busy machine)
        assert c.call("AUTH", "app", "pw") == b"OK"
        assert "unknown command" in str(c.call("WARMUP-UNKNOWN"))
        anon = Wire(p.port, timeout=120)
        assert "WRONGPASS" in str(anon.call("AUTH", "warm-up-name", "x"))
        before = p.scrape()
        n = 10_000
        for wire, make, text in (
                (anon, lambda: cmd("AUTH", f"user-{uuid.uuid4()}", "x"), "WRONGPASS"),
                (c, lambda: cmd(f"CMD-{uuid.uuid4().hex}", "k:1"), "unknown command")):
            for _ in range(10):   # (1,000 at a time: within the pre-login output limit)
                wire.send(b"".join(make() for _ in range(n // 10)))
                replies = wire.read(n // 10)
                assert all(text in str(r) for r in replies)
        after = p.scrape()
        assert delta(before, after, "redisgate_auth_failures_total", user="unknown",
                     reason="unknown-user") == n
        assert delta(before, after, "redisgate_commands_refused_total", user="app",
                     command="other") == n
        # No new series at all, in any family (the counters above existed already).
        assert _series(after) - _series(before) == set()
        names = {dict(labels).get("user") for (_, labels) in after} - {None}
        assert names <= set(metrics._users) | {"unknown"}
        commands = {dict(labels).get("command") for (_, labels) in after} - {None}
        from redisgate.protocol.commands import TABLE
        assert all(name in TABLE for name in commands - {"other"}), commands - {"other"}
    finally:
        p.stop()


# ---------------------------------------------------------------- the real process

FAMILIES = [   # (as `# TYPE` names them: a counter without its _total)
    "redisgate_connections", "redisgate_connections_active", "redisgate_connections_open",
    "redisgate_auth_failures", "redisgate_auth_lockouts", "redisgate_auth_refused_locked",
    "redisgate_commands_forwarded", "redisgate_commands_refused", "redisgate_commands_denied",
    "redisgate_client_received_bytes", "redisgate_client_sent_bytes",
    "redisgate_upstream_connections", "redisgate_upstream_connections_open",
    "redisgate_upstream_errors", "redisgate_upstream_reconnects", "redisgate_config_reloads",
    "redisgate_config_last_reload_successful",
    "redisgate_config_last_reload_success_timestamp_seconds", "redisgate_added_latency_seconds",
]


def test_serve_scrape_has_every_family(tmp_path, redis7):
    import yaml
    port, admin = free_port(), free_port()
    cfg = tmp_path / "redisgate.yaml"
    cfg.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
                                   "users": USERS, "admin": {"listen": f"127.0.0.1:{admin}"},
                                   "auth_throttle": {"max_failures": 1000}}))
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "redisgate", "serve", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                c = redis.Redis(port=port, username="app", password="pw", protocol=2,
                                socket_timeout=5)
                c.ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        pipe = c.pipeline(transaction=False)
        for i in range(200):
            pipe.get(f"k:{i}")
        pipe.execute()
        with pytest.raises(redis.exceptions.NoPermissionError):
            c.get("z:1")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port, username="app", password="bad", protocol=2).ping()
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
            if 'redisgate_config_reloads_total{result="ok"} 1.0' in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for name in FAMILIES:
            assert f"\n# TYPE {name}" in text, name
        assert 'redisgate_commands_forwarded_total{command="get",user="app"}' in text
        assert 'redisgate_config_reloads_total{result="ok"} 1.0' in text
        if os.environ.get("REDISGATE_SAVE_SCRAPE"):   # (the README's sample scrape)
            with open(os.environ["REDISGATE_SAVE_SCRAPE"], "w") as f:
                f.write(text)
    finally:
        stop_serve(proc)
