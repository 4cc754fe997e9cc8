"""`redisgate serve --workers N` with real processes: a supervising parent, N workers sharing each
listener (SO_REUSEPORT), real Redis 7 upstream, real clients (raw sockets, redis-py, TLS)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import hiredis
import psutil
import pytest
import yaml

from servers import free_port

PW = "pw"
H = "#" + hashlib.sha256(PW.encode()).hexdigest()


# -- helpers

class Group:
    """A `python -m redisgate serve --workers N` process; its log goes to a file (the workers
    write to the same stderr, and a pipe nobody drains would stop them)."""

    def __init__(self, tmp_path: Path, raw: dict, *extra: str):
        self.cfg = tmp_path / "redisgate.yaml"
        self.cfg.write_text(yaml.safe_dump(raw))
        self.raw = raw
        self.log_path = tmp_path / "redisgate.log"
        self.port = int(str(raw["listen"] if isinstance(raw["listen"], str)
                            else raw["listen"][0]["address"]).rsplit(":", 1)[1])
        self.admin = raw.get("admin", {}).get("listen")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "redisgate", "serve", "--config",
                                      str(self.cfg), *extra], stdout=self._log, stderr=self._log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        found = []
        for c in children:
            try:
                if "--worker-index" in c.cmdline() and c.status() != psutil.STATUS_ZOMBIE:
                    found.append(c)
            except psutil.NoSuchProcess:
                pass
        return found

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.log()[-3000:]}"
            try:
                last = self.http("/readyz")
                if last[0] == 200:
                    return
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise AssertionError(f"never ready: {last}\n{self.log()[-3000:]}")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.log())) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} x{count} not in the log:\n{self.log()[-3000:]}")

    def metric(self, name: str) -> float:
        status, text = self.http("/metrics")
        assert status == 200
        # (summed over the family's label sets: e.g. connections_total has a listener label)
        found = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        assert found, f"{name} not in /metrics:\n{text}"
        return sum(float(v) for v in found)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def groups():
    made: list[Group] = []
    yield made
    for g in made:
        pids = [w.pid for w in g.workers()]
        g.stop()
        for pid in pids:        # (the kernel's death signal ends them; make sure)
            try:
                psutil.Process(pid).wait(10)
            except psutil.NoSuchProcess:
                pass


def started(groups: list, tmp_path: Path, raw: dict, workers: int) -> Group:
    """A Group of `workers` from config `raw`, stopped by the `groups` fixture, once ready."""
    g = Group(tmp_path, raw, "--workers", str(workers))
    groups.append(g)
    g.wait_ready()
    return g


def config(redis7, port: int, **more) -> dict:
    raw = {"listen": f"127.0.0.1:{port}", "upstream": redis7.upstream,
           "users": {"a": f"on {H} ~k:* ~q:* +ping +get +blpop +client|info"},
           "admin": {"listen": f"127.0.0.1:{free_port()}"}, "shutdown": {"grace": "10s"}}
    raw.update(more)
    return raw


def login(port: int, ctx: ssl.SSLContext | None = None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), 10)
    if ctx is not None:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    s.sendall(b"*3\r\n$4\r\nAUTH\r\n$1\r\na\r\n$2\r\npw\r\n")
    assert recv_line(s) == b"+OK\r\n"
    return s


def recv_line(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def command(s: socket.socket, *args: str):
    """One command, its one reply (hiredis: bytes, or a ReplyError for an error reply)."""
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode())
                                                   for a in args))
    reader = hiredis.Reader()
    while (reply := reader.gets()) is False:
        data = s.recv(65536)
        assert data, "connection closed"
        reader.feed(data)
    return reply


def owners(socks: list[socket.socket], workers: list[psutil.Process]) -> dict[int, list]:
    """Which worker (pid) accepted each client socket: the worker holding the connection whose
    remote end is the socket's local address."""
    by_peer = {}
    for w in workers:
        for c in w.net_connections(kind="tcp"):
            if c.raddr:
                by_peer[(c.raddr.ip, c.raddr.port)] = w.pid
    found: dict[int, list] = {}
    for s in socks:
        pid = by_peer.get(s.getsockname()[:2])
        assert pid is not None, "a connection no worker holds"
        found.setdefault(pid, []).append(s)
    return found


