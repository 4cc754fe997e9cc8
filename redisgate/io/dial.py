"""Connecting to a Redis (a master, a cluster node, a sentinel): the I/O around handshake.py.

`ask()` is the one-off exchange of the probes (the version probe in server.py, the readiness
probe in admin.py, a cluster node's CLUSTER SLOTS): the handshake's AUTH, one command, and the
replies read by hiredis, the parser the design names for replies the proxy itself consumes.
`keepalive()` sets TCP keepalive on a new upstream connection's socket; `connect_error()` words
a failed connection the one way the log, the audit and the clients' error replies use.
"""
from __future__ import annotations

import asyncio
import math
import socket
import ssl
from typing import Any

import hiredis

from ..protocol.handshake import Passwords, auth_command
from ..protocol.resp import encode_command

__all__ = ["ask", "connect_error", "keepalive"]


def connect_error(e: BaseException) -> str:
    """Why a connection to a Redis (a master, a cluster node, a sentinel) failed, in the words the
    log, the audit and the clients' error replies use: "timed out", "TLS error: ...", the
    system's lower-case message ("connection refused"), else the exception's text."""
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, ssl.SSLError):   # (an OSError too: tested first)
        return f"TLS error: {(e.reason or str(e)).lower()}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__



async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: Any,
              command: list[bytes], read_size: int = 65536,
              passwords: Passwords | None = None) -> list[Any]:
    """Send the handshake's AUTH (no SELECT: a probe reads nothing of a database), and `command`
    once it was accepted; return every reply, in order, as hiredis gives them (an error reply is
    a `hiredis.ReplyError` in the list, not raised). The last one is `command`'s. When Redis
    refuses the password and `passwords` knows another, AUTH is tried again with it (at most
    Passwords.MAX_RETRIES times; the last reply takes the refused ones' place in the list)."""
    rd = hiredis.Reader()

    async def reply() -> Any:
        while (r := rd.gets()) is False:
            data = await reader.read(read_size)
            if not data:
                raise ConnectionError("connection closed")
            rd.feed(data)
        return r

    replies: list[Any] = []
    if up.password is not None:
        writer.write(auth_command(up, up.password))
        answer = await reply()
        password, retries = up.password, 0
        while isinstance(answer, hiredis.ReplyError) and passwords is not None:
            other = passwords.after_refusal(b"-" + str(answer).encode(), password, retries)
            if other is None:
                break
            password, retries = other.password, retries + 1
            writer.write(auth_command(up, password))
            answer = await reply()
        replies.append(answer)
    writer.write(encode_command(command))
    replies.append(await reply())
    return replies



def keepalive(transport: asyncio.BaseTransport, seconds: float) -> None:
    """TCP keepalive on an upstream connection (`upstream.keepalive`; 0: off), as Redis's own
    `tcp-keepalive` sets it: the first probe after `seconds` without traffic, then one every
    third of that, three unanswered probes and the kernel resets the connection (a peer gone
    without a FIN, a NAT that forgot the flow). A mute but live peer (a stopped redis-server)
    still answers probes: `upstream.handshake_timeout` is for that."""
    sock = transport.get_extra_info("socket")
    if not seconds or sock is None:
        return
    idle = max(1, math.ceil(seconds))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):   # (Linux; elsewhere the system's idle time)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:   # (not a TCP socket: a Unix socket has no keepalive)
        pass
