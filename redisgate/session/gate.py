"""Proxy-wide state that every session consults: users, the upstream's version, the ACL log.

Pure data and bookkeeping; no sockets. A config reload swaps ``users`` and bumps ``generation`` so
that sessions re-check their user with login.decide_login (a removed or disabled user, or one its
certificate no longer maps to, loses its connections, as with Redis's ACL DELUSER). The gate also
maps verified client certificates to users (`certificate_identity`, `remap_certificate`).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable

from ..telemetry import metrics
from ..protocol.commands import CommandSpec, available
from ..config import Config, UserEntry
from ..policy.learn import Learner
from ..policy.login import CertIdentity, map_certificate
from ..protocol.resp import array, bulk, integer, map_
from ..policy.throttle import LoginThrottle

if TYPE_CHECKING:
    from ..policy.rules import User

audit = logging.getLogger("redisgate.audit")

# Redis groups identical ACL log entries that occur within this many seconds (acl.c).
_ACL_LOG_GROUPING_MS = 60_000


@dataclass
class AclLogEntry:
    """One ``ACL LOG`` record, in Redis's field layout."""
    reason: str          # "command" | "key" | "channel" | "auth" (plus redisgate's "keyspace", "script")
    context: str         # "toplevel" | "multi"
    object: str
    username: str
    client_info: str
    count: int = 1
    entry_id: int = 0
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    updated_ms: int = 0

    def __post_init__(self) -> None:
        self.updated_ms = self.updated_ms or self.created_ms


class AclLog:
    """A bounded list of recent denials, newest first, grouped like Redis's ACL log."""

    def __init__(self, max_len: int = 128):
        self.max_len = max_len
        self.entries: deque[AclLogEntry] = deque()
        self._next_id = 0

    def add(self, reason: str, context: str, obj: str, username: str, client_info: str) -> None:
        now = int(time.time() * 1000)
        for e in self.entries:
            if (e.reason, e.context, e.object, e.username) == (reason, context, obj, username) \
                    and now - e.updated_ms < _ACL_LOG_GROUPING_MS:
                e.count += 1
                e.updated_ms = now
                e.client_info = client_info
                return
        self.entries.appendleft(AclLogEntry(reason, context, obj, username, client_info,
                                            entry_id=self._next_id, created_ms=now))
        self._next_id += 1
        while len(self.entries) > self.max_len:
            self.entries.pop()

    def reset(self) -> None:
        self.entries.clear()


def _label_users(names: Iterable[str]) -> None:
    metrics.set_users(names)   # the user names a metric label may carry


