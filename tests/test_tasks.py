"""Background tasks are kept (tasks.TaskSet) and none outlives the proxy: Proxy.close() cancels
and awaits whatever is still running (an upstream connection being opened, a shared link's, the
version probe's retry)."""
from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from proxy import pw_hash
from redisgate.config import build_config
from redisgate.io.server import Proxy
from redisgate.io.tasks import TaskSet
from servers import free_port


def test_a_task_is_kept_until_done_and_close_cancels_and_awaits_the_rest():
    async def main():
        tasks = TaskSet()
        ended = []

        async def quick():
            ended.append("quick")

        async def slow():
            try:
                await asyncio.sleep(60)
            finally:
                ended.append("slow")

        tasks.spawn(quick())
        tasks.spawn(slow())
        assert len(tasks) == 2
        await asyncio.sleep(0.01)
        assert len(tasks) == 1 and ended == ["quick"]
        await tasks.close()
        assert len(tasks) == 0 and ended == ["quick", "slow"]
        late = slow()
        assert tasks.spawn(late) is None          # closed: refused, and the coroutine closed
        assert late.cr_frame is None
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    asyncio.run(main())


def test_a_task_that_fails_is_logged_not_swallowed(caplog):
    async def main():
        tasks = TaskSet()

        async def bug():
            raise RuntimeError("a bug")

        tasks.spawn(bug())
        await asyncio.sleep(0.01)
        assert len(tasks) == 0

    with caplog.at_level(logging.ERROR, logger="redisgate"):
        asyncio.run(main())
    assert "internal error in a background task" in caplog.text


def _unanswered_address():
    """A listening socket whose accept queue is full: a connect to it hangs (the SYN is dropped)
    until the connecting side gives up."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    filler = socket.create_connection(lst.getsockname(), 1)
    return lst, filler


@pytest.mark.parametrize("multiplex", [0, 1])
def test_no_task_outlives_the_proxy(multiplex):
    """Clients whose upstream connections (or shared link) are still being opened when the proxy
    stops: close() ends those attempts; nothing of the proxy is left on the loop."""
    lst, filler = _unanswered_address()
    raw = {"listen": f"127.0.0.1:{free_port()}",
           "upstream": {"address": "%s:%d" % lst.getsockname(), "version": "7.0.0",
                        "connect_timeout": 30, "multiplex": multiplex},
           "users": {"app": f"on {pw_hash('pw')} ~* +@all"}}
    config = build_config(raw, allow_embedded=False)

    async def main():
        proxy = Proxy(config)
        await proxy.start()
        port = config.listeners[0].port
        clients = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"AUTH app pw\r\nGET k\r\n")
            assert await reader.readline() == b"+OK\r\n"
            clients.append(writer)
        for _ in range(100):   # (the connection attempts have begun)
            if len(proxy.tasks):
                break
            await asyncio.sleep(0.01)
        assert len(proxy.tasks) >= 1
        await asyncio.wait_for(proxy.close(0.2), 10)
        assert len(proxy.tasks) == 0
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert left == []
        for w in clients:
            w.close()

    try:
        asyncio.run(main())
    finally:
        filler.close()
        lst.close()
