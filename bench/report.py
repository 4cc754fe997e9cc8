"""Turn raw benchmark runs into medians, same-round ratios, pass/fail checks and the three files
bench/results/latest.json, latest.md and latest.png.

Every ratio is computed *within one round* (target A's run divided by target B's run of the same
workload in the same round) and then the median over rounds is reported, so slow drifts of a
shared machine cancel out instead of landing on whichever target ran last.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

TARGET_ORDER = ["direct", "twemproxy", "pipe", "redisgate", "redisgate-dedicated", "redisgate-tls",
                "redis-tls", "haproxy-tls", "redisgate-tls-py", "pipe-tls-uvloop", "pipe-tls-engine",
                "pipe-tls-c"]
BASES = ["direct", "pipe", "twemproxy", "redisgate", "redis-tls", "haproxy-tls"]

# (id, title, workload, baseline, op, threshold): throughput ratios, for each CHECKED_TARGETS.
# (The throughput check "≥ 1.2× twemproxy at -P 16" became the CPU-per-request checks below: on
# 2 cores shared with Redis and redis-benchmark, throughput cannot show a proxy's lead.)
RATIO_CHECKS = [
    ("p16_set_vs_pipe", "SET -c 50 -P 16: redisgate ≥ 0.85× byte pipe", "set_p16", "pipe", ">=", 0.85),
    ("p16_get_vs_pipe", "GET -c 50 -P 16: redisgate ≥ 0.85× byte pipe", "get_p16", "pipe", ">=", 0.85),
    ("p1_set_vs_pipe", "SET -c 50 -P 1: redisgate ≥ 0.9× byte pipe", "set_p1", "pipe", ">=", 0.9),
    ("p1_get_vs_pipe", "GET -c 50 -P 1: redisgate ≥ 0.9× byte pipe", "get_p1", "pipe", ">=", 0.9),
    ("p1_lpush_vs_pipe", "LPUSH -c 50 -P 1: redisgate ≥ 0.9× byte pipe", "lpush_p1", "pipe", ">=", 0.9),
]
LATENCY_LIMIT = 1.15
JUDGE_TARGET = 1_000_000
MEMORY_TARGET_KIB = 32.0
TLS_MEMORY_TARGET_KIB = 48.0

# CPU per request of the target's own process (user + system, /proc/<pid>/stat), same-round
# ratio: (id, title, workload, target, baseline, op, threshold).
CPU_CHECKS = [
    (f"cpu_{p}_{op}_vs_twemproxy",
     f"CPU/request {op.upper()} -P {p[1:]}: redisgate (shared link) ≤ {thr}× twemproxy",
     f"{op}_{p}", "redisgate", "twemproxy", "<=", thr)
    for p, thr in (("p16", 0.35), ("p1", 0.5)) for op in ("set", "get")
] + [
    (f"cpu_{p}_{op}_dedicated_vs_pipe",
     f"CPU/request {op.upper()} -P {p[1:]}: redisgate-dedicated ≤ 1.1× byte pipe",
     f"{op}_{p}", "redisgate-dedicated", "pipe", "<=", 1.1)
    for p in ("p16", "p1") for op in ("set", "get")
] + [(f"cpu_{w}_tls_vs_haproxy", f"CPU/request {title}: redisgate-tls ≤ 0.8× haproxy-tls",
      w, "redisgate-tls", "haproxy-tls", "<=", 0.8)
     for w, title in (("set_p1", "SET -P 1"), ("get_p1", "GET -P 1"), ("set_p16", "SET -P 16"),
                      ("get_p16", "GET -P 16"))]

# Throughput of redisgate-tls, same-round ratios: (id, title, workload, baseline, threshold).
TLS_CHECKS = [
    (f"tls_{w}_vs_plain", f"{title}: redisgate-tls ≥ {thr}× redisgate", w, "redisgate", thr)
    for w, title, thr in (
        ("set_p1", "SET -P 1", 0.85), ("get_p1", "GET -P 1", 0.85), ("lpush_p1", "LPUSH -P 1", 0.85),
        ("evalsha_p1", "EVALSHA -P 1", 0.85), ("set_p16", "SET -P 16", 0.85),
        ("get_p16", "GET -P 16", 0.85), ("lpush_p16", "LPUSH -P 16", 0.85),
        ("evalsha_p16", "EVALSHA -P 16", 0.85), ("get_c1", "GET -c 1 (1/latency)", 0.85),
        ("set_16k", "SET 16 KB", 0.8), ("get_16k", "GET 16 KB", 0.8),
        ("get_c1000", "GET -c 1000", 0.75))
] + [
    ("tls_conn_vs_redis_tls", "new connection per GET (handshakes/s): redisgate-tls ≥ 0.9× redis-tls",
     "conn_get", "redis-tls", 0.9),
    ("tls_conn_vs_haproxy", "new connection per GET (handshakes/s): redisgate-tls ≥ 0.9× haproxy-tls",
     "conn_get", "haproxy-tls", 0.9),
    ("tls_p1_set_vs_haproxy", "SET -P 1: redisgate-tls ≥ 1.0× haproxy-tls", "set_p1", "haproxy-tls", 1.0),
    ("tls_p1_get_vs_haproxy", "GET -P 1: redisgate-tls ≥ 1.0× haproxy-tls", "get_p1", "haproxy-tls", 1.0),
    ("tls_p16_set_vs_haproxy", "SET -P 16: redisgate-tls ≥ 1.0× haproxy-tls", "set_p16", "haproxy-tls", 1.0),
    ("tls_p16_get_vs_haproxy", "GET -P 16: redisgate-tls ≥ 1.0× haproxy-tls", "get_p16", "haproxy-tls", 1.0),
    ("tls_p16_set_vs_redis_tls", "SET -P 16: redisgate-tls ≥ 0.9× redis-tls", "set_p16", "redis-tls", 0.9),
    ("tls_p16_get_vs_redis_tls", "GET -P 16: redisgate-tls ≥ 0.9× redis-tls", "get_p16", "redis-tls", 0.9),
]


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(results: list[dict], workload_ids: list[str]) -> dict:
    """{workload: {target: entry}}; entry has medians of rps/p50/p99 and same-round ratios."""
    rounds = sorted({r["round"] for r in results})
    by = {(r["round"], r["workload"], r["target"]): r for r in results}
    targets = [t for t in TARGET_ORDER if any(r["target"] == t for r in results)]
    out: dict[str, dict] = {}
    for w in workload_ids:
        out[w] = {}
        for t in targets:
            runs = [by[(r, w, t)] for r in rounds if (r, w, t) in by]
            if not runs:
                continue
            ok = [x for x in runs if x["status"] == "ok"]
            entry: dict = {"runs": len(runs), "ok": len(ok),
                           "status": "ok" if ok else runs[0]["status"]}
            bad = [x for x in runs if x["status"] != "ok"]
            if bad:
                entry["reason"] = bad[0]["reason"]
            if ok:
                rps = [x["rps"] for x in ok]
                entry.update(rps=_median(rps), rps_min=min(rps), rps_max=max(rps),
                             p50_ms=_median([x["p50_ms"] for x in ok]),
                             p99_ms=_median([x["p99_ms"] for x in ok]))
                cpu = [x for x in ok if _cpu(x) is not None]
                if cpu:
                    entry.update(cpu_us=_median([_cpu(x) for x in cpu]),
                                 cpu_user_us=_median([x["cpu_user_us"] for x in cpu]),
                                 cpu_sys_us=_median([x["cpu_sys_us"] for x in cpu]))
                    rc = [x["redis_cpu_us"] for x in cpu if x.get("redis_cpu_us") is not None]
                    if rc:
                        entry["redis_cpu_us"] = _median(rc)
            for base in BASES:
                if base == t:
                    continue
                ratios, added, added_mean, cpu_ratios = [], [], [], []
                for r in rounds:
                    a, b = by.get((r, w, t)), by.get((r, w, base))
                    if a and b and a["status"] == "ok" and b["status"] == "ok" and \
                            _cpu(a) is not None and _cpu(b):
                        cpu_ratios.append(_cpu(a) / _cpu(b))
                    if a and b and a["status"] == "ok" and b["status"] == "ok" and b["rps"]:
                        ratios.append(a["rps"] / b["rps"])
                        if base == "direct":
                            added.append(a["p50_ms"] - b["p50_ms"])
                            # With one client and no pipelining, 1/rps is the exact mean round
                            # trip (wall clock), free of the histogram's 8 µs buckets.
                            added_mean.append((1 / a["rps"] - 1 / b["rps"]) * 1e3)
                if ratios:
                    entry[f"x_{base}"] = _median(ratios)
                    entry[f"x_{base}_rounds"] = len(ratios)
                if cpu_ratios:
                    entry[f"cpu_x_{base}"] = _median(cpu_ratios)
                if added:
                    entry["added_p50_ms"] = _median(added)
                    entry["added_p50_by_round"] = added
                if added_mean and w == "get_c1":
                    entry["added_mean_ms"] = _median(added_mean)
                    entry["added_mean_by_round"] = added_mean
            out[w][t] = entry
    return out


def _cpu(run: dict) -> float | None:
    """CPU µs per request of a run's target process (user + system), None if not measured."""
    if run.get("cpu_user_us") is None or run.get("cpu_sys_us") is None:
        return None
    return run["cpu_user_us"] + run["cpu_sys_us"]


