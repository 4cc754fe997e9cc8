"""Where the CPU goes: per request, the proxy's, Redis's and redis-benchmark's, side by side.

The full run (run.py) says how fast each target is; this says why. For each workload and target,
in interleaved rounds, it runs redis-benchmark and reads from /proc, per request:

* the target process's user and system CPU, and its voluntary / involuntary context switches;
* Redis's CPU (the same Redis behind every target) and redis-benchmark's (rusage of children);
* the share of the two cores nobody used (1 - all three CPUs / (2 x wall time)): time the three
  processes spent waiting for each other.

    python bench/cpu_split.py                                # SET/GET -P 16, 3 rounds
    python bench/cpu_split.py --workloads get_c1 --rounds 8 --requests 20000 \
        --targets direct,pipe,redisgate,redisgate-dedicated        # added latency at -c 1
    python bench/cpu_split.py --targets twemproxy,redisgate --workloads set_p16
    python bench/cpu_split.py --targets twemproxy,redisgate --workloads set_p16 --rounds 0 \
        --syscalls                       # syscalls per client batch, under strace -c (slowed)

Targets: direct (Redis alone), twemproxy, pipe, redisgate (bench/redisgate.yaml: a shared link),
redisgate-dedicated (the same with a connection per client), and the TLS ones: redisgate-tls
(the shared link on a TLS listener), redis-tls (Redis's own TLS port: "proxy" is then Redis
itself, as for direct) and haproxy-tls (haproxy terminating TLS in front of Redis). With a TLS
target, `bench` is redis-benchmark's own CPU, its TLS included: what a TLS target's throughput
on two shared cores is bounded by. Workloads: set_p16, get_p16, set_p1, get_p1, get_c1. Medians
over rounds are printed at the end; nothing is written to bench/results/.

    python bench/cpu_split.py --targets direct,redis-tls,redisgate,redisgate-tls,haproxy-tls \
        --workloads set_p1,set_p16                                  # what TLS costs, and whom
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import cpu_used, proc_cpu, proc_switches  # noqa: E402
from targets import REDIS_BENCHMARK, Stack  # noqa: E402

WORKLOADS = {   # id: (redis-benchmark test, clients, pipeline)
    "set_p16": ("set", 50, 16), "get_p16": ("get", 50, 16),
    "set_p1": ("set", 50, 1), "get_p1": ("get", 50, 1), "get_c1": ("get", 1, 1),
}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def benchmark_argv(target, workload: str, requests: int) -> list[str]:
    test, clients, pipeline = WORKLOADS[workload]
    return [REDIS_BENCHMARK, *target.benchmark_args(), "-t", test, "-c", str(clients),
            "-P", str(pipeline), "-n", str(requests), "-r", "100000", "-q"]


def measure(target, redis_pid: int, workload: str, requests: int) -> dict:
    n = requests * WORKLOADS[workload][2]
    proxy = target.pid if target.pid != redis_pid else None   # (direct, redis-tls: no proxy)
    own = (lambda: (proc_cpu(proxy), proc_switches(proxy))) if proxy else \
        (lambda: (None, (0, 0)))
    (cpu0, sw0), redis0, bench0 = own(), proc_cpu(redis_pid), children_cpu()
    out = subprocess.run(benchmark_argv(target, workload, n) + ["--csv"],
                         capture_output=True, text=True, timeout=600)
    (cpu1, sw1), redis1, bench1 = own(), proc_cpu(redis_pid), children_cpu()
    rps = float(out.stdout.strip().splitlines()[-1].split(",")[1].strip('"'))
    us = 1e6 / n
    user, system = cpu_used(cpu0, cpu1) if proxy else (0.0, 0.0)
    user, system = user * us, system * us
    redis, bench = sum(cpu_used(redis0, redis1)) * us, (bench1 - bench0) * us
    wall = 1e6 / rps   # µs per request, by redis-benchmark's clock
    return {"rps": rps, "wall": wall, "user": user, "sys": system, "redis": redis, "bench": bench,
            "idle": max(0.0, 1 - (user + system + redis + bench) / (2 * wall)),
            "vol": (sw1[0] - sw0[0]) * 1000 / n, "invol": (sw1[1] - sw0[1]) * 1000 / n}


def cpu_columns(med: dict) -> str:
    """The CPU part of a medians line (µs per request): the proxy's user and system time, Redis's,
    the benchmark client's, and how idle the machine was (cpu_split.py and workers.py)."""
    return (f"proxy user {med['user']:.2f} sys {med['sys']:.2f}  redis {med['redis']:.2f}  "
            f"bench {med['bench']:.2f}  idle {med['idle']:.0%}")


