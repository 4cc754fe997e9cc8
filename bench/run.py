"""redisgate benchmark suite: one command, everything on loopback, results in bench/results/.

    python bench/run.py            # full run: 5 interleaved rounds (~20 min on 2 cores)
    python bench/run.py --quick    # smoke check: fewer requests, 2 rounds (~2 min)
    python bench/run.py --rounds 7 --targets direct,pipe,redisgate --workloads set_p16,get_p16

It starts Redis 7, twemproxy, the uvloop byte pipe and redisgate (plus redisgate on a TLS
listener when `python -m redisgate certs` works, Redis's own TLS port and haproxy terminating
TLS) on free 127.0.0.1 ports, runs every redis-benchmark workload against every target, round
after round, with the target order rotated each round and each target's CPU per request read
from /proc around each run, then the judge micro-benchmark (bench/judge.py) and the idle-client memory benchmark
(bench/memory.py), and writes bench/results/latest.{json,md,png}. A target that cannot start is
reported as unavailable with its reason; the rest still runs. See bench/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from targets import (BENCH_DIR, HAPROXY, NUTCRACKER, REDIS_BENCHMARK, REDIS_SERVER, REPO_DIR,  # noqa: E402
                     Stack, Target, Unavailable, raise_nofile, tool_version)
from workloads import (BIG_KEYSPACE, BY_ID, KEYSPACE, WORKLOADS, Result, Workload,  # noqa: E402
                       run_one)

ALL_TARGETS = ["direct", "twemproxy", "pipe", "redisgate", "redisgate-dedicated", "redisgate-tls",
               "redis-tls", "haproxy-tls"]
# Experiments, run only when named in --targets: the routes to a fast TLS listener side by side
# (see bench/README.md, "TLS routes"): redisgate with its Python TLS engine for every record
# (REDISGATE_NO_TLSREC=1, as before redisgate._native._tlsrec), and the byte pipe terminating TLS by
# uvloop's own transport, by redisgate's Python engine, and by the engine's handshake + C records.
EXTRA_TARGETS = ["redisgate-tls-py", "pipe-tls-uvloop", "pipe-tls-engine", "pipe-tls-c"]
TLS_TARGETS = {"redisgate-tls", "redis-tls", "haproxy-tls", *EXTRA_TARGETS}
# twemproxy failing a workload means it does not support it (EVALSHA routing, AUTH forms, ...);
# any other target failing one is an error worth a look.
NA_ON_FAILURE = {"twemproxy"}
# Runs that would measure redis-benchmark rather than the target: recorded as n/a with the why.
# (SET 16 KB used to be one on TLS targets: see workloads.py for why it now sends 16,000 bytes.)
SKIP: dict[tuple[str, str], str] = {}

POPULATE = """
local v = ARGV[2]
for i = 0, tonumber(ARGV[1]) - 1 do redis.call('SET', string.format('key:%012d', i), v) end
return 1
"""
DELETE_MATCHING = """
local ks = redis.call('KEYS', ARGV[1])
for i = 1, #ks, 5000 do redis.call('UNLINK', unpack(ks, i, math.min(i + 4999, #ks))) end
return #ks
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_targets(stack: Stack, wanted: list[str]) -> tuple[list[Target], dict[str, str]]:
    """Start every wanted target; returns the ready ones and {name: reason} for the others."""
    ready: list[Target] = []
    unavailable: dict[str, str] = {}
    # no Redis, no benchmark: let that one raise
    direct = stack.start_redis(tls="redis-tls" in wanted)
    if "direct" in wanted:
        ready.append(direct)
    starters = {"twemproxy": stack.start_twemproxy, "pipe": stack.start_pipe,
                "redis-tls": stack.start_redis_tls, "haproxy-tls": stack.start_haproxy_tls,
                "redisgate-tls-py": lambda: stack.start_redisgate(
                    tls=True, name="redisgate-tls-py", env_extra={"REDISGATE_NO_TLSREC": "1"}),
                "pipe-tls-uvloop": lambda: stack.start_pipe(tls="uvloop"),
                "pipe-tls-engine": lambda: stack.start_pipe(tls="engine"),
                "pipe-tls-c": lambda: stack.start_pipe(tls="c"),
                "redisgate": lambda: stack.start_redisgate(tls=False),
                # The same policy with upstream.multiplex: 0 (redisgate's default): an upstream
                # connection per client.
                "redisgate-dedicated": lambda: stack.start_redisgate(
                    multiplex=0, name="redisgate-dedicated"),
                "redisgate-tls": lambda: stack.start_redisgate(tls=True)}
    for name in ALL_TARGETS[1:] + EXTRA_TARGETS:
        if name not in wanted:
            continue
        if name in ("redisgate-tls", "redisgate-dedicated", "redisgate-tls-py") \
                and "redisgate" in unavailable:
            unavailable[name] = "skipped: the plaintext redisgate target is unavailable"
            log(f"{name} target unavailable: {unavailable[name]}")
            continue
        try:
            ready.append(starters[name]())
            log(f"{name} ready on 127.0.0.1:{ready[-1].port}")
        except Unavailable as e:
            unavailable[name] = str(e)
            log(f"{name} target unavailable: {e}")
    return ready, unavailable


