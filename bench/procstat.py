"""What the benchmarks read of a process from /proc: its CPU time and its context switches.

One reader for bench/run.py (through workloads.py), bench/cpu_split.py and bench/workers.py.
"""
from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int | None) -> tuple[float, float] | None:
    """(user, system) CPU seconds of a process so far, from /proc/<pid>/stat; None if gone
    (or `pid` is None)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            # (after the command name, which may hold spaces and parentheses)
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def proc_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of a process so far, from /proc/<pid>/status."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if "ctxt_switches" in line:
                name, value = line.split(":")
                found[name.strip()] = int(value)
    return found["voluntary_ctxt_switches"], found["nonvoluntary_ctxt_switches"]
