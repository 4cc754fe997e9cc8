"""A real Redis Cluster for tests: 3 masters + 3 replicas of Debian's redis-server 7.0.

Each node listens on a 127.0.0.1 port in 20000-44999 whose cluster bus port (+10000) is free too
(the bus port must stay <= 65535, and ephemeral ports are avoided), runs in its own directory under
one temp dir (with its `cluster-config-file` there), and the cluster is created with
`redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`. `start()` returns once every
node answers `cluster_state:ok` in `CLUSTER INFO` and agrees on the slot map; `stop()` terminates
every process and removes the directory. No Redis is ever mocked.
"""
from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import redis

from servers import RedisServer, redis_binary, redis_cli

BUS_OFFSET = 10000
PORT_RANGE = (20000, 45000)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(n: int, rng: random.Random | None = None) -> list[int]:
    """`n` distinct ports p in PORT_RANGE with p and p + 10000 free right now (bounded tries)."""
    rng = rng or random.Random()
    ports: list[int] = []
    for _ in range(2000):
        p = rng.randrange(*PORT_RANGE)
        if p in ports or p + BUS_OFFSET in ports or p - BUS_OFFSET in ports:
            continue
        if _port_free(p) and _port_free(p + BUS_OFFSET):
            ports.append(p)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"found only {len(ports)} of {n} free port pairs in {PORT_RANGE}")


@dataclass
class RedisCluster:
    """A running cluster: `nodes` (RedisServer each). With `acl_user` / `acl_password`, every
    node also has that ACL user (all commands, keys and channels), the identity a proxy in front
    of the cluster would use; the `default` user stays on (replicas sync through it)."""
    masters_count: int = 3
    replicas_per_master: int = 1
    acl_user: str | None = None
    acl_password: str | None = None
    nodes: list[RedisServer] = field(default_factory=list)
    dir: str | None = None
    timeout: float = 30.0

    def start(self) -> "RedisCluster":
        if redis_binary("7") is None or redis_cli() is None:
            raise RuntimeError("redis-server / redis-cli 7 are not installed")
        n = self.masters_count * (1 + self.replicas_per_master)
        self.dir = tempfile.mkdtemp(prefix="redisgate-cluster-")
        try:
            for attempt in range(3):
                try:
                    self._start_nodes(n)
                    break
                except RuntimeError:
                    # a port taken between the check and the bind: try other ports
                    self._stop_nodes()
                    if attempt == 2:
                        raise
            self._create()
            self._wait_ok()
            if self.acl_user:
                for srv in self.nodes:
                    self.client(srv.port).execute_command(
                        "ACL", "SETUSER", self.acl_user, "on", f">{self.acl_password}",
                        "allkeys", "allchannels", "+@all")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nodes(self, n: int) -> None:
        for port in cluster_ports(n):
            node_dir = f"{self.dir}/{port}"
            srv = RedisServer("7", port=port, extra=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"{node_dir}/nodes.conf",
                "--cluster-node-timeout", "2000",
                # a test cluster must keep answering while a shard is down
                "--cluster-require-full-coverage", "no",
            ])
            os.makedirs(node_dir, exist_ok=True)
            self.nodes.append(srv)
            srv.start()

    def _create(self) -> None:
        cmd = [redis_cli(), "--cluster", "create",
               *(f"127.0.0.1:{s.port}" for s in self.nodes),
               "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        r = subprocess.run(cmd, capture_output=True, timeout=self.timeout)
        if r.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: "
                               f"{r.stdout.decode()[-2000:]} {r.stderr.decode()[-2000:]}")

    def _wait_ok(self) -> None:
        """Bounded wait until every node says cluster_state:ok and knows every node's role."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if all(self._node_ok(s) for s in self.nodes):
                return
            time.sleep(0.1)
        states = {s.port: self.client(s.port).execute_command("CLUSTER", "INFO") for s in self.nodes}
        raise RuntimeError(f"cluster not ok after {self.timeout} s: {states}")

    def _node_ok(self, srv: RedisServer) -> bool:
        try:
            c = self.client(srv.port)
            info = c.execute_command("CLUSTER", "INFO")
            if isinstance(info, bytes):
                info = info.decode()
            if "cluster_state:ok" not in info:
                return False
            # every node must also see all masters with their replicas (gossip converged)
            slots = c.execute_command("CLUSTER", "SLOTS")
            return (len(slots) == self.masters_count
                    and all(len(r) == 3 + self.replicas_per_master for r in slots))
        except redis.exceptions.RedisError:
            return False

    def client(self, port: int, **kw) -> redis.Redis:
        """redis-py's plain (non-cluster) client to one node: sees MOVED/ASK as errors."""
        kw.setdefault("protocol", 2)
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, **kw)

    @property
    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.nodes]

    def masters(self) -> list[int]:
        """Ports of the current masters, as the first node's CLUSTER SLOTS tells."""
        slots = self.client(self.nodes[0].port).execute_command("CLUSTER", "SLOTS")
        return sorted({int(r[2][1]) for r in slots})

    def port_for_slot(self, slot: int) -> int:
        for r in self.client(self.nodes[0].port).execute_command("CLUSTER", "SLOTS"):
            if int(r[0]) <= slot <= int(r[1]):
                return int(r[2][1])
        raise LookupError(slot)

    def _stop_nodes(self) -> None:
        for s in self.nodes:
            s.stop()
        self.nodes.clear()

    def stop(self) -> None:
        self._stop_nodes()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def read_audit(path) -> list[dict]:
    """The JSON audit file's events (one object a line; none yet: [])."""
    import json
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def scrape(admin_port: int) -> dict:
    """/metrics of an admin endpoint: {(sample name, sorted (label, value) pairs): value}."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
