"""The audit trail's CPU cost, in one process, audit off against audit on (issue 17).

    nice -n -5 python bench/audit_cost.py [--commands N] [--reps R]

bench/session.py's sans-I/O passes (a logged-in `bench` session fed client reads and the replies
to them; no sockets), timed in CPU time (`time.process_time_ns`: other processes on the machine
do not count), the audit settings alternating between repetitions:

* ``off``     no `audit:` section (the plain-text lines of the process log; nothing per command);
* ``json``    `audit: {path: /dev/null, rate: 100, format: json}`, the issue's defaults;
* ``json/0``  the same without a rate limit (every denial written).

Scenarios: ``p16 set/get`` and ``p1 get`` (allowed commands: the audit never sees them) and
``p16 denied`` (16 GETs of a key outside the user's patterns per read: one `denied` event
each). Best of the repetitions, ns per command.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

from judge import encode, load_bench_config  # noqa: E402
from session import make_pass, scenarios  # noqa: E402


def denied_pass(gate, n: int):
    from session import logged_in
    reads = [encode([[b"GET", b"other:%d" % (i + j)] for j in range(16)])
             for i in range(0, n, 16)]

    def run() -> None:
        s = logged_in(gate)
        for r in reads:
            s.client_data(r)
            if s.to_upstream:
                raise RuntimeError("a denied command was forwarded")
            s.to_client.clear()
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=32_000)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    from redisgate.telemetry import audit
    from redisgate.config import AuditSettings
    from redisgate.session.gate import Gate
    gate = Gate(load_bench_config(), upstream_version=(7, 0, 15))
    found = scenarios(args.commands)
    runs = {"p16 set/get": (make_pass(gate, found["p16 set/get"]), args.commands),
            "p1 get": (make_pass(gate, found["p1 get"]), len(found["p1 get"])),
            "p16 denied": (denied_pass(gate, args.commands), args.commands)}
    modes = {"off": None, "json": AuditSettings("/dev/null", 100, "json"),
             "json/0": AuditSettings("/dev/null", 0, "json")}
    best = {(name, mode): float("inf") for name in runs for mode in modes}
    for name, (fn, _) in runs.items():
        fn()   # (warm-up)
    gc.disable()
    try:
        for _ in range(args.reps):
            for mode, settings in modes.items():
                audit.configure(settings)
                for name, (fn, _) in runs.items():
                    t0 = time.process_time_ns()
                    fn()
                    best[name, mode] = min(best[name, mode], time.process_time_ns() - t0)
    finally:
        gc.enable()
        audit.configure(None)
    print(f"{'scenario':<14}" + "".join(f"{m:>12}" for m in modes) + "   (ns per command, "
          f"best of {args.reps}, CPU time)")
    for name, (_, n) in runs.items():
        print(f"{name:<14}" + "".join(f"{best[name, m] / n:>12.0f}" for m in modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
