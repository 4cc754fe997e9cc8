"""`upstream.sentinel`: follow a Sentinel-managed master through failovers (a `Resolver`).

How the master is found: each sentinel in turn, until one answers, is asked `SENTINEL
GET-MASTER-ADDR-BY-NAME <master>` (its own `username`/`password`/`tls`, within
`upstream.connect_timeout`); the address it names is used only after `ROLE` there, logged in
with the data nodes' credentials (`upstream.username`/`password`/`tls`), says `master`.

How a failover is followed: one subscription per sentinel (reconnected with exponential backoff,
`BACKOFF_FIRST` to `BACKOFF_MAX`; an idle one is PINGed every `PING_INTERVAL` and dropped when
the PONG does not come within connect_timeout) to

* the first events of a failover (`FENCE_CHANNELS`: `+try-failover` ... `+selected-slave`): the
  leader publishes them before it sends `REPLICAOF NO ONE` to the replica it promotes (about
  0.1 s before, on Redis 7.0). The resolver is then *fenced*: the proxy forwards nothing more to
  the old master (whose writes from then on would be lost: Sentinel promotes without waiting for
  them), lets the replies already due come back, and closes those connections; new upstream
  connections wait for the new master;
* `+switch-master`: the new master is verified with `ROLE` (retried `VERIFY_TRIES` times) and
  used; the fence is lifted;
* an aborted failover (`ABORT_CHANNELS`) or a fence older than `FENCE_MAX`: the sentinels are
  asked again, and whatever master they name (once `ROLE` agrees) is used.

The sentinels are also asked again every `RECHECK_INTERVAL` (a `+switch-master` missed while a
subscription was down), after a subscription comes back, and when the proxy cannot reach the
master (at most once per `RESOLVE_MIN_GAP`). Every sentinel or master that cannot be reached,
every failed resolution, every fence and switch is logged (logger `redisgate`) with the address
concerned, audited (an `audit.Event` of `audit.UPSTREAM_EVENTS`: sentinel-error,
resolution-failed, master-rejected, failover-started, switch-master, master-changed,
failover-lifted) and counted (metrics: `redisgate_upstream_resolutions_total{result}`,
`redisgate_sentinel_errors_total{sentinel,stage}`, `redisgate_sentinel_masters_rejected_total
{reason}`, `redisgate_sentinel_failover_starts_total`, `redisgate_sentinel_failovers_total`).
Replies are parsed with hiredis; at most `MAX_REPLY` bytes of one reply are buffered.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable

import hiredis

from ..telemetry import audit, metrics
from .dial import connect_error
from ..config import SentinelConfig, Upstream
from .resolver import Endpoint, Resolver, UpstreamChange
from ..protocol.resp import encode_command

log = logging.getLogger("redisgate")

SWITCH = b"+switch-master"
FENCE_CHANNELS = (b"+try-failover", b"+failover-state-select-slave", b"+selected-slave",
                  b"+failover-state-send-slaveof-noone")
ABORT_CHANNELS = (b"-failover-abort-not-elected", b"-failover-abort-no-good-slave",
                  b"-failover-abort-slave-timeout", b"+failover-end-for-timeout")
CHANNELS = (SWITCH, *FENCE_CHANNELS, *ABORT_CHANNELS)

BACKOFF_FIRST = 0.1        # seconds before a lost subscription is tried again; doubles ...
BACKOFF_MAX = 5.0          # ... up to this
RECHECK_INTERVAL = 10.0    # the sentinels are asked again this often
FENCE_MAX = 10.0           # a failover neither ended nor aborted after this: ask again
PING_INTERVAL = 5.0        # an idle subscription is PINGed this often
VERIFY_TRIES = 5           # ROLE of a new master, this many times ...
VERIFY_PAUSE = 0.2         # ... this far apart
RESOLVE_MIN_GAP = 1.0      # "master unreachable" hints: at most one resolution per second
MAX_REPLY = 64 << 10       # bytes of one sentinel or ROLE reply; more: the connection is dropped


class SentinelError(Exception):
    """A sentinel or node answered something unusable; str() says what (never a secret)."""


def _failed(e: BaseException) -> str:
    """'unreachable' for a network failure, 'failed' for anything else."""
    return "unreachable" if isinstance(e, (OSError, asyncio.TimeoutError)) else "failed"


def _auth(username: str | None, password: bytes | None) -> bytes:
    if password is None:
        return b""
    return encode_command([b"AUTH", username.encode(), password] if username
                          else [b"AUTH", password])


class _Wire:
    """One connection read with hiredis, at most MAX_REPLY bytes buffered per reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.rd = hiredis.Reader()
        self.pending = 0

    @classmethod
    async def open(cls, endpoint: Endpoint, tls: tuple, timeout: float) -> "_Wire":
        ctx, name = tls
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(endpoint.host, endpoint.port, ssl=ctx,
                                    server_hostname=name, limit=MAX_REPLY), timeout)
        return cls(reader, writer)

    async def read(self):
        while True:
            reply = self.rd.gets()
            if reply is not False:
                self.pending = 0
                return reply
            data = await self.reader.read(MAX_REPLY)
            if not data:
                raise ConnectionError("connection closed")
            self.pending += len(data)
            if self.pending > MAX_REPLY:
                raise SentinelError(f"a reply over {MAX_REPLY} bytes")
            self.rd.feed(data)

    def close(self) -> None:
        self.writer.close()


