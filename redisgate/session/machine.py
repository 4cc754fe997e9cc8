"""The session: one client connection's protocol state machine. No I/O.

Feed it what the client sent (``client_data``) and what the upstream Redis sent
(``upstream_data``), and the I/O layer's events (``connected``, ``upstream_failed``, ``resume``,
``reloaded``, ``ended``); then ``actions()`` returns what to do (an ``actions.Actions``: bytes to
the client and to the upstream, open the upstream, close, stall), which the I/O layer executes
without writing anything back here (``abort()`` is how it says it is closing the connection).
Everything that affects what reaches Redis or the client is decided here.

`Session` holds the connection's identity (the user, the protocol, the database) and four
small objects, one per concern: ``replies`` (replies.ReplyOrder: the reply slots in command
order, the shared link's accounting, CLIENT REPLY's muting), ``up`` (upstream.Upstream: the
upstream connection and the proxy's handshake), ``tx`` (transactions.Transaction: MULTI),
``pubsub`` (pubsub.Subscriptions). ``Session.state`` names the state they make together
(`State`). This module dispatches each command and judges the common case inline (`_run`);
the upstream's replies are routed by routing.py (`upstream_data`); the commands the proxy
answers or watches are handled in the family's module (connection, transactions, pubsub, acl).

Upstream bytes are passed through whole while no local reply waits between them; they are
never buffered except for the few setup replies that are swallowed.
"""
from __future__ import annotations

import enum
from itertools import repeat
from typing import TYPE_CHECKING, Any, Callable

from ..telemetry import audit, metrics
from ..protocol import errors
from ..policy import memo
from .actions import Actions
from ..telemetry.audit import Event
from ..protocol.commands import TABLE, CommandSpec, KeyExtractionError
from ..policy.confine import confine
from .gate import Gate
from ..policy.login import CertIdentity, Method, Via
from ..policy.memo import ALLOW, ONE_KEY, SCRIPT
from ..telemetry.metrics import forwarded_counter
from ..protocol.options import is_word
from ..protocol.resp import (Batch, ProtocolError, ReplyScanner, Request, RequestParser,
                             encode_command, error)
from ..policy.scripts import queue_of
from . import acl, connection, pubsub, routing, transactions, upstream
from .pubsub import Subscriptions
from .replies import CLOSE, DROP, FWD, LOCAL, SUB, SUBDROP, Muting, ReplyOrder
from .routing import PUSHES_UNDER_REPLY_OFF
from .transactions import Transaction
from .upstream import Phase, Upstream

if TYPE_CHECKING:
    from ..config import UserEntry

__all__ = ["CLOSE", "DROP", "FWD", "LOCAL", "SUB", "SUBDROP", "Session", "State", "shareable"]

# Commands that would break the one-reply-per-command accounting, or hand out the upstream
# connection itself; refused even for users whose rules allow them.
_UNSUPPORTED = {
    "monitor": "MONITOR", "sync": "SYNC", "psync": "PSYNC", "replconf": "REPLCONF",
}
# Answered by the proxy itself, so they exist whatever the upstream's version.
_PROXY_ANSWERED = {"hello", "reset", "auth", "quit"}


