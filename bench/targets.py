"""The processes a benchmark talks to, started on free loopback ports and stopped by their owner.

A *target* is something redis-benchmark can be pointed at: Redis 7 itself (``direct``), twemproxy
(``nutcracker``), the byte pipe (``bench/bytepipe.py``, the floor for any Python proxy) and
redisgate (plaintext, and TLS when a certificate can be made). Each ``start_*`` method either
returns a ready :class:`Target` or raises :class:`Unavailable` with a one-line reason; the caller
records the reason and carries on with the other targets, so a missing part never stops a run.

Only 127.0.0.1 is ever used. Every process is started here, tracked by its own Popen handle and
stopped by :meth:`Stack.close` (terminate, then kill after a bounded wait), never by name.
"""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

REDIS_SERVER = os.environ.get("REDISGATE_BENCH_REDIS", "/usr/bin/redis-server")
REDIS_BENCHMARK = os.environ.get("REDISGATE_BENCH_BENCHMARK", "/usr/bin/redis-benchmark")
NUTCRACKER = os.environ.get("REDISGATE_BENCH_NUTCRACKER", "/usr/sbin/nutcracker")
HAPROXY = os.environ.get("REDISGATE_BENCH_HAPROXY", "/usr/sbin/haproxy")

# Fixed, documented benchmark credentials. They protect nothing: every server here listens on
# 127.0.0.1 only and lives for one run. The proxy config holds only their SHA-256.
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-password"
UPSTREAM_USER = "gate"
UPSTREAM_PASSWORD = "gate-upstream-password"
DEFAULT_PASSWORD = "default-password"   # Redis `default` user: the admin and twemproxy's redis_auth

REDIS_MAXCLIENTS = 12000                 # >= 5,000 proxied clients + 5,000 upstream links + slack
WANT_NOFILE = 16384

# The Asynq v0.24+ enqueueCmd body, byte for byte (internal/rdb/rdb.go); go-redis sends its SHA1.
ENQUEUE_SCRIPT = (
    '\nif redis.call("EXISTS", KEYS[1]) == 1 then\n\treturn 0\nend\n'
    'redis.call("HSET", KEYS[1],\n'
    '           "msg", ARGV[1],\n'
    '           "state", "pending",\n'
    '           "pending_since", ARGV[3])\n'
    'redis.call("LPUSH", KEYS[2], ARGV[2])\nreturn 1\n'
)
ENQUEUE_SHA = hashlib.sha1(ENQUEUE_SCRIPT.encode()).hexdigest()
assert ENQUEUE_SHA == "98d28b42650870a743450ffda9791e9e19c6991b"


class Unavailable(Exception):
    """A target could not be started; ``str(e)`` is the one-line reason shown in reports."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile(want: int = WANT_NOFILE) -> int:
    """Raise this process's open-file limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def password_hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def resp_command(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class PartialReply(Exception):
    """The server answered some of a pipelined group of commands, then went silent."""


def read_replies(sock: socket.socket, count: int, deadline: float) -> list[bytes]:
    """Read `count` simple/error/integer replies (one line each); enough for AUTH/PING checks."""
    buf = b""
    while buf.count(b"\r\n") < count:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            if buf:
                raise PartialReply(buf) from None
            raise
        if not chunk:
            raise ConnectionError(f"connection closed by the server after {buf[:200]!r}")
        buf += chunk
    return buf.split(b"\r\n")[:count]


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


@dataclass
class Target:
    """Something redis-benchmark connects to."""
    name: str
    port: int
    auth: list[str]                          # redis-benchmark auth options
    tls: list[str] = field(default_factory=list)
    pid: int | None = None                   # the process whose memory/CPU is the target's own
    note: str = ""

    def benchmark_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), *self.auth, *self.tls]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 3) -> str:
        """The last meaningful log lines (a traceback's carets dropped), joined, at most 400 chars."""
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        useful = [ln.strip() for ln in text if ln.strip() and set(ln.strip()) - set("^~ ")]
        return " | ".join(useful[-lines:])[-400:]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


