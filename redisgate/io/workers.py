"""`redisgate serve --workers N`: a supervising parent and N worker processes.

Each worker is a fresh interpreter (``python -m redisgate serve --config FILE`` plus two internal
options) that loads the configuration itself and runs the ordinary proxy (`server.serve`): its own
event loop, its own upstream connections and shared links, and every listener opened with
SO_REUSEPORT, so the kernel spreads new connections over the workers. The parent:

* checks the configuration, the TLS files and the listen addresses once, before any worker starts
  (so a bad config is one ``where: why``, not N), starts the embedded Redis once when there is no
  ``upstream:``, and keeps ``pid_file`` and the one admin listener for itself;
* restarts a worker that dies, after a back-off (0.2 s, doubling, at most 5 s); a worker that dies
  within STABLE_AFTER seconds of its start MAX_QUICK_DEATHS times in a row makes the parent give up:
  it stops the others and exits 1;
* passes SIGHUP (reload) and SIGTERM/SIGINT (graceful stop) on to every worker over that worker's
  control socket (so a worker that also got the signal itself, e.g. from systemd's
  ``KillMode=control-group`` or a Ctrl-C to the process group, still stops once and gracefully),
  waits for them (``shutdown.grace`` plus KILL_SLACK, then SIGKILL), and exits 0. A second
  SIGTERM/SIGINT exits at once (128 + the signal), and the workers with it (SIGKILL). A worker
  counts signals only: a stop from the parent followed by a signal of its own is still one
  graceful stop, a second signal ends it at once;
* serves /metrics for the whole group (prometheus-client's multiprocess mode, in a private
  temporary directory removed at exit), /healthz, and /readyz: 200 only while every worker runs
  and reported itself ready within READY_WINDOW seconds.

The control socket (a socketpair, one per worker; JSON lines): parent to worker, one ``hello``
first (the worker's index; the embedded upstream's address and password, which never go through
argv or the environment; whether to probe the upstream for /readyz), then ``reload`` / ``stop``;
worker to parent, a status line every second (``{"ready": true}`` or ``{"ready": false, "reason":
...}``). A worker whose parent is gone (EOF on the socket, or SIGTERM from the kernel: Linux
``PR_SET_PDEATHSIG``) stops gracefully.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..telemetry import audit
from . import pidfile
from ..config import Config, ConfigError, load_config
from .embedded import PR_SET_PDEATHSIG

# The proxy stack (admin, metrics, prometheus_client, server) is imported where it is used: cli
# imports this module for every command line (`--workers`' parser), and the supervising parent
# needs only parts of it.
if TYPE_CHECKING:
    from .admin import UpstreamProbe
    from ..telemetry.metrics import CollectorMirror

log = logging.getLogger("redisgate")

MAX_WORKERS = 256
STATUS_INTERVAL = 1.0      # a worker's status line, every so often
READY_WINDOW = 5.0         # the parent wants a status no older than this
STABLE_AFTER = 10.0        # a worker that ran this long was not "dying at once"
MAX_QUICK_DEATHS = 5       # quick deaths in a row before the parent gives up
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
KILL_SLACK = 5.0           # past shutdown.grace, workers still running are killed
HELLO_TIMEOUT = 10.0
MAX_LINE = 64 * 1024


def resolve_count(requested: int) -> int:
    """`--workers 0`: one per CPU this process may run on."""
    if requested:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):   # not Linux
        return max(1, os.cpu_count() or 1)


def parse_count(text: str) -> int:
    """argparse type of --workers: a whole number 0..MAX_WORKERS."""
    value = text.strip()
    if not value.isdigit() or int(value) > MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 0 (one per CPU) to {MAX_WORKERS}, got {text!r}")
    return int(value)


def check_listeners(config) -> list[str]:
    """Bind every listener (SO_REUSEPORT, no listen) and let go at once: an address in use or not
    available is found here, once, not by each worker."""
    problems = []
    for lst in config.listeners:
        family = socket.AF_INET6 if ":" in lst.host else socket.AF_INET
        try:
            infos = socket.getaddrinfo(lst.host, lst.port, family, socket.SOCK_STREAM)
        except socket.gaierror as e:
            problems.append(f"{lst.where}: {lst.host}:{lst.port}: {e.strerror}")
            continue
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind(infos[0][4])
        except OSError as e:
            problems.append(f"{lst.where}: {lst.host}:{lst.port}: "
                            f"{(e.strerror or str(e)).lower()}")
    return problems


# -- the worker's side

def _die_with(parent: int | None) -> None:
    """The kernel sends this worker SIGTERM (a graceful stop) when the parent dies, even by
    SIGKILL (Linux PR_SET_PDEATHSIG; elsewhere the control socket's EOF does it)."""
    if not sys.platform.startswith("linux") or not parent:
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:      # the parent died before that took effect
        os.kill(os.getpid(), signal.SIGTERM)


class WorkerChannel:
    """A worker's end of its control socket (see the module docstring)."""

    def __init__(self, fd: int, index: int):
        self.sock = socket.socket(fileno=fd)
        self.index = index
        self.hello: dict = {}
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task] = set()
        self._proxy: Any = None   # the server.Proxy
        self._probe: UpstreamProbe | None = None
        self._mirror: CollectorMirror | None = None   # in multiprocess mode

    def read_hello(self) -> dict:
        """Blocking, before the event loop: the parent's first line."""
        self.sock.settimeout(HELLO_TIMEOUT)
        data = b""
        while b"\n" not in data:
            chunk = self.sock.recv(4096)
            if not chunk or len(data) > MAX_LINE:
                raise ConnectionError("the supervising process sent no hello")
            data += chunk
        line, _, self._rest = data.partition(b"\n")
        self.hello = json.loads(line)
        self.sock.settimeout(None)
        _die_with(self.hello.get("parent"))
        return self.hello

    def attach(self, proxy, begin_stop) -> None:
        """Called by server.serve before the listeners open: read the parent's requests."""
        self._proxy = proxy
        self._begin_stop = begin_stop
        self._spawn(self._read())

    def started(self) -> None:
        """The listeners are open: report the status every STATUS_INTERVAL from now on."""
        if self.hello.get("probe"):
            from .admin import UpstreamProbe   # (deferred: see the imports)
            self._probe = UpstreamProbe(self._proxy)
            self._spawn(self._probe.run())
        self._spawn(self._report())

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self.sock, limit=MAX_LINE)
        # (What came in the hello's read goes first: it was sent before anything still unread.)
        *early, _ = getattr(self, "_rest", b"").split(b"\n")
        for line in early:
            self._request(line)
        while True:
            try:
                line = await reader.readline()
            except (ValueError, ConnectionError):   # a line past the limit; a reset
                line = b""
            if not line.endswith(b"\n"):
                self._begin_stop("the supervising process is gone")
                return
            self._request(line)

    def _request(self, line: bytes) -> None:
        try:
            op = json.loads(line).get("op")
        except (ValueError, AttributeError):
            return
        if op == "reload":
            self._proxy.reload()
        elif op == "stop":
            self._begin_stop("stop from the supervising process")

    async def _report(self) -> None:
        from ..telemetry import metrics   # (deferred: see the imports)
        from .admin import proxy_readiness
        if metrics.multiprocess():
            self._mirror = metrics.CollectorMirror()
        while True:
            self._export()
            if self._probe is not None:
                reason = proxy_readiness(self._proxy, self._probe)
            elif self._proxy.shutting_down:
                reason = "shutting down"
            else:
                reason = None
            self.send({"ready": reason is None, "reason": reason} if reason
                      else {"ready": True})
            await asyncio.sleep(STATUS_INTERVAL)

    def _export(self) -> None:
        if self._mirror is None:
            return
        try:
            self._mirror.export()
        except Exception:   # noqa: BLE001 - never at the cost of the status line
            log.exception("metrics: copying the custom collectors' values failed; not again")
            self._mirror = None

    def send(self, message: dict) -> None:
        w = self._writer
        if w is not None and not w.is_closing() and w.transport.get_write_buffer_size() < MAX_LINE:
            w.write(json.dumps(message).encode() + b"\n")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._export()   # the last counts, before the process ends
        if self._writer is not None:
            self._writer.close()


