"""The redis-benchmark workloads, how one is run against one target, and how its output is read.

A workload is a fixed redis-benchmark command line (minus host, port, auth and ``-n``) plus two
request counts, one for ``--quick`` and one for the full run. Every run uses ``--csv``, whose one
data row gives requests/s and the latency percentiles (ms, from redis-benchmark 7's HDR
histogram), so throughput and latency come from the same parser.

redis-benchmark 7 exits with status 1 on the first error reply ("We now immediately exit on error
to avoid false results"), so a run either measured the command it was asked to or failed; a
proxy that refuses a command can never look fast.
"""
from __future__ import annotations

import csv
import io
import subprocess
import time
from dataclasses import asdict, dataclass, field

from procstat import cpu_used, proc_cpu
from targets import ENQUEUE_SHA, REDIS_BENCHMARK, Target

KEYSPACE = 100_000          # key:000000000000 .. key:000000099999, pre-populated with "xxx"
BIG_KEYSPACE = 1_000        # the 16 KB runs only touch these (16 MB of values at most)

# ARGV[1] of enqueueCmd is the task's protobuf message; ~100 bytes is typical for small payloads.
ASYNQ_MSG = "email:deliver:" + "p" * 64 + ":" + "0" * 36   # printable: the CSV test name echoes it
ASYNQ_NOW_NS = "1717171717000000000"


@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    args: tuple[str, ...]
    quick_n: int
    full_n: int
    kind: str = "throughput"            # or "latency" (the -c 1 run)
    clients: int = 50
    pipeline: int = 1
    slowest: int = 2_000                # requests/s a target must beat to finish in time

    def requests(self, quick: bool) -> int:
        return self.quick_n if quick else self.full_n


def _std(test: str, clients: int, pipeline: int, keyspace: int = KEYSPACE, data: int = 3) -> tuple:
    args = ["-t", test, "-c", str(clients), "-P", str(pipeline), "-r", str(keyspace)]
    if data != 3:
        args += ["-d", str(data)]
    return tuple(args)


def _evalsha(pipeline: int) -> tuple:
    # Task ids are UUIDs in Asynq, so nearly every enqueue creates a new task: a large -r.
    return ("-c", "50", "-P", str(pipeline), "-r", "100000000",
            "EVALSHA", ENQUEUE_SHA, "2", "asynq:{default}:t:__rand_int__",
            "asynq:{default}:pending", ASYNQ_MSG, "__rand_int__", ASYNQ_NOW_NS)


WORKLOADS: list[Workload] = [
    Workload("set_p1", "SET -c 50 -P 1", _std("set", 50, 1), 20_000, 150_000),
    Workload("get_p1", "GET -c 50 -P 1", _std("get", 50, 1), 20_000, 150_000),
    Workload("lpush_p1", "LPUSH -c 50 -P 1", _std("lpush", 50, 1), 20_000, 150_000),
    Workload("set_p16", "SET -c 50 -P 16", _std("set", 50, 16), 100_000, 800_000, pipeline=16),
    Workload("get_p16", "GET -c 50 -P 16", _std("get", 50, 16), 100_000, 800_000, pipeline=16),
    Workload("lpush_p16", "LPUSH -c 50 -P 16", _std("lpush", 50, 16), 100_000, 800_000, pipeline=16),
    Workload("get_c1", "GET -c 1 (latency)", _std("get", 1, 1), 5_000, 30_000, kind="latency",
             clients=1),
    Workload("evalsha_p1", "EVALSHA enqueueCmd -c 50 -P 1", _evalsha(1), 10_000, 100_000),
    Workload("evalsha_p16", "EVALSHA enqueueCmd -c 50 -P 16", _evalsha(16), 40_000, 300_000,
             pipeline=16),
    # 16,000 bytes, not 16,384: redis-benchmark's TLS client (hiredis) writes a request longer
    # than one TLS record (16,384 bytes of plaintext) as two records in two send()s on a socket
    # without TCP_NODELAY, so Nagle holds the second until the server's delayed ACK, ~44 ms per
    # request (1.1k/s against Redis's own tls-port, haproxy and redisgate alike). 16,000 bytes
    # fit one record; every target runs the same size.
    Workload("set_16k", "SET 16 KB (16,000 B) -c 50", _std("set", 50, 1, BIG_KEYSPACE, 16000),
             4_000, 30_000),
    Workload("get_16k", "GET 16 KB -c 50", _std("get", 50, 1, BIG_KEYSPACE, 16384), 4_000, 30_000),
    Workload("get_c1000", "GET -c 1000", _std("get", 1000, 1), 20_000, 150_000, clients=1000),
    # A new connection for every request (-k 0): on a TLS target, a full handshake each
    # (handshakes/s = requests/s; no session resumption anywhere in this suite).
    # (redis-benchmark's own TLS handshakes limit it to a few hundred a second on 2 cores.)
    Workload("conn_get", "GET, a new connection per request (-k 0)",
             _std("get", 50, 1) + ("-k", "0"), 500, 2_000, kind="connections", slowest=25),
]
BY_ID = {w.id: w for w in WORKLOADS}


