"""The per-connection state machine: authentication, judging, and reply ordering. No I/O.

Feed it what the client sent (``client_data``) and what the upstream Redis sent
(``upstream_data``), and the I/O layer's events (``connected``, ``upstream_failed``, ``resume``,
``reloaded``, ``ended``); then ``actions()`` returns what to do (an ``actions.Actions``: bytes to
the client and to the upstream, open the upstream, close, stall), which the I/O layer executes
without writing anything back here (``abort()`` is how it says it is closing the connection).
Everything that affects what reaches Redis or the client is decided here.

Reply ordering. Every command the client sends gets exactly one slot in ``slots``, in order:
forwarded commands wait for their upstream reply, commands answered here carry their reply bytes.
Consecutive forwarded commands share one slot with a count, so a pipeline of forwarded commands
costs one counter, and upstream bytes are passed through whole while no local reply waits between
them. Upstream bytes are never buffered except for the few setup replies that are swallowed.

CLIENT REPLY OFF / SKIP. Answered here, never sent upstream: the upstream always replies, and
the commands the client muted get DROP slots (their replies swallowed) and no local reply; see
``_handle`` and ``_cmd_client_reply``.

Pub/sub. Messages are not replies: push frames (RESP3) and ``message``/``pmessage``/``smessage``
arrays (RESP2 while subscribed) go to the client at once and are not counted; subscribe-family
commands wait for one confirmation per channel.
"""
from __future__ import annotations

import enum
import logging
import os
import time
from collections import deque
from itertools import repeat

from .. import audit, errors, handshake, memo, metrics
from ..actions import Actions
from ..audit import AUTH_REASONS, Event, login_name, safe, user_label
from ..commands import TABLE, KeyExtractionError, sort_pattern_option
from ..confine import confine
from ..gate import Gate
from ..login import CertIdentity, Method, Via, automatic_candidate, decide_login
from ..memo import ALLOW, ONE_KEY, SCRIPT
from ..metrics import forwarded_counter
from ..options import is_word, word
from ..resp import (Batch, ProtocolError, ReplyScanner, Request, RequestParser, array, bulk,
                   encode_command, error, integer, map_, string2ll)
from ..scripts import queue_of

log = logging.getLogger("redisgate.session")

# Slot kinds.
FWD = 0      # pass the next n upstream replies to the client
SUB = 1      # pass n subscribe-family confirmations (other frames are out of band)
DROP = 2     # swallow n replies of commands the proxy itself sent (setup, DISCARD)
SUBDROP = 3  # swallow n subscribe-family confirmations (RESET on a legacy upstream)
LOCAL = 4    # a reply answered here
CLOSE = 5    # close the client connection once everything before it is written

SUB_HEADS = frozenset({b"subscribe", b"psubscribe", b"ssubscribe",
                       b"unsubscribe", b"punsubscribe", b"sunsubscribe"})
MESSAGE_HEADS = frozenset({b"message", b"pmessage", b"smessage"})

_SUBSCRIBE = {"subscribe": "chan", "psubscribe": "pat", "ssubscribe": "shard"}
_UNSUBSCRIBE = {"unsubscribe": "chan", "punsubscribe": "pat", "sunsubscribe": "shard"}
# Commands that would break the one-reply-per-command accounting, or hand out the upstream
# connection itself; refused even for users whose rules allow them.
_UNSUPPORTED = {
    "monitor": "MONITOR", "sync": "SYNC", "psync": "PSYNC", "replconf": "REPLCONF",
}
# From this version on, Redis sends subscribe-family confirmations and pub/sub messages even
# under CLIENT REPLY OFF / SKIP (CLIENT_PUSHING); Redis 5.0 swallows them too.
_PUSHES_UNDER_REPLY_OFF = (6, 2, 0)
# Answered by the proxy itself, so they exist whatever the upstream's version.
_PROXY_ANSWERED = {"hello", "reset", "auth", "quit"}
_ACL_MUTATIONS = {"acl|setuser", "acl|deluser", "acl|load", "acl|save"}

