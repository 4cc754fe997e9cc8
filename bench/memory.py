"""Memory per idle authenticated client: how much a proxy's RSS grows for each connected client
that has logged in and then sits idle (its upstream connection included).

    python bench/memory.py [--clients 5000] [--targets pipe,redisgate,redisgate-tls] [--json]

For each proxy (a fresh process each, in front of a fresh Redis 7 with maxclients 12000): read
/proc/<pid>/status VmRSS, open N raw sockets in waves of 100 — each sends AUTH bench <password>
and PING and waits for +OK and +PONG — let the proxy settle, read VmRSS again, and report
(after - before) / N in KiB. The byte pipe is measured the same way as the floor of a Python
proxy that holds two sockets per client. `redisgate-tls` is the same redisgate config on a TLS
listener: each client completes a TLS handshake (the run's test CA, no session resumption)
before AUTH and PING, so the figure includes its TLS state (OpenSSL's SSL object, the engine's
two memory BIOs). Upstream links are counted from Redis's INFO clients.
Loopback only; the open-file limit is raised in-process with `resource`.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import (BENCH_PASSWORD, BENCH_USER, Stack, Unavailable, raise_nofile,  # noqa: E402
                     resp_command, rss_kib)

WAVE = 100
HELLO = resp_command("AUTH", BENCH_USER, BENCH_PASSWORD) + resp_command("PING")
EXPECT = b"+OK\r\n+PONG\r\n"


def open_idle_clients(port: int, n: int, timeout: float = 120.0,
                      tls_context=None) -> list[socket.socket]:
    """N authenticated, idle connections, opened in bounded waves; raises on any refusal.
    With `tls_context`, each completes a TLS handshake first."""
    socks: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    try:
        while len(socks) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(socks)} of {n} clients connected in {timeout:.0f} s")
            wave = []
            for _ in range(min(WAVE, n - len(socks))):
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                if tls_context is not None:
                    s = tls_context.wrap_socket(s)
                s.sendall(HELLO)
                wave.append(s)
            for s in wave:
                buf = b""
                while len(buf) < len(EXPECT):
                    chunk = s.recv(len(EXPECT) - len(buf))
                    if not chunk:
                        raise ConnectionError(f"client {len(socks) + 1} was disconnected after "
                                              f"{buf!r}")
                    buf += chunk
                if buf != EXPECT:
                    raise ConnectionError(f"AUTH/PING answered {buf[:120]!r}")
                socks.append(s)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def upstream_links(stack: Stack) -> int:
    info = stack.admin("INFO", "clients")
    text = info.decode() if isinstance(info, bytes) else str(info)
    if isinstance(info, dict):
        return int(info.get("connected_clients", 0)) - 1
    for line in text.splitlines():
        if line.startswith("connected_clients:"):
            return int(line.split(":")[1]) - 1    # minus our admin connection
    return -1


def measure(name: str, clients: int) -> dict:
    with Stack() as stack:
        try:
            stack.start_redis()
            # multiplex: 0, so that every idle client holds an upstream connection of its own
            # (the worst case; on a shared link an idle client holds none).
            target = stack.start_pipe() if name == "pipe" else \
                stack.start_redisgate(tls=name == "redisgate-tls", multiplex=0)
            ctx = stack.client_tls_context() if name == "redisgate-tls" else None
        except Unavailable as e:
            return {"reason": f"{name} target unavailable: {e}"}
        # Warm up: one full connect/auth/ping/close cycle so lazily imported code and the
        # first allocations are not charged to the idle clients.
        for s in open_idle_clients(target.port, 50, tls_context=ctx):
            s.close()
        time.sleep(1.0)
        before = rss_kib(target.pid)
        base_links = upstream_links(stack)
        t0 = time.monotonic()
        try:
            socks = open_idle_clients(target.port, clients, timeout=300.0, tls_context=ctx)
        except (OSError, ConnectionError, TimeoutError) as e:
            return {"reason": f"could not hold {clients} clients: {e}"}
        try:
            connect_s = time.monotonic() - t0
            time.sleep(2.0)   # let the proxy finish every upstream handshake and settle
            after = rss_kib(target.pid)
            links = upstream_links(stack) - base_links
        finally:
            for s in socks:
                s.close()
        return {"clients": clients, "rss_before_kib": before, "rss_after_kib": after,
                "kib_per_client": (after - before) / clients, "upstream_links": links,
                "connect_s": round(connect_s, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="RSS per idle authenticated client")
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--targets", default="pipe,redisgate")
    ap.add_argument("--json", action="store_true", help="print one JSON line (for bench/run.py)")
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 10000:
        ap.error("--clients must be 1..10000")
    nofile = raise_nofile(max(16384, 2 * args.clients + 1024))
    if nofile < args.clients + 256:
        msg = f"open-file limit is {nofile}, too low for {args.clients} clients"
        print(json.dumps({"error": msg}) if args.json else msg)
        return 1
    out = {"clients": args.clients, "targets": {}}
    for name in [t.strip() for t in args.targets.split(",") if t.strip()]:
        if name not in ("pipe", "redisgate", "redisgate-tls"):
            ap.error(f"unknown target {name!r} (pipe, redisgate, redisgate-tls)")
        out["targets"][name] = measure(name, args.clients)
        if not args.json:
            m = out["targets"][name]
            if "kib_per_client" in m:
                print(f"{name:14} {m['clients']} clients: RSS {m['rss_before_kib'] / 1024:.1f} -> "
                      f"{m['rss_after_kib'] / 1024:.1f} MiB = {m['kib_per_client']:.1f} KiB/client, "
                      f"{m['upstream_links']} upstream links, connected in {m['connect_s']} s")
            else:
                print(f"{name:14} {m['reason']}")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
