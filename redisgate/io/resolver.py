"""Where the upstream master is: the one interface the I/O layer asks (server.open_upstream).

`Resolver` is `upstream.address`: one fixed endpoint, never fenced, never changing.
`sentinel.SentinelResolver` follows a Sentinel-managed master. Another kind (Redis Cluster) is
meant to be one more subclass. The contract:

* `current` is the `Endpoint` to dial now, or None (not known: no sentinel answered yet);
  `epoch` grows on every change (a fence or a new master), so a dial that began in one epoch
  and ended in another is stale and is retried (`open_upstream`).
* `fenced`: a failover is under way; nothing new may go to the old master (`wait()` holds new
  dials until a master is known again, or its timeout).
* `on_change(callback)`: `callback(UpstreamChange)` is called on the loop for every fence,
  switch and lift of a fence; the proxy moves its connections off the old master.
* `start()` / `stop()`: background work (sentinel subscriptions); `unreachable(endpoint,
  reason)`: the I/O layer could not reach the endpoint it was given (a hint to look again).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UpstreamChange:
    """What changed: `kind` is "fence" (a failover began: leave `old`), "switch" (the master is
    `new` now) or "lift" (the fence ended without a new master: `new` is still the master)."""
    kind: str
    old: Endpoint | None
    new: Endpoint | None
    reason: str


class Resolver:
    """`upstream.address`: a fixed endpoint."""

    def __init__(self, endpoint: Endpoint | None):
        self.current = endpoint
        self.epoch = 0
        self.fenced = False
        self._callbacks: list[Callable[[UpstreamChange], None]] = []
        self._changed: asyncio.Event | None = None   # made on the loop, by wait()

    def describe(self) -> str:
        return str(self.current)

    def on_change(self, callback: Callable[[UpstreamChange], None]) -> None:
        self._callbacks.append(callback)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def unreachable(self, endpoint: Endpoint, reason: str) -> None:
        pass

    def unavailable_reason(self) -> str:
        return "no upstream master known"

    async def wait(self, timeout: float) -> tuple[Endpoint | None, int]:
        """(the endpoint to dial, the epoch it belongs to); waits up to `timeout` seconds while
        fenced or unknown, then (None, epoch)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.fenced or self.current is None:
            left = deadline - loop.time()
            if left <= 0:
                return None, self.epoch
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                return None, self.epoch
        return self.current, self.epoch

    def _notify(self, change: UpstreamChange) -> None:
        self.epoch += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()
        for callback in list(self._callbacks):
            callback(change)
