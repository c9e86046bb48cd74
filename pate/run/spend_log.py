"""The spend log on disk: one chained log per spend directory, outside every run directory, locked.

Default location ``~/.local/share/pate/spend`` (``$XDG_DATA_HOME/pate/spend`` when set);
``PATE_SPEND_DIR`` overrides it. It holds the secret record key (``pate.data.records``), the log
(``spend.jsonl``), its head (``spend.head``: how many lines and the last MAC, under an HMAC of their
own so that nobody without the key can make it name an earlier line), and for each
aggregation the sorted fingerprints of the records it charges (``records/<nonce>.npy``). Every
file is PRIVATE (fingerprints confirm guessed records) and created 0600. An entry is appended,
under an OS file lock, before the release it records happens.

What it cannot protect against: a user who deletes the whole directory (log, head and key) starts
afresh, as one who runs pate on another machine does; the guarantee of each release still holds,
only their composition is no longer counted. Nor can it tell a restore of a consistent older log,
head and key (a backup) from the genuine older state: keep the directory where that is hard.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from . import outputs
from ..data import records
from ..errors import PateError
from ..io import append_durable, atomic_write_bytes, atomic_write_json, create_exclusive, sha256_file
from ..privacy import spend

LOG, HEAD, RECORDS_DIR, LOCK = "spend.jsonl", "spend.head", "records", "spend.lock"


class SpendError(PateError):
    """The spend log is unusable, or a release would pass the total budget."""


def _spend_folder(folder: Path, run) -> bool:
    """A spend directory pate made: its lock, log, head or record key is there."""
    return any((folder / name).exists() for name in (LOG, HEAD, records.KEY_FILE, LOCK))


SPEND_DIR = outputs.Purpose("spend directory", private=True, folder=True, ours=_spend_folder,  # the record key
                            hint="point PATE_SPEND_DIR at a new folder (or the one earlier runs used)")


def directory() -> Path:
    """The spend directory, checked by the output rule: it holds the secret record key, so never
    inside a run directory (deleting a run must not delete what every run spent) nor a release."""
    if os.environ.get("PATE_SPEND_DIR"):
        folder = Path(os.environ["PATE_SPEND_DIR"])
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        folder = base / "pate" / "spend"
    return outputs.check_output(folder, SPEND_DIR)


def _refuse(problem: str) -> SpendError:
    return SpendError(f"{problem}; nothing is released until it is restored")


@contextlib.contextmanager
def _locked() -> Iterator[tuple[Path, bytes]]:
    """Hold the log's lock (released by the kernel if the process dies); yields (folder, secret key)."""
    folder = directory()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder, _secret(folder)
    finally:
        os.close(fd)


def _secret(folder: Path) -> bytes:
    """The directory's record key; a new directory gets its log, head and key together (the key
    last), so a key without its log means the log was deleted."""
    key_path, log, head = folder / records.KEY_FILE, folder / LOG, folder / HEAD
    if key_path.exists():
        try:
            secret = records.load_key(key_path)
        except records.RecordError as exc:
            raise _refuse(str(exc)) from None
        if not log.exists() or not head.exists():
            raise _refuse(f"{(log if not log.exists() else head)} was deleted, though {key_path} is there: the "
                          "privacy already spent on your records is unknown")
        return secret
    if log.exists() and len(log.read_bytes().splitlines()) > 1:
        raise _refuse(f"{key_path} is missing, so the spend log in {folder} cannot be checked")
    secret = os.urandom(records.KEY_BYTES)
    text, mac = spend.encode_header(spend.chain_key(secret))
    atomic_write_bytes(log, text, private=True)
    atomic_write_json(head, spend.seal_head(spend.head_key(secret), 1, mac), private=True)
    create_exclusive(key_path, secret)
    return secret


def record_key() -> bytes:
    """The secret key that names records (``pate.data.records``), made with the spend log on first use."""
    with _locked() as (_, secret):
        return secret


def key_id(create: bool = True) -> Optional[str]:
    """The public id of this spend directory's record key (``pate.data.records.key_id``); None when there
    is no spend log there yet and ``create`` is false (then nothing is made). A log without its key
    is refused, as every use of the log refuses it."""
    folder = directory()
    if not create and not (folder / records.KEY_FILE).exists() and not (folder / LOG).exists():
        return None
    return records.key_id(record_key())


