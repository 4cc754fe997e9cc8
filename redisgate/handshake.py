"""The proxy's own handshake with the upstream, built in one place.

Before anything of a client's, every upstream connection the proxy opens carries the proxy's own
commands: AUTH with the configured upstream identity (`upstream.username` / `password`), SELECT
of `upstream.db`, and HELLO 3 on a RESP3 shared link. `setup()` builds them, each with what it is
for (the session's "dropped reply" slots name it in their error); `ask()` is the one-off
exchange of the probes (the version probe in server.py, the readiness probe in admin.py): the
handshake's AUTH, one command, and the replies read by hiredis, the parser the design names for
replies the proxy itself consumes.

Sans-I/O but for `ask()`, which only reads and writes the stream it is given. Imports: `resp`
(encoding), hiredis.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import hiredis

from .resp import encode_command

__all__ = ["Step", "setup", "ask"]

HELLO3 = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"


@dataclass(frozen=True, slots=True)
class Step:
    """One of the proxy's own commands: its exact bytes and what it is for."""
    command: bytes
    purpose: str            # "authentication" | "database selection" | "protocol"


def setup(up: Any, *, select: bool = True, resp3: bool = False) -> tuple[Step, ...]:
    """The proxy's handshake for `up` (a `config.Upstream`), in the order it is sent: AUTH
    (`[username] password`) when a password is configured, SELECT when `select` and the
    configured db is not 0, HELLO 3 when `resp3`."""
    steps = []
    if up.password is not None:
        auth = [b"AUTH", up.username.encode(), up.password] if up.username \
            else [b"AUTH", up.password]
        steps.append(Step(encode_command(auth), "authentication"))
    if select and up.db:
        steps.append(Step(encode_command([b"SELECT", str(up.db).encode()]), "database selection"))
    if resp3:
        steps.append(Step(HELLO3, "protocol"))
    return tuple(steps)


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Any,
              command: list[bytes], read_size: int = 65536) -> list:
    """Send the handshake's AUTH (no SELECT: a probe reads nothing of a database) and `command`
    in one write; return every reply, in order, as hiredis gives them (an error reply is a
    `hiredis.ReplyError` in the list, not raised). The last one is `command`'s."""
    steps = setup(up, select=False)
    writer.write(b"".join(s.command for s in steps) + encode_command(command))
    rd = hiredis.Reader()
    replies: list = []
    want = len(steps) + 1
    while len(replies) < want:
        data = await reader.read(read_size)
        if not data:
            raise ConnectionError("connection closed")
        rd.feed(data)
        while (r := rd.gets()) is not False:
            replies.append(r)
    return replies
