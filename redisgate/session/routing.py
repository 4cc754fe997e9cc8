"""Upstream replies to the client, in command order: the reply router of the session.

`route` (bound as ``Session._upstream_data``) takes what the upstream sent and, by the reply
order's slots (replies.py), passes each reply to the client, swallows the proxy's own and the
muted ones, puts the replies answered here in their place, and passes pub/sub messages and pushes
the client asked for out of band (pubsub.py). The common case, whole flat replies to the
forwarded commands at the head, passes `data` through as it came, only counted.

May import: the protocol modules (resp) and the session package's replies, pubsub,
transactions and upstream; never server.py, asyncio or sockets. The session is passed in.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import transactions, upstream
from .pubsub import MESSAGE_HEADS, SUB_HEADS
from .replies import DROP, FWD, LOCAL, SUB, SUBDROP, Slot
from .transactions import ExecSubs

if TYPE_CHECKING:
    from .machine import Session

log = logging.getLogger("redisgate.session")

# From this version on, Redis sends subscribe-family confirmations and pub/sub messages even
# under CLIENT REPLY OFF / SKIP (CLIENT_PUSHING); Redis 5.0 swallows them too.
PUSHES_UNDER_REPLY_OFF = (6, 2, 0)
# Session._partial while the unfinished frame is a reply being swallowed, not kept.
SWALLOWED = b""


def route(s: Session, data: bytes) -> None:
    """Route upstream bytes to the client through the reply order (Session._upstream_data)."""
    out = s.to_client
    replies = s.replies
    slots = replies.slots
    ps = s.pubsub
    if slots and slots[0][0] == FWD and not ps.active and s._partial is None \
            and slots[0][2] is None:
        # The common case: `data` is whole flat replies to the forwarded commands at the
        # head. They are only counted, not made into frames, and `data` passes through as
        # it came: what the loop below would do, frame by frame. Anything else, the loop.
        count, end = s.scanner.count_flat(data, slots[0][1])
        if count and end == len(data):
            if replies.passed(data, count):
                s.close = True
            return
    idle = s.scanner.idle
    try:
        frames = s.scanner.feed(data)
    except Exception as e:   # UpstreamProtocolError: the stream can no longer be trusted
        log.error("upstream protocol error: %s", e)
        return s.upstream_failed("protocol error")
    up = s.up
    off_legacy = replies.off and s.gate.upstream_version < PUSHES_UNDER_REPLY_OFF
    pos = 0          # start of the current frame in data
    run = 0          # start of bytes to pass through that are not yet in `out`
    slot: Slot | None
    for frame in frames:
        end = frame.end
        slot = slots[0] if slots else None
        kind = frame.kind
        oob = False
        if slot is None:
            oob = True
        elif type(slot[2]) is ExecSubs:
            # EXEC of a transaction that subscribes: its reply and the replies that spill
            # out after its array (Redis counts one per command, a SUBSCRIBE makes one per
            # channel), pushes included, are all its own.
            transactions.exec_subscribed(s, slot, kind,
                                         data[pos:pos + 3] if pos or idle else None)
        elif kind == b">":
            oob = not (slot[0] in (SUB, SUBDROP) and frame.head in SUB_HEADS)
        elif slot[0] in (SUB, SUBDROP):
            oob = kind != b"-" and frame.head not in SUB_HEADS
        elif ps.active and kind == b"*" and frame.head in MESSAGE_HEADS:
            oob = True
        if oob and (kind == b">" and ps.unasked(frame.head) or off_legacy):
            # A push this client did not ask for (no tracking, no subscription), or a
            # message under CLIENT REPLY OFF on Redis 5.0 (which does not send them): dropped.
            if run < pos:
                out.append(data[run:pos])
            run = pos = end
            s._partial = None
            continue
        if slot is not None and slot[0] in (DROP, SUBDROP) and not oob:
            # Swallow: pass what came before, skip this frame.
            if run < pos:
                out.append(data[run:pos])
            run = end
            if kind == b"-" and type(slot[2]) is str:   # the proxy's own setup refused
                s._partial = None
                if up.auth_wait and slot[2] == "authentication" and (pos or idle) \
                        and upstream.auth_again(s, bytes(data[pos:end])):
                    slot[1] += 1   # (the slot stays for the second AUTH's reply)
                else:
                    return upstream.setup_failed(s, slot[2], data, pos, end)
        elif s._partial is not None:
            # The start of this frame was held back (a DROP slot was at the head then).
            out.append(bytes(s._partial))
            run = pos
        s._partial = None
        pos = end
        if oob:
            continue
        assert slot is not None
        if kind == b"-" and slot[0] in (SUB, SUBDROP):
            slot[1] = 0     # an error answers the whole subscribe command
        else:
            slot[1] -= 1
        if slot[1] <= 0:
            slots.popleft()
            if up.auth_wait and slot[2] == "authentication":
                upstream.auth_accepted(s)
            if slot[0] == SUB:
                ps.active = (not s.resp3) and slot[2]
            elif slot[0] == SUBDROP:   # (payload: subscribed after it, for a muted SUB)
                ps.active = (not s.resp3) and bool(slot[2])
            while slots and slots[0][0] >= LOCAL:
                after = slots.popleft()
                if run < end:
                    out.append(data[run:end])
                    run = end
                if after[0] == LOCAL:
                    out.append(after[2])
                else:
                    s.close = True
    # Bytes of an unfinished frame: pass them on now, unless its reply is to be swallowed.
    if pos < len(data):
        if slots and slots[0][0] in (DROP, SUBDROP) or off_legacy \
                or not (ps.tracking or ps.ever) and (
                data[pos:pos + 1] == b">" if pos or idle else s._partial is not None):
            # (An unfinished push, when the client asked for none, is held back too: it
            # is dropped when it is whole.)
            if run < pos:
                out.append(data[run:pos])
            if s._partial is SWALLOWED or s._partial is None and (pos or idle) \
                    and slots and slots[0][0] == DROP and data[pos] != 62 \
                    and not (ps.active and data[pos] == 42):
                # A reply to swallow (a muted command's, the proxy's own) that cannot be a
                # push or a message: nothing of it is kept (it may be a 512 MB value).
                s._partial = SWALLOWED
                return
            if s._partial is None:
                s._partial = bytearray()
            s._partial += data[pos:]
            return
        if s._partial is not None:
            out.append(bytes(s._partial))
            s._partial = None
    if run == 0:
        out.append(data)
    elif run < len(data):
        out.append(data[run:])
