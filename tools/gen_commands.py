#!/usr/bin/env python3
"""Generate redisgate/protocol/data/commands.json from real redis-server processes.

The command table is read, never written by hand: this script starts (or, with --port, connects
to) a Redis 7 on a free 127.0.0.1 port and reads `COMMAND INFO` (arity, flags, ACL categories, key
specs, subcommands; over RESP3 so key specs arrive as maps) and `COMMAND DOCS` (`since`, `group`,
doc flags). It then starts the legacy 6.2 and 5.0 binaries and records which top-level command names
each of them knows (`COMMAND`), so `commands.available()` can tell what an older upstream supports.

Usage:
    python tools/gen_commands.py                      # start all three servers, write the JSON
    python tools/gen_commands.py --port 6379          # use a running Redis 7 (no auth) instead
    python tools/gen_commands.py --out /tmp/c.json    # write elsewhere

The output is one line per command (subcommands are entries of their own, named "parent|sub"),
sorted by name, so a Redis upgrade shows up as a readable diff. Standard library only, plus the
launcher of redisgate/io/embedded.py (itself standard library only).
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "redisgate" / "protocol" / "data" / "commands.json"
sys.path.insert(0, str(REPO))
from redisgate.io.embedded import free_port, redis_binary, start_redis_server, stop_process  # noqa: E402


# --- a minimal RESP2/RESP3 client (the tool must not depend on redis-py's reply post-processing) --

class RespError(Exception):
    pass


class Conn:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise SystemExit("only loopback servers are supported")
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def call(self, *args: str | bytes):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))
        reply = self._read()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _read(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t in (b"+", b"("):
            return rest.decode()
        if t == b"-":
            return RespError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if t == b"=":  # verbatim string: "txt:" prefix
            return self._exact(int(rest)).decode()[4:]
        if t in (b"*", b"~", b">"):
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        if t == b"%":
            return {self._read(): self._read() for _ in range(int(rest))}
        if t == b"_":
            return None
        if t == b"#":
            return rest == b"t"
        if t == b",":
            return float(rest)
        if t == b"|":  # attribute: skip it, return the value that follows
            for _ in range(2 * int(rest)):
                self._read()
            return self._read()
        raise ValueError(f"unexpected RESP type {line!r}")


# --- servers -----------------------------------------------------------------------------------

class Server:
    """A throwaway redis-server (redisgate.io.embedded's launcher: the one the tests use too)."""

    def __init__(self, path: str):
        self.path = path
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redisgate-gen-")
        try:
            self.proc = start_redis_server(path, self.port, self.dir,
                                           settings={"loglevel": "warning"},
                                           stderr=subprocess.PIPE)
        except RuntimeError as e:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise SystemExit(f"{path} did not start: {e}") from None

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- conversion ----------------------------------------------------------------------------------

def _key_spec(ks: dict) -> dict:
    """COMMAND INFO key spec map -> compact form: bs/fk as short lists, flags upper-case."""
    bs, fk = ks["begin_search"], ks["find_keys"]
    if bs["type"] == "index":
        bs_out = ["index", bs["spec"]["index"]]
    elif bs["type"] == "keyword":
        bs_out = ["keyword", bs["spec"]["keyword"], bs["spec"]["startfrom"]]
    else:
        bs_out = [bs["type"]]
    if fk["type"] == "range":
        s = fk["spec"]
        fk_out = ["range", s["lastkey"], s["keystep"], s["limit"]]
    elif fk["type"] == "keynum":
        s = fk["spec"]
        fk_out = ["keynum", s["keynumidx"], s["firstkey"], s["keystep"]]
    else:
        fk_out = [fk["type"]]
    out = {"flags": [f.upper() for f in ks.get("flags", [])], "bs": bs_out, "fk": fk_out}
    if ks.get("notes"):
        out["notes"] = ks["notes"]
    return out


def _entry(info: list, docs: dict | None) -> dict:
    # RESP3 COMMAND INFO entry: name, arity, flags, first, last, step, categories, tips,
    # key specs, subcommands.
    name, arity, flags, first, last, step, cats, tips, specs = info[:9]
    e = {
        "arity": arity,
        "flags": sorted(flags),
        "categories": sorted(c.lstrip("@") for c in cats),
        "range": [first, last, step],
    }
    docs = docs or {}
    e["since"] = docs.get("since", "0.0.0")
    if docs.get("group"):
        e["group"] = docs["group"]
    if docs.get("doc_flags"):
        e["doc_flags"] = sorted(docs["doc_flags"])
    if specs:
        e["key_specs"] = [_key_spec(ks) for ks in specs]
    return e


def read_redis7(conn: Conn) -> tuple[str, dict[str, dict]]:
    version = conn.call("INFO", "server")
    version = next(line.split(":", 1)[1].strip() for line in version.splitlines()
                   if line.startswith("redis_version:"))
    conn.call("HELLO", "3")
    infos = conn.call("COMMAND", "INFO")
    docs = conn.call("COMMAND", "DOCS")
    table: dict[str, dict] = {}
    for info in infos:
        name = info[0]
        d = docs.get(name, {})
        table[name] = _entry(info, d)
        subs = info[9] if len(info) > 9 else []
        sub_docs = d.get("subcommands") or {}
        if subs:
            table[name]["subcommands"] = sorted(s[0] for s in subs)
        for sub in subs:
            table[sub[0]] = _entry(sub, sub_docs.get(sub[0]))
            table[sub[0]]["parent"] = name
    return version, table


def read_names(path: str) -> tuple[str, list[str]]:
    srv = Server(path)
    try:
        c = Conn(srv.port)
        info = c.call("INFO", "server")
        version = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                       if line.startswith("redis_version:"))
        names = sorted(entry[0].lower() for entry in c.call("COMMAND"))
        c.close()
        return version, names
    finally:
        srv.stop()


