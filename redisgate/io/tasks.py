"""Background tasks that are kept, never fire-and-forget. No I/O of its own.

asyncio keeps only a weak reference to a task: one nobody holds may vanish mid-flight, and one
still pending at shutdown outlives the proxy (an upstream connection attempt opened after the
proxy closed its clients). Every task the proxy starts in the background (an upstream connection
being opened for a client or a shared link, the version probe's retry, a cluster map refresh)
goes through one `TaskSet`, kept until it is done; `close()` cancels what is still running and
waits for it, so that nothing of the proxy runs after `server.Proxy.close()`.

(Not asyncio.TaskGroup: one failed task must not cancel the others, and tasks start from
protocol callbacks, outside any `async with`.)

May import: nothing from redisgate (the standard library only).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("redisgate")

T = TypeVar("T")


class TaskSet:
    """The running background tasks of one owner (server.Proxy)."""

    __slots__ = ("_tasks", "closed")

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self.closed = False

    # (A coroutine's yield and send types are the event loop's business: Any, as in typeshed's
    # create_task.)
    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T] | None:
        """Run `coro` as a task kept here until it ends; None (and `coro` closed unrun) once
        `close()` began."""
        if self.closed:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # (The tasks handle their expected failures; this is a bug: said, not swallowed.)
            log.error("internal error in a background task", exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Refuse new tasks, cancel the running ones and wait until each has ended."""
        self.closed = True
        while self._tasks:
            running = list(self._tasks)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            self._tasks.difference_update(running)