def run_rounds(measure, targets, workloads, rounds: int, redis_pid: int, requests: int,
               results: dict, extra=None) -> None:
    """`rounds` rounds of every workload on every target, in reversed order every other round
    (no target always runs first); each `measure(target, redis_pid, workload, requests)` goes to
    results[(workload, target.name)] and prints a line (`extra(m)`: more of it)."""
    width = max(len(t.name) for t in targets) if targets else 0
    for rnd in range(rounds):
        order = targets if rnd % 2 == 0 else targets[::-1]
        for workload in workloads:
            for target in order:
                m = measure(target, redis_pid, workload, requests)
                results.setdefault((workload, target.name), []).append(m)
                print(f"round {rnd + 1} {workload:8} {target.name:{width}} {m['rps']:>10,.0f}/s  "
                      f"proxy {m['user']:.2f}+{m['sys']:.2f} µs  redis {m['redis']:.2f}  "
                      f"bench {m['bench']:.2f}  idle {m['idle']:.0%}"
                      + (f"  {extra(m)}" if extra else ""), flush=True)


def count_syscalls(target, workload: str, requests: int) -> None:
    """One more run of `workload` with `strace -c` on the target: its syscalls per client batch
    (one batch = `pipeline` requests of one client). strace slows the process, so only the
    counts mean anything, not the throughput."""
    pipeline = WORKLOADS[workload][2]
    batches = requests   # --requests counts client batches: it is multiplied by the pipeline
    fd, name = tempfile.mkstemp(prefix="redisgate-strace-", suffix=".txt")
    os.close(fd)
    report = Path(name)
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(target.pid), "-o", str(report)],
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)   # attached to every thread before the load starts
        subprocess.run(benchmark_argv(target, workload, batches * pipeline),
                       capture_output=True, timeout=600)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    text = report.read_text()
    report.unlink(missing_ok=True)
    if tracer.returncode not in (0, -signal.SIGINT) or not text.strip():
        print(f"syscalls {workload} {target.name:20} strace could not attach "
              f"(exit {tracer.returncode}; ptrace restricted?)", flush=True)
        return
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            rows.append((int(parts[3]), parts[-1]))
    rows.sort(reverse=True)
    print(f"syscalls {workload} {target.name:20} per client batch: " + ", ".join(
        f"{name} {calls / batches:.2f}" for calls, name in rows[:5]), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="twemproxy,pipe,redisgate,redisgate-dedicated")
    ap.add_argument("--workloads", default="set_p16,get_p16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=60000,
                    help="requests per run, times the pipeline depth")
    ap.add_argument("--syscalls", action="store_true",
                    help="then one run per proxy and workload under strace -c (needs strace)")
    args = ap.parse_args(argv)
    workloads = args.workloads.split(",")
    if args.syscalls and shutil.which("strace") is None:
        ap.error("--syscalls needs strace")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s): {', '.join(unknown)} (known: {', '.join(WORKLOADS)})")
    results: dict[tuple[str, str], list[dict]] = {}
    names = args.targets.split(",")
    with Stack() as stack:
        redis = stack.start_redis(tls="redis-tls" in names)
        starters = {"direct": lambda: redis, "twemproxy": stack.start_twemproxy,
                    "pipe": stack.start_pipe,
                    "redisgate": lambda: stack.start_redisgate(),
                    "redisgate-dedicated": lambda: stack.start_redisgate(
                        multiplex=0, name="redisgate-dedicated"),
                    "redisgate-tls": lambda: stack.start_redisgate(tls=True),
                    "redis-tls": stack.start_redis_tls,
                    "haproxy-tls": stack.start_haproxy_tls}
        bad = [t for t in names if t not in starters]
        if bad:
            ap.error(f"unknown target(s): {', '.join(bad)} (known: {', '.join(starters)})")
        targets = [starters[t]() for t in names]
        run_rounds(measure, targets, workloads, args.rounds, redis.pid, args.requests, results,
                   lambda m: f"switches/1k {m['vol']:.1f}/{m['invol']:.1f}")
        if args.syscalls:
            for workload in workloads:
                for target in targets:
                    if target.pid != redis.pid:
                        count_syscalls(target, workload, args.requests)
    if not results:
        return 0
    print("\nmedians over rounds (CPU in µs per request; switches per 1,000 requests; with "
          "direct, the time per request each target adds to direct Redis's, same round)")
    for (workload, name), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        direct = results.get((workload, "direct"))
        added = ""
        if direct and name != "direct":
            adds = statistics.median(r["wall"] - d["wall"] for r, d in zip(runs, direct))
            added = f"  adds {adds:.1f} µs"
        print(f"{workload:8} {name:20} {med['rps']:>10,.0f}/s{added}  {cpu_columns(med)}  "
              f"switches {med['vol']:.1f}/{med['invol']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
