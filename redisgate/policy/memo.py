"""The session's memo of inline verdicts: one `Verdict` per user and command name as sent.

`Session._run` (session.py) decides most commands from this memo without calling the judge, and
the C lane (redisgate/_native/_lane.c) forwards from the very same dict. An entry is built once, here,
from the user's compiled `rules.FastVerdict` (the one thing `User.judge` also starts from), and
is read by NAME on both sides:

  kind      ALLOW (forwarded whatever the arguments), ONE_KEY (forwarded when args[pos] starts
            with one of `prefixes`, is in `exact` or passes `match`), ASK (the judge decides),
            SCRIPT (the judge decides; the C lane also forwards an EVALSHA that fits a form the
            verdict learnt from a call the judge allowed, per SHA1 and queue: `knows`/`learn`)
  spec      the command's commands.Spec
  fewest, most   the arity, narrowed (ONE_KEY) to where the key is args[pos]
  counter   the metrics' forwarded counter (metrics.forwarded_counter) for the user and command

With the C module built, `Verdict` is `_lane.Verdict`: a C struct the lane reads directly (its
members are specialised attribute loads for Python too), with a `_lane.ScriptForm` per learnt
form; the hash-tag opening that names a queue (the script family's queue_tag, from the registry
contracts.family()) is given to it here, so the C code knows no product's key names. Without it
(not built, or REDISGATE_PURE_PYTHON), `PyVerdict` is the same thing in Python (its learnt forms
are kept but nothing reads them: there is no lane).

May import: rules, scripts (the contract data), contracts (the registry), _lane. Nothing imports
session from here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, TypeAlias

from . import rules
from ..protocol.commands import CommandSpec
from .contracts import family
from .scripts import LaneCheckKind, LaneForm

try:
    from .._native import _lane
except ImportError:   # not compiled here: the Python twins below
    _lane = None   # type: ignore[assignment]
if os.environ.get("REDISGATE_PURE_PYTHON"):
    _lane = None   # type: ignore[assignment]

__all__ = ["Verdict", "PyVerdict", "ALLOW", "ONE_KEY", "ASK", "SCRIPT", "compile_entry",
           "script_form", "NATIVE"]

if _lane is not None:
    ALLOW: str = _lane.ALLOW
    ONE_KEY: str = _lane.ONE_KEY
    ASK: str = _lane.ASK
    SCRIPT: str = _lane.SCRIPT
else:
    ALLOW, ONE_KEY, ASK, SCRIPT = "allow", "one_key", "ask", "script"

# Bounds of what a SCRIPT verdict learns (as _lane.c's SCRIPT_MAX_SHAS / SCRIPT_MAX_QUEUES):
# SHA1s come from the user's allowlist, queue names from clients.
MAX_SHAS = 64
MAX_QUEUES = 64


# What a SCRIPT verdict learns per SHA1 and queue (script_form): the C lane's own copy of a
# LaneForm, or the LaneForm itself without the C module.
# (A string: _lane may be None here.)
Form: TypeAlias = "LaneForm | _lane.ScriptForm"


def _arity(fewest: int, most: int) -> None:
    if fewest < 1 or most < fewest:
        raise ValueError(f"Verdict: the arity {fewest}..{most} is empty")


@dataclass(frozen=True, slots=True)
class PyVerdict:
    """`_lane.Verdict`'s Python twin (same constructors, attributes and methods)."""
    kind: str
    spec: CommandSpec
    fewest: int
    most: int
    counter: Any   # metrics.forwarded_counter's (a PyCounter here: nothing counts in C)
    pos: int | None = None
    prefixes: tuple[bytes, ...] = ()
    exact: frozenset[bytes] = frozenset()
    match: Callable[[bytes], object] | None = None
    tag: bytes | None = None
    _forms: dict[bytes, dict[bytes, Form]] | None = field(default=None, compare=False,
                                                           repr=False)

    @classmethod
    def allow(cls, spec: CommandSpec, fewest: int, most: int, counter: Any) -> "PyVerdict":
        _arity(fewest, most)
        return cls(ALLOW, spec, fewest, most, counter)

    @classmethod
    def ask(cls, spec: CommandSpec, fewest: int, most: int, counter: Any) -> "PyVerdict":
        _arity(fewest, most)
        return cls(ASK, spec, fewest, most, counter)

    @classmethod
    def one_key(cls, spec: CommandSpec, fewest: int, most: int, pos: int,
                prefixes: tuple[bytes, ...], exact: frozenset[bytes],
                match: Callable[[bytes], object] | None, counter: Any) -> "PyVerdict":
        _arity(fewest, most)
        if pos < 1 or pos >= most or fewest <= pos:
            raise ValueError(f"Verdict.one_key: the key position {pos} is not within the arity "
                             f"{fewest}..{most}")
        return cls(ONE_KEY, spec, fewest, most, counter, pos, prefixes, exact, match)

    @classmethod
    def script(cls, spec: CommandSpec, fewest: int, most: int, counter: Any,
               tag: bytes) -> "PyVerdict":
        _arity(fewest, most)
        if not tag:
            raise ValueError("Verdict.script: tag must be non-empty bytes")
        return cls(SCRIPT, spec, fewest, most, counter, tag=tag, _forms={})

    def knows(self, sha: bytes, queue: bytes) -> bool:
        if self._forms is None:
            raise TypeError("Verdict.knows: not a SCRIPT verdict")
        return queue in self._forms.get(sha, ())

    def learn(self, sha: bytes, queue: bytes, form: Form) -> None:
        forms = self._forms
        if forms is None:
            raise TypeError("Verdict.learn: not a SCRIPT verdict")
        if not queue:
            raise ValueError("Verdict.learn: an empty queue name")
        per = forms.get(sha)
        if per is None:
            if len(forms) >= MAX_SHAS:
                forms.clear()
            per = forms[sha] = {}
        elif len(per) >= MAX_QUEUES:
            per.clear()
        per[queue] = form