def reset_after(stack: Stack, w: Workload, per_target: bool) -> None:
    """Put Redis back to the state every workload starts from, so targets see the same data."""
    if w.id.startswith("evalsha") and per_target:
        stack.admin("EVAL", DELETE_MATCHING, "0", "asynq:{default}:*")
    elif w.id.startswith("lpush") and not per_target:
        stack.admin("UNLINK", "mylist")
    elif w.id == "get_16k" and not per_target:
        stack.admin("EVAL", POPULATE, "0", str(BIG_KEYSPACE), "xxx")


def run_rounds(stack: Stack, targets: list[Target], workloads: list[Workload], rounds: int,
               quick: bool, unavailable: dict[str, str]) -> list[dict]:
    results: list[dict] = []
    dead: set[str] = set()
    timeouts: dict[str, int] = {}
    procs = {p.popen.pid: p for p in stack.procs}
    for r in range(rounds):
        log(f"round {r + 1}/{rounds}")
        shift = r % len(targets)
        order = targets[shift:] + targets[:shift]
        for w in workloads:
            line = []
            for t in order:
                if t.name in dead:
                    continue
                if (t.name, w.id) in SKIP:
                    res = Result(r, t.name, w.id, "n/a", reason=SKIP[(t.name, w.id)])
                    results.append(res.to_json())
                    line.append(f"{t.name}=n/a")
                    continue
                res = run_one(t, w, quick, r, redis_pid=stack.redis_pid)
                if res.status != "ok" and t.name in NA_ON_FAILURE:
                    res.status = "n/a"
                proc = procs.get(t.pid)
                timeouts[t.name] = timeouts.get(t.name, 0) + 1 if "did not finish" in res.reason else 0
                if res.status != "ok" and proc is not None and not proc.alive():
                    dead.add(t.name)
                    unavailable[t.name] = (f"died during {w.id} in round {r + 1} "
                                           f"(exit {proc.popen.returncode}): {proc.tail()}")
                    log(f"{t.name} target unavailable: {unavailable[t.name]}")
                elif timeouts[t.name] >= 2:
                    # Bounded run time: a target that hangs twice in a row is not waited on again.
                    dead.add(t.name)
                    unavailable[t.name] = (f"stopped answering: redis-benchmark timed out twice in "
                                           f"a row (last: {w.id}, round {r + 1})")
                    log(f"{t.name} target unavailable: {unavailable[t.name]}")
                results.append(res.to_json())
                cpu = (f"/{res.cpu_user_us + res.cpu_sys_us:.1f}µs"
                       if res.status == "ok" and res.cpu_user_us is not None else "")
                line.append(f"{t.name}={res.rps / 1000:.1f}k{cpu}" if res.status == "ok"
                            else f"{t.name}={res.status}")
                if res.status == "error":
                    log(f"  {w.id} on {t.name}: {res.reason}")
                reset_after(stack, w, per_target=True)
            reset_after(stack, w, per_target=False)
            log(f"  {w.id:<12} " + "  ".join(line))
    return results