class Session:
    """One client connection's protocol state. See the module docstring for the contract."""

    # The client's source address (the I/O layer sets it): auth_throttle counts failures by it.
    address: str = ""
    # > 0: a login refused by auth_throttle; its reply waits in `_stalled`, nothing more is
    # parsed, and the I/O layer stops reading the client for that many seconds, then calls
    # `resume()`. (What was answered before it goes out as usual.)
    stall: float = 0.0
    _stalled: bytes | None = None
    # The connection as the audit names it (audit.Peer; the I/O layer sets it), the requests
    # received in Python (the C lane counts its own), and why the session ended itself.
    peer: audit.Peer | None = None
    commands: int = 0
    end_reason: str | None = None
    # The command table name of the request `_handle` is on (`other`: not in the table): the
    # `command` label of what it forwards or refuses.
    _label: str = "other"

    def __init__(self, gate: Gate, client_info: str = "", cert: CertIdentity | None = None,
                 peer: audit.Peer | None = None, *, address: str = "", client_id: int = 0,
                 lane_scripts: bool = False):
        self.gate = gate
        self.client_info = client_info
        self.peer = peer
        self.address = address
        cfg = gate.config
        self.parser = RequestParser(max_bulk=cfg.max_bulk, max_args=cfg.max_args)
        self.scanner = ReplyScanner()
        self.to_client: list[bytes] = []
        self.to_upstream: list[bytes] = []
        self.replies = ReplyOrder(self.to_client)
        self.up = Upstream()
        self.tx = Transaction()
        self.pubsub = Subscriptions()
        self.close = False            # the I/O layer closes after writing to_client
        self.client_id = client_id    # the proxy's id for the connection (HELLO on a shared link)
        # A frame split across reads, held back (or routing.SWALLOWED: one being swallowed).
        self._partial: bytearray | bytes | None = None
        self._dead = False

        self.user_entry: UserEntry | None = None
        self.username: str | None = None
        self.login_method: Method | None = None   # what let the user in (for the reload re-check)
        self._generation = gate.generation
        # The verified client certificate (mapped to its user by the gate), None without one.
        # Every login goes through login.decide_login with it.
        self.cert = cert
        self.resp3 = False
        # Whether a C lane (redisgate._native._lane) reads the memos (the I/O layer says at creation):
        # then allowed EVALSHA calls leave their forms there (_lane_script).
        self.lane_scripts = lane_scripts
        self.home_db: int = cfg.upstream.db
        self.db = self.home_db
        # The user this connection is counted for in Gate.user_clients
        # (limits.max_clients_per_user): from its login until RESET, a login as another user,
        # or the end of the connection (ended()).
        self.counted: str | None = None
        # A nopass `default` whose automatic login found the user at its limit: the connection
        # may still AUTH as someone else; its first command that needs `default` tries again
        # (and is refused, and closed, if it is still full).
        self.default_waiting = False

        connection.auto_login(self, Via.CONNECT)

    # ------------------------------------------------------------------ the state

    @property
    def state(self) -> State:
        """The session's state, named (see State): what it does with the next bytes."""
        if self._dead or self.close:
            return State.CLOSED
        if self.stall:
            return State.STALLED
        if self.user_entry is None:
            return State.LOGIN
        phase = self.up.phase
        if phase is Phase.NONE:
            return State.UNCONNECTED
        if phase is Phase.OPENING or phase is Phase.HANDSHAKE:
            return State.CONNECTING
        if self.tx.exec_wait:
            return State.EXEC_WAIT
        if self.tx.active:
            return State.MULTI
        if self.pubsub.active or self.pubsub.any():
            return State.SUBSCRIBED
        if self.replies.muting is not Muting.NONE:
            return State.MUTED
        return State.SHARED if phase is Phase.SHARED else State.READY

    # Read-only views of the parts' fields (the I/O layer and the tests read them).

    @property
    def shared(self) -> bool:
        """On a shared upstream link (upstream.multiplex)."""
        return self.up.shared

    @property
    def link_resp3(self) -> bool:
        """The protocol of the shared links the session's commands go to."""
        return self.up.link_resp3

    @property
    def upstream_ready(self) -> bool:
        return self.up.ready

    @property
    def want_upstream(self) -> bool:
        return self.up.want

    @property
    def expected(self) -> int:
        """Replies asked of the shared link so far."""
        return self.replies.expected

    @property
    def slots(self) -> Any:
        """The reply slots (replies.ReplyOrder.slots)."""
        return self.replies.slots

    # ------------------------------------------------------------------ client side

    def client_data(self, data: bytes) -> None:
        """Judge and route everything the client sent. Never raises."""
        if self._dead:
            return
        if self._generation != self.gate.generation:
            connection.refresh_user(self)
        parser = self.parser
        parser.feed(data)
        tx = self.tx
        while not self._dead and not self.stall and not tx.exec_wait:
            # Whole requests at the head of the buffer come as one batch (authenticated clients
            # only); anything else one request at a time, so that what follows an AUTH or a
            # RESET is parsed and judged with its outcome.
            batch = parser.take_batch()
            if batch is not None:
                self._run(batch)
                if batch.rest:
                    continue
                break
            try:
                req = parser.next()
            except ProtocolError as e:
                if not self.replies.quiet:   # (Redis: no reply under OFF / SKIP either)
                    self.replies.local(e.reply)
                self.close_after()
                self._dead = True
                self.end_reason = "protocol-error"
                break
            if req is None:
                break
            if req.raw is None:   # an inline command
                self.commands += 1
                self._handle(req)
            else:
                self._run(Batch.of(req))
        if self.up.held:
            upstream.flush_held(self)
        if self.stall and self._stalled is None and not self.replies.slots and self.to_client:
            # The refused login's reply is the last one so far (nothing was parsed after it).
            self._stalled = self.to_client.pop()

    def resume(self) -> None:
        """The I/O layer waited `stall` seconds: the refused login's reply, then what the client
        sent meanwhile."""
        self.stall = 0.0
        if self._stalled is not None:
            reply, self._stalled = self._stalled, None
            self.replies.local(reply)
        self.client_data(b"")

    def _steady(self) -> bool:
        """Whether `_run` may judge inline: logged in, not learning, an upstream ready (on a
        shared link: of the client's protocol), no transaction, no CLIENT REPLY muting."""
        up = self.up
        entry = self.user_entry
        return entry is not None and not entry.learn and not self.tx.active and up.ready \
            and not (up.shared and up.link_resp3 != self.resp3) and not self.replies.quiet

    def _run(self, batch: Batch) -> None:
        """Judge a batch (resp.Batch). The common case, an ordinary command the user may run with
        nothing special pending, is inlined here: a memoised name lookup, the arity, the judge.
        Consecutive allowed requests are forwarded as one slice of what the client sent (the
        client's read itself when all of it passes) and share one reply slot."""
        entry = self.user_entry
        count = len(batch.args)
        self.commands += count
        up = self.up
        if entry is None or entry.learn or self.tx.active or not up.ready \
                or up.shared and up.link_resp3 != self.resp3 or self.replies.quiet:
            return self._handle_from(batch, 0)   # (not _steady(), inlined)
        user = entry.user
        memo_ = self.gate.fast_shared if up.shared else self.gate.fast_commands
        known = memo_.get(user)
        if known is None:
            known = memo_[user] = {}
        lookup = known.get
        judge = None   # and db: looked up at the first command that needs them
        db: Any = None
        j0 = 0         # the first request not forwarded yet
        run: Any = batch.args   # (when `same`: a resp.RunArgs or the C scan's ListRun)
        if batch.same:
            # A homogeneous pipeline: one name, one arity, so one verdict for the command and
            # the keys of all of it checked in one pass; anything short of all-allowed is
            # judged one by one below.
            args = run.first()
            inline = lookup(args[0]) or self._inline(args, known)
            if inline is not None and inline.fewest <= len(args) <= inline.most:
                kind = inline.kind
                if kind is ALLOW:
                    run = run.tail
                    inline.counter.add(count - len(run))   # (metrics: forwarded, per user/command)
                elif kind is ONE_KEY:
                    keys = run.column(inline.pos)
                    prefixes = inline.prefixes
                    if prefixes and all(map(bytes.startswith, keys, repeat(prefixes))) \
                            or inline.exact.issuperset(keys):
                        run = run.tail
                        inline.counter.add(count - len(run))
        for j, args in enumerate(run, count - len(run)):
            inline = lookup(args[0])
            if inline is None:
                inline = self._inline(args, known)
            # A memo.Verdict (see _inline). Anything outside its arity goes to _handle.
            if inline is not None and inline.fewest <= len(args) <= inline.most:
                kind = inline.kind
                if kind is ONE_KEY:
                    key = args[inline.pos]
                    if key.startswith(inline.prefixes) or key in inline.exact \
                            or inline.match(key):
                        inline.counter.add(1)
                        continue
                elif kind is ALLOW:
                    inline.counter.add(1)
                    continue
                else:
                    if judge is None:
                        judge, db = user.judge, self.databases()
                    try:
                        if judge(inline.spec, args, db) is None:
                            if kind is SCRIPT:
                                self._lane_script(inline, args)
                            inline.counter.add(1)
                            continue
                    except KeyExtractionError:
                        pass
            # Not for the inlined path: forward the allowed run before it, then the careful way.
            if j > j0:
                self.to_upstream.append(batch.raw(j0, j))
                self.expect(FWD, j - j0)   # (counts `expected` when shared)
            j0 = j + 1
            if self._dead:
                return
            self._handle(batch.request(j))
            if self.user_entry is not entry or self._dead or not self._steady():
                # State changed (AUTH, MULTI, RESET, QUIT, a protocol switch on a shared link,
                # CLIENT REPLY OFF / SKIP, ...): the careful path takes the rest (after QUIT:
                # nothing).
                return self._handle_from(batch, j + 1)
        if j0 < count:
            self.to_upstream.append(batch.raw(j0) if j0 else batch.buf[batch.start:batch.stop])
            self.replies.forwarded(count - j0, up.shared)

    def _handle_from(self, batch: Batch, j: int) -> None:
        """Requests j.. of `batch` the careful way, one at a time (after QUIT: nothing; after
        an EXEC that must be answered first: deferred, see Transaction.exec_wait)."""
        for k in range(j, len(batch.args)):
            if self._dead:
                return
            if self.tx.exec_wait:
                self.tx.deferred.extend(batch.request(i) for i in range(k, len(batch.args)))
                return
            self._handle(batch.request(k))

    def _continue_input(self) -> None:
        """EXEC's reply came: judge what waited for it, in order."""
        tx = self.tx
        waiting, tx.deferred = tx.deferred, []
        for i, req in enumerate(waiting):
            if self._dead:
                return
            if tx.exec_wait:   # (another such EXEC among them)
                tx.deferred = waiting[i:] + tx.deferred
                return
            if req.raw is None:
                self._handle(req)
            else:
                self._run(Batch.of(req))
        if not tx.exec_wait:
            self.client_data(b"")

    def _inline(self, args: list[bytes], known: dict[bytes, Any]) -> Any:
        """How `_run` judges this command inline (a memo.Verdict, built from the user's
        rules.User.verdict), or None when it must go to `_handle` (answered or watched here, a
        container, unknown to the upstream). Its `counter` counts the commands forwarded this
        way (metrics.forwarded_counter; the C lane adds to it too). Memoised in `known` (the
        user's, on the gate) per name as sent."""
        spec = TABLE.lookup(args)
        if spec is None or spec.is_container or spec.name in _PLAIN \
                or not self.gate.available(spec) or (self.up.shared and not shareable(spec)):
            return None
        assert self.user_entry is not None and self.username is not None
        a = spec.arity
        fewest, most = (a, a) if a >= 0 else (-a, 1 << 62)
        inline = memo.compile_entry(spec, fewest, most, self.user_entry.user.verdict(spec),
                                    forwarded_counter(self.username, spec.name))
        if spec.parent is None and len(known) < 1024:
            # Not subcommands: their spec depends on args[1] as well. The bound: names come from
            # clients, in any mix of cases.
            known[args[0]] = inline
        return inline

    def _lane_script(self, inline: Any, args: list[bytes]) -> None:
        """An EVALSHA the judge allowed (a SCRIPT verdict): unless known, the verdict learns what
        calls of that script for that queue must look like (rules.User.lane_script), so that the
        C lane forwards them as the judge would. Bounded by the verdict: SHA1s are the allowed
        ones, queues at most 64 per SHA1."""
        if not self.lane_scripts or len(args) < 4:
            return
        queue = queue_of(args[3])
        if queue is None:
            return
        q = queue[0]   # (the C lane finds it the same way: up to the first "}")
        sha = args[1]
        if inline.knows(sha, q):
            return
        assert self.user_entry is not None
        form = self.user_entry.user.lane_script(inline.spec, args)
        if form is not None:
            inline.learn(sha, q, memo.script_form(form))
        # (None: this call did not take the compiled path. Not remembered: the next one may.)

    def _handle(self, req: Request) -> None:
        """One command the careful way, with CLIENT REPLY's effect on its reply: under OFF, or
        right after SKIP, whatever it answers (a reply from the upstream, an error or a reply of
        the proxy's) is not sent, as Redis's prepareClientToWrite refuses it; then, as Redis's
        resetClient, a SKIP just asked applies to the next command (ReplyOrder.begin / end)."""
        replies = self.replies
        replies.begin()
        self._command(req)
        replies.end()

    def _command(self, req: Request) -> None:
        """Dispatch one command: refused (unknown, arity, NOAUTH, the user's rules), answered by
        its family's handler, or forwarded."""
        args = req.args
        version = self.gate.upstream_version
        spec = TABLE.lookup(args)
        self._label = spec.name if spec is not None else "other"
        if spec is None or (not self.gate.available(spec) and spec.name not in _PROXY_ANSWERED
                            and not spec.name.startswith("acl")):
            if spec is not None and spec.parent is not None and self.gate.available(spec.parent):
                # A subcommand newer than the upstream (CLIENT INFO on 5.0): its container's error.
                return self.reject(errors.unknown_subcommand(version, args))
            return self.reject(errors.unknown_command(version, args))
        if spec.is_container:
            if not spec.check_arity(len(args)):
                return self.reject(errors.wrong_arity(version, spec.name))
            return self.reject(errors.unknown_subcommand(version, args))
        if not spec.check_arity(len(args)):
            return self.reject(errors.wrong_arity(version, spec.name, args))
        name = spec.name
        if self.default_waiting and self.user_entry is None \
                and (name not in _LOCAL_FIRST
                     or name == "hello" and connection.hello_without_auth(args)):
            connection.auto_login(self, Via.CONNECT, wait=False)   # (refused, closed if full)
            if self._dead:
                return
        if self.user_entry is None and ("no_auth" not in spec.flags
                                        or (name == "reset" and version < (7, 0, 0))):
            return self.reject(errors.noauth())   # (RESET needs a login before 7.0)
        first = _LOCAL_FIRST.get(name)
        if first is not None:
            # AUTH, HELLO, QUIT, RESET: allowed for everyone (no_auth), never forwarded as sent.
            return first(self, args)

        entry = self.user_entry
        assert entry is not None
        user = entry.user
        try:
            denial = user.judge(spec, args, db=self.databases())
        except KeyExtractionError as e:
            return self.reject(e.reply)
        if denial is not None and denial.kind == "keyspace" and entry.confine_scan \
                and name in ("scan", "keys"):
            confined = confine(name, args, user.read_prefix(spec))
            if confined is not None:
                denial = None
                req = Request(confined, None)   # re-encoded: it may carry an added MATCH
        if denial is not None:
            acl.record_denial(self, denial, spec, args)
            # A "secret" refusal (CONFIG GET of the upstream's credentials) holds in report-only
            # and learn mode too: reporting it after the secret left would be too late.
            if not (user.report_only or entry.learn) or denial.kind == "secret":
                return self.reject(denial.reply(version, self.username))
        if entry.learn:
            self.gate.learner(entry.name).observe(spec, args)

        if name in _UNSUPPORTED:
            return self.reject(error(f"ERR {_UNSUPPORTED[name]} is not supported through redisgate"))
        if name == "client|tracking":
            if connection.tracking_redirect(args):
                # Another connection's id would be another client's stream (or a shared link).
                return self.reject(error("ERR CLIENT TRACKING REDIRECT is not supported through "
                                         "redisgate: a client cannot name another connection"))
            if is_word(args[2], b"on"):
                self.pubsub.tracking = True   # (invalidation pushes may come now: see unasked)
        handler = _HANDLERS.get(name)
        if handler is not None:
            return handler(self, spec, args, req)
        if name.startswith("acl|"):
            return acl.cmd_acl(self, spec, args)
        self.forward(req, shared_ok=shareable(spec))

    # -- what the handlers use

    def reject(self, reply: bytes) -> None:
        """A command answered with an error here; inside MULTI it dooms the transaction, as in
        Redis."""
        self.metric("refused", self.username, self._label)
        self.tx.doom()
        self.replies.local(reply)

    def close_after(self) -> None:
        """Close the client connection once everything due before now is written."""
        if self.replies.close_after():
            self.close = True

    def forward(self, req: Request, kind: int = FWD, n: int = 1, payload: object = None,
                shared_ok: bool = False) -> None:
        """Send the command upstream; `n` replies of `kind` are due for it."""
        forwarded_counter(self.username, self._label).add(1)
        upstream.send(self, req.raw if req.raw is not None else encode_command(req.args),
                      shared_ok)
        self.expect(kind, n, payload)

    def send_upstream(self, data: bytes) -> None:
        """Bytes of the proxy's for the upstream (not on a shared link)."""
        upstream.send(self, data)

    def expect(self, kind: int, n: int, payload: object = None) -> None:
        """`n` replies of `kind` are due (see replies.ReplyOrder.expect)."""
        replies = self.replies
        replies.expect(kind, n, payload, self.up.shared, not replies.muted
                       or self.gate.upstream_version >= PUSHES_UNDER_REPLY_OFF)

    def databases(self, entry: UserEntry | None = None) -> Any:
        """The databases a user (the logged-in one by default) may SELECT (a frozenset, or the
        home database alone); others need allkeys."""
        entry = entry or self.user_entry
        assert entry is not None
        dbs = entry.databases
        return dbs if dbs is not None else self.home_db

    def audit(self, event: str, /, **fields: Any) -> None:
        """audit.emit an Event `event` (with audit.Event's `fields`) as this connection's."""
        if audit.wanted(event, fields.get("user")):
            audit.emit(Event(event, peer=self.peer, info=self.client_info, **fields),
                       admitted=True)

    @staticmethod
    def metric(name: str, *labels: Any) -> None:
        metrics.inc(name, *labels)

    def held_bytes(self) -> int:
        """Bytes waiting for an upstream connection being opened (the I/O layer bounds them)."""
        return sum(map(len, self.up.held))

    # -- the boundary with the I/O layer

    def actions(self) -> Actions:
        """What the I/O layer must do now (see actions.Actions): the bytes produced since the last
        call, which are handed over once, and the states it acts on."""
        out = self.to_client
        if out:
            client = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
        else:
            client = b""
        out = self.to_upstream
        up = self.up
        if out:
            upstream_ = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            replies = self.replies.handed_over()
        else:
            upstream_ = b""
            replies = 0   # (counted with the bytes that ask for them)
        return Actions.new(client, upstream_, up.shared or replies != 0, replies,
                           up.link_resp3, up.want, self.close, self.stall)

    def abort(self) -> None:
        """The I/O layer closes the connection on its own account (an internal error, an
        eviction, limits.idle_timeout): nothing more is fed in; what was produced is written."""
        self.close = True

    @property
    def logged_in(self) -> bool:
        return self.user_entry is not None

    def replies_due(self) -> int:
        """Replies the client is owed that are not in the proxy yet (or answered here, waiting
        behind them): one per slot, a forwarded run's count (the C lane's, if armed, aside)."""
        return self.replies.due()

    def owes_replies(self) -> bool:
        """Whether anything the client sent still waits for its reply (in slots, held for an
        upstream connection being opened, or a refused login's reply held by auth_throttle),
        on a connection that is not ending."""
        return not (self.close or self._dead) \
            and bool(self.replies.slots or self.up.held or self.stall)

    def quiet(self) -> bool:
        """Logged in and waiting for nothing (limits.idle_timeout may count it idle): no reply
        due, nothing held, no subscription."""
        return self.user_entry is not None and not (
            self.replies.slots or self.up.held or self.pubsub.active or self.pubsub.any())

    @property
    def ending(self) -> bool:
        """The session ended itself (QUIT, a protocol error, a reload's re-check, ...)."""
        return self._dead

    @property
    def cert_user(self) -> str | None:
        """The user the connection's certificate maps to (None: no certificate, or nobody)."""
        return self.cert.user if self.cert is not None else None

    def ended(self) -> None:
        """The I/O layer closed the connection: its user's count goes down."""
        connection.release(self)

    def reloaded(self, cert_trusted: bool = True) -> None:
        """The configuration was reloaded (called by the I/O layer for every open connection;
        also done at the next command). `cert_trusted`: whether the listener's current client CA
        still vouches for the connection's certificate."""
        if not cert_trusted:
            connection.distrust_certificate(self)
        connection.refresh_user(self)

    # ------------------------------------------------------------------ upstream side

    def connected(self) -> None:
        """The upstream connection is open: send the proxy's AUTH, or else release what was
        held for it."""
        upstream.connected(self)

    def auth_retry_due(self) -> bool:
        """Whether a second AUTH (upstream.auth_again, the other password) was sent and its reply
        is due: the I/O layer times it as the handshake's (upstream.handshake_timeout)."""
        return self.up.auth_wait and self.up.auth_fallback is not None

    def only_handshake_due(self) -> bool:
        """Whether nothing but the proxy's own handshake (its DROP slots, named by purpose) and
        replies answered here behind it is waiting: the upstream has none of the client's
        commands, so giving up the connection loses nothing of the client's."""
        return self.replies.only_handshake()

    def handshake_failed(self, reason: str) -> None:
        """The proxy's handshake went unanswered (upstream.handshake_timeout) and the I/O
        layer gave up the connection. With none of the client's commands sent behind it (its
        AUTH still awaited: they wait in `held`; or none at all), as a connection that could not
        be opened: they get errors, the client stays, its next command tries again. Else (a
        SELECT / HELLO without AUTH went with them) as a lost one: they may still run, so after
        their errors the client is closed."""
        if self.up.auth_wait or self.only_handshake_due():
            self.up.ever = False
        self.upstream_failed(reason)

    def upstream_failed(self, reason: str, established: bool = False) -> None:
        """The upstream could not be reached or went away. Pending commands get an error reply.

        A connection that never got established leaves the client connected (the next command
        tries again). One that was lost (ever established, or `established`: a shared link that
        was working, whose replies were lost in flight) takes the client connection with it, as a
        Redis restart would: its transaction, subscriptions and database are gone.
        """
        upstream.failed(self, reason, established)

    # -- the C lane (redisgate._native._lane, driven by server.ClientConnection)

    def lane_handover(self, on_link: int | None = None) -> tuple[dict[bytes, Any], int] | None:
        """(known, due) when the session is in the C lane's steady state, handing it the replies
        due to forwarded commands; else None. The steady state: logged in (not learning), an
        upstream ready, no transaction or subscription, nothing buffered or held, nothing
        pending but forwarded commands. On a shared link (`on_link`: the replies due on it, which
        must be those same replies) the memo is the shared one. `known` is _run's memo for the
        user: the lane forwards exactly what _run's inline path would forward with it."""
        entry = self.user_entry
        up = self.up
        if entry is None or entry.learn or self.tx.active or not up.ready \
                or up.shared != (on_link is not None) \
                or up.shared and up.link_resp3 != self.resp3 \
                or self._dead or self.close or self.pubsub.active or self._partial is not None \
                or up.held or self.to_client or self.to_upstream \
                or self._generation != self.gate.generation or not self.scanner.idle \
                or self.parser.buffered or not self.parser.authenticated \
                or self.tx.exec_wait or self.tx.deferred or self.replies.quiet:
            return None
        due = self.replies.lane_due()
        if due is None or on_link is not None and on_link != due:
            return None
        memo_ = self.gate.fast_shared if up.shared else self.gate.fast_commands
        known = memo_.get(entry.user)
        if known is None:
            known = memo_[entry.user] = {}
        self.replies.slots.clear()
        return known, due

    def lane_returned(self, due: int) -> None:
        """The lane let go: `due` replies to commands it forwarded come before anything else."""
        self.replies.lane_returned(due)

    # -- replies

    def upstream_data(self, data: bytes) -> None:
        """Route upstream replies to the client, interleaving local replies in command order."""
        self._upstream_data(data)
        if self.tx.resume:
            self.tx.resume = False
            self._continue_input()

    def upstream_replies(self, data: bytes, count: int) -> None:
        """upstream_data() for bytes known to be exactly `count` whole replies (a shared link
        counted them): while they all answer the forwarded commands at the head, they pass
        without being counted again."""
        slots = self.replies.slots
        if slots and slots[0][0] == FWD and slots[0][1] >= count and not self.pubsub.active \
                and slots[0][2] is None \
                and self._partial is None and self.scanner.idle:
            if self.replies.passed(data, count):
                self.close = True
            return
        self.upstream_data(data)

    # (upstream bytes through the reply order: routing.py)
    _upstream_data = routing.route