def _read(folder: Path, secret: bytes) -> spend.Log:
    key = spend.chain_key(secret)
    log, head = folder / LOG, folder / HEAD
    old = sorted(p.name for p in folder.glob("*.jsonl") if p.name != LOG)
    if old:
        raise SpendError(f"{folder} holds spend logs of an earlier pate version ({old[0]}, ...), kept per whole "
                         "dataset; they cannot be composed per record. Move them out of the folder to go on (their "
                         "spend is then no longer counted)")
    try:
        head_doc = json.loads(head.read_text(encoding="utf-8"))
        text = log.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise _refuse(f"{exc.filename} is missing (the spend log or its head was deleted)") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise _refuse(f"the spend log in {folder} is unreadable ({exc})") from None
    try:
        return spend.parse(text, key, head_doc if isinstance(head_doc, dict) else {}, str(log),
                           head_key=spend.head_key(secret))
    except spend.UnsealedLogError:
        raise SpendError(f"{log} was written by an earlier pate, whose head file ({head.name}) has no MAC, so a log "
                         f"cut back under it cannot be detected: move {folder} aside (keep it as the record of what "
                         "was spent) and run again to start a new spend log; its releases are then no longer "
                         "composed with new ones, and run directories partitioned under it need a new run "
                         "directory") from None
    except spend.SpendLogError as exc:
        raise _refuse(str(exc)) from None


def _append(folder: Path, log: spend.Log, secret: bytes, item) -> spend.Log:
    payload, mac = spend.encode(spend.chain_key(secret), log.last_mac, item)
    append_durable(folder / LOG, payload)
    atomic_write_json(folder / HEAD, spend.seal_head(spend.head_key(secret), log.lines + 1, mac), private=True)
    entries = log.entries + [item] if isinstance(item, spend.Entry) else log.entries
    claims = log.claims + [item] if isinstance(item, spend.Claim) else log.claims
    return spend.Log(entries, claims, log.lines + 1, mac)


def _members(folder: Path, entries: list[spend.Entry], fingerprints: np.ndarray) -> np.ndarray:
    """(N, E): which entries charge each of the records named by ``fingerprints``."""
    out = np.zeros((len(fingerprints), len(entries)), dtype=bool)
    by_file: dict[str, np.ndarray] = {}
    for j, e in enumerate(entries):
        if e.records_sha256 not in by_file:
            path = folder / RECORDS_DIR / f"{e.records_sha256}.npy"
            if not path.exists() or sha256_file(path) != e.records_sha256:
                raise _refuse(f"{path} (the records charged by the release of {e.time}) is missing or changed")
            by_file[e.records_sha256] = np.load(path, allow_pickle=False)
        out[:, j] = np.isin(fingerprints, by_file[e.records_sha256], assume_unique=False)
    return out


def _total(folder, log, fingerprints, delta, conversion, extra=None) -> spend.Total:
    return spend.composed(log.entries, _members(folder, log.entries, fingerprints), delta, conversion, extra)


def _refuse_past_budget(total: spend.Total, before: spend.Total, total_budget: float, what: str) -> None:
    """The safety net behind the partition's individual filter (``past_budget``): that filter leaves
    out every record this run would take past ``total_budget``, so this refusal only happens when
    releases on the run's records were logged after its partition (PRIVATE: it depends on them)."""
    if total_budget and total.epsilon > total_budget:
        raise SpendError(
            f"{what} would bring a record of this run to epsilon {total.epsilon:.3f} (delta {total.delta:g}, "
            f"{total.releases} releases; {before.epsilon:.3f} before it), past [privacy] total_budget = "
            f"{total_budget:g}: releases on its records were logged after this run's partition left them room (a copy "
            "of this run directory or another run on the same records aggregated meanwhile, or a smooth-sensitivity "
            "draw was repeated). Nothing was released; a new run directory's partition leaves such records out")


def begin(entry: spend.Entry, fingerprints: np.ndarray, *, total_budget: float = 0.0, conversion: str = "improved",
          planned: Optional[np.ndarray] = None) -> spend.Total:
    """Charge ``entry`` to the records ``fingerprints`` before its release begins, unless an entry
    with its nonce is there already (a resumed aggregation); refuse it when the worst record's
    composed total would pass ``total_budget`` (0 = none), counting ``planned`` (a curve about to
    be drawn as well, e.g. the smooth-sensitivity release) too: a safety net, since the partition
    left out every record that would (``past_budget``). Returns the worst record's total (PRIVATE)."""
    prints = np.unique(np.asarray(fingerprints, dtype=np.uint64))
    with _locked() as (folder, secret):
        log = _read(folder, secret)
        if log.entry(entry.nonce, entry.kind, entry.draw) is not None:
            return _total(folder, log, prints, entry.delta, conversion)
        before = _total(folder, log, prints, entry.delta, conversion)
        extra = entry.curve() + (0 if planned is None else planned)
        _refuse_past_budget(_total(folder, log, prints, entry.delta, conversion, extra), before, total_budget,
                            "this release" + (" and the release planned after it" if planned is not None else ""))
        data = _npy_bytes(prints)
        digest = hashlib.sha256(data).hexdigest()
        path = folder / RECORDS_DIR / f"{digest}.npy"
        if not path.exists():
            path.parent.mkdir(exist_ok=True, mode=0o700)
            atomic_write_bytes(path, data, private=True)
        log = _append(folder, log, secret, replace(entry, records=int(len(prints)), records_sha256=digest))
        return _total(folder, log, prints, entry.delta, conversion)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def draws(nonce: str) -> int:
    """How many smooth-sensitivity draws the aggregation ``nonce`` has logged."""
    with _locked() as (folder, secret):
        return _read(folder, secret).draws(nonce)