def _added_ratio(summary: dict, w: str, t: str, base: str = "pipe",
                 key: str = "added_p50_by_round") -> tuple[float | None, float | None]:
    """(median of per-round added-latency ratios, ratio of median added latencies)."""
    a = summary.get(w, {}).get(t, {}).get(key)
    b = summary.get(w, {}).get(base, {}).get(key)
    if not a or not b or len(a) != len(b):
        return None, None
    per_round = [x / y for x, y in zip(a, b) if y > 0]
    mb = _median(b)
    return _median(per_round), (_median(a) / mb if mb and mb > 0 else None)


def _verdict(value: float | None, op: str, threshold: float) -> str:
    if value is None:
        return "n/a"
    ok = value >= threshold if op == ">=" else value <= threshold
    return "PASS" if ok else "FAIL"


# The redisgate configurations every throughput and latency check is made for: bench/redisgate.yaml
# (upstream.multiplex: 1, as twemproxy) and the default, a link per client. Each gets its own rows;
# the first is `redisgate`.
CHECKED_TARGETS = [("redisgate", ""), ("redisgate-dedicated", "-dedicated")]


def checks(summary: dict, targets: dict, judge: dict | None, memory: dict | None) -> list[dict]:
    out = []
    for target, suffix in CHECKED_TARGETS:
        out += _target_checks(summary, targets, target, suffix)
    for cid, title, w, target, base, op, thr in CPU_CHECKS:
        out.append(_pair_check(summary, targets, cid, title, w, target, base, op, thr, cpu=True))
    for cid, title, w, base, thr in TLS_CHECKS:
        out.append(_pair_check(summary, targets, cid, title, w, "redisgate-tls", base, ">=", thr))
    out += _other_checks(judge, memory)
    return out