def upstream_pids(redis7, workers: list[psutil.Process]) -> set[int]:
    """The workers that hold the upstream connections CLIENT LIST shows (user gate)."""
    ports = {}
    for w in workers:
        for c in w.net_connections(kind="tcp"):
            if c.raddr and c.raddr.port == redis7.port:
                ports[c.laddr.port] = w.pid
    found = set()
    for client in redis7.admin().client_list():
        if client["user"] == "gate":
            port = int(client["addr"].rsplit(":", 1)[1])
            if port in ports:
                found.add(ports[port])
    return found


# -- the command line

def serve_once(tmp_path, config_text: str, workers: str) -> tuple[Path, subprocess.CompletedProcess]:
    """`redisgate serve --workers <workers>` on a config file of `config_text`, expected to stop
    by itself (a refusal): the file and how it ended."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text)
    return cfg, subprocess.run([sys.executable, "-m", "redisgate", "serve", "--config", str(cfg),
                                "--workers", workers], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", "257", "0x2"])
def test_bad_worker_counts_are_usage_errors(tmp_path, value):
    _, r = serve_once(tmp_path, "upstream: {address: 127.0.0.1:1}\nusers: {a: 'on nopass'}\n",
                      value)
    assert r.returncode == 2, r.stderr
    assert (f"argument --workers: expected a whole number from 0 (one per CPU) to 256, "
            f"got {value!r}") in r.stderr


def test_a_bad_config_fails_once_in_the_parent(tmp_path):
    _, r = serve_once(tmp_path, f"listen: 127.0.0.1:{free_port()}\nupstream: {{address: "
                      "127.0.0.1:1}\nusers: {a: 'on nopass +frobnicate'}\n", "3")
    assert r.returncode == 1
    assert r.stderr.count("users.a") == 1, r.stderr
    assert "worker" not in r.stderr


def test_a_listener_in_use_fails_once_in_the_parent(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg, r = serve_once(tmp_path, f"listen: 127.0.0.1:{port}\nupstream: {{address: "
                            "127.0.0.1:1}\nusers: {a: 'on nopass'}\n", "2")
    assert r.returncode == 1
    assert r.stderr.strip() == f"{cfg}: listen: 127.0.0.1:{port}: address already in use"


def test_workers_0_is_one_per_cpu(tmp_path, redis7, groups):
    port = free_port()
    g = started(groups, tmp_path, config(redis7, port), workers=0)
    cpus = len(os.sched_getaffinity(0))
    assert len(g.workers()) == (cpus if cpus > 1 else 0)
    s = login(port)
    assert command(s, "PING") == b"PONG"


def test_workers_1_is_one_process(tmp_path, redis7, groups):
    port = free_port()
    g = started(groups, tmp_path, config(redis7, port), workers=1)
    assert g.workers() == [] and psutil.Process(g.proc.pid).children() == []


# -- spreading, metrics, TLS

def test_connections_spread_over_two_workers_and_metrics_sum(tmp_path, redis7, groups):
    from redisgate import certs
    pki = tmp_path / "pki"
    certs.generate(pki)
    port, tls_port = free_port(), free_port()
    raw = config(redis7, port, listen=[
        {"address": f"127.0.0.1:{port}"},
        {"address": f"127.0.0.1:{tls_port}",
         "tls": {"cert": str(pki / "server.crt"), "key": str(pki / "server.key")}}])
    g = started(groups, tmp_path, raw, workers=2)
    workers = g.workers()
    assert len(workers) == 2
    assert len(re.findall(r"listening on 127\.0\.0\.1:%d \(TLS\)" % tls_port, g.log())) == 2

    plain = [login(port) for _ in range(40)]
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    tls = [login(tls_port, ctx) for _ in range(16)]
    for s in plain + tls:
        assert command(s, "PING") == b"PONG"
    by_worker = owners(plain, workers)
    assert len(by_worker) == 2, {pid: len(v) for pid, v in by_worker.items()}
    tls_by_worker = owners(tls, workers)
    assert len(tls_by_worker) == 2, {pid: len(v) for pid, v in tls_by_worker.items()}
    # Each worker has its own upstream connections (CLIENT LIST at Redis: both pids).
    assert upstream_pids(redis7, workers) == {w.pid for w in workers}
    # CLIENT INFO through the proxy: the upstream connection of the client's own worker.
    info = command(by_worker[workers[0].pid][0], "CLIENT", "INFO")
    assert b"user=gate" in info

    # /metrics sums the workers: every connection counted once, by the worker that took it.
    assert g.metric("redisgate_connections_total") == 56
    assert g.metric("redisgate_connections_active") == 56
    assert g.metric('redisgate_workers{state="ready"}') == 2
    for s in plain[:10]:
        s.close()
    deadline = time.monotonic() + 10
    while g.metric("redisgate_connections_active") != 46 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert g.metric("redisgate_connections_active") == 46
    bad = socket.create_connection(("127.0.0.1", port), 10)
    for _ in range(3):
        bad.sendall(b"*3\r\n$4\r\nAUTH\r\n$1\r\na\r\n$5\r\nwrong\r\n")
        assert recv_line(bad).startswith(b"-WRONGPASS")
    assert g.metric('redisgate_auth_failures_total{reason="wrong-password",user="a"}') == 3


def test_readyz_names_a_worker_whose_upstream_is_down(tmp_path, redis7, groups):
    port = free_port()
    raw = config(redis7, port, upstream={"address": f"127.0.0.1:{free_port()}",
                                         "connect_timeout": "1s"})
    g = Group(tmp_path, raw, "--workers", "2")
    groups.append(g)
    deadline, last = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        try:
            last = g.http("/readyz")
        except OSError:
            time.sleep(0.1)
            continue
        if "onnection refused" in last[1]:
            break
        time.sleep(0.1)
    assert last is not None and last[0] == 503
    # (the probe's own wording, as for one process: "[Errno 111] Connection refused")
    assert re.fullmatch(r"worker \d \(pid \d+\): upstream 127\.0\.0\.1:\d+: .*onnection refused\n",
                        last[1]), last
    assert g.http("/healthz") == (200, "ok\n")


# -- restart, reload, stop

def test_a_killed_worker_is_restarted_and_clients_reconnect(tmp_path, redis7, groups):
    port = free_port()
    g = started(groups, tmp_path, config(redis7, port), workers=2)
    workers = g.workers()
    socks = [login(port) for _ in range(30)]
    by_worker = owners(socks, workers)
    assert len(by_worker) == 2
    victim = workers[0]
    index = victim.cmdline()[victim.cmdline().index("--worker-index") + 1]
    total_before = g.metric("redisgate_connections_total")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    deadline, seen = time.monotonic() + 5, None
    while seen is None and time.monotonic() < deadline:
        status, body = g.http("/readyz")
        if status == 503:
            seen = body
    assert seen and re.match(rf"worker {index}(: not running \(restarting\)| \(pid \d+\): "
                             rf"starting)", seen), seen
    # Its clients lost their connections; the other worker's did not.
    for s in by_worker[victim.pid]:
        s.settimeout(10)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    for s in by_worker[workers[1].pid]:
        assert command(s, "PING") == b"PONG"
    g.wait_log(rf"worker {index} \(pid {victim.pid}\) was killed by SIGKILL after [\d.]+s; "
               r"restarting it in 0\.2s")
    g.wait_ready()
    assert f"redisgate.audit: worker-restart worker={index} pid={victim.pid} " \
           "reason=was-killed-by-SIGKILL" in g.log()
    now = g.workers()
    assert len(now) == 2 and victim.pid not in {w.pid for w in now}
    # Clients reconnect, and land on both workers again (the new one too).
    again = [login(port) for _ in range(30)]
    for s in again:
        assert command(s, "PING") == b"PONG"
    assert set(owners(again, now)) == {w.pid for w in now}
    assert g.metric(f'redisgate_worker_restarts_total{{worker="{index}"}}') == 1
    # The dead worker's counts stay in the sum (a counter never goes down); its gauge went.
    assert g.metric("redisgate_connections_total") == total_before + 30
    assert g.metric("redisgate_connections_active") == 30 + len(by_worker[workers[1].pid])


def test_worker_restarts_are_audited_as_json_and_counted(tmp_path, redis7, groups):
    """With an `audit:` section the parent writes its own events to the audit file too: a
    worker-restart event per death (the worker's index and pid, how it ended, the back-off),
    the same one /metrics counts in redisgate_worker_restarts_total."""
    port = free_port()
    audit_path = tmp_path / "audit.log"
    g = Group(tmp_path, config(redis7, port, audit={"path": str(audit_path), "rate": 0}),
              "--workers", "2")
    groups.append(g)
    g.wait_ready()
    victims = []
    for index in (0, 1):   # (each once: a second death within 10 s would double the back-off)
        victim = next(w for w in g.workers()
                      if w.cmdline()[w.cmdline().index("--worker-index") + 1] == str(index))
        victims.append((victim.pid, index))
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        deadline = time.monotonic() + 20
        while victim.pid in {w.pid for w in g.workers()} or len(g.workers()) < 2:
            assert time.monotonic() < deadline, g.log()[-3000:]
            time.sleep(0.1)
        g.wait_ready()
    lines = [json.loads(line) for line in audit_path.read_text().splitlines()]
    restarts = [e for e in lines if e["event"] == "worker-restart"]
    assert [(e["pid"], e["worker"]) for e in restarts] == victims, restarts
    for e in restarts:
        assert e["user"] is None and e["reason"] == "was killed by SIGKILL"
        assert e["seconds"] == 0.2 and re.fullmatch(r"\d{4}-.*Z", e["ts"])
    # (the stderr line as without an audit section is not written: the audit file has it)
    assert "redisgate.audit: worker-restart" not in g.log()
    for pid, index in victims:
        assert f"worker {index} (pid {pid}) was killed by SIGKILL" in g.log()
    assert sum(g.metric(f'redisgate_worker_restarts_total{{worker="{i}"}}')
               for i in (0, 1)) == 2


def test_sighup_reloads_every_worker(tmp_path, redis7, groups):
    port = free_port()
    raw = config(redis7, port, pid_file=str(tmp_path / "rg.pid"))
    raw["users"] = {"a": f"on {H} ~k:* +ping"}
    g = started(groups, tmp_path, raw, workers=2)
    workers = g.workers()
    redis7.admin().set("k:reload", "v")
    before = [login(port) for _ in range(20)]
    assert len(owners(before, workers)) == 2
    for s in before:
        assert str(command(s, "GET", "k:reload")).startswith("NOPERM")
    raw["users"] = {"a": f"on {H} ~k:* +ping +get"}
    g.cfg.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "redisgate", "reload", "--config", str(g.cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == f"reload: sent SIGHUP to redisgate (pid {g.proc.pid})", r.stderr
    g.wait_log(r"SIGHUP: reloading 2 workers")
    g.wait_log(r"\[worker \d\]: configuration reloaded: 1 users", count=2)
    after = [login(port) for _ in range(20)]
    by_worker = owners(after, workers)
    assert len(by_worker) == 2          # the new rules apply on each worker
    for s in after + before:
        assert command(s, "GET", "k:reload") == b"v"
    assert g.proc.poll() is None and {w.pid for w in g.workers()} == {w.pid for w in workers}


def test_sigterm_stops_every_worker_gracefully(tmp_path, redis7, groups):
    port = free_port()
    pid_file = tmp_path / "rg.pid"
    g = started(groups, tmp_path, config(redis7, port, pid_file=str(pid_file)), workers=2)
    workers = g.workers()
    assert pid_file.read_text().strip() == str(g.proc.pid)
    metrics_dir = workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"]
    assert os.path.isdir(metrics_dir)
    socks = [login(port) for _ in range(20)]
    by_worker = owners(socks, workers)
    assert len(by_worker) == 2
    # One client per worker owes a reply that comes 1 s after the stop: it must get it.
    waiting = [v[0] for v in by_worker.values()]
    for s in waiting:
        s.sendall(b"*3\r\n$5\r\nBLPOP\r\n$6\r\nq:none\r\n$1\r\n1\r\n")
    time.sleep(0.2)
    t0 = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)
    # As systemd's KillMode=control-group does: every process of the group gets the signal too,
    # here after the parent's stop reached them. Still one graceful stop, not "again: at once".
    time.sleep(0.3)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    assert g.proc.wait(20) == 0, g.log()[-3000:]
    assert time.monotonic() - t0 < 10
    for s in waiting:
        s.settimeout(5)
        assert s.recv(100) == b"*-1\r\n"
        assert s.recv(100) == b""
    for w in workers:
        assert not psutil.pid_exists(w.pid) or w.status() == psutil.STATUS_ZOMBIE
    assert not pid_file.exists()
    assert not os.path.exists(metrics_dir)
    log = g.log()
    assert "SIGTERM: stopping 2 workers (grace 10s)" in log
    assert len(re.findall(r"\[worker \d\]: stopped", log)) == 2
    assert "again" not in log and "Traceback" not in log


def test_a_second_sigterm_exits_at_once_with_the_workers(tmp_path, redis7, groups):
    port = free_port()
    pid_file = tmp_path / "rg.pid"
    g = Group(tmp_path, config(redis7, port, pid_file=str(pid_file), shutdown={"grace": "60s"}),
              "--workers", "2")
    groups.append(g)
    g.wait_ready()
    workers = g.workers()
    socks = [login(port) for _ in range(20)]
    by_worker = owners(socks, workers)
    assert len(by_worker) == 2
    for v in by_worker.values():        # owed a reply for ever: the drain cannot end by itself
        v[0].sendall(b"*3\r\n$5\r\nBLPOP\r\n$6\r\nq:none\r\n$1\r\n0\r\n")
    time.sleep(0.2)
    g.proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert g.proc.poll() is None
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(10) == 128 + signal.SIGTERM
    for w in workers:
        w.wait(10)
    assert not pid_file.exists()
    assert "SIGTERM again: exiting at once" in g.log()
    assert "Traceback" not in g.log()


def test_workers_stop_when_the_parent_is_killed(tmp_path, redis7, groups):
    port = free_port()
    g = started(groups, tmp_path, config(redis7, port), workers=2)
    workers = g.workers()
    g.proc.send_signal(signal.SIGKILL)
    g.proc.wait(10)
    for w in workers:
        w.wait(20)
    # (the kernel's SIGTERM and the control socket's EOF, in either order: one graceful stop)
    g.wait_log(r"\[worker \d\]: stopped", count=2)
    assert "again" not in g.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), 1).close()


def test_a_worker_dying_at_once_makes_the_parent_give_up(tmp_path, redis7, groups):
    port = free_port()
    pid_file = tmp_path / "rg.pid"
    g = started(groups, tmp_path, config(redis7, port, pid_file=str(pid_file)), workers=2)
    workers = g.workers()
    g.cfg.write_text("this: is: not yaml")      # every new worker now fails at start
    workers[0].send_signal(signal.SIGKILL)
    assert g.proc.wait(60) == 1
    log = g.log()
    assert re.search(r"worker \d \(pid \d+\) exited with code 1, 5 times in a row within 10s "
                     r"of its start: giving up", log), log[-3000:]
    assert len(re.findall(r"restarting it in", log)) == 4
    # the audit's plain-text lines (no audit: section), as before the audit had events
    assert len(re.findall(r"WARNING redisgate.audit: worker-restart worker=\d pid=\d+ "
                          r"reason=(was-killed-by-SIGKILL|exited-with-code-1)\n", log)) == 4, log
    assert re.search(r"ERROR redisgate.audit: worker-gave-up worker=\d pid=\d+ "
                     r"reason=exited-with-code-1\n", log), log[-3000:]
    assert not pid_file.exists()
    assert not psutil.pid_exists(workers[1].pid) or workers[1].status() == psutil.STATUS_ZOMBIE


def test_embedded_redis_is_started_once_by_the_parent(tmp_path, groups):
    port = free_port()
    raw = {"listen": f"127.0.0.1:{port}", "users": {"a": f"on {H} ~k:* +ping +set +get"},
           "admin": {"listen": f"127.0.0.1:{free_port()}"}}
    g = started(groups, tmp_path, raw, workers=2)
    children = psutil.Process(g.proc.pid).children(recursive=True)
    servers = [c for c in children if "redis-server" in " ".join(c.cmdline())]
    assert len(servers) == 1 and servers[0].ppid() == g.proc.pid
    socks = [login(port) for _ in range(20)]
    assert len(owners(socks, g.workers())) == 2
    for i, s in enumerate(socks):
        assert command(s, "SET", "k:e", str(i)) == b"OK"
    for s in socks:
        assert command(s, "GET", "k:e") == b"19"   # every worker, one Redis
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(20) == 0
    assert not psutil.pid_exists(servers[0].pid) or servers[0].status() == psutil.STATUS_ZOMBIE


# -- custom collectors (values kept outside prometheus-client, e.g. in C)

MIRROR = r"""
import os, sys
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client import REGISTRY
from redisgate.telemetry import metrics

class C:
    value = 0
    def collect(self):
        f = CounterMetricFamily("redisgate_test_things", "things", labels=["user"])
        f.add_metric(["a"], C.value)
        yield f
        g = GaugeMetricFamily("redisgate_test_level", "level")
        g.add_metric([], C.value * 10)
        yield g

REGISTRY.register(C())
mirror = metrics.CollectorMirror()
for v in map(int, sys.argv[1:]):
    C.value = v
    mirror.export()
"""


def test_custom_collectors_are_mirrored_into_the_multiprocess_files(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    for values in (["3", "5"], ["7"]):      # two "workers"
        subprocess.run([sys.executable, "-c", MIRROR, *values], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert 'redisgate_test_things_total{user="a"} 12.0' in text     # 5 + 7: summed
    assert "redisgate_test_level 120.0" in text                      # live sum (50 + 70)


HISTOGRAM = r"""
import sys
from prometheus_client.core import HistogramMetricFamily
from prometheus_client import REGISTRY
from redisgate.telemetry import metrics

class H:
    counts = [0, 0, 0]   # per bucket: <= 0.001, <= 0.01, more
    total = 0.0
    def collect(self):
        cumulative, buckets = 0, []
        for bound, n in zip(("0.001", "0.01", "+Inf"), H.counts):
            cumulative += n
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("redisgate_test_seconds", "t", buckets=buckets,
                                    sum_value=H.total)

REGISTRY.register(H())
mirror = metrics.CollectorMirror()
for step in sys.argv[1:]:
    H.counts = [int(x) for x in step.split(",")[:3]]
    H.total = float(step.split(",")[3])
    mirror.export()
"""


def test_a_custom_histogram_is_mirrored_and_summed_over_the_workers(tmp_path):
    """The sampled added-latency histogram is a custom collector's (counted in C): in a
    group, its buckets, count and sum reach the parent's /metrics, summed over the workers."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    # Worker 1 exports twice (its counts grow), worker 2 once.
    for steps in (["1,0,0,0.0005", "3,1,0,0.0105"], ["0,2,1,1.5"]):
        subprocess.run([sys.executable, "-c", HISTOGRAM, *steps], env=env, check=True,
                       timeout=60)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert 'redisgate_test_seconds_bucket{le="0.001"} 3.0' in text
    assert 'redisgate_test_seconds_bucket{le="0.01"} 6.0' in text
    assert 'redisgate_test_seconds_bucket{le="+Inf"} 7.0' in text
    assert "redisgate_test_seconds_count 7.0" in text
    assert re.search(r"^redisgate_test_seconds_sum 1\.51\d*$", text, re.M), text


def test_the_groups_metrics_have_the_latency_histogram(tmp_path, redis7, groups):
    port = free_port()
    g = Group(tmp_path, config(redis7, port), "--workers", "2")
    groups.append(g)
    g.wait_ready()
    socks = [login(port) for _ in range(8)]
    for _ in range(100):        # (one read in 64 is timed, in each worker)
        for s in socks:
            assert command(s, "PING") == b"PONG"
    deadline = time.monotonic() + 10   # (workers export every second)
    while g.metric("redisgate_added_latency_seconds_count") < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    count = g.metric("redisgate_added_latency_seconds_count")
    assert count >= 4
    assert g.metric('redisgate_added_latency_seconds_bucket{le="+Inf"}') == count
    assert g.metric("redisgate_added_latency_seconds_sum") > 0


def test_the_audit_rate_is_the_groups_each_worker_writes_its_share(tmp_path, redis7, groups):
    """audit.rate 10 with 2 workers: each worker writes at most 5 `denied` lines a second
    (the rest summarised); nothing is lost: lines + suppressed counts = denials."""
    import json
    port = free_port()
    trail = tmp_path / "audit.jsonl"
    g = Group(tmp_path, config(redis7, port, audit={"path": str(trail), "rate": 10}),
              "--workers", "2")
    groups.append(g)
    g.wait_ready()
    socks = [login(port) for _ in range(16)]
    assert len(owners(socks, g.workers())) == 2
    denials = 0
    started = time.monotonic()
    for _ in range(20):
        for s in socks:
            s.sendall(b"*2\r\n$3\r\nGET\r\n$4\r\nsecr\r\n" * 10)
            denials += 10
        for s in socks:
            reader = hiredis.Reader()
            got = 0
            while got < 10:
                data = s.recv(65536)
                assert data
                reader.feed(data)
                while (r := reader.gets()) is not False:
                    assert isinstance(r, hiredis.ReplyError) and str(r).startswith("NOPERM")
                    got += 1
    elapsed = time.monotonic() - started
    for s in socks:
        s.close()
    deadline = time.monotonic() + 10
    lines: list = []
    while time.monotonic() < deadline:   # (the summaries come at the next second's timer)
        lines = [json.loads(x) for x in trail.read_text().splitlines() if x.strip()]
        written = sum(1 for x in lines if x["event"] == "denied")
        summed = sum(x["count"] for x in lines if x["event"] == "suppressed"
                     and x["event_suppressed"] == "denied")
        if written + summed == denials:
            break
        time.sleep(0.2)
    assert written + summed == denials
    # Each worker's limiter counts its own seconds: at most 5 lines in each of them.
    seconds = int(elapsed) + 2
    assert written <= 2 * 5 * seconds, (written, elapsed)
    assert summed > 0
