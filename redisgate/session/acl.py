"""What the session answers or refuses in the ACL's name: the ACL command family answered
locally (WHOAMI, USERS, LIST, CAT, LOG, DRYRUN, GENPASS; mutations refused), the proxy's own
refusals for SLOWLOG GET and SORT's BY/GET patterns, and the record of a denial (ACL LOG,
audit, metrics).

May import: the protocol and policy modules (resp, commands, errors, audit, ...) and the
session package's replies; never server.py, asyncio or sockets. The session is passed in.
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING, Any

from ..telemetry import audit
from ..protocol import errors
from ..telemetry.audit import Event, safe, user_label
from ..protocol.commands import (TABLE, CommandSpec, KeyExtractionError, categories,
                                 commands_in_category, sort_pattern_option)
from ..protocol.options import is_word, word
from ..protocol.resp import Request, array, bulk, error, integer, map_

if TYPE_CHECKING:
    from ..config import UserEntry
    from .machine import Session

OK = b"+OK\r\n"
_MUTATIONS = {"acl|setuser", "acl|deluser", "acl|load", "acl|save"}


def acl_names() -> set[str]:
    """ACL and its subcommands: never on the inlined path (Session._run)."""
    acl = TABLE.lookup([b"acl"])
    assert acl is not None
    return {"acl"} | {sub.name for sub in acl.subcommands.values()}


def cmd_acl(s: Session, spec: CommandSpec, args: list[bytes]) -> None:
    name = spec.name
    if s.tx.active:
        return s.reject(errors.not_in_multi())
    local = s.replies.local
    gate = s.gate
    if name == "acl|whoami":
        return local(bulk((s.username or "").encode()))
    if name == "acl|users":
        return local(array([bulk(n.encode()) for n in sorted(gate.users)]))
    if name == "acl|list":
        return local(array([bulk(f"user {n} {gate.users[n].user.describe()}".encode())
                            for n in sorted(gate.users)]))
    if name == "acl|cat":
        if len(args) == 2:
            return local(array([bulk(c.encode()) for c in categories()]))
        # ACLGetCommandCategoryFlagByName: strcasecmp; the error prints the C string (%.128s)
        cat = word(args[2]).decode("utf-8", "replace")
        if cat not in categories():
            shown = args[2].split(b"\0", 1)[0][:128].decode("utf-8", "replace")
            return local(error(f"ERR Unknown category '{shown}'"))
        return local(array([bulk(c.name.encode()) for c in commands_in_category(cat)]))
    if name == "acl|log":
        return _acl_log(s, args)
    if name == "acl|dryrun":
        return _acl_dryrun(s, args)
    if name == "acl|genpass":
        bits = 256
        if len(args) == 3:
            try:
                bits = int(args[2])
            except ValueError:
                bits = -1
            if not 0 < bits <= 4096:
                return local(error("ERR ACL GENPASS argument must be the number of bits "
                                   "for the output password, a positive number up to 4096"))
        return local(bulk(os.urandom((bits + 7) // 8).hex()[:(bits + 3) // 4].encode()))
    if name in _MUTATIONS:
        sub = name.split("|")[1].upper()
        return local(error(f"ERR ACL {sub} is refused by redisgate: users and rules "
                           "change only through its configuration file"))
    return local(error(f"ERR ACL {name.split('|')[1].upper()} is not supported through "
                       "redisgate"))


def _acl_log(s: Session, args: list[bytes]) -> None:
    log_ = s.gate.acl_log
    if len(args) == 3:
        if is_word(args[2], b"reset"):
            log_.reset()
            return s.replies.local(OK)
        try:
            count = int(args[2])
            if count < 0:
                raise ValueError
        except ValueError:
            return s.replies.local(error("ERR value is out of range, must be positive"))
    else:
        count = 10
    now = int(time.time() * 1000)
    newer = s.gate.upstream_version >= (7, 2, 0)
    items = []
    for e in list(log_.entries)[:count]:
        pairs = [(b"count", integer(e.count)), (b"reason", bulk(e.reason.encode())),
                 (b"context", bulk(e.context.encode())), (b"object", bulk(e.object.encode())),
                 (b"username", bulk(e.username.encode())),
                 (b"age-seconds", _double((now - e.created_ms) / 1000, s.resp3)),
                 (b"client-info", bulk(e.client_info.encode()))]
        if newer:
            pairs += [(b"entry-id", integer(e.entry_id)),
                      (b"timestamp-created", integer(e.created_ms)),
                      (b"timestamp-last-updated", integer(e.updated_ms))]
        items.append(map_([(bulk(k), v) for k, v in pairs], s.resp3))
    s.replies.local(array(items))


def _acl_dryrun(s: Session, args: list[bytes]) -> None:
    local = s.replies.local
    name = args[2].decode("utf-8", "replace")
    entry = s.gate.users.get(name)
    if entry is None:
        return local(error(f"ERR User '{name}' not found"))
    cmd = args[3:]
    spec = TABLE.lookup(cmd)
    if spec is None or spec.is_container or not s.gate.available(spec):
        return local(error(f"ERR Command '{cmd[0].decode('utf-8', 'replace')}' not found"))
    if not spec.check_arity(len(cmd)):
        return local(error(f"ERR wrong number of arguments for '{spec.name}' command"))
    try:
        denial = entry.user.judge(spec, cmd, db=s.databases(entry))
    except KeyExtractionError as e:
        return local(e.reply)
    if denial is None:
        return local(OK)
    local(bulk(denial.dryrun_text().encode()))


def _double(value: float, resp3: bool) -> bytes:
    text = repr(round(value, 3)).encode()
    return b"," + text + b"\r\n" if resp3 else bulk(text)


def cmd_slowlog_get(s: Session, spec: CommandSpec, args: list[bytes], req: Request) -> None:
    """Redis 5 keeps AUTH in its slow log with the password in clear: the proxy's own upstream
    login would be readable. From 6.0 on Redis writes "(redacted)" and SLOWLOG GET passes."""
    if s.gate.upstream_version < (6, 0, 0):
        return s.reject(error("ERR SLOWLOG GET is refused by redisgate on Redis before 6.0: "
                              "its slow log shows the proxy's upstream password"))
    s.forward(req)   # (never on a shared link: SLOWLOG is an admin command, see shareable)


def cmd_sort(s: Session, spec: CommandSpec, args: list[bytes], req: Request) -> None:
    """SORT/SORT_RO BY <pattern with *> and GET read keys no key spec names. Redis 7 refuses
    them to users without full key access inside SORT; older upstreams do not, so the proxy
    does, with Redis 7's reply."""
    entry: UserEntry | None = s.user_entry
    assert entry is not None
    if not entry.user.has_allkeys:
        refusal = sort_pattern_option(args)
        if refusal is not None:
            return s.reject(refusal)
    s.forward(req, shared_ok=True)


