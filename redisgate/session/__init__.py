"""The per-connection protocol state machine, sans I/O: bytes and events in, `actions.Actions` out.

Modules, one concern each (docs/ARCHITECTURE.md, "The session"):

* ``machine``      `Session` (dispatch, the inline judge, the routing of upstream replies,
                   ``actions()``, the C lane handover) and `State`, the named states;
* ``replies``      `ReplyOrder`: the reply slots in command order, the shared link's accounting,
                   and which commands get no reply (CLIENT REPLY ON | OFF | SKIP);
* ``routing``      the upstream's replies to the client through the reply order;
* ``upstream``     `Upstream`: the session's upstream connection and the proxy's handshake on it;
* ``connection``   AUTH, HELLO, QUIT, RESET, SELECT, CLIENT REPLY; login and its limits;
* ``transactions`` `Transaction`: MULTI, EXEC, DISCARD;
* ``pubsub``       `Subscriptions`: the SUBSCRIBE family;
* ``acl``          ACL answered locally, SLOWLOG GET and SORT refusals, the record of a denial;
* ``actions``      `Actions`, the one frozen record the I/O layer executes;
* ``gate``         `Gate`: what every session shares (users, the upstream's version, ACL LOG).

May import: the layers below it (docs/ARCHITECTURE.md, "Packages by layer"): config and tls,
policy, telemetry (audit, metrics), protocol, and the standard library. Never redisgate.io or
redisgate.cluster, asyncio, sockets or anything that does I/O: the shell (io/server.py) imports
this package, not the other way round (lint-imports checks it).
"""
from .machine import CLOSE, DROP, FWD, LOCAL, SUB, SUBDROP, Session, State, shareable

__all__ = ["CLOSE", "DROP", "FWD", "LOCAL", "SUB", "SUBDROP", "Session", "State", "shareable"]
