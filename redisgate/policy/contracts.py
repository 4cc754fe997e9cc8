"""The script-contract interface: what the policy side may know about a product's Lua scripts.

No I/O. A *script family* is a product whose clients run Lua scripts with a fixed layout (today
the one family is Asynq, in ``redisgate/asynq/``). It tells the generic policy modules, through a
``ScriptFamily``, everything product-specific they need:

* ``known``: SHA1 hex -> ``scripts.ScriptContract`` of the product's own scripts (checked on every
  EVAL/EVALSHA of them: ``scripts.ScriptPolicy``);
* the names a ``scripts:`` list may use (``expand_names``: named sets, script names) and the
  scripts an operator's own script may be bound to (``contract_like``, a ``like:`` value);
* ``queue_tag``: the opening of the hash tag that names a queue in the contracts' keys
  (``b"asynq:{"``): ``scripts.queue_of`` splits keys with it, and ``memo.py`` gives it to the C
  lane, which therefore names no product;
* its built-in role profiles (``profile_names``, ``load_profile``, ``check_queue_name``), read by
  ``config.py`` (``profile:`` / ``queues:``) and by learn mode's suggestion;
* learn mode's hook ``generalise_key``: the family's own key layout, or None for keys that are
  not the family's (learn.py then applies its generic rules).

``family()`` is the registry the policy side (config.py, learn.py, memo.py, scripts.py) consults;
none of them imports a product package. A family registers itself with ``register()`` when its
package is imported; ``family()`` imports the one built-in family on first use (the registration
point: the only import of ``redisgate.asynq`` in the package).

May import: nothing of redisgate at run time (``scripts`` for types only), so that every policy
module can import this one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    from .scripts import ScriptContract

__all__ = ["ScriptFamily", "ProfileError", "register", "family"]


class ProfileError(ValueError):
    """A profile that does not exist, a broken profile file, or a queue name it cannot scope to."""


@dataclass(frozen=True)
class ScriptFamily:
    """One product's script knowledge, as the generic policy modules consume it (see the module
    docstring). Every hook raises ``ValueError`` (``ProfileError`` for profiles) with a message
    fit for the operator when its input is not one of the family's names."""
    name: str                    # "asynq": the family's profile and set names start with it
    title: str                   # "Asynq": how messages name the product
    queue_tag: bytes             # b"asynq:{": a queue key is <queue_tag><queue>}:<rest>
    namespace: str               # "asynq:": every key pattern the family's profiles grant
    known: Mapping[str, ScriptContract]              # SHA1 hex -> contract
    named_sets: Mapping[str, frozenset[str]]         # set name -> SHA1 hex
    expand_names: Callable[[Iterable[str]], set[str]]          # scripts: items -> SHA1 hex
    contract_like: Callable[[str], ScriptContract]             # a like: value -> its contract
    profile_names: Callable[[], list[str]]
    load_profile: Callable[[str, Sequence[str] | None], tuple[list[str], set[str]]]
    check_queue_name: Callable[[object], str]
    generalise_key: Callable[[bytes], tuple[str, str | None] | None]   # (pattern, queue)


_family: ScriptFamily | None = None


def register(found: ScriptFamily) -> None:
    """Make ``found`` the script family. There is one: the C lane's SCRIPT verdicts and the
    contract table know one queue tag. Registering the same family again is a no-op."""
    global _family
    if _family is not None and _family is not found:
        raise RuntimeError(f"script family {_family.name!r} is registered already "
                           f"(not {found.name!r}): there is one")
    _family = found


def family() -> ScriptFamily:
    """The registered script family, importing the built-in one on first use."""
    if _family is None:
        # The registration point. Deferred to break a cycle: redisgate.asynq builds its tables
        # from redisgate.policy.scripts, which asks this registry.
        from .. import asynq   # noqa: F401  (registers itself)
    assert _family is not None, "redisgate.asynq did not register its script family"
    return _family