OK = b"+OK\r\n"
# Session._partial while the unfinished frame is a reply being swallowed, not kept.
_SWALLOWED = b""


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
        self.slots: deque[list] = deque()
        self.close = False            # the I/O layer closes after writing to_client
        self.want_upstream = False    # the I/O layer opens the upstream connection when set
        self.upstream_ready = False
        self.upstream_ever = False    # an upstream connection was established at some point
        # On a shared upstream link (upstream.multiplex): stateless commands only; anything else
        # moves the client to a connection of its own (_leave_shared), for good.
        self.shared = False
        # The protocol of the shared links this session's commands go to (RESP3 or RESP2), bound
        # when the command is judged: the I/O layer sends them to a link of that protocol. It
        # follows the client's protocol (HELLO, RESET) only while nothing is due on the link.
        self.link_resp3 = False
        self.client_id = client_id    # the proxy's id for the connection (HELLO on a shared link)
        self.expected = 0             # replies asked of the shared link so far (its accounting)
        self._accounted = 0           # `expected` already handed over (actions().link_replies)
        self._held: list[bytes] = []  # bytes for the upstream while it is being opened
        # The proxy's AUTH on the upstream connection: until Redis accepted it, `upstream_ready`
        # stays False and everything else for the upstream waits in `_held` (see _send_setup).
        self._open = False            # the upstream connection is open (connected())
        self._auth_wait = False       # that AUTH's reply is due
        self._auth_out: bytes | None = None      # that AUTH, while the connection is opened
        self._auth_password: bytes | None = None  # the password it carries (not a copy)
        self._auth_fallback: str | None = None    # tried again with: handshake.Fallback.source
        self._partial: bytearray | None = None   # a swallowed frame split across reads
        self._dead = False

        self.user_entry = None
        self.username: str | None = None
        self.login_method: Method | None = None   # what let the user in (for the reload re-check)
        self._generation = gate.generation
        # The verified client certificate (mapped to its user by the gate), None without one.
        # Every login goes through login.decide_login with it.
        self.cert = cert
        self.resp3 = False
        self.multi = False
        self.multi_dirty = False
        self.multi_subs: list = []    # (kind, subscribe?, channels) queued in this transaction
        # Whether a C lane (redisgate._lane) reads the memos (the I/O layer says at creation):
        # then allowed EVALSHA calls leave their forms there (_lane_script).
        self.lane_scripts = lane_scripts
        self.home_db = cfg.upstream.db
        self.db = self.home_db
        self.subs = {"chan": set(), "pat": set(), "shard": set()}
        self.sub_active = False       # RESP2 subscribed mode, as confirmed by the upstream
        self.tracking = False         # CLIENT TRACKING ON was sent: invalidation pushes may come
        self.sub_ever = False         # a subscribe-family command was sent: pub/sub pushes may
        # After EXEC of a transaction that (un)subscribes, what the client sends next waits
        # until EXEC's reply tells whether it ran (_exec_subscribed): requests already parsed
        # in `_deferred`, the rest in the parser.
        self._exec_wait = False
        self._resume = False
        self._deferred: list = []
        # CLIENT REPLY, answered here (_cmd_client_reply): the upstream always replies, and the
        # session swallows the replies of the commands the client muted, as Redis would not send
        # them. `_off`: OFF is in force; `_skip`: the command being handled is the one after
        # CLIENT REPLY SKIP; `_skip_next`: SKIP was just asked; `_muted`: the command being
        # handled gets no reply (see _handle, _local, _expect).
        self._off = self._skip = self._skip_next = self._muted = False
        # The user this connection is counted for in Gate.user_clients
        # (limits.max_clients_per_user): from its login until RESET, a login as another user,
        # or the end of the connection (ended()).
        self._counted: str | None = None
        # A nopass `default` whose automatic login found the user at its limit: the connection
        # may still AUTH as someone else; its first command that needs `default` tries again
        # (and is refused, and closed, if it is still full).
        self._default_waiting = False

        self._auto_login(Via.CONNECT)

    # ------------------------------------------------------------------ client side

    def client_data(self, data: bytes) -> None:
        """Judge and route everything the client sent. Never raises."""
        if self._dead:
            return
        if self._generation != self.gate.generation:
            self._refresh_user()
        parser = self.parser
        parser.feed(data)
        while not self._dead and not self.stall and not self._exec_wait:
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
                if not (self._off or self._skip):   # (Redis: no reply under OFF / SKIP either)
                    self._local(e.reply)
                self._close_after()
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
        if self._held:
            self._flush_held()
        if self.stall and self._stalled is None and not self.slots and self.to_client:
            # The refused login's reply is the last one so far (nothing was parsed after it).
            self._stalled = self.to_client.pop()

    def resume(self) -> None:
        """The I/O layer waited `stall` seconds: the refused login's reply, then what the client
        sent meanwhile."""
        self.stall = 0.0
        if self._stalled is not None:
            reply, self._stalled = self._stalled, None
            self._local(reply)
        self.client_data(b"")

    def _run(self, batch) -> None:
        """Judge a batch (resp.Batch). The common case, an ordinary command the user may run with
        nothing special pending, is inlined here: a memoised name lookup, the arity, the judge.
        Consecutive allowed requests are forwarded as one slice of what the client sent (the
        client's read itself when all of it passes) and share one reply slot."""
        entry = self.user_entry
        count = len(batch.args)
        self.commands += count
        if entry is None or entry.learn or self.multi or not self.upstream_ready \
                or self.shared and self.link_resp3 != self.resp3 or self._off or self._skip:
            return self._handle_from(batch, 0)
        user = entry.user
        memo = self.gate.fast_shared if self.shared else self.gate.fast_commands
        known = memo.get(user)
        if known is None:
            known = memo[user] = {}
        lookup = known.get
        judge = None   # and db: looked up at the first command that needs them
        j0 = 0         # the first request not forwarded yet
        run = batch.args
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
                        judge, db = user.judge, self._databases()
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
                self._expect(FWD, j - j0)   # (counts `expected` when shared)
            j0 = j + 1
            if self._dead:
                return
            self._handle(batch.request(j))
            if self.user_entry is not entry or self.multi or not self.upstream_ready \
                    or self._dead or self._rebind_pending() or self._off or self._skip:
                # State changed (AUTH, MULTI, RESET, QUIT, a protocol switch on a shared link,
                # CLIENT REPLY OFF / SKIP, ...): the careful path takes the rest (after QUIT:
                # nothing).
                return self._handle_from(batch, j + 1)
        if j0 < count:
            self.to_upstream.append(batch.raw(j0) if j0 else batch.buf[batch.start:batch.stop])
            slots = self.slots   # _expect(FWD, ...), inlined
            if slots and slots[-1][0] == FWD and slots[-1][2] is None:
                slots[-1][1] += count - j0
            else:
                slots.append([FWD, count - j0, None])
            if self.shared:
                self.expected += count - j0

    def _handle_from(self, batch, j: int) -> None:
        """Requests j.. of `batch` the careful way, one at a time (after QUIT: nothing; after
        an EXEC that must be answered first: deferred, see `_exec_wait`)."""
        for k in range(j, len(batch.args)):
            if self._dead:
                return
            if self._exec_wait:
                return self._defer(batch, k)
            self._handle(batch.request(k))

    def _defer(self, batch, j: int) -> None:
        """Requests j.. of `batch` wait (see `_exec_wait`)."""
        self._deferred.extend(batch.request(k) for k in range(j, len(batch.args)))

    def _continue_input(self) -> None:
        """EXEC's reply came: judge what waited for it, in order."""
        waiting, self._deferred = self._deferred, []
        for i, req in enumerate(waiting):
            if self._dead:
                return
            if self._exec_wait:   # (another such EXEC among them)
                self._deferred = waiting[i:] + self._deferred
                return
            if req.raw is None:
                self._handle(req)
            else:
                self._run(Batch.of(req))
        if not self._exec_wait:
            self.client_data(b"")

    def _inline(self, args, known: dict):
        """How `_run` judges this command inline (a memo.Verdict, built from the user's
        rules.User.verdict), or None when it must go to `_handle` (answered or watched here, a
        container, unknown to the upstream). Its `counter` counts the commands forwarded this
        way (metrics.forwarded_counter; the C lane adds to it too). Memoised in `known` (the
        user's, on the gate) per name as sent."""
        spec = TABLE.lookup(args)
        if spec is None or spec.is_container or spec.name in _PLAIN \
                or not self.gate.available(spec) or (self.shared and not shareable(spec)):
            return None
        a = spec.arity
        fewest, most = (a, a) if a >= 0 else (-a, 1 << 62)
        inline = memo.compile_entry(spec, fewest, most, self.user_entry.user.verdict(spec),
                                    forwarded_counter(self.username, spec.name))
        if spec.parent is None and len(known) < 1024:
            # Not subcommands: their spec depends on args[1] as well. The bound: names come from
            # clients, in any mix of cases.
            known[args[0]] = inline
        return inline

    def _lane_script(self, inline, args) -> None:
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
        form = self.user_entry.user.lane_script(inline.spec, args)
        if form is not None:
            inline.learn(sha, q, memo.script_form(form))
        # (None: this call did not take the compiled path. Not remembered: the next one may.)

    def _handle(self, req) -> None:
        """One command the careful way, with CLIENT REPLY's effect on its reply: under OFF, or
        right after SKIP, whatever it answers (a reply from the upstream, an error or a reply of
        the proxy's) is not sent, as Redis's prepareClientToWrite refuses it; then, as Redis's
        resetClient, a SKIP just asked applies to the next command."""
        if self._off or self._skip:
            self._muted = True
            self._command(req)
            self._muted = False
        else:
            self._command(req)
        if self._skip or self._skip_next:
            self._skip, self._skip_next = self._skip_next, False

    def _command(self, req) -> None:
        args = req.args
        version = self.gate.upstream_version
        spec = TABLE.lookup(args)
        self._label = spec.name if spec is not None else "other"
        if spec is None or (not self.gate.available(spec) and spec.name not in _PROXY_ANSWERED
                            and not spec.name.startswith("acl")):
            if spec is not None and spec.parent is not None and self.gate.available(spec.parent):
                # A subcommand newer than the upstream (CLIENT INFO on 5.0): its container's error.
                return self._reject(errors.unknown_subcommand(version, args))
            return self._reject(errors.unknown_command(version, args))
        if spec.is_container:
            if not spec.check_arity(len(args)):
                return self._reject(errors.wrong_arity(version, spec.name))
            return self._reject(errors.unknown_subcommand(version, args))
        if not spec.check_arity(len(args)):
            return self._reject(errors.wrong_arity(version, spec.name, args))
        name = spec.name
        if self._default_waiting and self.user_entry is None \
                and (name not in _LOCAL_FIRST or name == "hello" and _hello_without_auth(args)):
            self._auto_login(Via.CONNECT, wait=False)   # (refused and closed if still full)
            if self._dead:
                return
        if self.user_entry is None and ("no_auth" not in spec.flags
                                        or (name == "reset" and version < (7, 0, 0))):
            return self._reject(errors.noauth())   # (RESET needs a login before 7.0)
        if name in _LOCAL_FIRST:
            # AUTH, HELLO, QUIT, RESET: allowed for everyone (no_auth), never forwarded as sent.
            return _LOCAL_FIRST[name](self, args)

        entry = self.user_entry
        user = entry.user
        try:
            denial = user.judge(spec, args, db=self._databases())
        except KeyExtractionError as e:
            return self._reject(e.reply)
        if denial is not None and denial.kind == "keyspace" and entry.confine_scan \
                and name in ("scan", "keys"):
            confined = confine(name, args, user.read_prefix(spec))
            if confined is not None:
                denial = None
                req = Request(confined, None)   # re-encoded: it may carry an added MATCH
        if denial is not None:
            self._record_denial(denial, spec, args)
            # A "secret" refusal (CONFIG GET of the upstream's credentials) holds in report-only
            # and learn mode too: reporting it after the secret left would be too late.
            if not (user.report_only or entry.learn) or denial.kind == "secret":
                return self._reject(denial.reply(version, self.username))
        if entry.learn:
            self.gate.learner(self.username).observe(spec, args)

        if name in _UNSUPPORTED:
            return self._reject(error(f"ERR {_UNSUPPORTED[name]} is not supported through redisgate"))
        if name == "client|tracking":
            if _tracking_redirect(args):
                # Another connection's id would be another client's stream (or a shared link).
                return self._reject(error("ERR CLIENT TRACKING REDIRECT is not supported through "
                                          "redisgate: a client cannot name another connection"))
            if is_word(args[2], b"on"):
                self.tracking = True   # (invalidation pushes may come now: see _unasked)
        handler = _HANDLERS.get(name)
        if handler is not None:
            return handler(self, spec, args, req)
        if name.startswith("acl|"):
            return self._acl(spec, args)
        self._forward(req, shared_ok=shareable(spec))

    # -- results

    def _reject(self, reply: bytes) -> None:
        """A command answered with an error here; inside MULTI it dooms the transaction, as in Redis."""
        _metric("refused", self.username, self._label)
        if self.multi:
            self.multi_dirty = True
        self._local(reply)

    def _local(self, reply: bytes) -> None:
        if self._muted:
            return
        if self.slots:
            self.slots.append([LOCAL, 0, reply])
        else:
            self.to_client.append(reply)

    def _close_after(self) -> None:
        if self.slots:
            self.slots.append([CLOSE, 0, None])
        else:
            self.close = True

    def _forward(self, req, kind: int = FWD, n: int = 1, payload=None,
                 shared_ok: bool = False) -> None:
        forwarded_counter(self.username, self._label).add(1)
        self._send_upstream(req.raw if req.raw is not None else encode_command(req.args),
                            shared_ok)
        self._expect(kind, n, payload)

    def _expect(self, kind: int, n: int, payload=None) -> None:
        if self.shared:
            self.expected += n   # only FWD (or its muted DROP) gets here while shared
        if self._muted:
            # The client muted this command's reply (CLIENT REPLY): swallowed when it comes.
            if kind == FWD:
                kind = DROP   # (an EXEC's _ExecSubs payload stays: it still decides)
            elif kind == SUB and self.gate.upstream_version < _PUSHES_UNDER_REPLY_OFF:
                kind = SUBDROP   # (payload: whether subscribed after it)
        slots = self.slots
        if kind <= DROP and kind != SUB and slots and slots[-1][0] == kind \
                and slots[-1][2] is None and payload is None:
            slots[-1][1] += n
        else:
            slots.append([kind, n, payload])

    def _send_upstream(self, data: bytes, shared_ok: bool = False) -> None:
        if self.shared and not (shared_ok and self._bound()):
            self._leave_shared()
        if self.upstream_ready:
            self.to_upstream.append(data)
        else:
            if not self.want_upstream:
                self._open_upstream()
            self._held.append(data)

    def _rebind_pending(self) -> bool:
        """On a shared link, speaking another protocol than the link's (see _bound)."""
        return self.shared and self.link_resp3 != self.resp3

    def _bound(self) -> bool:
        """Whether the session's shared commands may go to links of its protocol: the links
        it is bound to speak it, or nothing is due on them, so it binds to the other protocol's
        links now (the I/O layer follows `link_resp3`). Replies due on the old link would race
        the new one's: then the session must leave the shared links instead."""
        if self.link_resp3 == self.resp3:
            return True
        for slot in self.slots:
            if slot[0] < LOCAL:
                return False
        self.link_resp3 = self.resp3
        return True

    def _leave_shared(self) -> None:
        """The client needs a connection of its own (MULTI, SELECT, HELLO, a blocking command,
        ...). What it sent so far is on the shared link; what comes now waits in `_held` until
        the I/O layer has the new connection and every shared reply is in (then `connected()`):
        so commands run, and replies come back, in the order sent."""
        self.shared = False
        self.upstream_ready = False
        self._open_upstream()
        if self.resp3:
            # It spoke RESP3 on a RESP3 link; its own connection must too.
            self._held.append(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
            self.slots.append([DROP, 1, "protocol selection"])

    def held_bytes(self) -> int:
        """Bytes waiting for an upstream connection being opened (the I/O layer bounds them)."""
        return sum(map(len, self._held))

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
        replies = self.expected - self._accounted
        if out:
            upstream = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._accounted = self.expected
        else:
            upstream = b""
            replies = 0   # (counted with the bytes that ask for them)
        return Actions.new(client, upstream, self.shared or replies != 0, replies,
                           self.link_resp3, self.want_upstream, self.close, self.stall)

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
        slots = self.slots
        return sum([slot[1] or 1 for slot in slots]) if slots else 0

    def owes_replies(self) -> bool:
        """Whether anything the client sent still waits for its reply (in slots, held for an
        upstream connection being opened, or a refused login's reply held by auth_throttle),
        on a connection that is not ending."""
        return not (self.close or self._dead) and bool(self.slots or self._held or self.stall)

    def quiet(self) -> bool:
        """Logged in and waiting for nothing (limits.idle_timeout may count it idle): no reply
        due, nothing held, no subscription."""
        return self.user_entry is not None and not (
            self.slots or self._held or self.sub_active or any(self.subs.values()))

    @property
    def ending(self) -> bool:
        """The session ended itself (QUIT, a protocol error, a reload's re-check, ...)."""
        return self._dead

    @property
    def state(self) -> "State":
        """The session's state, named (see State): what it does with the next bytes."""
        if self._dead or self.close:
            return State.CLOSED
        if self.stall:
            return State.STALLED
        if self.user_entry is None:
            return State.LOGIN
        if not self.upstream_ready:
            return State.CONNECTING if self.want_upstream else State.UNCONNECTED
        if self._exec_wait:
            return State.EXEC_WAIT
        if self.multi:
            return State.MULTI
        if self.sub_active or self._subscribed():
            return State.SUBSCRIBED
        if self._off or self._skip or self._skip_next:
            return State.MUTED
        return State.SHARED if self.shared else State.READY

    def _flush_held(self) -> None:
        if self.upstream_ready and self._held:
            self.to_upstream.extend(self._held)
            self._held.clear()

    # -- authentication

    @property
    def cert_user(self) -> str | None:
        """The user the connection's certificate maps to (None: no certificate, or nobody)."""
        return self.cert.user if self.cert is not None else None

    def _auto_login(self, via: Via, wait: bool = True) -> None:
        """The login without credentials, at connect and after RESET: the certificate's user, else
        a nopass `default` (login.decide_login says whether). Past max_clients_per_user, a
        certificate's user is refused (and the connection closed) at once; `default` waits for
        the first command that needs it (`wait`; see _default_waiting), as the connection may
        AUTH as another user first."""
        self._default_waiting = False
        entry = automatic_candidate(self.gate.users, self.cert)
        if entry is None:
            return
        result = decide_login(entry, password=None, via=via, cert=self.cert)
        if result.ok:
            if not self._claim(entry):
                if wait and self.cert is None:
                    self._default_waiting = True
                    return
                return self._refuse_max_clients(entry)
            self._login(entry, via=result.method.value, method=result.method, attempt=via)
        elif result.outcome.value == "disabled":
            # A certificate (or a nopass default) naming a user that is not `on`: its client
            # gets a bare NOAUTH; the audit says why. (No password was checked: no throttle.)
            self._audit("auth-failed", user=safe(entry.name), reason="disabled", via=via.value)

    def _audit(self, event: str, /, **fields) -> None:
        """audit.emit an Event `event` (with audit.Event's `fields`) as this connection's."""
        if audit.wanted(event, fields.get("user")):
            audit.emit(Event(event, peer=self.peer, info=self.client_info, **fields),
                       admitted=True)

    def _login(self, entry, via: str, *, method: Method, attempt: Via) -> None:
        self._default_waiting = False
        self.user_entry = entry
        self.username = entry.name
        self.login_method = method
        self.parser.set_authenticated(True)
        self._audit("auth-ok", user=safe(entry.name), via=via, method=attempt.value)
        if not self.upstream_ready and not self.want_upstream:
            if self.gate.config.upstream.multiplex and not self.upstream_ever \
                    and self.db == self.home_db:
                # A fresh connection has no state: a shared link will do. The I/O layer picks
                # one that speaks the client's protocol when the first command comes.
                self.shared = self.upstream_ready = True
                self.link_resp3 = self.resp3
            else:
                self._open_upstream()

    def _authenticate(self, username: bytes | None, password: bytes,
                      via: Via = Via.AUTH) -> bytes | None:
        """Check credentials (login.decide_login); log in on success. Returns the error reply on
        failure: the same one whatever the reason."""
        version = self.gate.upstream_version
        raw_name = b"default" if username is None else username
        try:
            entry = self.gate.users.get(raw_name.decode())
        except UnicodeDecodeError:
            entry = None
        if username is None and entry is not None and entry.user.nopass and entry.user.enabled:
            return error("ERR AUTH <password> called without any password configured for the "
                         "default user. Are you sure your configuration is correct?")
        throttle = self.gate.throttle
        if throttle.locked(self.address, raw_name):
            # auth_throttle: refused without checking, with a wrong password's reply, the same
            # for every name (a lockout tells nothing about which users exist).
            self._auth_failed(raw_name, "locked-out", via)
            return errors.wrongpass(version)
        result = decide_login(entry, password=password, via=via, cert=self.cert)
        if not result.ok:
            self._auth_failed(raw_name, AUTH_REASONS.get(result.outcome.value,
                                                         result.outcome.value), via)
            return errors.wrongpass(version)
        throttle.succeeded(self.address, raw_name)
        if not self._claim(entry):
            # Past limits.max_clients_per_user: refused and closed (the caller sees `_dead`).
            self._refuse_max_clients(entry)
            return None
        self._login(entry, via=result.method.value, method=result.method, attempt=via)
        self._adopt_user_state()
        return None

    # -- limits.max_clients_per_user

    def _claim(self, entry) -> bool:
        """Count this connection for `entry`'s user (the one it was counted for, if another, is
        released), unless that user already has limits.max_clients_per_user connections."""
        if self._counted == entry.name:
            return True
        if not self.gate.claim_client(entry.name):
            return False
        self._release()
        self._counted = entry.name
        return True

    def _release(self) -> None:
        if self._counted is not None:
            self.gate.release_client(self._counted)
            self._counted = None

    def _refuse_max_clients(self, entry) -> None:
        """A login past limits.max_clients_per_user: Redis's maxclients error, then the
        connection is closed (nothing the client sent after it is judged)."""
        self.end_reason = "max-clients-per-user"
        _metric("clients_refused", "max_clients_per_user")
        self._local(errors.max_clients())
        self._close_after()
        self._dead = True

    def ended(self) -> None:
        """The I/O layer closed the connection: its user's count goes down."""
        self._release()

    def _auth_failed(self, raw_name: bytes, reason: str, via: Via) -> None:
        """Record a refused login: ACL LOG, audit, metrics, auth_throttle. What a client sent as
        a name shows only if it names a configured user (it may be a password typed into the
        wrong slot): else `unknown` (ACL LOG, metrics) or `unknown:<8 hex>` (audit). `reason`:
        an audit.AUTH_REASONS value, or "locked-out" (auth_throttle refused it unchecked)."""
        users = self.gate.users
        label = user_label(raw_name, users)
        self.gate.acl_log.add("auth", "toplevel", "AUTH", label, self.client_info)
        shown = login_name(raw_name, users)
        self._audit("auth-failed", user=shown, reason=reason, via=via.value)
        _metric("auth_failures", label, reason)
        if reason == "locked-out":
            # Counted; the audit's rate limit (or, without an `audit:` section, the plain-text
            # form, which leaves these out) keeps a flood from filling the disk.
            self.stall = self.gate.throttle.delay
            _metric("auth_refused_locked")
            return
        throttle = self.gate.throttle
        for scope in throttle.failed(self.address, raw_name):
            s = throttle.settings
            self._audit("lockout", user=shown if scope == "user" else None, scope=scope,
                        address=safe(self.address), seconds=s.lockout,
                        failures=s.max_failures, window=s.window)
            _metric("auth_lockouts", scope)
            self.stall = throttle.delay

    def reloaded(self, cert_trusted: bool = True) -> None:
        """The configuration was reloaded (called by the I/O layer for every open connection;
        also done at the next command). `cert_trusted`: whether the listener's current client CA
        still vouches for the connection's certificate."""
        if self.cert is not None and not cert_trusted and self.cert.trusted:
            from dataclasses import replace
            self.cert = replace(self.cert, trusted=False)
        self._refresh_user()

    def _adopt_user_state(self) -> None:
        """After a login on a connection that may hold another user's state: what the new user
        may not hold goes. A database outside its `databases` goes back to the home database,
        subscriptions to channels or patterns it may not use are unsubscribed; the upstream's
        replies to both are swallowed. (A shared session has neither: SELECT and subscriptions
        move a client off the links.)"""
        if self.shared:
            return
        user = self.user_entry.user
        dbs = self._databases()   # (a set, or the home database alone)
        if self.db != self.home_db and not user.has_allkeys \
                and not (self.db in dbs if isinstance(dbs, frozenset) else self.db == dbs):
            self.db = self.home_db
            self._send_upstream(encode_command([b"SELECT", str(self.home_db).encode()]))
            self._expect(DROP, 1)
        dropped = 0
        for kind, command in (("chan", b"UNSUBSCRIBE"), ("pat", b"PUNSUBSCRIBE"),
                              ("shard", b"SUNSUBSCRIBE")):
            subs = self.subs[kind]
            gone = sorted(c for c in subs if not user.check_channel(c, pattern=kind == "pat"))
            if gone:
                subs.difference_update(gone)
                self._send_upstream(encode_command([command] + gone))
                dropped += len(gone)
        if dropped:
            self._expect(SUBDROP, dropped)

    def _refresh_user(self) -> None:
        """After a reload: the certificate is mapped again, and the session keeps its user only if
        login.decide_login would still let it in by the route it took; else it is closed."""
        self._generation = self.gate.generation
        if self.cert is not None:
            self.cert = self.gate.remap_certificate(self.cert)
        if self.user_entry is None or self._dead:
            return
        entry = self.gate.users.get(self.username)
        result = decide_login(entry, password=None, via=Via.RELOAD, cert=self.cert,
                              proven=self.login_method)
        if not result.ok:
            # (audited as the disconnect's reason: ClientConnection.reloaded / connection_lost)
            self.end_reason = f"reload:{result.outcome.value}"
            self.user_entry = None
            self._release()
            self.parser.set_authenticated(False)
            self._close_after()
            self._dead = True
        else:
            self.user_entry = entry

    # -- denials

    def _record_denial(self, denial, spec, args) -> None:
        context = "multi" if self.multi else "toplevel"
        obj = denial.object if isinstance(denial.object, str) else \
            denial.object.decode("utf-8", "backslashreplace")
        self.gate.acl_log.add(denial.kind, context, obj, self.username, self.client_info)
        report_only = (self.user_entry.user.report_only or self.user_entry.learn) \
            and denial.kind != "secret"
        mode = "report-only" if report_only else "denied"
        user = safe(self.username)
        if audit.wanted("denied", user):   # (else nothing of it is built)
            audit.emit(Event("denied", peer=self.peer, info=self.client_info,
                             **_denied_fields(denial, spec, args, user, report_only)),
                       admitted=True)
        _metric("denied", user_label(self.username, self.gate.users), denial.kind, mode)

    # -- handlers for commands the proxy answers or watches

    def _cmd_auth(self, args) -> None:
        if not self.resp3 and self._subscribed():   # (RESP2 subscribed mode, as in Redis)
            return self._reject(errors.pubsub_context(self.gate.upstream_version, "auth"))
        if len(args) > 3:
            return self._reject(error("ERR syntax error"))
        if self.multi:
            return self._reject(errors.not_in_multi())
        user, password = (None, args[1]) if len(args) == 2 else (args[1], args[2])
        err = self._authenticate(user, password)
        if not self._dead:   # (dead: refused by max_clients_per_user, answered already)
            self._local(err or OK)

    def _cmd_hello(self, args) -> None:
        version = self.gate.upstream_version
        if version < (6, 0, 0):
            # Redis < 6 has no HELLO, whatever its arguments (HELLO 2 included): its own
            # unknown-command error, which go-redis and redis-py take as "fall back to RESP2 +
            # AUTH", minus the credentials. Refused like any unknown command: inside MULTI it
            # dooms the transaction, and commands behind it are judged as before.
            return self._reject(errors.legacy_hello(version, args))
        if not self.resp3 and self._subscribed():   # (RESP2 subscribed mode, as in Redis)
            return self._reject(errors.pubsub_context(version, "hello"))
        if self.multi:
            return self._reject(errors.not_in_multi())
        # Redis 6.2/7.0's helloCommand, step by step: the protocol (string2ll), then each option
        # in order, acting at once: an AUTH logs in (or fails) there and then, a SETNAME is
        # checked there; a later error leaves an earlier login (and name) in place.
        proto = None
        if len(args) >= 2:
            proto = string2ll(args[1])
            if proto is None:
                return self._local(error("ERR Protocol version is not an integer or out of range"))
            if proto < 2 or proto > 3:
                return self._local(errors.noproto())
        setname = None
        i = 2
        while i < len(args):
            opt = args[i].split(b"\0", 1)[0]   # as Redis prints it (%s stops at a NUL)
            more = len(args) - i - 1
            if is_word(args[i], b"auth") and more >= 2:
                err = self._authenticate(args[i + 1], args[i + 2], via=Via.HELLO)
                if self._dead:   # (refused by max_clients_per_user, answered already)
                    return
                if err is not None:
                    return self._hello_failed(err, setname)
                i += 3
            elif is_word(args[i], b"setname") and more >= 1:
                if not _valid_client_name(args[i + 1]):
                    return self._hello_failed(error("ERR Client names cannot contain spaces, "
                                                    "newlines or special characters."), setname)
                setname = args[i + 1]
                i += 2
            else:
                return self._hello_failed(
                    error(b"ERR Syntax error in HELLO option '" + opt + b"'"), setname)
        if self.user_entry is None:
            return self._local(errors.noauth_hello())
        if proto is not None:
            self.resp3 = proto == 3
        if self.shared and setname is None:
            # A shared link's protocol is not one client's to switch, nor its id one to show:
            # answered here, in the upstream's own words (Gate.hello_reply), with the proxy's id
            # for the client. Its next commands go to links of its protocol (_bound), or, with
            # replies still due on the old one, to a connection of its own.
            self._bound()
            return self._local(self.gate.hello_reply(self.resp3, self.client_id))
        fwd = [b"HELLO"] + ([str(proto).encode()] if proto else [])
        if setname is not None:
            fwd += [b"SETNAME", setname]
        self._send_upstream(encode_command(fwd))   # (a name: off a shared link)
        self._expect(FWD, 1)

    def _hello_failed(self, reply: bytes, setname: bytes | None) -> None:
        """HELLO stopped at an option: as in Redis, a name set by an earlier SETNAME stays (on
        a logged-in connection; before login the proxy has no connection to name)."""
        if setname is not None and self.user_entry is not None:
            self._send_upstream(encode_command([b"CLIENT", b"SETNAME", setname]))
            self._expect(DROP, 1)
        self._local(reply)

    def _cmd_quit(self, args) -> None:
        self._local(OK)
        self._close_after()
        self._dead = True
        self.end_reason = "quit"

    def _cmd_reset(self, args) -> None:
        """RESET: the client starts over; the upstream connection keeps the proxy's identity."""
        if self._off:   # RESET turns CLIENT REPLY OFF off, and then replies (unless SKIPped)
            self._off = False
            self._muted = self._skip
        if self.shared:
            # A shared client has no connection state to reset; its protocol goes back to RESP2
            # below, and its next commands to RESP2 links (see _bound).
            reply = b"+RESET\r\n"
        elif self.upstream_ready or self.want_upstream:
            if self.gate.upstream_version >= (6, 2, 0):
                self._send_upstream(b"*1\r\n$5\r\nRESET\r\n")
                self._expect(FWD, 1)
                self._send_setup()
                reply = None
            else:
                if self.multi:
                    self._send_upstream(b"*1\r\n$7\r\nDISCARD\r\n")
                    self._expect(DROP, 1)
                if self._subscribed():
                    n = 0
                    for cmd, kind in ((b"UNSUBSCRIBE", "chan"), (b"PUNSUBSCRIBE", "pat")):
                        self._send_upstream(encode_command([cmd]))
                        n += max(1, len(self.subs[kind]))
                    self._expect(SUBDROP, n)
                else:
                    self._send_upstream(b"*1\r\n$7\r\nUNWATCH\r\n")
                    self._expect(DROP, 1)
                if self.db != self.home_db:
                    self._send_upstream(encode_command([b"SELECT", str(self.home_db).encode()]))
                    self._expect(DROP, 1)
                reply = b"+RESET\r\n"
        else:
            reply = b"+RESET\r\n"
        if reply:
            self._local(reply)
        self.resp3 = False
        if self.shared:
            self._bound()
        self.multi = self.multi_dirty = False
        for s in self.subs.values():
            s.clear()
        self.sub_active = False
        self.db = self.home_db
        if self.user_entry is not None:
            self._audit("logout", user=safe(self.username), via="RESET")
        self.user_entry = None
        self.username = None
        self.login_method = None
        self._release()
        self.parser.set_authenticated(False)
        self._auto_login(Via.RESET)

    def _databases(self, entry=None):
        """The databases a user (the logged-in one by default) may SELECT; others need allkeys."""
        dbs = (entry or self.user_entry).databases
        return dbs if dbs is not None else self.home_db

    def _cmd_client_reply(self, spec, args, req) -> None:
        """CLIENT REPLY ON|OFF|SKIP (networking.c clientCommand), answered here on every link:
        the upstream is never asked, so it always replies, and `_handle` swallows the replies
        Redis would not send. OFF and SKIP reply nothing, ON replies +OK even when muted
        (Redis clears the flags, then replies); SKIP under OFF does nothing."""
        if not self.resp3 and self._subscribed():   # (RESP2 subscribed mode: Redis refuses it)
            return self._reject(errors.pubsub_context(self.gate.upstream_version, spec.name))
        if self.multi:
            # Queued, Redis would change the flags halfway through EXEC's reply array and
            # break it; refused (and the transaction with it).
            return self._reject(error("ERR CLIENT REPLY inside MULTI is not supported through "
                                      "redisgate"))
        mode = word(args[2])
        if mode == b"on":
            self._off = self._skip = self._muted = False
            self._local(OK)
        elif mode == b"off":
            self._off = True
        elif mode == b"skip":
            if not self._off:
                self._skip_next = True
        else:
            self._reject(b"-ERR syntax error\r\n")

    def _cmd_select(self, spec, args, req) -> None:
        # The judge has refused databases outside the user's list already; a malformed index
        # (allowed only with allkeys) gets Redis's own error from upstream. Redis reads the index
        # with string2ll (no sign but '-', no leading zeros): `SELECT 05` switches nothing.
        if not self.resp3 and self._subscribed():   # (RESP2 subscribed mode: Redis refuses it)
            return self._reject(errors.pubsub_context(self.gate.upstream_version, "select"))
        index = string2ll(args[1])
        if index is not None and index >= 0:
            self.db = index
        self._forward(req)

    def _cmd_multi(self, spec, args, req) -> None:
        if not self.resp3 and self._subscribed():   # (RESP2 subscribed mode: Redis refuses it)
            return self._reject(errors.pubsub_context(self.gate.upstream_version, "multi"))
        if not self.multi:
            self.multi = True
            self.multi_dirty = False
            self.multi_subs = []
        self._forward(req)

    def _cmd_exec(self, spec, args, req) -> None:
        if self.multi and self.multi_dirty:
            self._send_upstream(b"*1\r\n$7\r\nDISCARD\r\n")
            self._expect(DROP, 1)
            self._local(errors.execabort())
        elif self.multi and self.multi_subs:
            # Whether it runs (WATCH) decides the subscriptions and the replies to come: what
            # the client sent next waits for its reply (_exec_subscribed).
            self._forward(req, payload=self._exec_plan())
            self._exec_wait = True
        else:
            self._forward(req)
        self.multi = self.multi_dirty = False
        self.multi_subs = []

    def _exec_plan(self) -> "_ExecSubs":
        """What EXEC of a transaction with (un)subscribe commands does, if it runs: the
        subscriptions after it, and how many replies spill out after its array."""
        subs = {kind: set(chans) for kind, chans in self.subs.items()}
        spill = 0
        for kind, subscribe, chans in self.multi_subs:
            if subscribe:
                subs[kind].update(chans)
                replies = len(chans)
            elif chans:
                subs[kind].difference_update(chans)
                replies = len(chans)
            else:
                replies = max(1, len(subs[kind]))
                subs[kind].clear()
            spill += replies - 1
        return _ExecSubs(subs, spill)

    def _cmd_sort(self, spec, args, req) -> None:
        """SORT/SORT_RO BY <pattern with *> and GET read keys no key spec names. Redis 7 refuses
        them to users without full key access inside SORT; older upstreams do not, so the proxy
        does, with Redis 7's reply."""
        if not self.user_entry.user.has_allkeys:
            refusal = sort_pattern_option(args)
            if refusal is not None:
                return self._reject(refusal)
        self._forward(req, shared_ok=True)

    def _cmd_discard(self, spec, args, req) -> None:
        self.multi = self.multi_dirty = False
        self.multi_subs = []
        self._forward(req)

    def _cmd_subscribe(self, spec, args, req) -> None:
        self.sub_ever = True
        kind = _SUBSCRIBE[spec.name]
        if self.multi:   # queued: +QUEUED now, the confirmations in EXEC's reply (_exec_plan)
            self.multi_subs.append((kind, True, args[1:]))
            return self._forward(req)
        self.subs[kind].update(args[1:])
        self._forward(req, SUB, len(args) - 1, self._subscribed())

    def _cmd_unsubscribe(self, spec, args, req) -> None:
        self.sub_ever = True
        kind = _UNSUBSCRIBE[spec.name]
        if self.multi:
            self.multi_subs.append((kind, False, args[1:]))
            return self._forward(req)
        subs = self.subs[kind]
        if len(args) > 1:
            n = len(args) - 1
            subs.difference_update(args[1:])
        else:
            n = max(1, len(subs))
            subs.clear()
        self._forward(req, SUB, n, self._subscribed())

    def _subscribed(self) -> bool:
        return any(self.subs.values())

    def _acl(self, spec, args) -> None:
        name = spec.name
        if self.multi:
            return self._reject(errors.not_in_multi())
        gate = self.gate
        if name == "acl|whoami":
            return self._local(bulk(self.username.encode()))
        if name == "acl|users":
            return self._local(array([bulk(n.encode()) for n in sorted(gate.users)]))
        if name == "acl|list":
            return self._local(array([bulk(f"user {n} {gate.users[n].user.describe()}".encode())
                                      for n in sorted(gate.users)]))
        if name == "acl|cat":
            from ..commands import categories, commands_in_category
            if len(args) == 2:
                return self._local(array([bulk(c.encode()) for c in categories()]))
            # ACLGetCommandCategoryFlagByName: strcasecmp; the error prints the C string (%.128s)
            cat = word(args[2]).decode("utf-8", "replace")
            if cat not in categories():
                shown = args[2].split(b"\0", 1)[0][:128].decode("utf-8", "replace")
                return self._local(error(f"ERR Unknown category '{shown}'"))
            return self._local(array([bulk(s.name.encode()) for s in commands_in_category(cat)]))
        if name == "acl|log":
            return self._acl_log(args)
        if name == "acl|dryrun":
            return self._acl_dryrun(args)
        if name == "acl|genpass":
            bits = 256
            if len(args) == 3:
                try:
                    bits = int(args[2])
                except ValueError:
                    bits = -1
                if not 0 < bits <= 4096:
                    return self._local(error("ERR ACL GENPASS argument must be the number of bits "
                                             "for the output password, a positive number up to 4096"))
            return self._local(bulk(os.urandom((bits + 7) // 8).hex()[:(bits + 3) // 4].encode()))
        if name in _ACL_MUTATIONS:
            sub = name.split("|")[1].upper()
            return self._local(error(f"ERR ACL {sub} is refused by redisgate: users and rules "
                                     "change only through its configuration file"))
        return self._local(error(f"ERR ACL {name.split('|')[1].upper()} is not supported through "
                                 "redisgate"))

    def _acl_log(self, args) -> None:
        log_ = self.gate.acl_log
        if len(args) == 3:
            if is_word(args[2], b"reset"):
                log_.reset()
                return self._local(OK)
            try:
                count = int(args[2])
                if count < 0:
                    raise ValueError
            except ValueError:
                return self._local(error("ERR value is out of range, must be positive"))
        else:
            count = 10
        now = int(time.time() * 1000)
        newer = self.gate.upstream_version >= (7, 2, 0)
        items = []
        for e in list(log_.entries)[:count]:
            pairs = [(b"count", integer(e.count)), (b"reason", bulk(e.reason.encode())),
                     (b"context", bulk(e.context.encode())), (b"object", bulk(e.object.encode())),
                     (b"username", bulk(e.username.encode())),
                     (b"age-seconds", _double((now - e.created_ms) / 1000, self.resp3)),
                     (b"client-info", bulk(e.client_info.encode()))]
            if newer:
                pairs += [(b"entry-id", integer(e.entry_id)),
                          (b"timestamp-created", integer(e.created_ms)),
                          (b"timestamp-last-updated", integer(e.updated_ms))]
            items.append(map_([(bulk(k), v) for k, v in pairs], self.resp3))
        self._local(array(items))

    def _acl_dryrun(self, args) -> None:
        name = args[2].decode("utf-8", "replace")
        entry = self.gate.users.get(name)
        if entry is None:
            return self._local(error(f"ERR User '{name}' not found"))
        cmd = args[3:]
        spec = TABLE.lookup(cmd)
        if spec is None or spec.is_container or not self.gate.available(spec):
            return self._local(error(f"ERR Command '{cmd[0].decode('utf-8', 'replace')}' not found"))
        if not spec.check_arity(len(cmd)):
            return self._local(error(f"ERR wrong number of arguments for '{spec.name}' command"))
        try:
            denial = entry.user.judge(spec, cmd, db=self._databases(entry))
        except KeyExtractionError as e:
            return self._local(e.reply)
        if denial is None:
            return self._local(OK)
        self._local(bulk(denial.dryrun_text().encode()))

    # ------------------------------------------------------------------ upstream side

    def _open_upstream(self) -> None:
        """Ask the I/O layer for an upstream connection and queue the proxy's own handshake first."""
        self.want_upstream = True
        self._send_setup()

    def _send_setup(self) -> None:
        """Queue the proxy's handshake (handshake.setup). Its AUTH goes first and alone: the
        upstream is not ready (what follows waits in `_held`) until Redis accepted it
        (`_auth_accepted`), so that a refused password can be tried again with the other one
        the proxy knows (`_auth_again`) before anything of the client's was sent. (An AUTH
        queued while another is still due, a RESET's, is sent in turn, without that.)"""
        up = self.gate.config.upstream
        for step in handshake.setup(up):
            if step.purpose == "authentication" and not self._auth_wait \
                    and (self.upstream_ready or not self._open):
                self._auth_wait = True
                self._auth_password = up.password
                self._auth_fallback = None
                if self.upstream_ready:   # (a RESET's: the connection is open)
                    self.upstream_ready = False
                    self.to_upstream.append(step.command)
                else:
                    self._auth_out = step.command
            else:
                (self.to_upstream if self.upstream_ready else self._held).append(step.command)
            self.slots.append([DROP, 1, step.purpose])

    def connected(self) -> None:
        """The upstream connection is open: send the proxy's AUTH, or else release what was
        held for it."""
        self._open = True
        self.upstream_ever = True
        if self._auth_out is not None:
            self.to_upstream.append(self._auth_out)
            self._auth_out = None
        if not self._auth_wait:
            self.upstream_ready = True
            self._flush_held()

    def _auth_accepted(self) -> None:
        """Redis accepted the proxy's AUTH: the upstream is ready, what waited goes."""
        self._auth_wait = False
        self._auth_password = None
        if self._auth_fallback is not None:
            self._fallback_done(True)
        self.upstream_ready = True
        self._flush_held()

    def _auth_again(self, reply: bytes) -> bool:
        """Redis answered the proxy's AUTH with `reply`, an error. When it refused the password
        and this handshake has not tried another yet, send AUTH again with the other password the
        proxy knows (handshake.Passwords) and return True."""
        if self._auth_fallback is not None or self._auth_password is None \
                or not handshake.refused_password(reply):
            return False
        other = self.gate.passwords.other(self._auth_password)
        if other is None:
            return False
        self._auth_fallback = other.source
        self._auth_password = other.password
        self.to_upstream.append(handshake.auth_command(self.gate.config.upstream, other.password))
        return True

    def _fallback_done(self, ok: bool) -> None:
        """Count and audit how the second AUTH went (which password, never the password)."""
        source, self._auth_fallback = self._auth_fallback, None
        metrics.inc("upstream_auth_fallbacks", source, "ok" if ok else "failed")
        self._audit("upstream-auth-fallback", user=safe(self.username) if self.username else None,
                    reason=f"{source} password", ok=ok)

    def auth_retry_due(self) -> bool:
        """Whether a second AUTH (`_auth_again`, the other password) was sent and its reply
        is due: the I/O layer times it as the handshake's (upstream.handshake_timeout)."""
        return self._auth_wait and self._auth_fallback is not None

    def only_handshake_due(self) -> bool:
        """Whether nothing but the proxy's own handshake (its DROP slots, named by purpose) and
        replies answered here behind it is waiting: the upstream has none of the client's
        commands, so giving up the connection loses nothing of the client's."""
        return all(slot[0] == LOCAL or slot[0] == DROP and type(slot[2]) is str
                   for slot in self.slots)

    def handshake_failed(self, reason: str) -> None:
        """The proxy's handshake went unanswered (upstream.handshake_timeout) and the I/O
        layer gave up the connection. With none of the client's commands sent behind it (its
        AUTH still awaited: they wait in `_held`; or none at all), as a connection that could not
        be opened: they get errors, the client stays, its next command tries again. Else (a
        SELECT / HELLO without AUTH went with them) as a lost one: they may still run, so after
        their errors the client is closed."""
        if self._auth_wait or self.only_handshake_due():
            self.upstream_ever = False
        self.upstream_failed(reason)

    def upstream_failed(self, reason: str, established: bool = False) -> None:
        """The upstream could not be reached or went away. Pending commands get an error reply.

        A connection that never got established leaves the client connected (the next command
        tries again). One that was lost (ever established, or `established`: a shared link that
        was working, whose replies were lost in flight) takes the client connection with it, as a
        Redis restart would: its transaction, subscriptions and database are gone.
        """
        if established:
            self.upstream_ever = True
        self.upstream_ready = False
        self.want_upstream = False
        self._open = self._auth_wait = False
        self._auth_out = self._auth_password = None
        if self._auth_fallback is not None:
            self._fallback_done(False)
        self._exec_wait = False
        self._deferred.clear()
        self._held.clear()
        self.to_upstream.clear()
        self._partial = None
        self.scanner = ReplyScanner()
        err = error(f"ERR redisgate: upstream Redis unavailable ({reason})")
        slots, self.slots = self.slots, deque()
        for slot in slots:
            if slot[0] in (FWD, SUB):
                for _ in range(slot[1] if slot[0] == FWD else 1):
                    self.to_client.append(err)
            elif slot[0] == LOCAL:
                self.to_client.append(slot[2])
            elif slot[0] == CLOSE:
                self.close = True
        self.multi = self.multi_dirty = False
        for s in self.subs.values():
            s.clear()
        self.sub_active = False
        if self.upstream_ever:
            self.close = True
            self._dead = True
            self.end_reason = "upstream-lost"
            self._audit("upstream-lost", user=safe(self.username) if self.username else None,
                        reason=safe(reason, 256, spaces=True))
        elif self.shared:
            self.upstream_ready = True   # the next command tries the shared link again

    # -- the C lane (redisgate._lane, driven by server.ClientConnection)

    def lane_handover(self, on_link: int | None = None):
        """(known, due) when the session is in the C lane's steady state, handing it the replies
        due to forwarded commands; else None. The steady state: logged in (not learning), an
        upstream ready, no transaction or subscription, nothing buffered or held, nothing
        pending but forwarded commands. On a shared link (`on_link`: the replies due on it, which
        must be those same replies) the memo is the shared one. `known` is _run's memo for the
        user: the lane forwards exactly what _run's inline path would forward with it."""
        entry = self.user_entry
        if entry is None or entry.learn or self.multi or not self.upstream_ready \
                or self.shared != (on_link is not None) \
                or self.shared and self.link_resp3 != self.resp3 \
                or self._dead or self.close or self.sub_active or self._partial is not None \
                or self._held or self.to_client or self.to_upstream \
                or self._generation != self.gate.generation or not self.scanner.idle \
                or self.parser.buffered or not self.parser.authenticated \
                or self._exec_wait or self._deferred or self._off or self._skip:
            return None
        slots = self.slots
        if slots and (len(slots) > 1 or slots[0][0] != FWD or slots[0][2] is not None):
            return None
        due = slots[0][1] if slots else 0
        if on_link is not None and on_link != due:
            return None
        memo = self.gate.fast_shared if self.shared else self.gate.fast_commands
        known = memo.get(entry.user)
        if known is None:
            known = memo[entry.user] = {}
        slots.clear()
        return known, due

    def lane_returned(self, due: int) -> None:
        """The lane let go: `due` replies to commands it forwarded come before anything else."""
        if due:
            self.slots.appendleft([FWD, due, None])

    def upstream_data(self, data: bytes) -> None:
        """Route upstream replies to the client, interleaving local replies in command order."""
        self._upstream_data(data)
        if self._resume:
            self._resume = False
            self._continue_input()

    def _upstream_data(self, data: bytes) -> None:
        out = self.to_client
        slots = self.slots
        if slots and slots[0][0] == FWD and not self.sub_active and self._partial is None \
                and slots[0][2] is None:
            # The common case: `data` is whole flat replies to the forwarded commands at the
            # head. They are only counted, not made into frames, and `data` passes through as
            # it came: what the loop below would do, frame by frame. Anything else, the loop.
            count, end = self.scanner.count_flat(data, slots[0][1])
            if count and end == len(data):
                return self._pass_replies(data, count)
        idle = self.scanner.idle
        try:
            frames = self.scanner.feed(data)
        except Exception as e:   # UpstreamProtocolError: the stream can no longer be trusted
            log.error("upstream protocol error: %s", e)
            return self.upstream_failed("protocol error")
        pos = 0          # start of the current frame in data
        run = 0          # start of bytes to pass through that are not yet in `out`
        for frame in frames:
            end = frame.end
            slot = slots[0] if slots else None
            kind = frame.kind
            oob = False
            if slot is None:
                oob = True
            elif type(slot[2]) is _ExecSubs:
                # EXEC of a transaction that subscribes: its reply and the replies that spill
                # out after its array (Redis counts one per command, a SUBSCRIBE makes one per
                # channel), pushes included, are all its own.
                self._exec_subscribed(slot, kind, data[pos:pos + 3] if pos or idle else None)
            elif kind == b">":
                oob = not (slot[0] in (SUB, SUBDROP) and frame.head in SUB_HEADS)
            elif slot[0] in (SUB, SUBDROP):
                oob = kind != b"-" and frame.head not in SUB_HEADS
            elif self.sub_active and kind == b"*" and frame.head in MESSAGE_HEADS:
                oob = True
            if oob and (kind == b">" and self._unasked(frame.head) or self._off_legacy()):
                # A push this client did not ask for (no tracking, no subscription), or a
                # message under CLIENT REPLY OFF on Redis 5.0 (which does not send them): dropped.
                if run < pos:
                    out.append(data[run:pos])
                run = pos = end
                self._partial = None
                continue
            if slot is not None and slot[0] in (DROP, SUBDROP) and not oob:
                # Swallow: pass what came before, skip this frame.
                if run < pos:
                    out.append(data[run:pos])
                run = end
                if kind == b"-" and type(slot[2]) is str:   # the proxy's own setup refused
                    self._partial = None
                    if self._auth_wait and slot[2] == "authentication" and (pos or idle) \
                            and self._auth_again(bytes(data[pos:end])):
                        slot[1] += 1   # (the slot stays for the second AUTH's reply)
                    else:
                        return self._setup_failed(slot[2], data, pos, end)
            elif self._partial is not None:
                # The start of this frame was held back (a DROP slot was at the head then).
                out.append(bytes(self._partial))
                run = pos
            self._partial = None
            pos = end
            if oob:
                continue
            if kind == b"-" and slot[0] in (SUB, SUBDROP):
                slot[1] = 0     # an error answers the whole subscribe command
            else:
                slot[1] -= 1
            if slot[1] <= 0:
                slots.popleft()
                if self._auth_wait and slot[2] == "authentication":
                    self._auth_accepted()
                if slot[0] == SUB:
                    self.sub_active = (not self.resp3) and slot[2]
                elif slot[0] == SUBDROP:   # (payload: subscribed after it, for a muted SUB)
                    self.sub_active = (not self.resp3) and bool(slot[2])
                while slots and slots[0][0] >= LOCAL:
                    s = slots.popleft()
                    if run < end:
                        out.append(data[run:end])
                        run = end
                    if s[0] == LOCAL:
                        out.append(s[2])
                    else:
                        self.close = True
        # Bytes of an unfinished frame: pass them on now, unless its reply is to be swallowed.
        if pos < len(data):
            if slots and slots[0][0] in (DROP, SUBDROP) or self._off_legacy() \
                    or not (self.tracking or self.sub_ever) and (
                    data[pos:pos + 1] == b">" if pos or idle else self._partial is not None):
                # (An unfinished push, when the client asked for none, is held back too: it
                # is dropped when it is whole.)
                if run < pos:
                    out.append(data[run:pos])
                if self._partial is _SWALLOWED or self._partial is None and (pos or idle) \
                        and slots and slots[0][0] == DROP and data[pos] != 62 \
                        and not (self.sub_active and data[pos] == 42):
                    # A reply to swallow (a muted command's, the proxy's own) that cannot be a
                    # push or a message: nothing of it is kept (it may be a 512 MB value).
                    self._partial = _SWALLOWED
                    return
                if self._partial is None:
                    self._partial = bytearray()
                self._partial += data[pos:]
                return
            if self._partial is not None:
                out.append(bytes(self._partial))
                self._partial = None
        if run == 0:
            out.append(data)
        elif run < len(data):
            out.append(data[run:])

    def _exec_subscribed(self, slot, kind, frame) -> None:
        """The next frame for an EXEC slot whose transaction subscribes (see _cmd_exec): at its
        first frame, an EXEC that ran (an array, not an error or a null) adopts the transaction's
        subscriptions and waits for the replies that spill out after its array."""
        state = slot[2]
        if state.ran is not None:
            return
        state.ran = kind == b"*" and not (frame is not None and frame.startswith(b"*-1"))
        if state.ran:
            slot[1] += state.spill
            self.subs = state.subs
            self.sub_active = not self.resp3 and self._subscribed()
        # (Else it did not run: WATCH, or Redis refused a queued command. Nothing changes.)
        self._exec_wait = False
        self._resume = True   # (upstream_data then judges what waited)

    def _off_legacy(self) -> bool:
        """CLIENT REPLY OFF on an upstream that mutes pub/sub messages too (Redis 5.0)."""
        return self._off and self.gate.upstream_version < _PUSHES_UNDER_REPLY_OFF

    def _unasked(self, head) -> bool:
        """Whether a push with this head is one the client never asked for."""
        if head in MESSAGE_HEADS or head in SUB_HEADS:
            return not self.sub_ever
        return not self.tracking   # invalidate (tracking-redir-broken needs a REDIRECT)

    def upstream_replies(self, data: bytes, count: int) -> None:
        """upstream_data() for bytes known to be exactly `count` whole replies (a shared link
        counted them): while they all answer the forwarded commands at the head, they pass
        without being counted again."""
        slots = self.slots
        if slots and slots[0][0] == FWD and slots[0][1] >= count and not self.sub_active \
                and slots[0][2] is None \
                and self._partial is None and self.scanner.idle:
            return self._pass_replies(data, count)
        self.upstream_data(data)

    def _pass_replies(self, data: bytes, count: int) -> None:
        """`data`, `count` whole replies to the FWD slot at the head, goes to the client as it
        came; then the local replies that waited for them."""
        slots = self.slots
        out = self.to_client
        out.append(data)
        slot = slots[0]
        left = slot[1] = slot[1] - count
        if not left:
            slots.popleft()
            while slots and slots[0][0] >= LOCAL:
                s = slots.popleft()
                if s[0] == LOCAL:
                    out.append(s[2])
                else:
                    self.close = True

    def _setup_failed(self, what: str, data: bytes, start: int, end: int) -> None:
        text = bytes(data[start + 1:end]).strip().decode("utf-8", "replace")[:200]
        log.error("upstream refused the proxy's %s: %s", what, text)
        self.upstream_failed(f"upstream {what} failed")


class State(enum.Enum):
    """Session.state: one name for what the flags say, in this order of precedence (the first
    that applies). tests/test_session_states.py drives every one, and every transition between
    them, with bytes in and Actions out."""
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


class _ExecSubs:
    """The payload of an EXEC slot whose transaction (un)subscribes (Session._exec_plan)."""
    __slots__ = ("subs", "spill", "ran")

    def __init__(self, subs: dict, spill: int):
        self.subs = subs        # the subscriptions if EXEC runs
        self.spill = spill      # replies after EXEC's array (one per channel beyond the first)
        self.ran = None         # unknown until EXEC's reply: then True / False


def _tracking_redirect(args) -> bool:
    """Does CLIENT TRACKING name a REDIRECT target, as Redis parses its options (networking.c:
    REDIRECT and PREFIX take a value when one follows; anything else is a flag or an error)?"""
    j = 3
    while j < len(args):
        opt = word(args[j])
        more = j + 1 < len(args)
        if opt == b"redirect" and more:
            return True
        j += 2 if opt == b"prefix" and more else 1
    return False


def _valid_client_name(name: bytes) -> bool:
    return all(33 <= c <= 126 for c in name)


def _double(value: float, resp3: bool) -> bytes:
    text = repr(round(value, 3)).encode()
    return b"," + text + b"\r\n" if resp3 else bulk(text)


def _hello_without_auth(args) -> bool:
    return not any(is_word(a, b"auth") for a in args[2:])


# The audit's `denied` fields: the rule family that refused each kind of denial.
_RULE_FAMILY = {"command": "commands", "key": "keys", "channel": "channels", "script": "scripts",
                "database": "databases", "keyspace": "allkeys", "secret": "built-in"}
_SCRIPT_SHA_ARG = {"evalsha": 1, "evalsha_ro": 1}
_SCRIPT_BODY_ARG = {"eval": 1, "eval_ro": 1, "script|load": 2}


def _denied_fields(denial, spec, args, user: str, report_only: bool) -> dict:
    """The audit.Event fields of a refused command: the command and subcommand, the kind of refusal, the
    offending key or channel (or the script's SHA1, or the command), escaped and cut to 128
    bytes, the rule family and the reason. Never another argument (a value)."""
    name = spec.name
    command, _, sub = name.partition("|")
    kind = denial.kind
    if kind == "keyspace" and name in ("select", "copy"):
        kind = "database"
    obj = denial.object
    if kind == "script":
        if name in _SCRIPT_SHA_ARG and len(args) > 1:
            obj = args[1]
        elif name in _SCRIPT_BODY_ARG and len(args) > _SCRIPT_BODY_ARG[name]:
            import hashlib
            obj = hashlib.sha1(args[_SCRIPT_BODY_ARG[name]]).hexdigest()
    return dict(user=user, command=command, subcommand=sub or None, kind=kind, object=safe(obj),
                rule=_RULE_FAMILY.get(kind, kind), report_only=report_only,
                reason=safe(denial.reason, 256, spaces=True))


def _metric(name: str, *labels) -> None:
    from .. import metrics
    metrics.inc(name, *labels)


_LOCAL_FIRST = {
    "auth": Session._cmd_auth,
    "hello": Session._cmd_hello,
    "quit": Session._cmd_quit,
    "reset": Session._cmd_reset,
}
def _cmd_slowlog_get(self, spec, args, req) -> None:
    """Redis 5 keeps AUTH in its slow log with the password in clear: the proxy's own upstream
    login would be readable. From 6.0 on Redis writes "(redacted)" and SLOWLOG GET passes."""
    if self.gate.upstream_version < (6, 0, 0):
        return self._reject(error("ERR SLOWLOG GET is refused by redisgate on Redis before 6.0: "
                                  "its slow log shows the proxy's upstream password"))
    self._forward(req, shared_ok=shareable(spec))


_HANDLERS = {
    "slowlog|get": _cmd_slowlog_get,
    "client|reply": Session._cmd_client_reply,
    "select": Session._cmd_select,
    "sort": Session._cmd_sort,
    "sort_ro": Session._cmd_sort,
    "multi": Session._cmd_multi,
    "exec": Session._cmd_exec,
    "discard": Session._cmd_discard,
    "subscribe": Session._cmd_subscribe,
    "psubscribe": Session._cmd_subscribe,
    "ssubscribe": Session._cmd_subscribe,
    "unsubscribe": Session._cmd_unsubscribe,
    "punsubscribe": Session._cmd_unsubscribe,
    "sunsubscribe": Session._cmd_unsubscribe,
}

# Commands that never take the inlined path of Session._run: the ones handled above, and ACL.
def _acl_names() -> set[str]:
    acl = TABLE.lookup([b"acl"])
    return {"acl"} | {sub.name for sub in acl.subcommands.values()}


# (CLIENT TRACKING: _handle refuses REDIRECT and notes that pushes may come.)
_PLAIN = frozenset(set(_LOCAL_FIRST) | set(_HANDLERS) | set(_UNSUPPORTED) | _acl_names()
                   | {"client|tracking"})


# What may travel on a shared upstream link: commands with one reply that neither read nor change
# the connection's state and never block it for the others. Connection commands (CLIENT, SELECT,
# WAIT, READONLY, ...), blocking ones (BLPOP, XREAD, ...; XREAD even without BLOCK), MULTI/WATCH,
# subscriptions and admin commands (CONFIG, DEBUG, ...) need a connection of the client's own.
_STATEFUL_CATEGORIES = frozenset({"connection", "blocking", "transaction"})
_STATELESS_CONNECTION = frozenset({"ping", "echo"})
_shareable: dict[str, bool] = {}


def shareable(spec) -> bool:
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