def _pair_check(summary: dict, targets: dict, cid: str, title: str, w: str, target: str,
                base: str, op: str, thr: float, cpu: bool = False) -> dict:
    """One same-round ratio of `target` to `base` on `w`: throughput, or CPU per request."""
    entry = summary.get(w, {}).get(target, {})
    value = entry.get(f"{'cpu_' if cpu else ''}x_{base}")
    note = ""
    if value is None:
        gone = [t for t in (target, base) if not targets.get(t, {}).get("available")]
        if w not in summary:
            note = f"workload {w} was not run (--workloads)"
        elif gone:
            note = f"{', '.join(gone)}: " + "; ".join(
                targets.get(t, {}).get("reason", "not run") for t in gone)
        else:
            note = (entry.get("reason") or summary[w].get(base, {}).get("reason")
                    or f"no ok runs of {target} and {base} in the same round")
    elif cpu:
        b = summary[w].get(base, {})
        note = (f"{target} {entry['cpu_us']:.2f} µs ({entry['cpu_user_us']:.2f} user + "
                f"{entry['cpu_sys_us']:.2f} sys), {base} {b.get('cpu_us', 0):.2f} µs "
                f"({b.get('cpu_user_us', 0):.2f} + {b.get('cpu_sys_us', 0):.2f}); throughput "
                f"{_x(entry.get(f'x_{base}'))}")
    else:
        b = summary[w].get(base, {})
        if entry.get("cpu_us") is not None and b.get("cpu_us"):
            note = (f"CPU/request {entry['cpu_us']:.2f} vs {b['cpu_us']:.2f} µs "
                    f"({_x(entry.get(f'cpu_x_{base}'))})")
    return {"id": cid, "title": title, "value": value, "unit": "×", "op": op, "threshold": thr,
            "result": _verdict(value, op, thr), "note": note}