NATIVE = _lane is not None   # entries are _lane.Verdicts: the lane can read them
# (Any: the C class or its Python twin, chosen at import; their constructors differ in the
# counter they take, a _lane.Counter or any.)
Verdict: Any = _lane.Verdict if _lane is not None else PyVerdict


def compile_entry(spec: CommandSpec, fewest: int, most: int, verdict: rules.FastVerdict,
                  counter: Any) -> Any:
    """The memo's entry for `spec` (arity fewest..most) from the user's compiled verdict."""
    if verdict is rules.ALLOW:
        return Verdict.allow(spec=spec, fewest=fewest, most=most, counter=counter)
    if type(verdict) is rules.OneKey:
        pos = verdict.pos
        narrow, upto = max(fewest, pos + 1), min(most, verdict.most)
        if narrow <= upto:   # (else the key is never args[pos]: the judge decides)
            return Verdict.one_key(spec=spec, fewest=narrow, most=upto, pos=pos,
                                   prefixes=verdict.prefixes, exact=verdict.exact,
                                   match=verdict.match, counter=counter)
    if type(verdict) is rules.Script and verdict.by_contract:
        return Verdict.script(spec=spec, fewest=fewest, most=most, counter=counter,
                              tag=family().queue_tag)
    return Verdict.ask(spec=spec, fewest=fewest, most=most, counter=counter)


def script_form(form: LaneForm) -> Form:
    """What a SCRIPT verdict learns for `form`: a `_lane.ScriptForm` (the C lane's own copy of
    it), or the LaneForm itself without the C module."""
    if _lane is None:
        return form
    native = _lane.ScriptForm(numkeys=form.numkeys, need=form.need)
    for check in form.checks:
        kind, index, value = check.kind, check.index, check.value
        if kind is LaneCheckKind.ONE_OF:
            if not isinstance(value, tuple):
                raise TypeError("LaneCheck: ONE_OF takes a tuple of names")
            native.one_of(index, value)
            continue
        if not isinstance(value, bytes):
            raise TypeError(f"LaneCheck: {kind.name} takes bytes")
        if kind is LaneCheckKind.EXACT:
            native.exact(index, value)
        elif kind is LaneCheckKind.PREFIX:
            native.prefix(index, value)
        else:
            native.date(index, value)
    return native