def run_helper(script: str, args: list[str], timeout: float) -> dict:
    """Run bench/judge.py or bench/memory.py with --json; their JSON, or {'error': why}."""
    argv = [sys.executable, str(BENCH_DIR / script), "--json", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=REPO_DIR, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"{script} did not finish within {timeout:.0f} s"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        tail = (done.stderr or done.stdout).strip().splitlines()
        return {"error": f"{script} exited {done.returncode}: {tail[-1] if tail else 'no output'}"}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "redisgate"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="redisgate benchmark suite (loopback only)")
    ap.add_argument("--quick", action="store_true", help="fewer requests and 2 rounds (~2 min)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5, or 2 with --quick)")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS),
                    help=f"comma-separated subset of {','.join(ALL_TARGETS)} (direct is always run)")
    ap.add_argument("--workloads", default="all",
                    help="comma-separated workload ids: " + ",".join(w.id for w in WORKLOADS))
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every workload's request count (e.g. 0.3 for shorter runs)")
    ap.add_argument("--no-tls", action="store_true",
                    help="skip the TLS targets (redisgate-tls, redis-tls, haproxy-tls, ...)")
    ap.add_argument("--skip-judge", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-clients", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results",
                    help="where latest.{json,md,png} go (default bench/results)")
    args = ap.parse_args(argv)

    rounds = args.rounds or (2 if args.quick else 5)
    if not 1 <= rounds <= 50:
        ap.error("--rounds must be 1..50")
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = set(wanted) - set(ALL_TARGETS) - set(EXTRA_TARGETS)
    if bad:
        ap.error(f"unknown targets {sorted(bad)}")
    if "direct" not in wanted:
        wanted.insert(0, "direct")     # every ratio needs it
    if args.no_tls:
        wanted = [t for t in wanted if t not in TLS_TARGETS]
    if args.workloads == "all":
        workloads = list(WORKLOADS)
    else:
        ids = [w.strip() for w in args.workloads.split(",") if w.strip()]
        unknown = [i for i in ids if i not in BY_ID]
        if unknown:
            ap.error(f"unknown workloads {unknown}")
        workloads = [BY_ID[i] for i in ids]
    if not 0.01 <= args.scale <= 10:
        ap.error("--scale must be 0.01..10")
    if args.scale != 1.0:
        workloads = [dataclasses.replace(w, quick_n=max(100, int(w.quick_n * args.scale)),
                                         full_n=max(100, int(w.full_n * args.scale)))
                     for w in workloads]
    for tool in (REDIS_SERVER, REDIS_BENCHMARK):
        if not os.access(tool, os.X_OK):
            print(f"error: {tool} is required (apt-get install redis-server redis-tools)")
            return 2

    nofile = raise_nofile()
    started = time.time()
    meta = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": ("quick" if args.quick else "full") + (f", requests ×{args.scale:g}"
                                                         if args.scale != 1.0 else ""),
        "rounds": rounds,
        "commit": git_commit(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "redis": tool_version([REDIS_SERVER, "--version"]),
        "redis_benchmark": tool_version([REDIS_BENCHMARK, "--version"]),
        "nutcracker": tool_version([NUTCRACKER, "--version"]),
        "haproxy": tool_version([HAPROXY, "-v"]),
        "nofile": nofile,
        "notes": [],
    }
    log(f"{meta['mode']} run, {rounds} rounds, commit {meta['commit']}")
    targets_info: dict[str, dict] = {}
    results: list[dict] = []
    with Stack() as stack:
        meta["workdir"] = str(stack.dir.relative_to(REPO_DIR)) if stack.dir.is_relative_to(REPO_DIR) \
            else str(stack.dir)
        try:
            targets, unavailable = start_targets(stack, wanted)
        except Unavailable as e:
            print(f"error: Redis could not be started: {e}")
            return 2
        stack.admin("EVAL", POPULATE, "0", str(KEYSPACE), "xxx")
        for name in ALL_TARGETS + [t for t in EXTRA_TARGETS if t in wanted]:
            if name not in wanted:
                targets_info[name] = {"available": False, "reason": "not selected (--targets/--no-tls)"}
        for t in targets:
            targets_info[t.name] = {"available": True, "port": t.port, "note": t.note}
        try:
            results = run_rounds(stack, targets, workloads, rounds, args.quick, unavailable)
        except KeyboardInterrupt:
            meta["notes"].append("interrupted: partial results")
            log("interrupted; writing partial results")
        for name, why in unavailable.items():
            # a target that died mid-run keeps its partial results but is reported as lost
            targets_info[name] = {**targets_info.get(name, {}), "available": False, "reason": why}
    judge = memory = None
    if not args.skip_judge:
        log("judge micro-benchmark")
        judge = run_helper("judge.py", ["--quick"] if args.quick else [], timeout=600)
        log("  " + (judge.get("error") or ", ".join(
            f"{k} {v['cmds_per_s']:,.0f}/s" if "cmds_per_s" in v else f"{k}: {v.get('error')}"
            for k, v in judge["paths"].items())))
    if not args.skip_memory:
        log(f"memory: {args.memory_clients} idle authenticated clients")
        mem_targets = [t for t in ("pipe", "redisgate", "redisgate-tls") if t in wanted]
        memory = run_helper("memory.py", ["--clients", str(args.memory_clients),
                                          "--targets", ",".join(mem_targets)], timeout=900)
        log("  " + (memory.get("error") or ", ".join(
            f"{k} {v['kib_per_client']:.1f} KiB/client" if "kib_per_client" in v
            else f"{k}: {v.get('reason')}" for k, v in memory["targets"].items())))
    meta["duration_s"] = round(time.time() - started, 1)
    doc = report.build(meta, targets_info, [w.__dict__ for w in workloads], results, judge, memory)
    paths = report.write(doc, args.out)
    log(f"wrote {', '.join(str(p) for p in paths)} in {meta['duration_s']:.0f} s")
    print(report.checks_text(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
