"""Learn mode: watch what a user sends and propose the least rules that would have allowed it.

No I/O. The session feeds every command of a learn-mode user to ``Learner.observe(spec, args)``
(``spec`` is the ``commands.CommandSpec``, or None for an unknown command); ``profile()`` returns
a config-ready ``{"rules": "...", "scripts": [...]}`` and ``summary()`` the details behind it
(patterns per command, queues, a matching built-in profile of the script family).

What is product-specific comes from the registered script family (``contracts.family()``, today
Asynq's: ``redisgate/asynq/learn.py`` for its key layout, its profiles and script names); this
module names no product.

How keys are generalised, and why it is sound
---------------------------------------------
A learned rule must not grant more than the traffic showed, beyond the parts that obviously vary
(ids, dates, process ids). Redis key patterns are globs in which ``*`` matches *any* text,
``:`` and ``}`` included, and there is no "any character but ``}``" repetition. So:

* The family's keys first (its ``generalise_key`` hook, for Asynq redisgate/asynq/learn.py):
  queue keys keep their queue name literally: ``asynq:{default}:t:abc123`` becomes
  ``asynq:{default}:t:*``, never ``asynq:{*}:t:*``. A ``*`` inside the braces would match every
  queue (and, since it can span ``}``, keys such as ``asynq:{a}:x}:t:y``); the queue name is the
  scope, so it must stay fixed. The queues seen are reported, and ``summary()`` proposes the
  built-in profile plus ``queues:`` for them, which is the way to cover "all my queues". Only
  the variable *tail* of such a key becomes ``*`` (task id, unique key, group, date), so each
  pattern is anchored on a literal prefix ending in ``:``; per-process registry keys
  (``asynq:servers:{host:pid:uuid}``) become ``asynq:servers:{*}``, the ``*`` still anchored by
  the literal ``asynq:servers:{`` prefix.
* Other keys are split on ``:``; a segment that looks like an id (digits, a UUID, long hex, a
  date, a long token with digits) becomes ``*``. A key whose *first* segment varies is kept
  literally, because ``*...`` would not be anchored at all.
* Every literal part is glob-escaped (``*?[]\\`` get a backslash), so a key that happens to
  contain glob characters matches only itself.

Rules are grouped per command: keyless commands go to the root (``+ping``); commands that took
keys get a selector with exactly the patterns seen for them (``(+hset ~asynq:{q}:t:*)``), so one
command's keys do not leak to another. EVAL and EVALSHA are learned together (go-redis falls back
from EVALSHA to EVAL after NOSCRIPT), and the SHA1 of every script run or loaded is collected.
"""
from __future__ import annotations

import hashlib
import re
from typing import Any

from . import contracts
from ..protocol.commands import CommandSpec, KeyExtractionError

_GLOB = re.compile(r"([*?\[\]\\])")
_ID_SEGMENT = re.compile(
    r"\d+"                                                       # counters, ids, timestamps
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|[0-9a-fA-F]{16,}"                                         # hashes
    r"|\d{4}-\d{2}-\d{2}"                                        # dates
    r"|(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{20,}")                # long random tokens
_EVAL_FAMILY = ("eval", "evalsha")
_EVAL_RO_FAMILY = ("eval_ro", "evalsha_ro")


def glob_escape(text: str) -> str:
    """``text`` as a glob pattern that matches exactly ``text``."""
    return _GLOB.sub(r"\\\1", text)


def _text(raw: bytes) -> str:
    # ACL rules are text; surrogateescape keeps any non-UTF-8 byte round-trippable.
    return raw.decode("utf-8", "surrogateescape")


def generalise_key(key: bytes) -> tuple[str, str | None]:
    """``(pattern, queue)``: the glob pattern a learned rule uses for ``key``, and the family's
    queue the key belongs to (None for keys of no queue). See the module docstring for the
    rules."""
    found = contracts.family().generalise_key(key)
    if found is not None:
        return found
    return generalise_segments(_text(key), anchored=False), None


def generalise_segments(text: str, anchored: bool) -> str:
    """``text`` split on ``:``, every segment that looks like an id (``_ID_SEGMENT``) a ``*``, the
    rest glob-escaped. Not ``anchored`` (nothing literal before ``text``): a variable first
    segment keeps the whole text literal, since a leading ``*`` would anchor nothing."""
    parts = text.split(":")
    out = []
    for i, part in enumerate(parts):
        variable = bool(_ID_SEGMENT.fullmatch(part))
        if variable and i == 0 and not anchored:
            return glob_escape(text)         # nothing literal to anchor a '*' on
        out.append("*" if variable else glob_escape(part))
    return ":".join(out)