@dataclass
class Result:
    """One redis-benchmark run: `status` is ok, n/a (target can't do it) or error."""
    round: int
    target: str
    workload: str
    status: str
    rps: float | None = None
    avg_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    seconds: float = 0.0
    requests: int = 0
    reason: str = ""
    argv: list[str] = field(default_factory=list)
    # CPU seconds the target's own process used during the run, per request, in µs (utime and
    # stime apart; their sum from the threads' schedstat, in ns: see cpu_used), and Redis's
    # beside it; None where not measured.
    cpu_user_us: float | None = None
    cpu_sys_us: float | None = None
    redis_cpu_us: float | None = None

    def to_json(self) -> dict:
        return asdict(self)


def parse_csv(stdout: str) -> dict | None:
    """The data row of `redis-benchmark --csv` as floats keyed by column, or None."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith('"')]
    header_at = next((i for i, ln in enumerate(lines) if ln.startswith('"test"')), None)
    if header_at is None or header_at + 1 >= len(lines):
        return None
    rows = list(csv.reader(io.StringIO("\n".join(lines[header_at:header_at + 2]))))
    head, row = rows[0], rows[1]
    out = {}
    for k, v in zip(head, row):
        if k == "test":
            out[k] = v
        else:
            try:
                out[k] = float(v)
            except ValueError:
                return None
    return out if "rps" in out else None


def _reason(stdout: str, stderr: str, rc: int) -> str:
    """The most telling line of a failed run (the server's error, if it printed one)."""
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("Error from server") or ln.startswith("Error:") or "Could not connect" in ln:
            return ln[:300]
    useful = [ln for ln in lines if not ln.startswith("WARNING") and not ln.startswith('"')
              and "failed to fetch CONFIG" not in ln and not ln.startswith("ERROR: ")]
    return (useful[-1] if useful else f"redis-benchmark exited with status {rc}")[:300]


def run_one(target: Target, workload: Workload, quick: bool, round_no: int,
            timeout: float | None = None, redis_pid: int | None = None) -> Result:
    n = workload.requests(quick)
    argv = [REDIS_BENCHMARK, *target.benchmark_args(), "--csv", "-n", str(n), *workload.args]
    if timeout is None:
        timeout = 30.0 + n / workload.slowest   # bounded: a target at `slowest` finishes in time
    started = time.monotonic()
    shown = [a if a != target.auth[-1] else "***" for a in argv] if target.auth else argv
    res = Result(round_no, target.name, workload.id, "error", requests=n, argv=shown)
    cpu0, redis0 = proc_cpu(target.pid), proc_cpu(redis_pid)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired:
        res.seconds = time.monotonic() - started
        res.reason = f"redis-benchmark did not finish within {timeout:.0f} s"
        return res
    res.seconds = time.monotonic() - started
    cpu1, redis1 = proc_cpu(target.pid), proc_cpu(redis_pid)
    if cpu0 and cpu1:
        user, system = cpu_used(cpu0, cpu1)
        res.cpu_user_us = user * 1e6 / n
        res.cpu_sys_us = system * 1e6 / n
    if redis0 and redis1:
        res.redis_cpu_us = sum(cpu_used(redis0, redis1)) * 1e6 / n
    row = parse_csv(done.stdout) if done.returncode == 0 else None
    if row is None:
        res.reason = _reason(done.stdout, done.stderr, done.returncode)
        return res
    res.status = "ok"
    res.rps = row["rps"]
    res.avg_ms = row.get("avg_latency_ms")
    res.p50_ms = row.get("p50_latency_ms")
    res.p95_ms = row.get("p95_latency_ms")
    res.p99_ms = row.get("p99_latency_ms")
    res.max_ms = row.get("max_latency_ms")
    return res