class Stack:
    """Owns a temp dir and every process started for one run; a context manager."""

    def __init__(self, workdir: Path | None = None, keep_logs: bool = True):
        if workdir is None:
            base = BENCH_DIR / "results" / "tmp"
            base.mkdir(parents=True, exist_ok=True)
            old = sorted(base.glob("run-*"), key=lambda p: p.stat().st_mtime)
            for stale in old[:-8]:          # keep the logs of the last few runs only
                shutil.rmtree(stale, ignore_errors=True)
            workdir = Path(tempfile.mkdtemp(prefix="run-", dir=base))
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.keep_logs = keep_logs
        self.procs: list[Proc] = []
        self.scrapers: list[Scraper] = []
        self.redis_port: int | None = None
        self.redis_pid: int | None = None
        self.redis_tls_port: int | None = None     # Redis's own TLS port (start_redis(tls=True))
        self.redis_tls_unavailable = "not asked for"
        self._certs: tuple[Path, Path, Path] | None = None

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for sc in self.scrapers:
            sc.stop()
        self.scrapers.clear()
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    # -- process plumbing -------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], env: dict | None = None,
              cwd: Path | None = None) -> Proc:
        log = self.dir / f"{name}.log"
        fh = open(log, "wb")
        try:
            popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        except OSError as e:
            fh.close()
            raise Unavailable(f"cannot run {argv[0]}: {e.strerror}") from None
        fh.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: Proc, port: int, auth: tuple[str, ...] | None,
                   timeout: float = 15.0, tls_context=None) -> None:
        """Until the port answers AUTH (if given) then PING with +OK/+PONG; Unavailable if not."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not proc.alive():
                raise Unavailable(f"{proc.name} exited with code {proc.popen.returncode}: "
                                  f"{proc.tail() or 'no output'}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                    sock = tls_context.wrap_socket(raw) if tls_context else raw
                    # AUTH and PING in one write, as redis-benchmark sends AUTH in front of its
                    # first command: a target must answer both.
                    req = (resp_command("AUTH", *auth) if auth else b"") + resp_command("PING")
                    sock.sendall(req)
                    try:
                        replies = read_replies(sock, 2 if auth else 1, min(deadline, time.monotonic() + 5))
                    except PartialReply as e:
                        proc.stop()
                        raise Unavailable(
                            f"{proc.name} answered {e.args[0][:100]!r} to AUTH+PING sent in one "
                            "write and then nothing for 5 s: a command pipelined behind AUTH is "
                            "left unanswered (redis-benchmark and go-redis pipeline the handshake)"
                        ) from None
                    if auth and replies[0] != b"+OK":
                        raise Unavailable(f"{proc.name}: AUTH was answered {replies[0][:200]!r}")
                    if replies[-1] != b"+PONG":
                        raise Unavailable(f"{proc.name}: PING was answered {replies[-1][:200]!r}")
                    return
            except (OSError, ConnectionError) as e:
                last = str(e) or type(e).__name__
                time.sleep(0.05)
        proc.stop()
        raise Unavailable(f"{proc.name} did not answer on 127.0.0.1:{port} within {timeout:.0f} s "
                          f"({last}); log: {proc.tail() or 'empty'}")

    # -- Redis 7 ----------------------------------------------------------------------------

    def start_redis(self, tls: bool = False) -> Target:
        """Redis 7 with three users: `default` (admin, twemproxy), `gate` (redisgate's upstream
        identity), `bench` (direct and byte-pipe clients). Scripts are pre-loaded. With `tls`,
        the same Redis also serves its own TLS port (`--tls-port`, the run's test certificates;
        target `redis-tls`) when this redis-server is built with TLS: if it is not, Redis is
        started without it and `redis_tls_unavailable` says why."""
        if not os.access(REDIS_SERVER, os.X_OK):
            raise Unavailable(f"{REDIS_SERVER} is not installed")
        port = free_port()
        rdir = self.dir / "redis"
        rdir.mkdir(exist_ok=True)
        argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(rdir), "--daemonize", "no",
                "--loglevel", "warning", "--maxclients", str(REDIS_MAXCLIENTS),
                "--requirepass", DEFAULT_PASSWORD,
                "--user", UPSTREAM_USER, "on", f">{UPSTREAM_PASSWORD}", "~*", "&*", "+@all",
                "--user", BENCH_USER, "on", f">{BENCH_PASSWORD}", "~*", "&*", "+@all"]
        proc = None
        if tls:
            try:
                ca, cert, key = self.make_certs()
                tls_port = free_port()
                proc = self.spawn("redis", argv + [
                    "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                    "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                    "--tls-auth-clients", "no"])
                self.wait_ready(proc, port, (BENCH_USER, BENCH_PASSWORD))
                self.wait_ready(proc, tls_port, (BENCH_USER, BENCH_PASSWORD),
                                tls_context=self.client_tls_context())
                self.redis_tls_port = tls_port
                self.redis_tls_unavailable = ""
            except Unavailable as e:
                self.redis_tls_unavailable = f"Redis with --tls-port did not start: {e}"
                if proc is not None:
                    proc.stop()
                    self.procs.remove(proc)
                proc = None
        if proc is None:
            proc = self.spawn("redis", argv)
            self.wait_ready(proc, port, (BENCH_USER, BENCH_PASSWORD))
        self.redis_port, self.redis_pid = port, proc.popen.pid
        sha = self.admin("SCRIPT", "LOAD", ENQUEUE_SCRIPT)
        if sha.decode() != ENQUEUE_SHA:
            raise Unavailable(f"SCRIPT LOAD returned {sha!r}, expected {ENQUEUE_SHA}")
        return Target("direct", port, ["--user", BENCH_USER, "-a", BENCH_PASSWORD], pid=proc.popen.pid)

    def client_tls_context(self):
        """A client context that trusts the run's test CA (the chain is checked, not the name)."""
        import ssl
        ctx = ssl.create_default_context(cafile=str(self.make_certs()[0]))
        ctx.check_hostname = False
        return ctx

    def start_redis_tls(self) -> Target:
        """Redis's own TLS port (of the Redis start_redis(tls=True) started): the anchor for
        what TLS costs without a proxy."""
        if self.redis_tls_port is None:
            raise Unavailable(self.redis_tls_unavailable)
        ca, _, _ = self.make_certs()
        return Target("redis-tls", self.redis_tls_port, ["--user", BENCH_USER, "-a", BENCH_PASSWORD],
                      tls=["--tls", "--cacert", str(ca)], pid=self.redis_pid,
                      note="Redis's own --tls-port (the same Redis process as direct)")

    # -- haproxy (TLS termination) ----------------------------------------------------------

    def start_haproxy_tls(self) -> Target:
        """Debian's haproxy terminating TLS in front of Redis (`mode tcp`, `bind ... ssl crt`),
        one thread (`nbthread 1`, as redisgate's one event loop). AUTH passes through."""
        if not os.access(HAPROXY, os.X_OK):
            raise Unavailable(f"{HAPROXY} is not installed (apt-get install haproxy)")
        ca, cert, key = self.make_certs()
        pem = self.dir / "haproxy.pem"
        pem.write_bytes(cert.read_bytes() + key.read_bytes())
        pem.chmod(0o600)
        port = free_port()
        conf = self.dir / "haproxy.cfg"
        conf.write_text(f"""global
    maxconn 4000
    nbthread 1
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend redis_tls
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend redis
backend redis
    server r1 127.0.0.1:{self.redis_port}
""")
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise Unavailable(f"haproxy -c rejected the config: {(check.stderr or check.stdout).strip()[-300:]}")
        proc = self.spawn("haproxy-tls", [HAPROXY, "-db", "-f", str(conf)])
        import ssl
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False
        self.wait_ready(proc, port, (BENCH_USER, BENCH_PASSWORD), tls_context=ctx)
        return Target("haproxy-tls", port, ["--user", BENCH_USER, "-a", BENCH_PASSWORD],
                      tls=["--tls", "--cacert", str(ca)], pid=proc.popen.pid,
                      note="haproxy, mode tcp, bind ssl crt, nbthread 1, no session tickets")

    def admin(self, *args: str | bytes, timeout: float = 60.0):
        """One command as Redis's `default` user, straight to Redis; returns the decoded reply."""
        import redis  # the `bench` extra; imported late so `--help` works without it

        client = getattr(self, "_admin", None)
        if client is None:
            client = redis.Redis(host="127.0.0.1", port=self.redis_port, password=DEFAULT_PASSWORD,
                                 socket_timeout=timeout)
            self._admin = client
        return client.execute_command(*args)

    def admin_client(self):
        self.admin("PING")
        return self._admin

    # -- twemproxy --------------------------------------------------------------------------

    def start_twemproxy(self) -> Target:
        if not os.access(NUTCRACKER, os.X_OK):
            raise Unavailable(f"{NUTCRACKER} is not installed (apt-get install nutcracker)")
        port, stats = free_port(), free_port()
        template = (BENCH_DIR / "twemproxy.yml").read_text()
        conf = self.dir / "twemproxy.yml"
        conf.write_text(template.replace("@LISTEN_PORT@", str(port))
                        .replace("@REDIS_PORT@", str(self.redis_port))
                        .replace("@REDIS_AUTH@", DEFAULT_PASSWORD))
        argv = [NUTCRACKER, "-c", str(conf), "-s", str(stats), "-a", "127.0.0.1",
                "-o", str(self.dir / "nutcracker.out"), "-p", str(self.dir / "nutcracker.pid"),
                "-v", "4"]
        check = subprocess.run([NUTCRACKER, "-t", "-c", str(conf)], capture_output=True, text=True)
        if check.returncode != 0:
            raise Unavailable(f"nutcracker -t rejected the config: {(check.stderr or check.stdout).strip()}")
        proc = self.spawn("twemproxy", argv)
        # twemproxy checks client AUTH itself against redis_auth (a single password, no user name).
        self.wait_ready(proc, port, (DEFAULT_PASSWORD,))
        return Target("twemproxy", port, ["-a", DEFAULT_PASSWORD], pid=proc.popen.pid,
                      note="AUTH <password> checked by twemproxy (redis_auth); one upstream link")

    # -- the byte pipe ----------------------------------------------------------------------

    def start_pipe(self, tls: str | None = None) -> Target:
        """The byte pipe; with `tls` (uvloop, engine or c) it terminates TLS that way: uvloop's
        own TLS transport, redisgate's Python TLSEngine, or the engine's handshake then
        redisgate._native._tlsrec's records (target `pipe-tls-<tls>`)."""
        port = free_port()
        argv = [sys.executable, str(BENCH_DIR / "bytepipe.py"), "--listen", f"127.0.0.1:{port}",
                "--upstream", f"127.0.0.1:{self.redis_port}"]
        name, ctx, tls_args = "pipe", None, []
        env = None
        if tls:
            import ssl
            ca, cert, key = self.make_certs()
            argv += ["--tls", tls, "--cert", str(cert), "--key", str(key)]
            name = f"pipe-tls-{tls}"
            ctx = ssl.create_default_context(cafile=str(ca))
            ctx.check_hostname = False
            tls_args = ["--tls", "--cacert", str(ca)]
            env = dict(os.environ, PYTHONPATH=str(REPO_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = self.spawn(name, argv, env=env)
        self.wait_ready(proc, port, (BENCH_USER, BENCH_PASSWORD), tls_context=ctx)
        return Target(name, port, ["--user", BENCH_USER, "-a", BENCH_PASSWORD], tls=tls_args,
                      pid=proc.popen.pid, note="uvloop byte pipe; AUTH passes through to Redis"
                      + (f"; TLS by {tls}" if tls else ""))

    # -- redisgate --------------------------------------------------------------------------

    def make_certs(self) -> tuple[Path, Path, Path]:
        """(ca.crt, server.crt, server.key) from `python -m redisgate certs --out DIR` (made
        once per run: every TLS target serves the same certificate)."""
        if self._certs is not None:
            return self._certs
        out = self.dir / "certs"
        try:
            done = subprocess.run([sys.executable, "-m", "redisgate", "certs", "--out", str(out)],
                                  cwd=REPO_DIR, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise Unavailable("`python -m redisgate certs` took more than 60 s") from None
        if done.returncode != 0:
            msg = (done.stderr or done.stdout).strip().splitlines()
            raise Unavailable(f"`python -m redisgate certs --out` failed: {msg[-1] if msg else done.returncode}")
        ca, cert, key = out / "ca.crt", out / "server.crt", out / "server.key"
        missing = [p.name for p in (ca, cert, key) if not p.exists()]
        if missing:
            raise Unavailable(f"`redisgate certs --out` did not write {', '.join(missing)}")
        self._certs = (ca, cert, key)
        return ca, cert, key

    def render_redisgate_config(self, port: int, tls: dict | None, multiplex: int | None = None,
                                name: str = "redisgate", admin_port: int | None = None) -> Path:
        """bench/redisgate.yaml with the run's ports filled in; with `tls` the one listener is TLS;
        `multiplex` overrides upstream.multiplex; `admin_port` adds the admin listener."""
        import yaml

        text = (BENCH_DIR / "redisgate.yaml").read_text()
        text = text.replace("@LISTEN_PORT@", str(port)).replace("@REDIS_PORT@", str(self.redis_port))
        if tls or multiplex is not None or admin_port is not None:
            doc = yaml.safe_load(text)
            if admin_port is not None:
                doc["admin"] = {"listen": f"127.0.0.1:{admin_port}"}
            if tls:
                doc["listen"] = [{"address": f"127.0.0.1:{port}",
                                  "tls": {"cert": str(tls["cert"]), "key": str(tls["key"])}}]
            if multiplex is not None:
                doc["upstream"]["multiplex"] = multiplex
            text = "# rendered by bench/targets.py from bench/redisgate.yaml\n" + yaml.safe_dump(
                doc, sort_keys=False, width=200)
        conf = self.dir / f"{name}.yaml"
        conf.write_text(text)
        return conf

    def start_redisgate(self, tls: bool = False, multiplex: int | None = None,
                        name: str | None = None, env_extra: dict | None = None,
                        workers: int = 1) -> Target:
        """redisgate serving bench/redisgate.yaml (target `redisgate`), or the same policy on a
        TLS listener in a second process (target `redisgate-tls`).

        Raises Unavailable("...") when the package, the `serve` command, the certificates, the
        config or the listener is not there (yet)."""
        name = name or ("redisgate-tls" if tls else "redisgate")
        why = have_redisgate_serve()
        if why:
            raise Unavailable(why)
        port = free_port()
        tls_info, ctx = None, None
        if tls:
            import ssl
            ca, cert, key = self.make_certs()
            tls_info = {"cert": cert, "key": key}
            ctx = ssl.create_default_context(cafile=str(ca))
            ctx.check_hostname = False   # only the chain is checked here; redis-benchmark checks it too
        # Metrics on, as deployed: the admin listener, and /metrics scraped every
        # SCRAPE_INTERVAL seconds while the run lasts (REDISGATE_BENCH_NO_ADMIN=1: neither).
        admin_port = None if os.environ.get("REDISGATE_BENCH_NO_ADMIN") else free_port()
        conf = self.render_redisgate_config(port, tls_info, multiplex, name, admin_port)
        env = dict(os.environ, REDISGATE_BENCH_UPSTREAM_PASSWORD=UPSTREAM_PASSWORD,
                   PYTHONPATH=str(REPO_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   **(env_extra or {}))
        argv = [sys.executable, "-m", "redisgate", "serve", "--config", str(conf)]
        if workers != 1:    # `serve --workers N` (bench/workers.py): the pid is the parent's
            argv += ["--workers", str(workers)]
        proc = self.spawn(name, argv, env=env, cwd=REPO_DIR)
        self.wait_ready(proc, port, (BENCH_USER, BENCH_PASSWORD), timeout=20, tls_context=ctx)
        if workers != 1:    # every worker listening, not only the first
            wait_workers(proc, port, workers, name)
        note = ""
        if admin_port is not None:
            self.scrapers.append(Scraper(admin_port, self.dir / f"{name}.metrics.txt"))
            note = f"admin listener on, /metrics scraped every {SCRAPE_INTERVAL:g} s"
        auth = ["--user", BENCH_USER, "-a", BENCH_PASSWORD]
        if tls:
            return Target(name, port, auth, tls=["--tls", "--cacert", str(ca)], pid=proc.popen.pid,
                          note="same policy, TLS listener, separate process"
                          + (f" ({', '.join(f'{k}={v}' for k, v in env_extra.items())})"
                             if env_extra else "") + (f"; {note}" if note else ""))
        return Target(name, port, auth, pid=proc.popen.pid, note=note)


SCRAPE_INTERVAL = 5.0   # (Prometheus' default is 15 s)


class Scraper:
    """GET /metrics of a redisgate's admin listener every SCRAPE_INTERVAL seconds in a thread, as
    Prometheus would; the last scrape is kept in `path` (the run's workdir)."""

    def __init__(self, port: int, path: Path):
        import threading
        self.port, self.path = port, path
        self.scrapes = self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"scrape-{port}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_INTERVAL):
            self.scrape()

    def scrape(self) -> None:
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                self.path.write_bytes(r.read())
            self.scrapes += 1
        except OSError:
            self.failures += 1

    def stop(self) -> None:
        """Stop, after a last scrape (the run's totals)."""
        self._stop.set()
        self._thread.join(10)
        self.scrape()


def wait_workers(proc: Proc, port: int, count: int, name: str, timeout: float = 30) -> None:
    """Until `count` workers of `serve --workers` listen on `port` (0: one per CPU)."""
    import psutil
    count = count or len(os.sched_getaffinity(0))
    deadline = time.monotonic() + timeout
    while True:
        listening = 0
        for child in psutil.Process(proc.popen.pid).children():
            try:
                if "--worker-index" in child.cmdline() and any(
                        c.status == "LISTEN" and c.laddr.port == port
                        for c in child.net_connections(kind="tcp")):
                    listening += 1
            except psutil.NoSuchProcess:
                pass
        if listening >= count:
            return
        if time.monotonic() > deadline or not proc.alive():
            raise Unavailable(f"{name}: {listening} of {count} workers listen: {proc.tail()}")
        time.sleep(0.1)


def have_redisgate_serve() -> str | None:
    """None when `python -m redisgate serve` looks runnable, else why not (checked cheaply)."""
    pkg = REPO_DIR / "redisgate"
    for path, what in ((pkg / "__main__.py", "`python -m redisgate`"),
                       (pkg / "cli.py", "the `serve` command"),
                       (pkg / "io" / "server.py", "the server")):
        if not path.exists():
            return f"redisgate/{path.name} ({what}) does not exist yet"
    return None


def cleanup_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
