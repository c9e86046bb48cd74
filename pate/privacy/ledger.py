"""The per-query audit ledger: records, their JSON-lines encoding and their checks (no I/O).

The ledger is PRIVATE to the data holder. Its lines are written to disk (by the aggregate stage,
through ``pate.io.append_durable``) before a label can leave the aggregator, and a resumed
aggregation starts after the last line, so no query is ever answered twice and no noise is
re-drawn for a released answer (Papernot et al. 2018 assume each answer is drawn once).

The first line is a header binding the ledger to one run (config fingerprint) and one vote
matrix (sha256 of votes.npz); every record repeats the facts of its vote row that the audit
relies on, so a ledger that does not match the votes is detected on load. Every line carries an
HMAC-SHA256, under a key kept beside the ledger, of its content and of the previous line's MAC: a
line edited, dropped, repeated or moved breaks the chain, so damage is refused, never repaired.
(A ledger cut after a whole line keeps a valid chain; the run's manifest counts the decided queries
to catch that.)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple, Optional, Sequence

import numpy as np

from . import chain

VERSION = 2
KEY_BYTES = 32


class LedgerError(Exception):
    """The ledger is damaged, truncated, or belongs to another run or vote matrix."""


ANSWERED_BY_TEACHERS, ANSWERED_BY_STUDENT = "teachers", "student"  # QueryRecord.answered_by


@dataclass(frozen=True)
class QueryRecord:
    """One query's decision. ``label`` is -1 when the query was not answered."""
    query: int  # position in votes.npz
    public_index: int  # index of the query image in the public set
    answered: bool
    label: int
    top_label: int  # plurality label (argmax of the votes, first on ties)
    top_count: int
    gap: int  # top count minus the runner-up count
    logq: Optional[float]  # log of the GNMax bound q~ (Prop. 7), for answered queries
    logpr_answered: Optional[float]  # log Pr[threshold passed] (Confident-GNMax only)
    answered_by: Optional[str] = None  # Interactive-GNMax: "teachers" or "student" (the ledger's "source" key)
    noisy: Optional[tuple[float, ...]] = None  # soft labels: the released noisy count vector (label = its argmax)

    @property
    def by_teachers(self) -> bool:
        """Interactive-GNMax asked the teachers (GNMax noise was drawn for this query)."""
        return self.answered_by == ANSWERED_BY_TEACHERS

    @property
    def by_student(self) -> bool:
        """Interactive-GNMax took the student's label: no teacher vote was read."""
        return self.answered_by == ANSWERED_BY_STUDENT


@dataclass(frozen=True)
class LedgerHeader:
    config_sha256: str
    votes_sha256: str
    mechanism: str
    seeded: bool
    num_queries: int
    version: int = VERSION


