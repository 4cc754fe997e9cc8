"""What `serve --workers N` gives on this machine: throughput, and CPU per request, by N.

For each workload and each target, in interleaved rounds, it runs redis-benchmark and reads from
/proc, per request:

* the proxy's user and system CPU: the supervising parent's plus every worker's (for N = 1, the
  one process), from /proc/<pid>/stat;
* Redis's CPU (the same Redis behind every target) and redis-benchmark's (rusage of children);
* the share of the cores nobody used (1 - all CPU / (cores x wall time)).

    nice -n -5 python bench/workers.py                          # N = 1, 2, 4; shared link and not
    nice -n -5 python bench/workers.py --workers 1,2 --rounds 5 --workloads get_p1

Targets: `direct` (Redis alone, the ceiling), `w<N>` (bench/redisgate.yaml: each worker its own
shared upstream link, `upstream.multiplex: 1`) and `w<N>-dedicated` (an upstream connection per
client). Medians over rounds are printed at the end; nothing is written to bench/results/.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_split import WORKLOADS, benchmark_argv, children_cpu, cpu_columns, run_rounds  # noqa: E402
from procstat import proc_cpu  # noqa: E402
from targets import Stack  # noqa: E402

CORES = len(os.sched_getaffinity(0))


def group(pid: int) -> list[int]:
    """The proxy's processes: the parent and its workers (not the embedded Redis: none here)."""
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return [pid]
    return [pid] + [k.pid for k in kids if "--worker-index" in k.cmdline()]


def group_cpu(pids: list[int]) -> tuple[float, float]:
    user = system = 0.0
    for pid in pids:
        u, s = proc_cpu(pid) or (0.0, 0.0)   # (a worker gone meanwhile: nothing more of it)
        user, system = user + u, system + s
    return user, system


def measure(target, redis_pid: int, workload: str, requests: int) -> dict:
    n = requests * WORKLOADS[workload][2]
    pids = group(target.pid) if target.pid != redis_pid else []
    cpu0, redis0, bench0 = group_cpu(pids), sum(proc_cpu(redis_pid)), children_cpu()
    out = subprocess.run(benchmark_argv(target, workload, n) + ["--csv"],
                         capture_output=True, text=True, timeout=600)
    cpu1, redis1, bench1 = group_cpu(pids), sum(proc_cpu(redis_pid)), children_cpu()
    if group(target.pid) != pids and target.pid != redis_pid:
        raise RuntimeError(f"{target.name}: a worker died during the run")
    rps = float(out.stdout.strip().splitlines()[-1].split(",")[1].strip('"'))
    us = 1e6 / n
    user, system = (cpu1[0] - cpu0[0]) * us, (cpu1[1] - cpu0[1]) * us
    redis, bench = (redis1 - redis0) * us, (bench1 - bench0) * us
    wall = 1e6 / rps
    return {"rps": rps, "user": user, "sys": system, "proxy": user + system, "redis": redis,
            "bench": bench, "idle": max(0.0, 1 - (user + system + redis + bench) / (CORES * wall))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2,4", help="the N to compare")
    ap.add_argument("--modes", default="shared,dedicated",
                    help="shared: upstream.multiplex 1 per worker; dedicated: multiplex 0")
    ap.add_argument("--workloads", default="set_p1,get_p1,set_p16,get_p16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=60000,
                    help="requests per run, times the pipeline depth")
    args = ap.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    workloads = args.workloads.split(",")
    results: dict[tuple[str, str], list[dict]] = {}
    with Stack() as stack:
        redis = stack.start_redis()
        targets = [redis]
        for mode in args.modes.split(","):
            for n in counts:
                name = f"w{n}" + ("-dedicated" if mode == "dedicated" else "")
                targets.append(stack.start_redisgate(
                    multiplex=0 if mode == "dedicated" else None, name=name, workers=n))
        print(f"{CORES} cores; proxy CPU = the parent's + every worker's", flush=True)
        run_rounds(measure, targets, workloads, args.rounds, redis.pid, args.requests, results)
    print("\nmedians over rounds (CPU in µs per request; `vs w1`: the median of same-round "
          "ratios to N = 1 of the same mode)")
    for (workload, name), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        base_name = ("w1-dedicated" if name.endswith("-dedicated") else "w1") \
            if name != "direct" else None
        base = results.get((workload, base_name)) if base_name else None
        vs = ""
        if base and name != base_name:
            tput = statistics.median(r["rps"] / b["rps"] for r, b in zip(runs, base))
            cpu = statistics.median(r["proxy"] / b["proxy"] for r, b in zip(runs, base))
            vs = f"  vs w1: throughput {tput:.2f}x, proxy CPU/request {cpu:.2f}x"
        print(f"{workload:8} {name:13} {med['rps']:>10,.0f}/s  {cpu_columns(med)}{vs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