# -- the parent's side

@dataclass
class Worker:
    """One worker slot: the process in it now, its control socket and its last status."""
    index: int
    proc: subprocess.Popen | None = None
    sock: socket.socket | None = None
    started: float = 0.0              # time.monotonic() of the start
    status: dict | None = None        # the last status line
    status_at: float = 0.0
    quick_deaths: int = 0             # deaths within STABLE_AFTER of the start, in a row
    restart_at: float | None = None   # a restart is due then
    buffer: bytes = b""
    restarts: int = 0


@dataclass
class Supervisor:
    """The parent of `serve --workers N`."""
    config: Config                          # checked
    argv: list[str]                         # what every worker runs, but for the channel options
    count: int
    upstream: dict | None = None            # the embedded Redis, when there is no upstream:
    workers: list[Worker] = field(default_factory=list)
    stopping: bool = False
    exit_code: int = 0
    metrics_dir: str | None = None
    deadline: float = float("inf")          # stopping: workers still running then are killed
    _pid_file: str | None = None            # claimed (released by supervise)

    def __post_init__(self) -> None:
        self.workers = [Worker(i) for i in range(self.count)]

    # -- worker processes

    def _env(self) -> dict:
        env = dict(os.environ)
        # The workers import this very package, wherever it was imported from (a checkout; an
        # installed one is found anyway, and site-packages must not go ahead of the stdlib).
        root = Path(__file__).resolve().parents[2]   # (redisgate/io/workers.py)
        if root.name not in ("site-packages", "dist-packages"):
            env["PYTHONPATH"] = os.pathsep.join([str(root)] + [
                p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(root)])
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        else:
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env

    def spawn(self, w: Worker) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        w.started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [*self.argv, "--worker-fd", str(child.fileno()), "--worker-index", str(w.index)],
                pass_fds=[child.fileno()], env=self._env(), stdin=subprocess.DEVNULL)
        except OSError as e:
            parent.close()
            child.close()
            log.error("worker %d: cannot start: %s", w.index, e.strerror or e)
            self._died(w, None, f"could not start ({e.strerror or e})")
            return
        child.close()
        w.proc, w.sock = proc, parent
        w.status, w.status_at, w.buffer, w.restart_at = None, 0.0, b"", None
        hello = {"op": "hello", "index": w.index, "parent": os.getpid(),
                 "probe": bool(self.config.admin_listen), "workers": self.count,
                 "upstream": self.upstream}
        self._send(w, hello)
        parent.setblocking(False)
        asyncio.get_running_loop().add_reader(parent.fileno(), self._readable, w)
        log.info("worker %d started (pid %d)", w.index, proc.pid)

    def _send(self, w: Worker, message: dict) -> None:
        if w.sock is None:
            return
        try:
            w.sock.send(json.dumps(message).encode() + b"\n")
        except OSError:   # (a dead worker: found by poll())
            pass

    def _readable(self, w: Worker) -> None:
        if w.sock is None or w.proc is None:
            return
        try:
            data = w.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_sock(w)
            return
        w.buffer += data
        *lines, w.buffer = w.buffer.split(b"\n")
        if len(w.buffer) > MAX_LINE:
            w.buffer = b""
        for line in lines:
            try:
                status = json.loads(line)
            except ValueError:
                continue
            if isinstance(status, dict) and "ready" in status:
                if w.status is None:
                    log.info("worker %d (pid %d) is serving", w.index, w.proc.pid)
                w.status, w.status_at = status, time.monotonic()

    def _close_sock(self, w: Worker) -> None:
        if w.sock is not None:
            asyncio.get_running_loop().remove_reader(w.sock.fileno())
            w.sock.close()
            w.sock = None

    def poll(self) -> None:
        """Find dead workers; start those whose restart is due."""
        now = time.monotonic()
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is not None:
                proc, w.proc = w.proc, None
                self._close_sock(w)
                if self.metrics_dir is not None:
                    from prometheus_client import multiprocess   # (deferred: see the imports)
                    multiprocess.mark_process_dead(proc.pid, self.metrics_dir)
                if not self.stopping:
                    self._died(w, proc.pid, _how(proc.returncode))
            elif w.proc is None and w.restart_at is not None and now >= w.restart_at \
                    and not self.stopping:
                w.restarts += 1
                self.on_restart(w)
                self.spawn(w)

    def on_restart(self, w: Worker) -> None:   # (the metric: see run())
        pass

    def _died(self, w: Worker, pid: int | None, how: str) -> None:
        ran = time.monotonic() - w.started
        w.quick_deaths = w.quick_deaths + 1 if ran < STABLE_AFTER else 1
        if w.quick_deaths >= MAX_QUICK_DEATHS:
            log.error("worker %d%s %s, %d times in a row within %.0fs of its start: giving up; "
                      "stopping the other workers", w.index, f" (pid {pid})" if pid else "", how,
                      w.quick_deaths, STABLE_AFTER)
            audit.emit(audit.Event("worker-gave-up", worker=w.index, pid=pid, reason=how,
                                   failures=w.quick_deaths))
            self.exit_code = 1
            self.stop("giving up")
            return
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (w.quick_deaths - 1))
        w.restart_at = time.monotonic() + delay
        audit.emit(audit.Event("worker-restart", worker=w.index, pid=pid, reason=how,
                               seconds=round(delay, 3)))
        log.warning("worker %d%s %s after %.1fs; restarting it in %.1fs", w.index,
                    f" (pid {pid})" if pid else "", how, ran, delay)

    # -- signals

    def reload(self) -> None:
        log.info("SIGHUP: reloading %d workers", sum(w.proc is not None for w in self.workers))
        if self.config.path is not None:
            try:    # (the parent's own view: shutdown.grace, audit; each worker logs its own)
                self.config = load_config(self.config.path)
            except ConfigError:
                pass
        self._audit_configure(reopen=True)
        for w in self.workers:
            self._send(w, {"op": "reload"})

    def _audit_configure(self, reopen: bool = False) -> None:
        """The parent writes its own events (worker-restart, worker-gave-up) to the `audit:`
        section's file too (every process appends whole lines to it); on SIGHUP it re-opens it
        (logrotate), as each worker does."""
        try:
            audit.configure(self.config.audit)   # (it raises before it changes anything)
            if reopen:
                audit.reopen()
        except (audit.AuditError, OSError) as e:
            log.error("audit: %s; the parent's events go where they went before", e)

    def stop(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.deadline = time.monotonic() + self.config.shutdown_grace + KILL_SLACK
        log.info("%s: stopping %d workers (grace %.3gs)", why,
                 sum(w.proc is not None for w in self.workers), self.config.shutdown_grace)
        for w in self.workers:
            w.restart_at = None
            self._send(w, {"op": "stop"})

    def readiness(self) -> str | None:
        """None when every worker runs and said it is ready lately, else why not."""
        if self.stopping:
            return "shutting down"
        now = time.monotonic()
        for w in self.workers:
            if w.proc is None:
                return f"worker {w.index}: not running (restarting)"
            if w.status is None:
                return f"worker {w.index} (pid {w.proc.pid}): starting"
            if now - w.status_at > READY_WINDOW:
                return f"worker {w.index} (pid {w.proc.pid}): no status for {now - w.status_at:.0f}s"
            if not w.status.get("ready"):
                return f"worker {w.index} (pid {w.proc.pid}): {w.status.get('reason')}"
        return None

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.proc is not None]

    async def run(self) -> int:
        """Start the workers; supervise until stopped. The exit code."""
        loop = asyncio.get_running_loop()
        hard: list[int] = []

        def kill_all(procs: list[subprocess.Popen]) -> None:
            for proc in procs:
                try:
                    proc.kill()     # (as a single process's second signal: os._exit)
                except OSError:
                    pass

        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if self.stopping:
                log.warning("%s again: exiting at once", name)
                hard.append(signum)
                kill_all([w.proc for w in self.workers if w.proc is not None])
                return
            self.stop(name)


        self._audit_configure()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        if self.config.pid_file:
            # After the SIGHUP handler: `redisgate reload` must not end the parent.
            pidfile.claim(self.config.pid_file)     # PidFileError: a live redisgate holds it
            self._pid_file = self.config.pid_file
        admin = None
        if self.config.admin_listen:
            from .admin import Admin   # (deferred: see the imports)
            admin = Admin(None, *self.config.admin_listen, readiness=self.readiness,
                          registry=self._registry())
            admin.start()
        for w in self.workers:
            self.spawn(w)
        try:
            while True:
                self.poll()
                if hard:
                    return 128 + hard[0]
                if self.stopping:
                    if not self.live():
                        break
                    if time.monotonic() > self.deadline:
                        for w in self.workers:
                            if w.proc is None:
                                continue
                            log.warning("worker %d (pid %d) still running %.3gs after the stop; "
                                        "killing it", w.index, w.proc.pid,
                                        self.config.shutdown_grace + KILL_SLACK)
                            w.proc.kill()
                        self.deadline = float("inf")
                await asyncio.sleep(0.1)
        finally:
            if admin is not None:
                await admin.stop()
            audit.flush()
            audit.configure(None)
        return self.exit_code

    def _registry(self):
        """/metrics: the workers' multiprocess files, plus the parent's own counts."""
        from prometheus_client import CollectorRegistry, Counter, Gauge   # (deferred)
        from prometheus_client.multiprocess import MultiProcessCollector
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.metrics_dir)
        restarts = Counter("redisgate_worker_restarts", "Workers restarted after they died "
                           "(serve --workers)", ["worker"], registry=registry)
        for w in self.workers:
            restarts.labels(str(w.index))
        self.on_restart = lambda w: restarts.labels(str(w.index)).inc()   # type: ignore
        running = Gauge("redisgate_workers", "Worker processes (serve --workers): configured, "
                        "running, ready", ["state"], registry=registry)
        running.labels("configured").set(self.count)
        running.labels("running").set_function(lambda: len(self.live()))
        running.labels("ready").set_function(lambda: sum(
            1 for w in self.live() if w.status and w.status.get("ready")
            and time.monotonic() - w.status_at <= READY_WINDOW))
        return registry


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def supervise(config, argv: list[str], count: int, upstream: dict | None) -> int:
    """Run the parent of `serve --workers N` (the configuration is checked; the pid file is the
    caller's). The exit code: 0 after a graceful stop, 1 after giving up on a worker, 128 + the
    signal after a second SIGTERM/SIGINT."""
    from .server import _install_uvloop   # (deferred: the proxy stack, see the imports)
    metrics_dir = tempfile.mkdtemp(prefix="redisgate-metrics-")   # 0700
    sup = Supervisor(config, argv, count, upstream, metrics_dir=metrics_dir)
    _install_uvloop()
    try:
        code = asyncio.run(sup.run())
    finally:
        if sup._pid_file:
            pidfile.release(sup._pid_file)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("stopped")
    return code


def worker_argv(args) -> list[str]:
    """The command line of every worker: this serve's, minus --workers."""
    argv = [sys.executable, "-m", "redisgate", "serve", "--config", str(args.config)]
    if args.listen:
        argv += ["--listen", args.listen]
    return argv
