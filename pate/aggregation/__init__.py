"""The aggregate stage's protocol and its mechanism families, one module each.

``protocol`` is what every family shares: the spend-log entry charged before the first query, the
ledger opened (or resumed) and held, chunks written to it before anything is released, the labels
and the privacy report written from it at the end. A family module (``teacher_votes``: LNMax, GNMax,
Confident-GNMax; ``private_records``: Private-kNN; ``interactive``: Interactive-GNMax;
``reverse_votes``: reverse-kNN) says only what it
decides from and how it decides a chunk, so a new mechanism family is one module, found through
``FAMILIES`` by the name its mechanisms give (``Mechanism.family``). ``settings``
holds the privacy settings a run is accounted with, ``ledger_files`` the ledger's files in a run.
"""
from __future__ import annotations

import importlib
from types import ModuleType
# The families: a mechanism names its family (``Mechanism.family``); the aggregate stage runs that
# family's ``load``, ``decide`` and ``conclude`` through ``protocol.run``. Named by module so the
# registry imports nothing heavy (the interactive family needs torch); a new family is one module
# with those three functions, registered here or with ``register_family`` (as the tests do).
FAMILIES: dict[str, str | ModuleType] = {
    "teacher-votes": "pate.aggregation.teacher_votes",  # LNMax, GNMax, Confident-GNMax
    "private-records": "pate.aggregation.private_records",  # Private-kNN
    "reverse-votes": "pate.aggregation.reverse_votes",  # reverse-kNN: one release over every anchor
    "interactive": "pate.aggregation.interactive",  # Interactive-GNMax
}


def register_family(name: str, module: str | ModuleType) -> None:
    """Add the aggregation family ``name``: a module (or its dotted name) with ``load``, ``decide``
    and ``conclude``."""
    if name in FAMILIES and FAMILIES[name] is not module:
        raise ValueError(f"the aggregation family {name!r} is taken")
    FAMILIES[name] = module


def family(name: str) -> ModuleType:
    """The module of the aggregation family ``name``."""
    try:
        module = FAMILIES[name]
    except KeyError:
        raise ValueError(f"no aggregation family {name!r}: one of {sorted(FAMILIES)}") from None
    return importlib.import_module(module) if isinstance(module, str) else module