class Gate:
    """What all connections share. Built from a Config; ``reload`` swaps it atomically."""

    def __init__(self, config: Config, upstream_version: tuple[int, int, int] | None = None):
        self.config = config
        self.users: dict[str, UserEntry] = config.users
        self.generation = 0
        self.upstream_version: tuple[int, int, int] = (config.upstream.version or upstream_version
                                                       or (7, 0, 0))
        self.acl_log = AclLog(config.acl_log_max_len)
        # The upstream passwords known (the configured one, the one before the last reload):
        # a connection whose AUTH Redis refuses tries the other once (handshake.Passwords).
        from ..protocol.handshake import Passwords
        self.passwords = Passwords(config.upstream)
        self._available: dict[CommandSpec, bool] = {}
        # session.py's memo for its inlined path, per user: command name (as sent) -> how to
        # judge it. It depends on the users and the upstream's version: cleared when they change.
        self.fast_commands: dict[User, dict[bytes, Any]] = {}
        # The same for clients on a shared link: shareable commands.
        self.fast_shared: dict[User, dict[bytes, Any]] = {}
        self.learners: dict[str, Learner] = {}
        # auth_throttle: failed logins per source address and per user name (throttle.py).
        self.throttle = LoginThrottle(config.auth_throttle)
        _label_users(self.users)
        # HELLO's reply for clients on shared links (hello_reply): the upstream's own replies to
        # HELLO 2 and HELLO 3, cut around the connection id, by protocol (set_hello_replies).
        self._hello: dict[int, tuple[bytes, bytes]] = {}
        # limits.max_clients_per_user: logged-in connections per user name (claim_client). At
        # most one entry per configured user with a connection: bounded by the config.
        self.user_clients: dict[str, int] = {}
        self._index_certificates()

    def claim_client(self, name: str) -> bool:
        """Count one more logged-in connection for user `name`, unless that would pass
        limits.max_clients_per_user (0: no limit): then False, nothing counted."""
        count = self.user_clients.get(name, 0)
        limit = self.config.max_clients_per_user
        if limit and count >= limit:
            return False
        self.user_clients[name] = count + 1
        return True

    def release_client(self, name: str) -> None:
        """A connection counted by claim_client logged out (RESET, AUTH as another user) or
        closed."""
        count = self.user_clients.get(name, 0) - 1
        if count > 0:
            self.user_clients[name] = count
        else:
            self.user_clients.pop(name, None)

    def _index_certificates(self) -> None:
        self.bound_users = [e for e in self.users.values() if e.certificate is not None]

    def certificate_identity(self, peercert: dict[str, Any], chain: Iterable[Any] = (),
                             description: str = "") -> CertIdentity:
        """A verified client certificate as a login.CertIdentity, mapped to its user."""
        cert = CertIdentity(peercert=peercert, chain=tuple(chain), description=description)
        return self.remap_certificate(cert)

    def remap_certificate(self, cert: CertIdentity) -> CertIdentity:
        """`cert` mapped to the one user whose binding it satisfies now (None: nobody; also when
        several match, or when its listener no longer trusts its CA)."""
        if not cert.trusted:
            return replace(cert, user=None) if cert.user is not None else cert
        names = map_certificate(cert.peercert, cert.chain, self.bound_users)
        if len(names) > 1:
            logging.getLogger("redisgate.tls").warning(
                "client certificate %s matches several users (%s); granting none",
                cert.description or "?", ", ".join(sorted(names)))
        user = names[0] if len(names) == 1 else None
        return cert if user == cert.user else replace(cert, user=user)

    def reload(self, config: Config) -> None:
        self.config = config
        self.users = config.users
        self.passwords.reloaded(config.upstream)
        self.forget_fast()
        self.acl_log.max_len = config.acl_log_max_len
        self.throttle.configure(config.auth_throttle)
        _label_users(self.users)
        if config.upstream.version:
            self.upstream_version = config.upstream.version
            self._available.clear()
        self._index_certificates()
        self.generation += 1

    def set_upstream_version(self, version: tuple[int, int, int]) -> None:
        if self.config.upstream.version is None:
            self.upstream_version = version
            self._available.clear()
            self.forget_fast()

    def set_hello_replies(self, replies: dict[int, bytes]) -> None:
        """Remember the upstream's replies to HELLO 2 / HELLO 3 (by protocol), as templates
        for hello_reply. A reply without the `id` field is ignored."""
        for proto, reply in replies.items():
            head, sep, rest = reply.partition(b"$2\r\nid\r\n:")
            value, crlf, tail = rest.partition(b"\r\n")
            if sep and crlf and value.isdigit():
                self._hello[proto] = (head + sep, crlf + tail)

    def hello_reply(self, resp3: bool, client_id: int) -> bytes:
        """HELLO's reply for a client on a shared link: the upstream's own (probed) with the
        proxy's `client_id` for the connection id; without a probe, the fields Redis sends."""
        proto = 3 if resp3 else 2
        cut = self._hello.get(proto)
        if cut is not None:
            return cut[0] + str(client_id).encode() + cut[1]
        ver = ".".join(map(str, self.upstream_version)).encode()
        return map_([(bulk(b"server"), bulk(b"redis")), (bulk(b"version"), bulk(ver)),
                     (bulk(b"proto"), integer(proto)), (bulk(b"id"), integer(client_id)),
                     (bulk(b"mode"), bulk(b"standalone")), (bulk(b"role"), bulk(b"master")),
                     (bulk(b"modules"), array([]))], resp3)

    def forget_fast(self) -> None:
        """Drop the per-user memos of Session._run. Each one is emptied, not only let go: the C
        lanes (redisgate._native._lane) hold them, and an empty memo sends their next command to the
        Python path, which sees the new generation."""
        for memo in (self.fast_commands, self.fast_shared):
            for known in memo.values():
                known.clear()
            memo.clear()

    def available(self, spec: CommandSpec) -> bool:
        """Whether the upstream's version has this command (memoised: it is on the hot path)."""
        known = self._available.get(spec)
        if known is None:
            known = self._available[spec] = available(spec, self.upstream_version)
        return known

    def learner(self, name: str) -> Learner:
        """The Learner recording a learn-mode user's traffic (created on first use)."""
        learner = self.learners.get(name)
        if learner is None:
            learner = self.learners[name] = Learner()
        return learner
