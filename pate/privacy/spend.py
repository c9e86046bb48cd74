"""The spend log of one private dataset: every release over it, composed (no I/O).

Every aggregation and every smooth-sensitivity draw over the same private data is one entry,
written before it happens, holding its worst-case RDP curve on the paper's default orders. The
total privacy spent on the data is the composition of all entries: RDP adds at each order
(Mironov 2017, arXiv:1702.07476v3, Prop. 1), whatever run directory each came from, so a deleted
run or privacy.json cannot buy a fresh start.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Optional, Sequence

import numpy as np

from . import rdp

VERSION = 1
ORDERS = rdp.DEFAULT_ORDERS  # every entry's curve is on these orders, so entries compose
KINDS = ("aggregation", "smooth-sensitivity")


class SpendLogError(ValueError):
    """The spend log is damaged, truncated, or belongs to other private data."""


@dataclass(frozen=True)
class Entry:
    kind: str  # one of KINDS
    run_id: str  # the run directory's random id: a resumed run adds nothing
    draw: int  # 1, 2, ... for repeated smooth-sensitivity draws of one run; 0 for an aggregation
    run_dir: str
    pipeline: str
    time: str
    mechanism: str
    epsilon: float  # this release alone, at ``delta``
    delta: float
    rdp: tuple[Optional[float], ...]  # worst-case RDP at ORDERS; None = +inf (no bound at that order)
    seeded: bool

    def curve(self) -> np.ndarray:
        return np.array([math.inf if r is None else r for r in self.rdp], dtype=float)


def curve_field(curve: np.ndarray) -> tuple[Optional[float], ...]:
    """An RDP curve as JSON can hold it: +inf becomes None."""
    return tuple(None if not math.isfinite(r) else float(r) for r in np.asarray(curve, dtype=float))


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode()


def encode_header(fingerprint: str) -> bytes:
    return _line({"kind": "header", "version": VERSION, "private_data": fingerprint})


def encode(entry: Entry) -> bytes:
    return _line(asdict(entry))


_FIELDS = {f.name for f in fields(Entry)}


def parse(text: str, fingerprint: str, path: str = "the spend log") -> list[Entry]:
    """Entries of a spend log, strictly: damage, truncation or another dataset's log is an error."""
    if text and not text.endswith("\n"):
        raise SpendLogError(f"{path} ends in the middle of a line (truncated or damaged)")
    lines = text.splitlines()
    if not lines:
        raise SpendLogError(f"{path} is empty (no header)")
    try:
        objs = [json.loads(line) for line in lines]
    except json.JSONDecodeError as exc:
        raise SpendLogError(f"{path} is not valid JSON lines ({exc.msg}); it is damaged") from None
    head = objs[0]
    if not isinstance(head, dict) or head.get("kind") != "header" or head.get("version") != VERSION:
        raise SpendLogError(f"{path} does not start with a spend-log header")
    if head.get("private_data") != fingerprint:
        raise SpendLogError(f"{path} belongs to other private data")
    entries = []
    for number, obj in enumerate(objs[1:], start=2):
        if not isinstance(obj, dict) or set(obj) != _FIELDS or obj["kind"] not in KINDS \
                or not isinstance(obj["rdp"], list) or len(obj["rdp"]) != len(ORDERS):
            raise SpendLogError(f"{path} line {number} is not a spend-log entry")
        entries.append(Entry(**{**obj, "rdp": tuple(obj["rdp"])}))
    return entries


@dataclass(frozen=True)
class Total:
    releases: int
    epsilon: float
    delta: float
    order: Optional[float]


def composed(entries: Sequence[Entry], delta: float, conversion: str = "improved",
             extra: Optional[np.ndarray] = None) -> Total:
    """The composition of ``entries`` (and an ``extra`` curve at ORDERS, e.g. a release about to
    happen) as (ε, δ): RDP summed at each order, converted at ``delta``. A single release is its
    own guarantee, which may come from a tighter accountant than RDP."""
    curves = [e.curve() for e in entries] + ([np.asarray(extra, dtype=float)] if extra is not None else [])
    if not curves:
        return Total(0, 0.0, delta, None)
    if extra is None and len(entries) == 1 and entries[0].delta == delta:
        return Total(1, entries[0].epsilon, delta, None)  # one release: its own guarantee (maybe PLD, tighter)
    total = np.sum(curves, axis=0)
    finite = np.isfinite(total)
    if not finite.any():
        return Total(len(curves), math.inf, delta, None)
    eps, order = rdp.eps_from_rdp(total[finite], ORDERS[finite], delta, conversion, warn_edge=False)
    return Total(len(curves), float(eps), delta, float(order))
