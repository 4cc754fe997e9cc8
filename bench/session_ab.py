"""bench/session.py's scenarios for two checkouts in ONE process, interleaved, in CPU time.

    python bench/session_ab.py <before checkout> [<after checkout, default: this one>] [--commands N] [--reps R]

On a loaded machine, separate processes run minutes apart see different loads; here both
versions' sessions run pass after pass in the same process (their order alternating), so the
load hits both alike. Each checkout's `redisgate` package (with its built C modules) is copied
into a temporary directory under another name (`rg_before`, `rg_after`; its imports are
relative) and driven as bench/session.py drives one. Prints, per scenario, the minimum and the
median ns per command of each and their ratios (after ÷ before).
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import yaml  # noqa: E402

from judge import logged_in as judge_logged_in  # noqa: E402  (no redisgate import at module level)
from session import scenarios  # noqa: E402


def load(checkout: Path, name: str, into: Path):
    """`checkout`'s redisgate imported as `name`: a logged-in session factory."""
    shutil.copytree(checkout / "redisgate", into / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
    import prometheus_client as pc
    # (each copy registers the same metric names: the default registry would refuse the second)
    pc.REGISTRY._names_to_collectors.clear()
    pc.REGISTRY._collector_to_names.clear()
    cfgmod = importlib.import_module(name + ".config")
    try:   # (session/gate.py since the packages by layer; gate.py before)
        gatemod = importlib.import_module(name + ".session.gate")
    except ModuleNotFoundError:
        gatemod = importlib.import_module(name + ".gate")
    sess = importlib.import_module(name + ".session")
    text = (BENCH_DIR / "redisgate.yaml").read_text()
    text = text.replace("@LISTEN_PORT@", "1").replace("@REDIS_PORT@", "2")
    os.environ.setdefault("REDISGATE_BENCH_UPSTREAM_PASSWORD", "unused")
    cfg = cfgmod.build_config(yaml.safe_load(text), base_dir=BENCH_DIR, allow_embedded=False)
    gate = gatemod.Gate(cfg, upstream_version=(7, 0, 15))

    def logged_in():
        return judge_logged_in(gate, sess)
    return logged_in


def make_pass(logged_in, reads):
    want_up = sum(len(c) for c, _, _ in reads)
    want_client = sum(len(r) for _, r, _ in reads)

    def run() -> None:
        s = logged_in()
        client_data, upstream_data, actions = s.client_data, s.upstream_data, s.actions
        sent = got = 0
        for c, r, _ in reads:
            client_data(c)
            sent += len(actions().to_upstream)
            upstream_data(r)
            got += len(actions().to_client)
        if sent != want_up or got != want_client or s.close:
            raise RuntimeError("not everything went through")
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path, nargs="?", default=BENCH_DIR.parent)
    ap.add_argument("--commands", type=int, default=8000)
    ap.add_argument("--reps", type=int, default=41)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="redisgate-ab-"))
    sys.path.insert(0, str(tmp))
    try:
        versions = {"before": load(args.before.resolve(), "rg_before", tmp),
                    "after": load(args.after.resolve(), "rg_after", tmp)}
        scen = scenarios(args.commands)
        runs = {(s, v): make_pass(versions[v], reads) for s, reads in scen.items()
                for v in versions}
        for run in runs.values():
            run()   # (warm-up: lazily built tables)
        times: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
        gc.disable()
        try:
            for rep in range(args.reps):
                for s, reads in scen.items():
                    commands = sum(k for _, _, k in reads)
                    for v in (("before", "after") if rep % 2 == 0 else ("after", "before")):
                        t0 = time.process_time_ns()
                        runs[(s, v)]()
                        times[(s, v)].append((time.process_time_ns() - t0) / commands)
        finally:
            gc.enable()
        print(f"{'scenario':12s} {'before min':>10s} {'after min':>10s} {'ratio':>6s}   "
              f"{'before med':>10s} {'after med':>10s} {'ratio':>6s}  (ns per command)")
        for s in scen:
            b, a = times[(s, "before")], times[(s, "after")]
            mb, ma = statistics.median(b), statistics.median(a)
            print(f"{s:12s} {min(b):10,.0f} {min(a):10,.0f} {min(a) / min(b):6.3f}   "
                  f"{mb:10,.0f} {ma:10,.0f} {ma / mb:6.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