# -- denials

def record_denial(s: Session, denial: Any, spec: CommandSpec, args: list[bytes]) -> None:
    """A refused command (a rules.Denial): ACL LOG, audit, metrics."""
    entry = s.user_entry
    assert entry is not None and s.username is not None
    context = "multi" if s.tx.active else "toplevel"
    obj = denial.object if isinstance(denial.object, str) else \
        denial.object.decode("utf-8", "backslashreplace")
    s.gate.acl_log.add(denial.kind, context, obj, s.username, s.client_info)
    report_only = (entry.user.report_only or entry.learn) and denial.kind != "secret"
    mode = "report-only" if report_only else "denied"
    user = safe(s.username)
    if audit.wanted("denied", user):   # (else nothing of it is built)
        audit.emit(Event("denied", peer=s.peer, info=s.client_info,
                         **_denied_fields(denial, spec, args, user, report_only)),
                   admitted=True)
    s.metric("denied", user_label(s.username, s.gate.users), denial.kind, mode)


# The audit's `denied` fields: the rule family that refused each kind of denial.
_RULE_FAMILY = {"command": "commands", "key": "keys", "channel": "channels", "script": "scripts",
                "database": "databases", "keyspace": "allkeys", "secret": "built-in"}
_SCRIPT_SHA_ARG = {"evalsha": 1, "evalsha_ro": 1}
_SCRIPT_BODY_ARG = {"eval": 1, "eval_ro": 1, "script|load": 2}


def _denied_fields(denial: Any, spec: CommandSpec, args: list[bytes], user: str,
                   report_only: bool) -> dict[str, Any]:
    """The audit.Event fields of a refused command: the command and subcommand, the kind of
    refusal, the offending key or channel (or the script's SHA1, or the command), escaped and cut
    to 128 bytes, the rule family and the reason. Never another argument (a value)."""
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
            obj = hashlib.sha1(args[_SCRIPT_BODY_ARG[name]]).hexdigest()
    return dict(user=user, command=command, subcommand=sub or None, kind=kind, object=safe(obj),
                rule=_RULE_FAMILY.get(kind, kind), report_only=report_only,
                reason=safe(denial.reason, 256, spaces=True))