def _error_text(reply) -> str:
    return str(reply).splitlines()[0][:100] if str(reply) else "error"


def _text(value: object) -> str:
    """An address or a reason as the audit carries it (a sentinel or a node chose part of it)."""
    return audit.safe(str(value), spaces=True)


def _rejected(problem: str) -> str:
    """The `reason` label of redisgate_sentinel_masters_rejected_total for a _verify problem."""
    if problem.startswith("it is unreachable"):
        return "unreachable"
    return "not_master" if problem.startswith("ROLE says") else "failed"


class SentinelResolver(Resolver):
    def __init__(self, config: SentinelConfig, upstream: Callable[[], Upstream],
                 sentinel_tls: Callable[[str], tuple], data_tls: Callable[[str], tuple]):
        super().__init__(None)
        self.config = config
        self.upstream = upstream          # the data nodes' settings now (a reload may change them)
        self.sentinel_tls = sentinel_tls  # host -> (SSLContext or None, server_hostname)
        self.data_tls = data_tls
        self.sentinels = [Endpoint(h, p) for h, p in config.addresses]
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()       # the supervisor: look again (or re-plan its wait)
        self._tasks: list[asyncio.Task] = []
        self._switching: asyncio.Task | None = None   # _switches(), while a switch is followed
        self._fence_until = 0.0
        self._abort = False               # a failover aborted (or a switch not verified)
        self._last_resolve = -RESOLVE_MIN_GAP
        self._failures = 0                # resolutions failed in a row (their backoff)
        self._next_switch: tuple[Endpoint, Endpoint] | None = None   # +switch-master to follow
        for result in ("ok", "failed"):   # (every label set known from the start, at 0)
            metrics.UPSTREAM_RESOLUTIONS.labels(result)
        for sentinel in self.sentinels:
            for stage in ("query", "subscription"):
                metrics.SENTINEL_ERRORS.labels(str(sentinel), stage)
        for reason in ("unreachable", "not_master", "failed"):
            metrics.MASTERS_REJECTED.labels(reason)
        for kind in ("client", "shared"):
            metrics.UPSTREAM_MOVED.labels(kind)

    def describe(self) -> str:
        return f"sentinel master {self.config.master} ({self.current or 'not known yet'})"

    def _audit(self, kind: str, **fields) -> None:
        audit.emit(audit.Event(kind, master=_text(self.config.master), **fields))

    def _sentinel_error(self, sentinel: Endpoint, stage: str, reason: str) -> None:
        """A sentinel could not be asked (stage query) or followed (stage subscription)."""
        metrics.inc("sentinel_errors", str(sentinel), stage)
        self._audit("sentinel-error", sentinel=str(sentinel), stage=stage, reason=_text(reason))

    def _master_rejected(self, endpoint: Endpoint, sentinel: Endpoint | None,
                         problem: str) -> None:
        metrics.inc("masters_rejected", _rejected(problem))
        self._audit("master-rejected", address=_text(endpoint),
                    sentinel=str(sentinel) if sentinel is not None else None,
                    reason=_text(problem))

    def unavailable_reason(self) -> str:
        if self.fenced:
            return f"failover of sentinel master {self.config.master} in progress"
        return f"no sentinel named a usable master for {self.config.master}"

    @property
    def timeout(self) -> float:
        return self.upstream().connect_timeout

    # -- lifecycle

    async def start(self) -> None:
        await self._resolve("start")
        self._tasks = [asyncio.ensure_future(self._watch(s)) for s in self.sentinels]
        self._tasks.append(asyncio.ensure_future(self._supervise()))

    async def stop(self) -> None:
        tasks = self._tasks + ([self._switching] if self._switching is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._switching = [], None

    def unreachable(self, endpoint: Endpoint, reason: str) -> None:
        if endpoint == self.current and not self.fenced:
            self._wake.set()

    # -- asking the sentinels

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            backoff = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(self._failures, 10))
            if self.fenced:
                wait = max(0.0, self._fence_until - loop.time()) or backoff
            elif self.current is None:
                wait = backoff
            else:
                wait = RECHECK_INTERVAL
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self.fenced and not self._abort and loop.time() < self._fence_until:
                continue   # the failover's own events end the fence
            gap = self._last_resolve + RESOLVE_MIN_GAP - loop.time()
            if gap > 0:
                await asyncio.sleep(gap)
            why = "recheck"
            if self.fenced:
                why = "failover aborted" if self._abort else f"failover not over after {FENCE_MAX:g}s"
            await self._resolve(why)

    async def _resolve(self, why: str) -> None:
        async with self._lock:
            self._last_resolve = asyncio.get_running_loop().time()
            self._abort = False
            found = await self._ask_sentinels()
            if found is None:
                self._failures += 1
                log.error("upstream: no sentinel named a usable master for %s (%s; asked %s)",
                          self.config.master, why, ", ".join(map(str, self.sentinels)))
                metrics.inc("upstream_resolutions", "failed")
                self._audit("resolution-failed", reason=_text(
                    f"no sentinel named a usable master ({why}; asked "
                    f"{', '.join(map(str, self.sentinels))})"))
                return
            self._failures = 0
            metrics.inc("upstream_resolutions", "ok")
            endpoint, via = found
            self._adopt(endpoint, f"named by sentinel {via} ({why})")

    async def _ask_sentinels(self) -> tuple[Endpoint, Endpoint] | None:
        cfg = self.config
        for sentinel in self.sentinels:
            try:
                reply = await asyncio.wait_for(self._ask(sentinel), self.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as e:   # noqa: BLE001 - every failure is logged and skipped
                log.warning("upstream: sentinel %s %s: %s", sentinel, _failed(e), connect_error(e))
                self._sentinel_error(sentinel, "query", f"{_failed(e)}: {connect_error(e)}")
                continue
            if isinstance(reply, hiredis.ReplyError):
                log.warning("upstream: sentinel %s refused SENTINEL GET-MASTER-ADDR-BY-NAME: %s",
                            sentinel, _error_text(reply))
                self._sentinel_error(sentinel, "query", "refused SENTINEL "
                                     f"GET-MASTER-ADDR-BY-NAME: {_error_text(reply)}")
                continue
            if reply is None:
                log.warning("upstream: sentinel %s does not know a master named %s", sentinel,
                            cfg.master)
                self._sentinel_error(sentinel, "query", "does not know the master")
                continue
            try:
                host, port = reply[0].decode("ascii"), int(reply[1])
                if not 0 < port < 65536 or not host or any(c.isspace() for c in host):
                    raise ValueError(host)
            except (TypeError, ValueError, IndexError, UnicodeDecodeError, AttributeError):
                log.warning("upstream: sentinel %s answered GET-MASTER-ADDR-BY-NAME with "
                            "something that is no address", sentinel)
                self._sentinel_error(sentinel, "query", "answered GET-MASTER-ADDR-BY-NAME with "
                                     "something that is no address")
                continue
            endpoint = Endpoint(host, port)
            problem = await self._verify(endpoint)
            if problem is None:
                return endpoint, sentinel
            log.warning("upstream: sentinel %s names %s as master %s, but %s", sentinel,
                        endpoint, cfg.master, problem)
            self._master_rejected(endpoint, sentinel, problem)
        return None

    async def _ask(self, sentinel: Endpoint):
        cfg = self.config
        wire = await _Wire.open(sentinel, self.sentinel_tls(sentinel.host), self.timeout)
        try:
            auth = _auth(cfg.username, cfg.password)
            wire.writer.write(auth + encode_command(
                [b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", cfg.master.encode()]))
            if auth:
                reply = await wire.read()
                if isinstance(reply, hiredis.ReplyError):
                    raise SentinelError(f"AUTH refused: {_error_text(reply)}")
            return await wire.read()
        finally:
            wire.close()

    async def _verify(self, endpoint: Endpoint) -> str | None:
        """None if `endpoint` says ROLE master to the data nodes' credentials; else why not."""
        up = self.upstream()
        try:
            return await asyncio.wait_for(self._role(endpoint, up), up.connect_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:   # noqa: BLE001 - the reason is reported
            return f"it is {_failed(e)}: {connect_error(e)}"

    async def _role(self, endpoint: Endpoint, up: Upstream) -> str | None:
        wire = await _Wire.open(endpoint, self.data_tls(endpoint.host), up.connect_timeout)
        try:
            auth = _auth(up.username, up.password)
            wire.writer.write(auth + encode_command([b"ROLE"]))
            if auth:
                reply = await wire.read()
                if isinstance(reply, hiredis.ReplyError):
                    return f"it refused the proxy's AUTH: {_error_text(reply)}"
            reply = await wire.read()
            if isinstance(reply, hiredis.ReplyError):
                return f"ROLE answered -{_error_text(reply)}"
            if not isinstance(reply, list) or not reply or reply[0] != b"master":
                role = reply[0].decode("ascii", "replace")[:20] \
                    if isinstance(reply, list) and reply and isinstance(reply[0], bytes) else "?"
                return f"ROLE says {role!r}, not master"
            return None
        finally:
            wire.close()

    # -- changes

    def _adopt(self, endpoint: Endpoint, why: str) -> None:
        old = self.current
        if endpoint != old:
            self.current, self.fenced = endpoint, False
            if old is None:
                log.info("upstream: sentinel master %s is %s, %s", self.config.master, endpoint, why)
            else:
                log.warning("upstream: failover of sentinel master %s: %s -> %s, %s",
                            self.config.master, old, endpoint, why)
                metrics.inc("failovers")
            self._audit("master-changed", old=_text(old) if old is not None else None,
                        new=_text(endpoint), reason=_text(f"ROLE master, {why}"))
            self._notify(UpstreamChange("switch", old, endpoint, why))
        elif self.fenced:
            self.fenced = False
            log.warning("upstream: sentinel master %s stays %s, %s; connections resume",
                        self.config.master, endpoint, why)
            self._audit("failover-lifted", address=_text(endpoint), reason=_text(why))
            self._notify(UpstreamChange("lift", old, endpoint, why))

    def _fence(self, sentinel: Endpoint, channel: bytes) -> None:
        self.fenced = True
        self._fence_until = asyncio.get_running_loop().time() + FENCE_MAX
        log.warning("upstream: sentinel %s reports %s for master %s (%s): nothing more goes to "
                    "it; its connections close once their replies are in, new ones wait for the "
                    "new master", sentinel, channel.decode(), self.config.master, self.current)
        metrics.inc("failover_starts")
        self._audit("failover-started", old=_text(self.current), sentinel=str(sentinel),
                    channel=channel.decode())
        self._notify(UpstreamChange("fence", self.current, None, f"{channel.decode()} from "
                                                                  f"sentinel {sentinel}"))
        self._wake.set()

    async def _switches(self) -> None:
        try:
            while self._next_switch is not None:
                target = self._next_switch
                await self._switch(*target)
                if self._next_switch == target:   # (nothing newer announced meanwhile)
                    break
        finally:
            self._next_switch = None

    async def _switch(self, new: Endpoint, sentinel: Endpoint) -> None:
        async with self._lock:
            if new == self.current and not self.fenced:
                return   # (every sentinel announces it)
            problem: str | None = "not checked"
            for attempt in range(VERIFY_TRIES):
                problem = await self._verify(new)
                if problem is None:
                    self._adopt(new, f"+switch-master from sentinel {sentinel}")
                    return
                log.warning("upstream: the new master %s of %s (from sentinel %s) is not usable "
                            "yet: %s", new, self.config.master, sentinel, problem)
                await asyncio.sleep(VERIFY_PAUSE)
            log.error("upstream: the new master %s of %s never said ROLE master; asking the "
                      "sentinels again", new, self.config.master)
            self._master_rejected(new, sentinel, f"{problem} (after {VERIFY_TRIES} checks; "
                                                 "+switch-master not followed)")
            self._abort = True
            self._wake.set()

    def _event(self, sentinel: Endpoint, channel: bytes, data: bytes) -> None:
        words = data.split(b" ")
        if channel == SWITCH:
            if len(words) != 5 or words[0] != self.config.master.encode():
                return
            try:
                new = Endpoint(words[3].decode("ascii"), int(words[4]))
            except (UnicodeDecodeError, ValueError):
                log.warning("upstream: sentinel %s sent a +switch-master that names no address",
                            sentinel)
                return
            if new == self.current and not self.fenced:
                return
            log.warning("upstream: sentinel %s announces +switch-master of %s: %s -> %s",
                        sentinel, self.config.master, self.current, new)
            self._audit("switch-master", old=_text(self.current) if self.current else None,
                        new=_text(new),
                        sentinel=str(sentinel))
            # One switch at a time, to the latest address announced (bounded however many come).
            running = self._next_switch is not None
            self._next_switch = (new, sentinel)
            if not running:   # (kept, and cancelled by stop(): nothing fire-and-forget)
                self._switching = asyncio.ensure_future(self._switches())
            return
        # <type> <name> <ip> <port> [@ <master-name> <master-ip> <master-port>]
        name = words[words.index(b"@") + 1] if b"@" in words[:-1] else \
            (words[1] if len(words) > 1 else b"")
        if name != self.config.master.encode():
            return
        if channel in FENCE_CHANNELS:
            if not self.fenced and self.current is not None:
                self._fence(sentinel, channel)
        elif channel in ABORT_CHANNELS and self.fenced:
            log.warning("upstream: sentinel %s reports %s for master %s; asking the sentinels "
                        "again", sentinel, channel.decode(), self.config.master)
            self._abort = True
            self._wake.set()

    # -- subscriptions

    async def _watch(self, sentinel: Endpoint) -> None:
        backoff = BACKOFF_FIRST
        first = True
        while True:
            subscribed = False
            try:
                async for _ in self._subscribe(sentinel):
                    # (one yield: subscribed) events missed while it was down: ask again
                    subscribed = True
                    backoff = BACKOFF_FIRST
                    if not first and not self.fenced:
                        self._wake.set()
                    first = False
            except asyncio.CancelledError:
                raise
            except Exception as e:   # noqa: BLE001 - logged; tried again after the backoff
                what = "subscription lost" if subscribed else _failed(e)
                log.warning("upstream: sentinel %s %s: %s; again in %.1fs", sentinel,
                            what, connect_error(e), backoff)
                self._sentinel_error(sentinel, "subscription", f"{what}: {connect_error(e)}")
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(BACKOFF_MAX, backoff * 2)

    async def _subscribe(self, sentinel: Endpoint):
        cfg = self.config
        timeout = self.timeout
        wire = await _Wire.open(sentinel, self.sentinel_tls(sentinel.host), timeout)
        try:
            auth = _auth(cfg.username, cfg.password)
            wire.writer.write(auth + encode_command([b"SUBSCRIBE", *CHANNELS]))
            if auth:
                reply = await asyncio.wait_for(wire.read(), timeout)
                if isinstance(reply, hiredis.ReplyError):
                    raise SentinelError(f"AUTH refused: {_error_text(reply)}")
            for _ in CHANNELS:
                reply = await asyncio.wait_for(wire.read(), timeout)
                if isinstance(reply, hiredis.ReplyError):
                    raise SentinelError(f"SUBSCRIBE refused: {_error_text(reply)}")
            yield True
            pinged = False
            while True:
                try:
                    reply = await asyncio.wait_for(wire.read(),
                                                   timeout if pinged else PING_INTERVAL)
                except asyncio.TimeoutError:
                    if pinged:
                        raise SentinelError("no answer to PING") from None
                    wire.writer.write(b"*1\r\n$4\r\nPING\r\n")
                    pinged = True
                    continue
                pinged = False
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message" \
                        and isinstance(reply[1], bytes) and isinstance(reply[2], bytes):
                    self._event(sentinel, reply[1], reply[2])
        finally:
            wire.close()
