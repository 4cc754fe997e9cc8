"""Learn mode's rules for Asynq's keys (the family's ``generalise_key`` hook, see learn.py).

No I/O. ``generalise_key(key)`` returns ``(pattern, queue)`` for a key of Asynq's layout, or None
for any other key (learn.py then splits it on ``:`` by its generic rules). Why it is sound
(learn.py's module docstring has the general argument):

* Queue keys keep their queue name literally: ``asynq:{default}:t:abc123`` becomes
  ``asynq:{default}:t:*``, never ``asynq:{*}:t:*``. A ``*`` inside the braces would match every
  queue (and, since it can span ``}``, keys such as ``asynq:{a}:x}:t:y``); the queue name is the
  scope, so it must stay fixed. The queues seen are reported, and the learner proposes the
  built-in profile plus ``queues:`` for them, which is the way to cover "all my queues".
* Only the variable *tail* of a queue key becomes ``*`` (task id, unique key, group, date), so
  each pattern is anchored on a literal prefix ending in ``:``; a queue key of no known form has
  its rest generalised segment by segment, anchored on the queue.
* Per-process registry keys (``asynq:servers:{host:pid:uuid}``) become ``asynq:servers:{*}``:
  the ``*`` is still anchored by the literal ``asynq:servers:{`` prefix; scheduler history
  entries (``asynq:scheduler_history:<entry id>``) become ``asynq:scheduler_history:*``.

May import: the generic policy modules (learn, scripts) and this package's scripts.
"""
from __future__ import annotations

from ..policy.learn import generalise_segments, glob_escape
from ..policy.scripts import split_queue
from .scripts import QUEUE_TAG

_QUEUE_FIXED = {"pending", "active", "scheduled", "retry", "archived", "lease", "completed",
                "paused", "groups", "aggregation_sets", "processed", "failed", "t:"}
_QUEUE_TAILS = ("t:", "unique:", "g:", "processed:", "failed:")
_REGISTRIES = ("asynq:servers:", "asynq:workers:", "asynq:schedulers:")
_HISTORY = "asynq:scheduler_history:"


def _text(raw: bytes) -> str:
    # ACL rules are text; surrogateescape keeps any non-UTF-8 byte round-trippable.
    return raw.decode("utf-8", "surrogateescape")


def generalise_key(key: bytes) -> tuple[str, str | None] | None:
    """``(pattern, queue)`` for one of Asynq's keys (``queue`` None for keys of no queue), or None
    when ``key`` is not laid out as Asynq's keys are."""
    split = split_queue(key, QUEUE_TAG)
    if split is not None:
        queue, rest = _text(split[0]), _text(split[1])
        head = _text(QUEUE_TAG) + glob_escape(queue) + "}:"
        if rest in _QUEUE_FIXED:
            return head + rest, queue
        for tail in _QUEUE_TAILS:
            if rest.startswith(tail):
                return head + tail + "*", queue
        return head + generalise_segments(rest, anchored=True), queue
    text = _text(key)
    for registry in _REGISTRIES:
        if text.startswith(registry + "{") and text.endswith("}"):
            return registry + "{*}", None
    if text.startswith(_HISTORY) and len(text) > len(_HISTORY):
        return _HISTORY + "*", None
    return None
