"""The spend log: every release over private records, composed per record (no I/O).

Every aggregation and every smooth-sensitivity draw is one entry, written before it happens,
holding its worst-case RDP curve on the paper's default orders and the set of records it charges
(keyed record fingerprints, ``pate.data.records``). A record's spend is the composition of the entries
that hold it: RDP adds at each order (Mironov 2017, arXiv:1702.07476v3, Prop. 1), whichever run
directory and whichever version of the dataset each came from; the privacy spent on a dataset is
the worst over its records. So a deleted run, a copied run directory or a dataset that gained or
lost records buys no fresh start.

The log is a chain: each line carries an HMAC of itself and of the line before (a key derived from
the spend directory's secret record key), and a head file names the last line, under an HMAC of
its own (another key derived from the same secret), so an edited, deleted, reordered or cut line is
detected: a head rewritten to name an earlier line does not verify without the key. (A restore of a
consistent older log, head and key together cannot be told from the genuine older state.)

Besides entries the log holds *claims*: which process (a random token) may extend an aggregation's
ledger, and how far that ledger had got. A copy of a run directory shares its aggregation's nonce;
one whose ledger is behind the log's record of it, or a second copy at the same point once one of
them has moved on, is refused, so the same queries are never answered twice under one entry. The
claims are the ledger's keyed tail marker: a ledger cut back is behind its latest claim.
"""
from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import asdict, dataclass, fields
from typing import Optional, Sequence

import numpy as np

from . import chain, rdp

VERSION = 3  # 3: the head file carries an HMAC (``seal_head``); 2 (an earlier pate) had a bare head
UNSEALED_VERSION = 2
ORDERS = rdp.DEFAULT_ORDERS  # every entry's curve is on these orders, so entries compose
KINDS = ("aggregation", "smooth-sensitivity")


class SpendLogError(ValueError):
    """The spend log is damaged, truncated, or edited."""


class UnsealedLogError(SpendLogError):
    """The spend log was written by an earlier pate, whose head file had no MAC."""


@dataclass(frozen=True)
class Entry:
    kind: str  # one of KINDS
    nonce: str  # the aggregation's random id, fresh when it begins (a copied run directory shares it)
    draw: int  # 1, 2, ... for repeated smooth-sensitivity draws of one aggregation; 0 for the aggregation
    run_dir: str
    pipeline: str
    time: str
    mechanism: str
    epsilon: float  # this release alone, at ``delta``
    delta: float
    rdp: tuple[Optional[float], ...]  # worst-case RDP at ORDERS, for each record it charges; None = +inf
    seeded: bool
    records: int  # how many records it charges
    records_sha256: str  # of the sorted fingerprints file that names them

    def curve(self) -> np.ndarray:
        return np.array([math.inf if r is None else r for r in self.rdp], dtype=float)


@dataclass(frozen=True)
class Claim:
    """Process ``token`` holds aggregation ``nonce``, whose ledger holds ``decided`` queries ending in ``ledger_mac``."""
    nonce: str
    token: str
    decided: int
    ledger_mac: str


def curve_field(curve: np.ndarray) -> tuple[Optional[float], ...]:
    """An RDP curve as JSON can hold it: +inf becomes None."""
    return tuple(None if not math.isfinite(r) else float(r) for r in np.asarray(curve, dtype=float))


def chain_key(secret: bytes) -> bytes:
    return hmac.new(secret, b"pate.spend-log", hashlib.sha256).digest()


def head_key(secret: bytes) -> bytes:
    """The key of the head file's MAC: derived from the spend directory's secret, apart from the chain key."""
    return hmac.new(secret, b"pate.spend-head", hashlib.sha256).digest()


def _head_mac(key: bytes, lines: int, mac: str) -> str:
    return hmac.new(key, f"pate.spend-head/{VERSION}:{lines}:{mac}".encode(), hashlib.sha256).hexdigest()


def seal_head(key: bytes, lines: int, mac: str) -> dict:
    """The head file's content: the log holds ``lines`` lines ending in ``mac``, under ``head_key``."""
    return {"lines": lines, "mac": mac, "head_mac": _head_mac(key, lines, mac)}


def _encode(key: bytes, previous: str, obj: dict) -> tuple[bytes, str]:
    text, mac = chain.encode(key, previous, [obj])
    return text.encode(), mac


def encode_header(key: bytes) -> tuple[bytes, str]:
    return _encode(key, "", {"kind": "header", "version": VERSION})


def encode(key: bytes, previous: str, item: "Entry | Claim") -> tuple[bytes, str]:
    kind = "claim" if isinstance(item, Claim) else item.kind
    return _encode(key, previous, {**asdict(item), "kind": kind})


@dataclass(frozen=True)
class Log:
    entries: list[Entry]
    claims: list[Claim]
    lines: int
    last_mac: str

    def entry(self, nonce: str, kind: str = "aggregation", draw: int = 0) -> Optional[Entry]:
        return next((e for e in self.entries if (e.nonce, e.kind, e.draw) == (nonce, kind, draw)), None)

    def draws(self, nonce: str) -> int:
        return sum(e.nonce == nonce and e.kind == "smooth-sensitivity" for e in self.entries)

    def latest_claim(self, nonce: str) -> Optional[Claim]:
        return next((c for c in reversed(self.claims) if c.nonce == nonce), None)


_ENTRY_FIELDS = {f.name for f in fields(Entry)}
_CLAIM_FIELDS = {f.name for f in fields(Claim)}