class State(enum.Enum):
    """Session.state: one name for what the parts say (Upstream.phase, Transaction,
    Subscriptions, ReplyOrder.muting), in this order of precedence (the first that applies).
    tests/test_session_states.py drives every one, and every transition between them, with
    bytes in and Actions out."""
    # Ended (QUIT, a protocol error, a refused login past max_clients_per_user, a reload's
    # re-check, a lost upstream, Session.abort): nothing more is parsed; close after writing.
    CLOSED = "closed"
    # auth_throttle refused a login: its reply is held back and nothing is parsed until the
    # I/O layer calls resume() (Actions.stall seconds later).
    STALLED = "stalled"
    # Not logged in: AUTH, HELLO, QUIT, RESET are answered here; anything else gets NOAUTH.
    LOGIN = "login"
    # Logged in; its own upstream connection is being opened (Actions.open_upstream): commands
    # wait in the session (also when it is leaving a shared link for a connection of its own).
    CONNECTING = "connecting"
    # Logged in, no upstream connection and none asked for (the last attempt failed before it
    # was ever established): the next command that goes upstream asks again.
    UNCONNECTED = "unconnected"
    # EXEC of a transaction that (un)subscribes was sent: what the client sends next waits for
    # its reply.
    EXEC_WAIT = "exec-wait"
    # Inside MULTI: commands are queued upstream; a refusal dooms the transaction.
    MULTI = "multi"
    # Subscribed to channels, patterns or shard channels: messages pass out of band.
    SUBSCRIBED = "subscribed"
    # CLIENT REPLY OFF, or SKIP for the next command: replies are swallowed here.
    MUTED = "muted"
    # On a shared upstream link (upstream.multiplex): stateless commands only.
    SHARED = "shared"
    # On its own upstream connection, nothing special pending.
    READY = "ready"