def _target_checks(summary: dict, targets: dict, target: str, suffix: str) -> list[dict]:
    """The ratio and -c 1 latency checks for one redisgate target (ids get `suffix`)."""
    out = []
    tg = targets.get(target, {})
    missing = None if tg.get("available") else tg.get("reason", "not run")

    def named(title: str) -> str:
        return title.replace("redisgate", target, 1)

    for cid, title, w, base, op, thr in RATIO_CHECKS:
        entry = summary.get(w, {}).get(target, {})
        value = entry.get(f"x_{base}")
        note = ""
        if value is None:
            if w not in summary:
                note = f"workload {w} was not run (--workloads)"
            elif missing and not entry:
                note = f"{target} target unavailable (see Targets)"
            else:
                note = entry.get("reason") or f"no {base} run of {w} in the same round"
        out.append({"id": cid + suffix, "title": named(title), "value": value, "unit": "×",
                    "op": op, "threshold": thr, "result": _verdict(value, op, thr), "note": note})

    per_round, of_medians = _added_ratio(summary, "get_c1", target)
    added = summary.get("get_c1", {}).get(target, {}).get("added_p50_ms")
    pipe_added = summary.get("get_c1", {}).get("pipe", {}).get("added_p50_ms")
    if per_round is None:
        note = (f"{target} target unavailable (see Targets)" if missing
                else f"needs ok GET -c 1 runs of direct, pipe and {target} with pipe adding > 0 ms")
    else:
        note = (f"added p50: {target} {added * 1000:.0f} µs, pipe {pipe_added * 1000:.0f} µs "
                "(8 µs histogram buckets)"
                + (f"; ratio of medians {of_medians:.2f}" if of_medians is not None else ""))
    out.append({"id": "c1_latency" + suffix,
                "title": named("GET -c 1: redisgate's added p50 ≤ 1.15× the byte pipe's"),
                "value": per_round, "unit": "×", "op": "<=", "threshold": LATENCY_LIMIT,
                "result": _verdict(per_round, "<=", LATENCY_LIMIT), "note": note})

    mean_ratio, _ = _added_ratio(summary, "get_c1", target, key="added_mean_by_round")
    mean = summary.get("get_c1", {}).get(target, {}).get("added_mean_ms")
    pipe_mean = summary.get("get_c1", {}).get("pipe", {}).get("added_mean_ms")
    out.append({"id": "c1_latency_mean" + suffix,
                "title": named("GET -c 1: redisgate's added mean latency (1/rps) ≤ 1.15× the byte pipe's"),
                "value": mean_ratio, "unit": "×", "op": "<=", "threshold": LATENCY_LIMIT,
                "result": _verdict(mean_ratio, "<=", LATENCY_LIMIT),
                "note": (f"added mean: {target} {mean * 1000:.1f} µs, pipe {pipe_mean * 1000:.1f} µs; "
                         "exact, where p50 has redis-benchmark's 8 µs buckets"
                         if mean_ratio is not None else note)})
    return out


def _other_checks(judge: dict | None, memory: dict | None) -> list[dict]:
    out = []
    jv, jnote = None, ""
    if judge is None:
        jnote = "skipped"
    elif judge.get("error"):
        jnote = judge["error"]
    else:
        default = judge.get("default_path")
        paths = judge.get("paths", {})
        if default in paths and paths[default].get("cmds_per_s"):
            jv = paths[default]["cmds_per_s"]
            others = [f"{k} {v['cmds_per_s'] / 1e6:.2f} M/s" for k, v in paths.items()
                      if k != default and v.get("cmds_per_s")]
            jnote = f"default path '{default}'" + (f"; also {', '.join(others)}" if others else "")
        else:
            jnote = judge.get("note", "no parsing path could be measured")
    out.append({"id": "judge", "title": "judge: ≥ 1,000,000 commands/s parsed and judged on one core",
                "value": jv, "unit": "cmd/s", "op": ">=", "threshold": JUDGE_TARGET,
                "result": _verdict(jv, ">=", JUDGE_TARGET), "note": jnote})

    mv, mnote = None, ""
    if memory is None:
        mnote = "skipped"
    elif memory.get("error"):
        mnote = memory["error"]
    else:
        m = memory.get("targets", {}).get("redisgate", {})
        mv = m.get("kib_per_client")
        if mv is None:
            mnote = m.get("reason") or "redisgate was not measured"
        else:
            p = memory.get("targets", {}).get("pipe", {}).get("kib_per_client")
            mnote = (f"{m.get('clients')} clients, {m.get('upstream_links', '?')} upstream links"
                     + (f"; byte pipe {p:.1f} KiB/client" if p is not None else ""))
    out.append({"id": "memory", "title": "memory: ≤ 32 KiB RSS per idle authenticated client",
                "value": mv, "unit": "KiB", "op": "<=", "threshold": MEMORY_TARGET_KIB,
                "result": _verdict(mv, "<=", MEMORY_TARGET_KIB), "note": mnote})
    tv, tnote = None, mnote if memory is None or memory.get("error") else ""
    if memory is not None and not memory.get("error"):
        m = memory.get("targets", {}).get("redisgate-tls")
        if m is None:
            tnote = "redisgate-tls was not measured (--targets)"
        elif m.get("kib_per_client") is None:
            tnote = m.get("reason") or "no figure"
        else:
            tv = m["kib_per_client"]
            tnote = (f"{m.get('clients')} TLS clients, {m.get('upstream_links', '?')} upstream links"
                     + (f"; plaintext {mv:.1f} KiB/client" if mv is not None else ""))
    out.append({"id": "memory_tls", "title": "memory: ≤ 48 KiB RSS per idle authenticated TLS client",
                "value": tv, "unit": "KiB", "op": "<=", "threshold": TLS_MEMORY_TARGET_KIB,
                "result": _verdict(tv, "<=", TLS_MEMORY_TARGET_KIB), "note": tnote})
    return out


