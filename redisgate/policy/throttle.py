"""Brute-force defence for AUTH and HELLO AUTH (`auth_throttle`). Pure bookkeeping; no I/O.

Failed logins are counted per source address and per user name (known or not, so that a lockout
tells nothing about which names exist). When either count reaches `max_failures` within `window`
seconds, that address or name is locked for `lockout` seconds: every login attempt from the
address, or for the name, is then refused with the same WRONGPASS reply as a wrong password,
without checking the password (so guessing during a lockout learns nothing), and the session
delays that reply by `DELAY` seconds (the I/O layer holds the connection's output and input
meanwhile; the proxy's event loop never sleeps). Logins that need no AUTH (nopass, certificate)
and connections already logged in are not affected.

A name's lockout does not apply to an address that has logged in as that name before (a bounded
table of known-good address/name pairs): otherwise anyone could lock a service's own clients
out by guessing at its user name from elsewhere. An address's own lockout still applies to it.

Bounded: at most `MAX_TRACKED` addresses, as many names and as many known-good pairs are tracked,
least recently used first out; names are kept only as a keyed 16-byte hash.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # annotations only: config imports far more than this module needs
    from ..config import AuthThrottle

_Key = str | bytes  # an address, or a user name's keyed hash

MAX_TRACKED = 10_000
DELAY = 1.0          # seconds a refused-while-locked reply waits


class LoginThrottle:
    def __init__(self, settings: AuthThrottle, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = MAX_TRACKED) -> None:
        self.settings = settings          # config.AuthThrottle: max_failures, window, lockout
        self.clock = clock
        self.max_tracked = max_tracked
        self.delay = min(DELAY, settings.lockout)
        # key -> [window start, failures in it, locked until]
        self._tables: dict[str, OrderedDict[_Key, list[float]]] = {
            "address": OrderedDict(), "user": OrderedDict()}
        # (address, name hash) pairs that logged in with a right password: exempt from the
        # name's lockout (not from the address's).
        self._known_good: OrderedDict[tuple[str, _Key], bool] = OrderedDict()
        self._key = os.urandom(16)

    def configure(self, settings: AuthThrottle) -> None:
        """A reload: new numbers apply from the next attempt; what was counted stays."""
        self.settings = settings
        self.delay = min(DELAY, settings.lockout)

    def _keys(self, address: str, name: bytes) -> tuple[tuple[str, _Key], tuple[str, _Key]]:
        return (("address", address),
                ("user", hashlib.blake2b(name, key=self._key, digest_size=16).digest()))

    def locked(self, address: str, name: bytes) -> bool:
        """Whether a login attempt from `address` as `name` must be refused unchecked."""
        now = self.clock()
        for scope, key in self._keys(address, name):
            record = self._tables[scope].get(key)
            if record is not None and record[2] > now:
                if scope == "user" and (address, key) in self._known_good:
                    continue
                return True
        return False

    def failed(self, address: str, name: bytes) -> list[str]:
        """Count a failed login; returns the scopes ("address", "user") it has just locked."""
        now = self.clock()
        s = self.settings
        locked = []
        for scope, key in self._keys(address, name):
            table = self._tables[scope]
            record = table.get(key)
            if record is None:
                record = table[key] = [now, 0, 0.0]
                while len(table) > self.max_tracked:
                    table.popitem(last=False)
            else:
                table.move_to_end(key)
                if now - record[0] >= s.window:
                    record[0], record[1] = now, 0
            record[1] += 1
            if record[1] >= s.max_failures and record[2] <= now:
                # Locked; when it ends, a fresh window starts.
                record[0], record[1], record[2] = now + s.lockout, 0, now + s.lockout
                locked.append(scope)
        return locked

    def succeeded(self, address: str, name: bytes) -> None:
        """A successful login as `name` from `address`: forgets that name's failures (not the
        address's), and remembers the pair as known-good (see the module docstring)."""
        _, key = self._keys(address, name)[1]
        record = self._tables["user"].get(key)
        if record is not None and record[2] <= self.clock():
            del self._tables["user"][key]
        pair = (address, key)
        self._known_good[pair] = True
        self._known_good.move_to_end(pair)
        while len(self._known_good) > self.max_tracked:
            self._known_good.popitem(last=False)

    def tracked(self) -> dict[str, int]:
        return {scope: len(table) for scope, table in self._tables.items()} | {
            "known_good": len(self._known_good)}