def dump(doc: dict) -> str:
    """One line per command, sorted: compact, yet a Redis upgrade reads as a plain diff."""
    def member(key: str, last: bool) -> list[str]:   # `"key": {` + one line per entry
        entries = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}"
                   for k, v in sorted(doc[key].items())]
        return [f" {json.dumps(key)}: {{", *[e + "," for e in entries[:-1]], *entries[-1:],
                " }" if last else " },"]

    lines = ["{", f' "redis_version": {json.dumps(doc["redis_version"])},',
             *member("legacy", False), *member("commands", True), "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, help="read from a running Redis 7 on 127.0.0.1:PORT")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--skip-legacy", action="store_true",
                    help="do not start the 6.2 / 5.0 binaries (keeps the legacy lists empty)")
    args = ap.parse_args(argv)

    srv = None
    if args.port:
        conn = Conn(args.port)
    else:
        path = redis_binary("7")
        if path is None:
            raise SystemExit("redis-server 7 not found (set REDISGATE_REDIS7)")
        srv = Server(path)
        conn = Conn(srv.port)
    try:
        version, table = read_redis7(conn)
    finally:
        conn.close()
        if srv:
            srv.stop()
    if not version.startswith("7."):
        raise SystemExit(f"need Redis 7, got {version}")

    legacy: dict[str, list[str]] = {}
    if not args.skip_legacy:
        for v in ("6.2", "5"):
            path = redis_binary(v)
            if path is None:
                raise SystemExit(f"redis-server {v} not found (run scripts/test.sh)")
            lv, names = read_names(path)
            legacy[lv] = names

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump({"redis_version": version, "legacy": legacy, "commands": table}))
    n_sub = sum(1 for n in table if "|" in n)
    print(f"{args.out}: Redis {version}, {len(table) - n_sub} commands, {n_sub} subcommands, "
          f"legacy {', '.join(sorted(legacy))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