def total(fingerprints: np.ndarray, delta: float, conversion: str = "improved") -> spend.Total:
    """The worst record's composed spend, over the records named by ``fingerprints``."""
    prints = np.unique(np.asarray(fingerprints, dtype=np.uint64))
    with _locked() as (folder, secret):
        return _total(folder, _read(folder, secret), prints, delta, conversion)


def entries() -> list[spend.Entry]:
    with _locked() as (folder, secret):
        return _read(folder, secret).entries


class Holder:
    """This process's hold on one aggregation: only the holder of the latest claim may extend its
    ledger, and every extension is claimed in the log under its lock, with the ledger written
    inside it, so two copies of a run directory never both answer the same queries."""

    def __init__(self, nonce: str, ledger_macs: tuple[str, ...]):
        """Claim aggregation ``nonce`` for this process: refused when the log has no entry for it, or
        its latest claim is not on this ledger (``ledger_macs``: the chain after header and each
        record) — a stale copy of the run directory, or one that another copy has moved past."""
        self.nonce, self.token = nonce, secrets.token_hex(16)
        with _locked() as (folder, secret):
            log = _read(folder, secret)
            if log.entry(nonce) is None:
                raise _refuse(f"the spend log in {folder} has no record of this aggregation (nonce {nonce[:12]}): "
                              "it was replaced, or this run directory comes from another spend log")
            latest = log.latest_claim(nonce)
            if latest is not None and (latest.decided >= len(ledger_macs)
                                       or ledger_macs[latest.decided] != latest.ledger_mac):
                raise SpendError(
                    f"this run directory's ledger holds {len(ledger_macs) - 1} queries but the spend log records "
                    f"{latest.decided} for its aggregation, on another ledger: it is a stale copy of a run directory "
                    "(or its ledger was replaced), and answering again would spend twice. Use the run directory the "
                    "spend log follows, or start a new run directory")
            self._claim(folder, secret, log, len(ledger_macs) - 1, ledger_macs[-1])

    def _claim(self, folder: Path, secret: bytes, log: spend.Log, decided: int, mac: str) -> None:
        _append(folder, log, secret, spend.Claim(self.nonce, self.token, decided, mac))

    def extend(self, write: Callable[[], None], decided: int, mac: str) -> None:
        """Under the log's lock: check this process still holds the aggregation, ``write`` the
        ledger lines, then record how far the ledger got."""
        with _locked() as (folder, secret):
            log = _read(folder, secret)
            latest = log.latest_claim(self.nonce)
            if latest is None or latest.token != self.token:
                raise SpendError("another copy of this run directory took over its aggregation; this one stops here "
                                 "(nothing more is released from it)")
            write()
            self._claim(folder, secret, log, decided, mac)


def each_total(fingerprints: np.ndarray, delta: float, conversion: str = "improved",
               extra: Optional[np.ndarray] = None) -> np.ndarray:
    """(N,) the composed ε of each record named by ``fingerprints`` over every entry of the log that
    charges it, and ``extra`` (an RDP curve on ``spend.ORDERS`` about to charge all of them) if
    given. PRIVATE: a record's total depends on which releases hold it. Records held by the same
    entries share one total, computed once."""
    prints = np.asarray(fingerprints, dtype=np.uint64).reshape(-1)
    unique, inverse = np.unique(prints, return_inverse=True)
    with _locked() as (folder, secret):
        log = _read(folder, secret)
        totals = spend.each(log.entries, _members(folder, log.entries, unique), delta, conversion, extra)
    return totals[np.asarray(inverse).reshape(-1)] if len(prints) else np.zeros(0)


def past_budget(fingerprints: np.ndarray, extra: np.ndarray, total_budget: float, delta: float,
                conversion: str = "improved") -> np.ndarray:
    """(N,) bool: which records named by ``fingerprints`` a release of RDP curve ``extra`` (on
    ``spend.ORDERS``) would take past ``total_budget`` (0 = none: no record). The individual filter
    of ``[privacy] total_budget`` (Feldman & Zrnic 2021, arXiv:2008.11193, individual privacy
    accounting via a Rényi filter): a run leaves such records out of its data, so every record's
    total over this log stays within the budget whichever records a dataset holds. PRIVATE."""
    prints = np.asarray(fingerprints, dtype=np.uint64).reshape(-1)
    if not total_budget or not len(prints):
        return np.zeros(len(prints), dtype=bool)
    return each_total(prints, delta, conversion, extra) > total_budget
