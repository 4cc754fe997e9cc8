"""The C lane's own cost per read, two builds side by side in one process (issue 17's metrics).

    python bench/lane_cost.py /path/to/other/checkout [--reps 21]

Loads the other checkout's built _lane (redisgate/_native/ or, before, redisgate/) next to this one's and times, in CPU time
(process_time_ns, so other processes on the machine do not count), interleaved repetitions of a
read of 16 GETs forwarded by an armed lane and the read of their 16 replies passed back: the
other build and this one, each with a counted memo entry in its own form (a `_lane.Verdict`, or
the 8-item tuple of builds before issue 16's typed verdicts). Median and min over the
repetitions, in ns per read pair.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redisgate._native import _lane as mine  # noqa: E402


def load(path: str):
    spec = importlib.util.spec_from_file_location("_lane", path)   # (PyInit__lane)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def other_lane(checkout: str):
    """The built _lane of another checkout: redisgate/_native/ (since the packages by layer) or
    redisgate/ (before)."""
    found = (glob.glob(f"{checkout}/redisgate/_native/_lane.cpython*.so")
             or glob.glob(f"{checkout}/redisgate/_lane.cpython*.so"))
    if not found:
        raise SystemExit(f"{checkout}: no built _lane (python3 setup.py build_ext --inplace)")
    return load(found[0])


def cmd(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


REQUEST = cmd(b"GET", b"key:000000001234") * 16
REPLIES = b"$3\r\nxxx\r\n" * 16


def armed(mod):
    prefixes = (b"asynq:{a}:", b"key:")
    if hasattr(mod, "Verdict"):
        entry = mod.Verdict.one_key(spec=None, fewest=2, most=2, pos=1, prefixes=prefixes,
                                    exact=frozenset(), match=None, counter=mod.Counter())
    else:   # (a build before issue 16: Session._inline's 8-item tuple)
        entry = (None, 2, 2, 1, prefixes, frozenset(), None, mod.Counter())
    lane = mod.Lane(len, len)
    lane.arm({b"GET": entry}, len, len, 0, 1024, 512 << 20)
    return lane


def timed(lane, n: int = 200_000) -> float:
    client, upstream = lane.client_data, lane.upstream_data
    t0 = time.process_time_ns()
    for _ in range(n):
        client(REQUEST)
        upstream(REPLIES)
    return (time.process_time_ns() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("other", help="a checkout whose _lane is built")
    ap.add_argument("--reps", type=int, default=21)
    args = ap.parse_args()
    other = other_lane(args.other)
    cases = {"other build": armed(other), "this build": armed(mine)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.reps):
        for name, lane in cases.items():
            times[name].append(timed(lane))
    for name, xs in times.items():
        print(f"{name:30s} median {statistics.median(xs):7.1f} ns  min {min(xs):7.1f} ns per read pair")


if __name__ == "__main__":
    main()