# The commands the proxy answers or watches, by family: (session, args) for the ones answered
# before the user's rules are consulted, (session, spec, args, request) for the others.
_LOCAL_FIRST: dict[str, Callable[[Session, list[bytes]], None]] = {
    "auth": connection.cmd_auth,
    "hello": connection.cmd_hello,
    "quit": connection.cmd_quit,
    "reset": connection.cmd_reset,
}
_HANDLERS: dict[str, Callable[[Session, CommandSpec, list[bytes], Request], None]] = {
    "client|reply": connection.cmd_client_reply,
    "select": connection.cmd_select,
    "slowlog|get": acl.cmd_slowlog_get,
    "sort": acl.cmd_sort,
    "sort_ro": acl.cmd_sort,
    "multi": transactions.cmd_multi,
    "exec": transactions.cmd_exec,
    "discard": transactions.cmd_discard,
    "subscribe": pubsub.cmd_subscribe,
    "psubscribe": pubsub.cmd_subscribe,
    "ssubscribe": pubsub.cmd_subscribe,
    "unsubscribe": pubsub.cmd_unsubscribe,
    "punsubscribe": pubsub.cmd_unsubscribe,
    "sunsubscribe": pubsub.cmd_unsubscribe,
}

# Commands that never take the inlined path of Session._run: the ones handled above, and ACL.
# (CLIENT TRACKING: _command refuses REDIRECT and notes that pushes may come.)
_PLAIN = frozenset(set(_LOCAL_FIRST) | set(_HANDLERS) | set(_UNSUPPORTED) | acl.acl_names()
                   | {"client|tracking"})


# What may travel on a shared upstream link: commands with one reply that neither read nor change
# the connection's state and never block it for the others. Connection commands (CLIENT, SELECT,
# WAIT, READONLY, ...), blocking ones (BLPOP, XREAD, ...; XREAD even without BLOCK), MULTI/WATCH,
# subscriptions and admin commands (CONFIG, DEBUG, ...) need a connection of the client's own.
_STATEFUL_CATEGORIES = frozenset({"connection", "blocking", "transaction"})
_STATELESS_CONNECTION = frozenset({"ping", "echo"})
_shareable: dict[str, bool] = {}


def shareable(spec: CommandSpec) -> bool:
    """Whether the command may travel on a shared upstream link (see above)."""
    known = _shareable.get(spec.name)
    if known is None:
        name = spec.name
        known = _shareable[name] = name not in _PLAIN and (
            name in _STATELESS_CONNECTION or name == "command" or name.startswith("command|")
            or not (spec.categories & _STATEFUL_CATEGORIES
                    or spec.flags & {"blocking", "admin", "pubsub"}
                    or (spec.parent is not None and spec.parent.name == "client")))
        if name in ("publish", "spublish") or name.startswith("pubsub|"):
            _shareable[name] = known = True
    return known