def parse(text: str, key: bytes, head: dict, path: str = "the spend log", *, head_key: bytes) -> Log:
    """The log, strictly: a line that is damaged, edited, moved, missing or cut is an error;
    ``head`` ({"lines", "mac", "head_mac"}, ``seal_head``) is where the log must end, and its MAC
    under ``head_key`` must hold. A log of an earlier pate (whose head had no MAC) raises
    ``UnsealedLogError``: nothing tells a log cut under such a head from the genuine one."""
    if text and not text.endswith("\n"):
        raise SpendLogError(f"{path} ends in the middle of a line (truncated or damaged)")
    lines = text.splitlines()
    try:
        objs, macs = chain.verify(lines, key)
    except chain.ChainError as exc:
        raise SpendLogError(f"{path} line {exc.number} {exc.why} (damaged, edited, moved, lines before it deleted, "
                            "or written with another key)") from None
    entries, claims = [], []
    for number, obj in enumerate(objs, start=1):
        kind = obj.get("kind")
        if number == 1:
            if kind == "header" and obj.get("version") == UNSEALED_VERSION:
                raise UnsealedLogError(f"{path} was written by an earlier pate, whose head file has no MAC")
            if kind != "header" or obj.get("version") != VERSION:
                raise SpendLogError(f"{path} does not start with a spend-log header of version {VERSION}")
            continue
        if kind == "claim" and set(obj) - {"kind"} == _CLAIM_FIELDS:
            claims.append(Claim(**{k: v for k, v in obj.items() if k != "kind"}))
        elif kind in KINDS and set(obj) == _ENTRY_FIELDS and isinstance(obj["rdp"], list) \
                and len(obj["rdp"]) == len(ORDERS):
            entries.append(Entry(**{**obj, "rdp": tuple(obj["rdp"])}))
        else:
            raise SpendLogError(f"{path} line {number} is not a spend-log line")
    if not lines:
        raise SpendLogError(f"{path} is empty (no header)")
    # The head is rewritten just after each append: a crash between the two leaves the log a line
    # ahead of it (that line's MAC checked, so written with the key); a log behind its head was cut.
    # The head's own MAC stops a head rewritten to name an earlier line (its count and that line's
    # MAC are in the log for anyone to copy; the head key is not).
    count = head.get("lines")
    if not isinstance(count, int) or not 1 <= count <= len(lines) or macs[count - 1] != head.get("mac"):
        raise SpendLogError(f"{path} holds {len(lines)} lines but its head file records {head.get('lines')}: lines "
                            "were cut from its end or it was replaced")
    if not isinstance(head.get("head_mac"), str) or not hmac.compare_digest(
            head["head_mac"], _head_mac(head_key, count, macs[count - 1])):
        raise SpendLogError(f"the head file of {path} does not carry a valid MAC (it was rewritten without the "
                            "key: lines cut from the log's end with the head made to match, or the head replaced)")
    return Log(entries, claims, len(lines), macs[-1])


@dataclass(frozen=True)
class Total:
    releases: int  # entries holding the worst-off record
    epsilon: float  # the worst-off record's composed guarantee
    delta: float
    order: Optional[float]


def composed(entries: Sequence[Entry], members: np.ndarray, delta: float, conversion: str = "improved",
             extra: Optional[np.ndarray] = None) -> Total:
    """The worst record's composition: ``members`` (N, E) says which of the ``entries`` hold each of
    N records; each record's RDP is the sum of its entries' curves (and ``extra``, a release about
    to happen that charges all N), converted at ``delta``, and the worst record is returned. A
    record held by a single release (and no ``extra``) has that release's own guarantee, which may
    come from a tighter accountant than RDP."""
    worst = Total(0, 0.0, delta, None)
    for total in _group_totals(entries, members, delta, conversion, extra)[0]:
        if (total.epsilon, total.releases) > (worst.epsilon, worst.releases):
            worst = total
    return worst


def _group_totals(entries: Sequence[Entry], members: np.ndarray, delta: float, conversion: str,
                  extra) -> tuple[list[Total], np.ndarray]:
    """The composed total of each distinct set of entries holding a record (records held by the same
    entries have the same spend: computed once), and which set each of the N records is in."""
    members = np.asarray(members, dtype=bool).reshape(len(members), len(entries))
    if not len(members):
        return [], np.zeros(0, dtype=np.int64)
    curves = np.array([e.curve() for e in entries]).reshape(len(entries), len(ORDERS))
    groups, inverse = np.unique(members, axis=0, return_inverse=True)
    totals = [_one([e for e, m in zip(entries, group) if m], curves[group], delta, conversion, extra)
              for group in groups]
    return totals, np.asarray(inverse).reshape(-1)


def _one(held: list[Entry], curves: np.ndarray, delta: float, conversion: str, extra) -> Total:
    count = len(held) + (extra is not None)
    if count == 0:
        return Total(0, 0.0, delta, None)
    if extra is None and len(held) == 1 and held[0].delta == delta:
        return Total(1, held[0].epsilon, delta, None)
    total = curves.sum(axis=0) + (0 if extra is None else np.asarray(extra, dtype=float))
    finite = np.isfinite(total)
    if not finite.any():
        return Total(count, math.inf, delta, None)
    eps, order = rdp.eps_from_rdp(total[finite], ORDERS[finite], delta, conversion, warn_edge=False)
    return Total(count, float(eps), delta, float(order))


def each(entries: Sequence[Entry], members: np.ndarray, delta: float, conversion: str = "improved",
         extra: Optional[np.ndarray] = None) -> np.ndarray:
    """(N,) each record's composed ε, as ``composed`` computes the worst one: records held by the
    same entries share one total, computed once per group (PRIVATE: a record's total depends on
    which releases hold it, hence on which other records were in their data)."""
    totals, inverse = _group_totals(entries, members, delta, conversion, extra)
    return np.array([t.epsilon for t in totals])[inverse] if totals else np.zeros(0)
