"""Built-in Asynq profiles: ACL rule tokens plus script allowlists, one YAML file per role.

No I/O beyond reading the package's own YAML files (package data: pyproject.toml's
``[tool.setuptools.package-data]`` ships ``asynq/profiles/*.yaml`` in the wheel). Part of the Asynq
script family (``redisgate.asynq``): config.py and learn.py reach it through
``contracts.family()``. A profile file holds::

    description: one line
    include: [other-profile, ...]     # optional; their rules and scripts come first
    rules: [ACL tokens ...]           # an item may hold several tokens; "( ... )" is a selector
    scripts: [named script sets, script names or SHA1s]   # see scripts.expand_script_names

``load_profile(name, queues)`` returns ``(rule_tokens, script_shas)``. With ``queues``, every key
pattern that covers all queues (``asynq:{*}...``) is replaced by one pattern per listed queue
(``asynq:{critical}...``). A ``*`` between the braces would match any text, ``}`` included, so
only a literal queue name pins a pattern to one queue's keys; that is why queue names holding
glob characters, braces, backslashes or whitespace are refused rather than escaped.

A profile name may carry a release line, ``asynq-worker@v0.26``: the script allowlist is then
limited to that line's SHA1s (the ACL rules do not change between releases).

May import: redisgate.policy.contracts (``ProfileError``), this package's ``scripts`` and PyYAML.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

import yaml

from ...policy.contracts import ProfileError as ProfileError   # (re-exported: the family's error)
from .. import scripts as _scripts

ALL_QUEUES = "asynq:{*}"
# Characters that would change a key's hash tag or act as glob syntax in a key pattern.
_FORBIDDEN = {"{": "'{'", "}": "'}'", "*": "'*'", "?": "'?'", "[": "'['", "]": "']'",
              "\\": "a backslash"}


def profile_names() -> list[str]:
    """The names of the built-in profiles (file names without ``.yaml``)."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".yaml"))


@lru_cache(maxsize=None)
def _read(name: str) -> dict[str, Any]:
    if name not in profile_names():
        raise ProfileError(f"unknown profile {name!r} (built-in: {', '.join(profile_names())})")
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list) \
            or not isinstance(data.get("scripts", []), list) \
            or not isinstance(data.get("include", []), list):
        raise ProfileError(f"profile {name!r}: expected a mapping with lists 'rules', 'scripts' "
                           "and 'include'")
    return data


def _tokens(items: list[Any]) -> list[str]:
    """Profile rule items to ACL tokens: a selector item stays whole, others split on spaces."""
    out: list[str] = []
    for item in items:
        item = str(item).strip()
        if item.startswith("("):
            out.append(item)
        else:
            out.extend(item.split())
    return out


def _resolve(name: str, seen: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(tokens, script items) of a profile with its includes expanded, includes first."""
    if name in seen:
        raise ProfileError(f"profile {name!r} includes itself ({' -> '.join(seen + (name,))})")
    data = _read(name)
    tokens: list[str] = []
    script_items: list[str] = []
    for inc in data.get("include", []):
        t, s = _resolve(str(inc), seen + (name,))
        tokens += t
        script_items += s
    tokens += _tokens(data.get("rules", []))
    script_items += [str(s) for s in data.get("scripts", [])]
    return tokens, script_items


def check_queue_name(name: object) -> str:
    """Return ``name`` if a key pattern can be pinned to it, else raise ``ProfileError`` why."""
    if not isinstance(name, str):
        raise ProfileError(f"queue names must be strings, got {name!r}")
    if name == "":
        raise ProfileError("queue names cannot be empty (got '')")
    for ch in name:
        if ch in "{}":
            raise ProfileError(
                f"queue name {name!r} contains {_FORBIDDEN[ch]}: a brace changes the Redis hash "
                "tag of the queue's keys (asynq:{<queue>}:...), so they cannot be scoped")
        if ch in _FORBIDDEN:
            raise ProfileError(
                f"queue name {name!r} contains {_FORBIDDEN[ch]}, which is glob syntax in ACL key "
                "patterns, so the queue's keys cannot be scoped")
        if ch.isspace() or not ch.isprintable():
            raise ProfileError(f"queue name {name!r} contains whitespace or a control character "
                               f"({ch!r}), which cannot appear in an ACL key pattern")
    return name


def _scope(token: str, queues: list[str]) -> list[str]:
    """Narrow one token's all-queue key patterns to the listed queues."""
    if token.startswith("(") and token.endswith(")"):
        inner = [t for part in token[1:-1].split() for t in _scope(part, queues)]
        return ["(" + " ".join(inner) + ")"]
    if ALL_QUEUES not in token:
        return [token]
    return [token.replace(ALL_QUEUES, "asynq:{" + q + "}") for q in queues]


def load_profile(name: str, queues: Sequence[str] | None = None) -> tuple[list[str], set[str]]:
    """The ACL rule tokens and allowed script SHA1s of a built-in profile.

    ``name`` is a profile (``asynq-worker``), optionally with a release line
    (``asynq-worker@v0.26``). ``queues``: None for all queues, or the queue names the user is
    limited to. Raises ``ProfileError`` with a precise message for an unknown profile or
    release line, an empty queue list, or a queue name that cannot be scoped.
    """
    base, _, line = name.partition("@")
    if line and line not in _scripts.RELEASE_LINES:
        raise ProfileError(f"unknown Asynq release line {line!r} in {name!r} "
                           f"(known: {', '.join(_scripts.RELEASE_LINES)})")
    tokens, script_items = _resolve(base)
    try:
        shas = _scripts.expand_script_names(script_items)
    except ValueError as e:
        raise ProfileError(f"profile {base!r}: {e}") from None
    if line:
        shas &= _scripts.SCRIPT_SETS[f"asynq-{line}"]
    if queues is not None:
        if isinstance(queues, str) or not isinstance(queues, (list, tuple)):
            raise ProfileError(f"queues must be a list of queue names, got {queues!r}")
        if not queues:
            raise ProfileError("queues is empty: list at least one queue, or leave it out "
                               "for all queues")
        unique = list(dict.fromkeys(check_queue_name(q) for q in queues))
        tokens = [t for tok in tokens for t in _scope(tok, unique)]
    # An included profile may repeat a token; keep the first occurrence, in order.
    return list(dict.fromkeys(tokens)), shas


def describe(name: str) -> str:
    """The one-line description of a profile."""
    return str(_read(name.partition("@")[0]).get("description", ""))