def tls_overhead(summary: dict) -> dict:
    """{workload: redisgate-tls rps / redisgate rps (same round, median)} when TLS ran."""
    return {w: e["redisgate-tls"]["x_redisgate"] for w, e in summary.items()
            if "x_redisgate" in e.get("redisgate-tls", {})}


def build(meta: dict, targets: dict, workloads: list[dict], results: list[dict],
          judge: dict | None, memory: dict | None) -> dict:
    ids = [w["id"] for w in workloads]
    summary = summarize(results, ids)
    return {"meta": meta, "targets": targets, "workloads": workloads, "summary": summary,
            "tls_overhead": tls_overhead(summary), "judge": judge, "memory": memory,
            "checks": checks(summary, targets, judge, memory), "runs": results}


# -- rendering ------------------------------------------------------------------------------

def _k(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _cell(entry: dict | None) -> str:
    if not entry:
        return "–"
    if entry.get("rps") is None:
        return entry.get("status", "–")
    flag = "" if entry["ok"] == entry["runs"] else f" ({entry['ok']}/{entry['runs']})"
    return _k(entry["rps"]) + flag


def _fmt_value(c: dict) -> str:
    v = c["value"]
    if v is None:
        return "–"
    if c["unit"] == "×":
        return f"{v:.2f}×"
    if c["unit"] == "cmd/s":
        return f"{v:,.0f}/s"
    return f"{v:.1f} {c['unit']}"


def checks_text(doc: dict) -> str:
    lines = ["", "targets:"]
    for c in doc["checks"]:
        lines.append(f"  [{c['result']:>4}] {c['title']}: {_fmt_value(c)}"
                     + (f"  ({c['note']})" if c["note"] else ""))
    for name, t in doc["targets"].items():
        if not t.get("available"):
            lines.append(f"  {name} target unavailable: {t.get('reason')}")
    return "\n".join(lines)


_TLS_PAIRS = [("redisgate-tls", "redisgate"), ("redisgate-tls", "haproxy-tls"),
              ("redisgate-tls", "redis-tls"), ("redis-tls", "direct"), ("haproxy-tls", "direct"),
              ("redisgate-tls-py", "redisgate"), ("pipe-tls-uvloop", "pipe"),
              ("pipe-tls-engine", "pipe"), ("pipe-tls-c", "pipe")]


def markdown(doc: dict) -> str:
    meta, summary, targets = doc["meta"], doc["summary"], doc["targets"]
    present = [t for t in TARGET_ORDER if t in targets]
    wl = {w["id"]: w for w in doc["workloads"]}
    md = [f"# redisgate benchmark ({meta['mode']} run)", "",
          f"{meta['started']} · commit `{meta['commit']}` · {meta['rounds']} interleaved rounds · "
          f"{meta.get('duration_s', 0):.0f} s · {meta['machine']} · Python {meta['python']}  ",
          f"{meta['redis']} · {meta['redis_benchmark']} · {meta['nutcracker']} · "
          f"{meta.get('haproxy', '')}", "",
          "Medians over rounds. Ratios (×) are computed between two targets' runs of the same "
          "workload *in the same round*, then the median is taken. See bench/README.md.", ""]
    if meta["mode"].startswith("quick"):
        md += ["> Quick mode: few requests and 2 rounds. A smoke check, not a measurement.", ""]
    md += ["## Targets", "", "| target | status | note |", "|---|---|---|"]
    for t in present:
        info = targets[t]
        status = "ok" if info.get("available") else "**unavailable**"
        note = info.get("reason") or info.get("note") or ""
        md.append(f"| {t} | {status} | {note.replace('|', '/')} |")
    md += ["", "## Checks", "", "| check | measured | result | note |", "|---|---|---|---|"]
    for c in doc["checks"]:
        res = {"PASS": "✅ PASS", "FAIL": "❌ FAIL"}.get(c["result"], "n/a")
        md.append(f"| {c['title']} | {_fmt_value(c)} | {res} | {c['note'].replace('|', '/')} |")
    if doc["tls_overhead"]:
        md += ["", "TLS overhead (redisgate-tls ÷ redisgate, same round): " + ", ".join(
            f"{wl[w]['title']} {_x(v)}" for w, v in doc["tls_overhead"].items()) + "."]

    md += ["", "## Throughput (requests/s, median)", "",
           "| workload | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for w, entries in summary.items():
        md.append(f"| {wl[w]['title']} | " + " | ".join(_cell(entries.get(t)) for t in present) + " |")

    md += ["", "## CPU per request (µs of the target's own process, user + system, median)", "",
           "From /proc/<pid>/stat around each run ÷ requests served: the proxy's process; for "
           "direct and redis-tls, Redis itself. In brackets: user / system. Last column: Redis's "
           "CPU per request behind redisgate (shared link).", "",
           "| workload | " + " | ".join(present) + " | Redis behind redisgate |",
           "|---|" + "---|" * (len(present) + 1)]
    for w, entries in summary.items():
        cells = []
        for t in present:
            e = entries.get(t, {})
            cells.append(f"{e['cpu_us']:.2f} ({e['cpu_user_us']:.2f} / {e['cpu_sys_us']:.2f})"
                         if e.get("cpu_us") is not None else "–")
        rc = entries.get("redisgate", {}).get("redis_cpu_us")
        md.append(f"| {wl[w]['title']} | " + " | ".join(cells)
                  + f" | {f'{rc:.2f}' if rc is not None else '–'} |")
    md += ["", "CPU per request, same-round ratios: " + "; ".join(
        f"{wl[w]['title']}: " + ", ".join(
            f"{t} ÷ {b} {e[f'cpu_x_{b}']:.2f}×"
            for t, b in (("redisgate", "twemproxy"), ("redisgate-dedicated", "pipe"),
                         ("redisgate-tls", "haproxy-tls"), ("redisgate-tls", "redisgate"))
            for e in [entries.get(t, {})] if e.get(f"cpu_x_{b}") is not None)
        for w, entries in summary.items()
        if any(entries.get(t, {}).get(f"cpu_x_{b}") is not None
               for t, b in (("redisgate", "twemproxy"), ("redisgate-dedicated", "pipe"),
                            ("redisgate-tls", "haproxy-tls")))) + "."]

    tls_cols = [t for t in ("redisgate-tls", "redis-tls", "haproxy-tls", "redisgate-tls-py",
                            "pipe-tls-uvloop", "pipe-tls-engine", "pipe-tls-c") if t in present]
    if tls_cols:
        md += ["", "## TLS (median of same-round ratios)", "",
               "| workload | " + " | ".join(f"{t} ÷ {b}" for t, b in _TLS_PAIRS if t in present
                                           and (b in present)) + " |",
               "|---|" + "---|" * sum(1 for t, b in _TLS_PAIRS if t in present and b in present)]
        for w, entries in summary.items():
            md.append(f"| {wl[w]['title']} | " + " | ".join(
                _x(entries.get(t, {}).get(f"x_{b}")) for t, b in _TLS_PAIRS
                if t in present and b in present) + " |")

    md += ["", "## Ratios (median of same-round ratios)", "",
           "| workload | redisgate ÷ direct | redisgate ÷ pipe | redisgate ÷ twemproxy | "
           "dedicated ÷ pipe | dedicated ÷ twemproxy | pipe ÷ direct | twemproxy ÷ direct |",
           "|---|---|---|---|---|---|---|---|"]
    for w, entries in summary.items():
        rg, pipe, tw = entries.get("redisgate", {}), entries.get("pipe", {}), entries.get("twemproxy", {})
        ded = entries.get("redisgate-dedicated", {})
        md.append(f"| {wl[w]['title']} | {_x(rg.get('x_direct'))} | {_x(rg.get('x_pipe'))} | "
                  f"{_x(rg.get('x_twemproxy'))} | {_x(ded.get('x_pipe'))} | {_x(ded.get('x_twemproxy'))} | "
                  f"{_x(pipe.get('x_direct'))} | {_x(tw.get('x_direct'))} |")

    md += ["", "## Latency (ms, median of per-round percentiles)", "",
           "| workload | " + " | ".join(f"{t} p50 / p99" for t in present) + " |",
           "|---|" + "---|" * len(present)]
    for w, entries in summary.items():
        cells = []
        for t in present:
            e = entries.get(t, {})
            cells.append(f"{e['p50_ms']:.3f} / {e['p99_ms']:.3f}" if e.get("p50_ms") is not None else "–")
        md.append(f"| {wl[w]['title']} | " + " | ".join(cells) + " |")
    c1 = summary.get("get_c1", {})
    if c1:
        md += ["", "Added latency over direct Redis, GET -c 1 (p50, in redis-benchmark's 8 µs "
               "histogram buckets / mean from 1/rps): " + ", ".join(
                   f"{t} {c1[t]['added_p50_ms'] * 1000:.0f} / {c1[t]['added_mean_ms'] * 1000:.1f} µs"
                   for t in present if c1.get(t, {}).get("added_mean_ms") is not None) + "."]

    judge = _section(md, doc, "judge", "Judge micro-benchmark (no sockets, one core)")
    if judge:
        md += [judge.get("description", ""), "",
               "| parsing path | commands/s | ns/command | parse only (cmd/s) |", "|---|---|---|---|"]
        for name, p in judge.get("paths", {}).items():
            if p.get("error"):
                md.append(f"| {name} | unavailable: {p['error']} | | |")
                continue
            po = p.get("parse_only_cmds_per_s")
            md.append(f"| {name}{' (default)' if name == judge.get('default_path') else ''} | "
                      f"{p['cmds_per_s']:,.0f} | {1e9 / p['cmds_per_s']:.0f} | "
                      f"{f'{po:,.0f}' if po else '–'} |")
        by_cmd = judge.get("paths", {}).get("drain", {}).get("judge_ns_by_command")
        if by_cmd:
            md += ["", "Lookup + judge alone, ns per command: " + ", ".join(
                f"`{k}` {v:,}" for k, v in by_cmd.items()) + "."]
        for n in judge.get("notes", []):
            md.append(f"\n- {n}")

    mem = _section(md, doc, "memory", "Memory per idle authenticated client")
    if mem:
        md += ["| process | clients | RSS before (MiB) | RSS after (MiB) | KiB per client | "
               "upstream links |", "|---|---|---|---|---|---|"]
        for name, m in mem.get("targets", {}).items():
            if m.get("kib_per_client") is None:
                md.append(f"| {name} | unavailable: {m.get('reason', '?')} | | | | |")
                continue
            md.append(f"| {name} | {m['clients']} | {m['rss_before_kib'] / 1024:.1f} | "
                      f"{m['rss_after_kib'] / 1024:.1f} | {m['kib_per_client']:.1f} | "
                      f"{m.get('upstream_links', '?')} |")

    problems = [r for r in doc["runs"] if r["status"] != "ok"]
    if problems:
        md += ["", "## Runs that did not measure", ""]
        seen = set()
        for r in problems:
            key = (r["target"], r["workload"], r["reason"])
            if key in seen:
                continue
            seen.add(key)
            md.append(f"- {r['target']} / {wl[r['workload']]['title']}: {r['status']} — {r['reason']}")
    if meta.get("notes"):
        md += ["", "## Notes", ""] + [f"- {n}" for n in meta["notes"]]
    md += ["", f"Raw runs, argv and logs: `latest.json`; process logs in `{meta.get('workdir', '?')}`.", ""]
    return "\n".join(md)


def _section(md: list[str], doc: dict, key: str, title: str) -> dict | None:
    """Append the heading of the optional part `key` of the report; return its results, or None
    when it was skipped or did not measure (said under the heading)."""
    part = doc.get(key)
    md += ["", f"## {title}", ""]
    if not part:
        md.append("Skipped.")
    elif part.get("error"):
        md.append(f"Unavailable: {part['error']}")
    else:
        return part
    return None


def chart(doc: dict, path: Path) -> str | None:
    """latest.png: throughput per workload and target, ratios to the byte pipe, GET -c 1 latency.
    Returns None, or why no chart was drawn (matplotlib missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib, or the `bench` extra)"
    summary = doc["summary"]
    wl = {w["id"]: w["title"] for w in doc["workloads"]}
    present = [t for t in TARGET_ORDER if any(t in e for e in summary.values())]
    colors = {"direct": "#4c72b0", "twemproxy": "#dd8452", "pipe": "#8c8c8c",
              "redisgate": "#c44e52", "redisgate-dedicated": "#da8bc3",
              "redisgate-tls": "#937860", "redis-tls": "#55a868", "haproxy-tls": "#8172b3",
              "redisgate-tls-py": "#c5b0a0", "pipe-tls-uvloop": "#64b5cd", "pipe-tls-engine": "#b0b0b0",
              "pipe-tls-c": "#4d4d4d"}
    ws = [w for w in summary if any(e.get("rps") for e in summary[w].values())]
    fig = plt.figure(figsize=(15, 10))
    ax = fig.add_subplot(2, 1, 1)
    width = 0.8 / max(1, len(present))
    for i, t in enumerate(present):
        xs = [j + i * width for j in range(len(ws))]
        ys = [summary[w].get(t, {}).get("rps") or 0 for w in ws]
        ax.bar(xs, ys, width, label=t, color=colors.get(t))
    ax.set_xticks([j + width * (len(present) - 1) / 2 for j in range(len(ws))])
    ax.set_xticklabels([wl[w] for w in ws], rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (median, log scale)")
    ax.set_title(f"Throughput — {doc['meta']['mode']} run, {doc['meta']['rounds']} rounds, "
                 f"commit {doc['meta']['commit']}")
    ax.legend(fontsize=8, ncol=len(present))
    ax.grid(axis="y", alpha=0.3)

    ax2 = fig.add_subplot(2, 2, 3)
    others = [t for t in present if t != "pipe"]
    width2 = 0.8 / max(1, len(others))
    for i, t in enumerate(others):
        xs = [j + i * width2 for j in range(len(ws))]
        ys = [summary[w].get(t, {}).get("x_pipe") or 0 for w in ws]
        ax2.bar(xs, ys, width2, label=t, color=colors.get(t))
    ax2.axhline(1.0, color="black", lw=0.8)
    ax2.set_xticks([j + width2 * (len(others) - 1) / 2 for j in range(len(ws))])
    ax2.set_xticklabels([wl[w] for w in ws], rotation=35, ha="right", fontsize=7)
    ax2.set_ylabel("× byte pipe (same round, median)")
    ax2.set_title("Throughput relative to the byte pipe")
    ax2.legend(fontsize=7)
    ax2.grid(axis="y", alpha=0.3)

    ax3 = fig.add_subplot(2, 2, 4)
    c1 = summary.get("get_c1", {})
    lat_t = [t for t in present if c1.get(t, {}).get("p50_ms") is not None]
    xs = range(len(lat_t))
    ax3.bar([x - 0.2 for x in xs], [c1[t]["p50_ms"] * 1000 for t in lat_t], 0.4, label="p50",
            color=[colors.get(t) for t in lat_t])
    ax3.bar([x + 0.2 for x in xs], [c1[t]["p99_ms"] * 1000 for t in lat_t], 0.4, label="p99",
            color=[colors.get(t) for t in lat_t], alpha=0.5, hatch="//")
    ax3.set_xticks(list(xs))
    ax3.set_xticklabels(lat_t, fontsize=8)
    ax3.set_ylabel("µs")
    ax3.set_title("GET -c 1 latency (solid p50, hatched p99)")
    ax3.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def write(doc: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    png = out / "latest.png"
    # The runs first: a chart that cannot be drawn must not lose them.
    (out / "latest.json").write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    try:
        why = chart(doc, png)
    except Exception as e:   # (matplotlib's own errors: the numbers are already written)
        why = f"the chart failed: {type(e).__name__}: {e}"
    if why:
        doc["meta"]["notes"].append(f"no chart: {why}")
    else:
        paths.append(png)
    (out / "latest.json").write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    (out / "latest.md").write_text(markdown(doc))
    return [out / "latest.json", out / "latest.md", *paths]
