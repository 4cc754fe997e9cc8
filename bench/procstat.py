"""What the benchmarks read of a process from /proc: its CPU time and its context switches.

One reader for bench/run.py (through workloads.py), bench/cpu_split.py and bench/workers.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class CPUSample:
    """A process's CPU time so far: `user` and `system` from /proc/<pid>/stat (whole clock
    ticks, 10 ms each), and `exact`, the nanoseconds its threads ran, from each thread's
    /proc/<pid>/task/<tid>/schedstat (None where that file is missing)."""
    user: float
    system: float
    exact: dict[int, int] | None = None

    def __iter__(self):   # (user, system), as before
        return iter((self.user, self.system))


def proc_cpu(pid: int | None) -> CPUSample | None:
    """A process's CPU time so far (see CPUSample); None if it is gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    exact: dict[int, int] | None = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    exact[int(tid)] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass   # (a thread that just ended: its time is in the stat ticks, not here)
    except OSError:
        exact = None
    return CPUSample(int(fields[11]) / TICK, int(fields[12]) / TICK, exact or None)


def cpu_used(before: CPUSample, after: CPUSample) -> tuple[float, float]:
    """(user, system) CPU seconds between two samples of one process. The sum is the threads'
    run time in nanoseconds (schedstat) when every thread of `before` is still there (else the
    clock ticks' sum); it is split between user and system as the ticks split (the kernel keeps
    no finer split). A run of 0.2 s of CPU is 20 ticks: ±5 % in ticks, exact in schedstat."""
    user, system = after.user - before.user, after.system - before.system
    if before.exact is None or after.exact is None or not before.exact.keys() <= after.exact.keys():
        return user, system
    total = sum(after.exact.values()) - sum(before.exact.values())
    total = max(total, 0) / 1e9
    ticks = user + system
    share = user / ticks if ticks > 0 else 0.5
    return total * share, total * (1 - share)


def proc_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of a process so far, from /proc/<pid>/status."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if "ctxt_switches" in line:
                name, value = line.split(":")
                found[name.strip()] = int(value)
    return found["voluntary_ctxt_switches"], found["nonvoluntary_ctxt_switches"]