def vote_facts(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top label, top count, gap to runner-up) per row, vectorized."""
    top_label = np.argmax(votes, axis=1)
    ordered = np.sort(votes, axis=1)
    top = ordered[:, -1]
    second = ordered[:, -2] if votes.shape[1] > 1 else np.zeros_like(top)
    return top_label, top, top - second


def encode_header(header: LedgerHeader, key: bytes) -> tuple[bytes, str]:
    """The header line and its MAC (the start of the chain)."""
    text, mac = chain.encode(key, "", [{"kind": "header", **asdict(header)}])
    return text.encode(), mac


def encode(records: Sequence[QueryRecord], key: bytes, previous: str) -> tuple[bytes, str]:
    """The lines of ``records``, chained after the MAC ``previous``, to be appended in one write;
    and the new last MAC. An unset optional field is left out (earlier ledgers read the same)."""
    def body(record: QueryRecord) -> dict:
        return {KEY_IN_FILE.get(k, k): v for k, v in asdict(record).items()
                if not (KEY_IN_FILE.get(k, k) in _OPTIONAL_FIELDS and v is None)}

    text, mac = chain.encode(key, previous, [{"kind": "query", **body(r)} for r in records])
    return text.encode(), mac


class Ledger(NamedTuple):
    header: LedgerHeader
    records: list[QueryRecord]
    last_mac: str  # where the next append chains from
    macs: tuple[str, ...] = ()  # the chain after each line: macs[d] follows the header and d records


KEY_IN_FILE = {"answered_by": "source"}  # the field's name when ledgers were first written; files keep it
_FIELD_OF_KEY = {v: k for k, v in KEY_IN_FILE.items()}
_RECORD_FIELDS = {KEY_IN_FILE.get(f.name, f.name) for f in fields(QueryRecord)}
_OPTIONAL_FIELDS = {"source", "noisy"}  # absent from ledgers written before Interactive-GNMax / soft labels
_HEADER_FIELDS = {f.name for f in fields(LedgerHeader)}


def parse(text: str, key: bytes, path: str = "the ledger") -> Ledger:
    """Parse a ledger's text strictly: any damaged, missing, moved or edited line is an error
    (``path`` only names the file in messages)."""
    if text and not text.endswith("\n"):
        raise LedgerError(f"{path} ends in the middle of a line (truncated or damaged); it cannot be "
                          "trusted, and the queries it recorded must not be answered again")
    lines = text.splitlines()
    if not lines:
        raise LedgerError(f"{path} is empty (no header)")
    try:
        objs, macs = chain.verify(lines, key)
    except chain.ChainError as exc:
        if exc.why.startswith("is not JSON"):
            raise LedgerError(f"{path} {exc}; the ledger is damaged") from None
        raise LedgerError(f"{path} line {exc.number} fails its integrity check (edited, moved, or not written by "
                          "this run); the ledger cannot be trusted, and its queries must not be answered again") from None
    head = objs[0]
    if head.get("kind") != "header" or set(head) - {"kind"} != _HEADER_FIELDS:
        raise LedgerError(f"{path} does not start with a valid ledger header")
    header = LedgerHeader(**{k: v for k, v in head.items() if k != "kind"})
    records = []
    for number, obj in enumerate(objs[1:], start=2):
        keys = set(obj) - {"kind"}
        if obj.get("kind") != "query" or not _RECORD_FIELDS - _OPTIONAL_FIELDS <= keys <= _RECORD_FIELDS:
            raise LedgerError(f"{path} line {number} is not a query record")
        record = QueryRecord(**{_FIELD_OF_KEY.get(k, k): tuple(v) if k == "noisy" and isinstance(v, list) else v
                                for k, v in obj.items() if k != "kind"})
        if record.query != number - 2:
            raise LedgerError(f"{path} line {number} records query {record.query}, expected {number - 2} "
                              "(lines missing, repeated or reordered)")
        records.append(record)
    return Ledger(header, records, macs[-1], tuple(macs))


def check_against_votes(header: LedgerHeader, records: list[QueryRecord], *, config_sha256: str,
                        votes_sha256: str, votes: np.ndarray, query_index: np.ndarray) -> None:
    """Refuse a ledger from another run, or one whose records disagree with the vote matrix."""
    if header.version != VERSION:
        raise LedgerError(f"ledger version {header.version} is not supported (expected {VERSION})")
    if header.config_sha256 != config_sha256:
        raise LedgerError("the ledger belongs to a run with another config")
    if header.votes_sha256 != votes_sha256 or header.num_queries != len(votes):
        raise LedgerError("the ledger was written for other votes (votes.npz changed since aggregation began)")
    if len(records) > len(votes):
        raise LedgerError(f"the ledger has {len(records)} records for {len(votes)} queries")
    if not records:
        return
    n = len(records)
    arr = {name: np.array([getattr(r, name) for r in records]) for name in
           ("public_index", "answered", "label", "top_label", "top_count", "gap")}
    top_label, top, gap = vote_facts(votes[:n])
    mismatch = ((arr["public_index"] != query_index[:n]) | (arr["top_label"] != top_label)
                | (arr["top_count"] != top) | (arr["gap"] != gap)
                | (arr["answered"] != (arr["label"] >= 0)) | (arr["label"] >= votes.shape[1]))
    soft = [i for i, r in enumerate(records) if r.noisy is not None]
    for i in soft:  # a soft label is the vector whose argmax was released, on an answered query
        vector = np.asarray(records[i].noisy, dtype=float)
        if vector.shape != (votes.shape[1],) or not np.isfinite(vector).all() or not records[i].answered \
                or records[i].by_student or int(np.argmax(vector)) != records[i].label:
            mismatch[i] = True
    if mismatch.any():
        first = int(np.flatnonzero(mismatch)[0])
        raise LedgerError(f"ledger record for query {first} does not match votes.npz (tampered or from "
                          "another run)")


def released_soft(records: list[QueryRecord], num_classes: int) -> np.ndarray | None:
    """(answered, m) the noisy count vectors released with the answered labels (soft labels), in
    the order of ``released_labels``; NaN rows where a label had no vector (Interactive-GNMax's
    student answers); None when the run released none."""
    answered = [r for r in records if r.answered]
    if not any(r.noisy is not None for r in answered):
        return None
    return np.array([r.noisy if r.noisy is not None else (np.nan,) * num_classes for r in answered], dtype=float)


def released_labels(records: list[QueryRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query positions, public indices, labels) of the answered queries."""
    answered = [r for r in records if r.answered]
    return (np.array([r.query for r in answered], dtype=np.int64),
            np.array([r.public_index for r in answered], dtype=np.int64),
            np.array([r.label for r in answered], dtype=np.int64))