class Learner:
    """Collects one user's commands, keys, channels and scripts; bounded in memory.

    ``max_patterns`` caps the distinct (command, key pattern) pairs, channels and script SHA1s
    kept together; anything beyond is counted in ``dropped`` and reported, never silently lost.
    ``max_unknown`` caps the unknown commands and the queue names remembered for the report.
    """

    def __init__(self, max_patterns: int = 10_000, max_unknown: int = 100):
        self.max_patterns = max_patterns
        self.max_unknown = max_unknown
        self.commands: dict[str, set[str]] = {}       # command token -> key patterns
        self.channels: set[str] = set()               # '&' rule bodies
        self.scripts: set[str] = set()                # SHA1 hex
        self.queues: set[str] = set()
        self.unknown: set[str] = set()
        self.observed = 0
        self.dropped = 0
        self._pairs = 0

    def observe(self, spec: CommandSpec | None, args: list[bytes]) -> None:
        """Record one command as sent by the client (``args[0]`` is the command name)."""
        self.observed += 1
        if spec is None or getattr(spec, "is_container", False):
            # Only the command name (and a container's subcommand name): arguments are data.
            words = args[:2] if spec is not None else args[:1]
            if len(self.unknown) < self.max_unknown and args:
                self.unknown.add(" ".join(_text(a) for a in words).lower())
            else:
                self.dropped += 1
            return
        name = spec.name
        try:
            keys = spec.keys(args)
        except KeyExtractionError:
            keys = []               # Redis rejects the command itself; it named no key
        patterns = self.commands.setdefault(name, set())
        for key, _flags in keys:
            pattern, queue = generalise_key(key)
            if queue is not None and len(self.queues) < self.max_unknown:
                self.queues.add(queue)
            self._add(patterns, pattern)
        channels = getattr(spec, "channels", None)
        if channels is not None:
            for channel, is_pattern in channels(args):
                # A PSUBSCRIBE pattern is matched literally against '&' rules (Redis 7), so it is
                # kept as sent; a plain channel is escaped so the rule matches only itself.
                self._add(self.channels,
                          _text(channel) if is_pattern else glob_escape(_text(channel)))
        sha = self._script_sha(name, args)
        if sha is not None:
            self._add(self.scripts, sha)

    def _add(self, collection: set[str], item: str) -> None:
        """Add within the ``max_patterns`` budget, which channels and scripts share with keys."""
        if item in collection:
            return
        if self._pairs >= self.max_patterns:
            self.dropped += 1
            return
        collection.add(item)
        self._pairs += 1

    @staticmethod
    def _script_sha(name: str, args: list[bytes]) -> str | None:
        if name in ("evalsha", "evalsha_ro") and len(args) > 1:
            sha = _text(args[1]).lower()
            return sha if re.fullmatch(r"[0-9a-f]{40}", sha) else None
        if name in ("eval", "eval_ro") and len(args) > 1:
            return hashlib.sha1(args[1]).hexdigest()
        if name == "script|load" and len(args) > 2:
            return hashlib.sha1(args[2]).hexdigest()
        return None

    # ---- results ----------------------------------------------------------------------------

    def _command_patterns(self) -> dict[str, set[str]]:
        """Commands with their patterns, EVAL and EVALSHA (and the _RO pair) merged."""
        merged = {name: set(p) for name, p in self.commands.items()}
        for family in (_EVAL_FAMILY, _EVAL_RO_FAMILY):
            if any(f in merged for f in family):
                union = set().union(*(merged.get(f, set()) for f in family))
                for f in family:
                    merged[f] = set(union)
        return merged

    def rule_tokens(self) -> list[str]:
        """The learned ACL tokens: root commands and channels, then one selector per key set."""
        root: list[str] = []
        by_keys: dict[frozenset[str], list[str]] = {}
        for name, patterns in sorted(self._command_patterns().items()):
            if patterns:
                by_keys.setdefault(frozenset(patterns), []).append(name)
            else:
                root.append("+" + name)
        tokens = root + ["&" + c for c in sorted(self.channels)]
        for key_set, names in sorted(by_keys.items(), key=lambda kv: sorted(kv[1])):
            inner = ["+" + n for n in names] + ["~" + p for p in sorted(key_set)]
            tokens.append("(" + " ".join(inner) + ")")
        return tokens

    def profile(self) -> dict[str, Any]:
        """Config-ready: ``{"rules": "<ACL tokens>", "scripts": [sha1, ...]}``. Add the user's
        own ``on`` and password to ``rules`` before use."""
        return {"rules": " ".join(self.rule_tokens()), "scripts": sorted(self.scripts)}

    def summary(self) -> dict[str, Any]:
        """What was learned, for a human: commands with key patterns, channels, scripts by
        name, queues, the smallest built-in profile covering the traffic, and limits hit."""
        known = contracts.family().known
        names = {sha: known[sha].name for sha in self.scripts if sha in known}
        out: dict[str, Any] = {
            "observed": self.observed,
            "commands": {name: sorted(p) for name, p in sorted(self.commands.items())},
            "channels": sorted(self.channels),
            "scripts": {sha: names.get(sha, "unknown script") for sha in sorted(self.scripts)},
            "queues": sorted(self.queues),
            "unknown_commands": sorted(self.unknown),
            "dropped": self.dropped,
        }
        suggestion = self.suggest_profile()
        if suggestion:
            out["suggestion"] = suggestion
        return out

    def suggest_profile(self) -> dict[str, Any] | None:
        """``{"profile": name, "queues": [...]}`` for the built-in profile with the fewest
        scripts whose commands and scripts cover everything seen, or None."""
        # Unknown commands do not matter here: the proxy answers them with an error whatever the
        # rules, so no profile could (or needs to) allow them.
        if not self.commands:
            return None
        scripts = contracts.family()
        if any(not p.startswith(scripts.namespace) for ps in self.commands.values() for p in ps):
            return None
        seen = set(self._command_patterns())
        best = None
        for pname in scripts.profile_names():
            tokens, shas = scripts.load_profile(pname, None)
            allowed = {t[1:] for tok in tokens for t in tok.strip("()").split() if t[:1] == "+"}
            if not seen <= allowed or not self.scripts <= shas:
                continue
            if best is None or len(shas) < best[1]:
                best = (pname, len(shas))
        if best is None:
            return None
        suggestion: dict[str, Any] = {"profile": best[0]}
        try:
            suggestion["queues"] = [scripts.check_queue_name(q) for q in sorted(self.queues)]
        except contracts.ProfileError:
            pass            # a queue that cannot be scoped: leave the profile unscoped
        if not suggestion.get("queues"):
            suggestion.pop("queues", None)
        return suggestion
