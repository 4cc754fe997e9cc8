"""Asynq, the one script family: everything redisgate knows about the Asynq task queue.

Asynq (github.com/hibiken/asynq) is the Go task queue redisgate was first built for; what it sends
to Redis is written up in docs/asynq.md. This package holds all of it and registers it with the
generic policy side as a ``contracts.ScriptFamily`` (``FAMILY``):

* ``scripts``: the contract table of Asynq's Lua scripts (``KNOWN_SCRIPTS``, SHA1 -> contract, per
  release v0.24.0 .. main), roles, release lines, the named sets of a ``scripts:`` list
  (``asynq-v0.26``, ``asynq-worker``, ``asynq-worker@v0.26``, ``asynq-all``), script names
  (``enqueueCmd``), ``like:`` values, and the queue tag ``asynq:{``;
* ``profiles``: the built-in role profiles (``asynq-producer``, ``asynq-worker``, ...; YAML
  package data) and queue scoping (``queues:``);
* ``learn``: learn mode's generalisation of Asynq's keys.

May import: the generic policy modules (contracts, scripts, learn, commands) and PyYAML; never
session, server or any I/O module. Nothing imports this package except the registration point,
``contracts.family()``; the policy side (config.py, learn.py, memo.py, scripts.py, rules.py) asks
that registry, and the C lane gets the queue tag from memo.py, so no C code names the product.
"""
from __future__ import annotations

from ..policy import contracts
from . import learn, profiles, scripts

__all__ = ["FAMILY"]

FAMILY = contracts.ScriptFamily(
    name="asynq",
    title="Asynq",
    queue_tag=scripts.QUEUE_TAG,
    namespace="asynq:",
    known=scripts.KNOWN_SCRIPTS,
    named_sets=scripts.SCRIPT_SETS,
    expand_names=scripts.expand_script_names,
    contract_like=scripts.contract_like,
    profile_names=profiles.profile_names,
    load_profile=profiles.load_profile,
    check_queue_name=profiles.check_queue_name,
    generalise_key=learn.generalise_key,
)
contracts.register(FAMILY)
