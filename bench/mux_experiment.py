"""Can a multiplexing Python proxy beat twemproxy by 1.2x? Interleaved redis-benchmark rounds.

Starts Redis 7, twemproxy, the byte pipe (bench/bytepipe.py) and bench/muxpipe.py variants on free
127.0.0.1 ports with bench/targets.py's Stack, pre-populates key:000000000000.. with "xxx", then
runs `redis-benchmark -t set|get -c 50 -P 16|1 -n N -r 100000 --csv` against every target, round
after round with the target order rotated, and prints median requests/s plus the median of the
same-round ratios mux÷twemproxy, mux÷pipe and twemproxy÷direct. Everything it starts is stopped
on exit.

    python bench/mux_experiment.py                        # 5 rounds, all variants
    python bench/mux_experiment.py --rounds 7 --variants mux,mux-fast --workloads set_p16,get_p16
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import (BENCH_DIR, BENCH_PASSWORD, BENCH_USER, Stack, Target,  # noqa: E402
                     Unavailable, free_port, raise_nofile)
from workloads import Workload, run_one  # noqa: E402

KEYSPACE = 100_000
POPULATE = """
local v = ARGV[2]
for i = 0, tonumber(ARGV[1]) - 1 do redis.call('SET', string.format('key:%012d', i), v) end
return 1
"""

# name -> extra muxpipe options
VARIANTS = {
    "mux": ["--links", "1", "--flush", "soon", "--count", "walk"],
    "mux-now": ["--links", "1", "--flush", "now", "--count", "walk"],
    "mux-stride": ["--links", "1", "--flush", "soon", "--count", "stride"],
    "mux-fast": ["--links", "1", "--flush", "soon", "--count", "fast"],
    "mux-l2-stride": ["--links", "2", "--flush", "soon", "--count", "stride"],
    "mux-l2": ["--links", "2", "--flush", "soon", "--count", "walk"],
    "mux-l2-fast": ["--links", "2", "--flush", "soon", "--count", "fast"],
}
DEFAULT_VARIANTS = "mux,mux-now,mux-stride,mux-fast,mux-l2-stride"


def workloads(n_p16: int, n_p1: int) -> dict[str, Workload]:
    out = {}
    for test in ("set", "get"):
        for p, n in ((16, n_p16), (1, n_p1)):
            wid = f"{test}_p{p}"
            out[wid] = Workload(wid, f"{test.upper()} -c 50 -P {p}",
                                ("-t", test, "-c", "50", "-P", str(p), "-r", str(KEYSPACE)),
                                n, n, pipeline=p)
    return out


def start_mux(stack: Stack, name: str, opts: list[str]) -> Target:
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "muxpipe.py"), "--listen", f"127.0.0.1:{port}",
            "--upstream", f"127.0.0.1:{stack.redis_port}", "--auth", f"{BENCH_USER}:{BENCH_PASSWORD}",
            *opts]
    proc = stack.spawn(name, argv)
    stack.wait_ready(proc, port, (BENCH_USER, BENCH_PASSWORD))
    return Target(name, port, ["--user", BENCH_USER, "-a", BENCH_PASSWORD], pid=proc.popen.pid,
                  note="muxpipe " + " ".join(opts))


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help=f"muxpipe variants to run, from: {', '.join(VARIANTS)}")
    ap.add_argument("--workloads", default="set_p16,get_p16,set_p1,get_p1")
    ap.add_argument("--n-p16", type=int, default=500_000)
    ap.add_argument("--n-p1", type=int, default=500_000)
    ap.add_argument("--json", type=Path, help="also write every run here")
    args = ap.parse_args()
    raise_nofile()
    wls = workloads(args.n_p16, args.n_p1)
    chosen = [wls[w] for w in args.workloads.split(",")]
    variants = [v for v in args.variants.split(",") if v]

    results: list[dict] = []
    with Stack() as stack:
        targets = [stack.start_redis()]
        stack.admin("EVAL", POPULATE, "0", str(KEYSPACE), "xxx")
        for start in (stack.start_twemproxy, stack.start_pipe):
            try:
                targets.append(start())
            except Unavailable as e:
                print(f"unavailable: {e}", flush=True)
        for v in variants:
            targets.append(start_mux(stack, v, VARIANTS[v]))
        names = [t.name for t in targets]
        print(f"targets: {', '.join(names)}; logs in {stack.dir}", flush=True)
        for rnd in range(args.rounds):
            k = rnd % len(targets)
            order = targets[k:] + targets[:k]
            for wl in chosen:
                for t in order:
                    r = run_one(t, wl, quick=False, round_no=rnd)
                    results.append({"round": rnd, "target": t.name, "workload": wl.id,
                                    "rps": r.rps, "status": r.status, "reason": r.reason})
                    shown = f"{r.rps:>10,.0f}" if r.rps else f"  {r.status}: {r.reason}"
                    print(f"[{time.strftime('%H:%M:%S')}] round {rnd} {wl.id:8} {t.name:12}{shown}",
                          flush=True)
            dead = [p.name for p in stack.procs if not p.alive()]
            if dead:
                print(f"died: {dead}", flush=True)

    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    rps = {}
    for r in results:
        if r["rps"]:
            rps.setdefault((r["workload"], r["target"]), {})[r["round"]] = r["rps"]

    def ratios(wid, a, b):
        xa, xb = rps.get((wid, a), {}), rps.get((wid, b), {})
        return [xa[k] / xb[k] for k in xa if k in xb]

    print("\nmedian requests/s over", args.rounds, "rounds")
    print(f"{'workload':10}" + "".join(f"{n:>13}" for n in names))
    for wl in chosen:
        print(f"{wl.id:10}" + "".join(f"{med(list(rps.get((wl.id, n), {}).values())):>13,.0f}"
                                      for n in names))
    print("\nmedian same-round ratios")
    cols = [("twem/direct", "twemproxy", "direct"), ("pipe/twem", "pipe", "twemproxy")]
    for v in variants:
        cols += [(f"{v}/twem", v, "twemproxy"), (f"{v}/pipe", v, "pipe")]
    print(f"{'workload':10}" + "".join(f"{c[0]:>18}" for c in cols))
    for wl in chosen:
        print(f"{wl.id:10}" + "".join(f"{med(ratios(wl.id, a, b)):>18.3f}" for _, a, b in cols))


if __name__ == "__main__":
    main()
