"""A real Sentinel set-up for tests: a master and a replica (Debian's redis-server 7.0, both with
`requirepass`) and three `redis-sentinel` processes (Debian's redis-sentinel package), all on
free 127.0.0.1 ports, their config files in one private temp dir.

The sentinels are tuned to act fast (down-after-milliseconds 1000, failover-timeout 4000) and
have a password of their own (`requirepass`, `sentinel sentinel-pass` between them), so the
proxy's `upstream.sentinel.password` is exercised. Every wait is bounded in time.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from servers import RedisServer, free_port

SENTINEL_BIN = "/usr/bin/redis-sentinel"
MASTER_NAME = "mymaster"


def have_sentinel() -> bool:
    return os.access(SENTINEL_BIN, os.X_OK)


def _wait(what: str, check, timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except (redis.exceptions.RedisError, OSError) as e:
            last = e
        time.sleep(step)
    raise TimeoutError(f"{what}: not within {timeout} s (last error: {last})")


@dataclass
class Sentinel:
    port: int
    conf: Path
    proc: subprocess.Popen | None = None

    def client(self, password: str) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=password,
                           socket_timeout=5, protocol=2, decode_responses=True)


@dataclass
class SentinelSetup:
    """`start()` it; `master` and `replica` are RedisServer objects (they swap on failover: use
    `current_master()`); `sentinel_addresses` is what `upstream.sentinel.addresses` takes."""
    data_password: str = "data-secret"
    sentinel_password: str = "sentinel-secret"
    down_after_ms: int = 1000
    failover_timeout_ms: int = 4000
    nodes: list[RedisServer] = field(default_factory=list)
    sentinels: list[Sentinel] = field(default_factory=list)
    dir: str | None = None

    def start(self) -> "SentinelSetup":
        if not have_sentinel():
            raise RuntimeError(f"{SENTINEL_BIN} is missing: apt-get install redis-sentinel "
                               "(scripts/test.sh does)")
        self.dir = tempfile.mkdtemp(prefix="redisgate-sentinel-")
        auth = ["--masterauth", self.data_password]
        master = RedisServer("7", password=self.data_password, extra=auth).start()
        self.nodes.append(master)
        replica = RedisServer("7", password=self.data_password,
                              extra=auth + ["--replicaof", "127.0.0.1", str(master.port)]).start()
        self.nodes.append(replica)
        _wait("replica in sync", lambda: replica.client().info("replication")
              .get("master_link_status") == "up", 15)
        for i in range(3):
            port = free_port()
            conf = Path(self.dir) / f"sentinel-{i}.conf"
            conf.write_text("\n".join([
                f"port {port}",
                "bind 127.0.0.1",
                "daemonize no",
                f"dir {self.dir}",
                "sentinel resolve-hostnames no",
                f"requirepass {self.sentinel_password}",
                f"sentinel sentinel-pass {self.sentinel_password}",
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2",
                f"sentinel auth-pass {MASTER_NAME} {self.data_password}",
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
                f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
                "loglevel warning",
                f"logfile {self.dir}/sentinel-{i}.log",
                "",
            ]))
            proc = subprocess.Popen([SENTINEL_BIN, str(conf)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            self.sentinels.append(Sentinel(port, conf, proc))
        self.wait_ready()
        return self

    @property
    def sentinel_addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def sentinel(self, i: int = 0) -> redis.Redis:
        return self.sentinels[i].client(self.sentinel_password)

    def master_address(self, i: int = 0) -> tuple[str, int]:
        host, port = self.sentinel(i).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                                      MASTER_NAME)
        return host, int(port)

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def current_master(self) -> RedisServer:
        return self.node(self.master_address()[1])

    def wait_ready(self, timeout: float = 30) -> None:
        """Every sentinel knows the master, a healthy replica and the two other sentinels, and
        the replica is in sync: a failover can be asked for."""
        master_port = self.master_address()[1]

        def ready() -> bool:
            for i in range(len(self.sentinels)):
                s = self.sentinel(i)
                info = s.execute_command("SENTINEL", "MASTER", MASTER_NAME)
                info = dict(zip(info[::2], info[1::2])) if isinstance(info, list) else info
                if int(info["port"]) != master_port or info["flags"] != "master":
                    return False
                if int(info["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return False
                replicas = [dict(zip(r[::2], r[1::2])) if isinstance(r, list) else r
                            for r in s.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)]
                good = [r for r in replicas
                        if r["flags"] == "slave" and r["master-link-status"] == "ok"]
                if not good:
                    return False
            for n in self.nodes:
                if n.port != master_port and n.proc.poll() is None and \
                        n.client().info("replication").get("master_link_status") != "up":
                    return False
            return True

        _wait("sentinels ready", ready, timeout, step=0.2)

    def failover(self) -> None:
        """SENTINEL FAILOVER mymaster (retried while a sentinel is not ready for it yet)."""
        def ask():
            try:
                return self.sentinel().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
            except redis.exceptions.ResponseError as e:
                if "NOGOODSLAVE" in str(e) or "INPROG" in str(e):
                    return False
                raise
        _wait("SENTINEL FAILOVER accepted", ask, 20, step=0.2)

    def kill_master(self) -> RedisServer:
        master = self.current_master()
        master.proc.send_signal(signal.SIGKILL)
        master.proc.wait(5)
        return master

    def stop(self) -> None:
        for s in self.sentinels:
            if s.proc and s.proc.poll() is None:
                s.proc.terminate()
        for s in self.sentinels:
            if s.proc:
                try:
                    s.proc.wait(5)
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait()
        for n in self.nodes:
            n.stop()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class EventWatch:
    """Records what the sentinels publish (every channel, with the monotonic time it arrived):
    one subscriber thread per sentinel, stopped by `stop()`."""

    def __init__(self, setup: SentinelSetup):
        self.events: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        for i, s in enumerate(setup.sentinels):
            if s.proc is None or s.proc.poll() is not None:
                continue   # (a sentinel a test stopped)
            ps = setup.sentinel(i).pubsub()
            ps.psubscribe("*")
            t = threading.Thread(target=self._run, args=(ps,), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, ps) -> None:
        try:
            while not self._stop.is_set():
                msg = ps.get_message(timeout=0.2)
                if msg and msg["type"] == "pmessage":
                    with self._lock:
                        self.events.append((time.monotonic(), msg["channel"], msg["data"]))
        except (redis.exceptions.RedisError, OSError):
            pass
        finally:
            ps.close()

    def wait_for(self, channel: str, timeout: float) -> float:
        """The time `channel` was first published (waiting for it up to `timeout` s)."""
        def seen():
            with self._lock:
                return next((t for t, c, _ in self.events if c == channel), None)
        return _wait(f"sentinel event {channel}", seen, timeout)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
