"""Who a private record is: a keyed hash of the record itself, never its position in the set.

Every guarantee pate publishes is for neighbouring datasets that differ by one record added or
removed. The teachers' sensitivity argument (Papernot et al. 2017, arXiv:1610.05755v4, Sec. 2.1:
one record changes one teacher's training set, hence one vote per query) holds for that relation
only if a record's teacher, and whether a ``[data] private_size`` draw keeps it, depend on that
record alone. A permutation of ``range(N)`` does not: removing the last of 600 records moves most
of the others to another teacher. So each record is hashed with a secret key (keyed BLAKE2b, a
pseudo-random function):

- a *shard digest*, salted with the public ``split_seed``, gives the record's teacher and its
  draw (kept iff the digest falls below a threshold fixed by the settings);
- a *record fingerprint*, independent of the split seed, names the record in the spend log, so
  runs over versions of a dataset that gained or lost records compose over the records they share.

What is hashed is the record: its content (image bytes, or for image folders the file's sha256)
and its label, or, for ``.npz`` arrays holding an ``ids`` array, the stable id the user gave.
The key is random, made once per spend directory (beside the spend log, ``pate.run.spend_log``), mode
0600. It is PRIVATE: with it, anyone holding a guessed record can find its teacher and its spend.
A run records the key's *id* (``key_id``: a keyed hash of a constant, never the key), and every
later stage refuses to run under a spend directory with another key: the fingerprints it would
charge would never meet that directory's, so its spend would compose with nothing.

A *seeded* run (``[aggregator] seed``) keys its shard digests from the seed instead
(``seeded_shard_key``), so the same config and data give the same shards, votes and labels on any
machine and under any spend directory, as a seed promises. That is sound: a record's teacher and
draw then depend on that record and public settings only, so adding or removing one record still
changes only its own shard (the neighbour argument needs no secret), and hiding which teacher holds
a record is no part of any guarantee; a seeded run is marked not for production anyway (its noise
is reproducible). Its fingerprints still use the spend directory's key, so seeded and unseeded runs
over the same records compose in the spend log, and the key-id binding holds for seeded runs too.
"""
from __future__ import annotations

import hashlib
import hmac
import zipfile
from pathlib import Path

import numpy as np

from ..errors import PateError

KEY_FILE = "record.key"
KEY_BYTES = 32
SCHEME = "keyed-hash/1"  # partition.npz's `scheme`: earlier partitions (a permutation of all records) lack it
_SHARD, _FINGERPRINT = b"pate.shard", b"pate.record"
_KEY_ID, _SEEDED_SHARDS = b"pate.key-id", b"pate.seeded-shards"
MAX_ID_CHARS = 1000


class RecordError(PateError):
    """The records cannot be named (a damaged key, duplicate or unusable ids)."""


def load_key(path: Path) -> bytes:
    """The secret record key at ``path`` (made by ``pate.run.spend_log`` with its log)."""
    data = path.read_bytes()
    if len(data) != KEY_BYTES:
        raise RecordError(f"{path} is damaged ({len(data)} bytes, expected {KEY_BYTES}); restore it from a backup "
                          "(without it no record's teacher or spend can be found)")
    return data


def key_id(secret: bytes) -> str:
    """The key's public id (32 hex digits): which spend directory's key named a run's records."""
    return hmac.new(secret, _KEY_ID, hashlib.sha256).hexdigest()[:32]


def seeded_shard_key(seed: int) -> bytes:
    """The shard-digest key of a seeded run: a function of the seed alone (see the module docstring)."""
    return hmac.new(_SEEDED_SHARDS, str(int(seed)).encode(), hashlib.sha256).digest()


def user_ids(private_file: str) -> list[str] | None:
    """The ``ids`` array of a private ``.npz`` (one stable id per record), or None when it has none."""
    if not private_file:
        return None
    try:
        with np.load(Path(private_file), allow_pickle=False) as data:
            if "ids" not in data.files:
                return None
            ids = data["ids"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RecordError(f"[data] private_file: its 'ids' cannot be read ({exc})") from None
    if ids.ndim != 1 or ids.dtype.kind not in "iuU":
        raise RecordError(f"[data] private_file: 'ids' must be a vector of integers or strings; found {ids.dtype} "
                          f"{ids.shape}")
    names = [str(v) for v in ids.tolist()]
    if any(not n or len(n) > MAX_ID_CHARS for n in names):
        raise RecordError(f"[data] private_file: every id must be 1..{MAX_ID_CHARS} characters")
    if len(set(names)) != len(names):
        raise RecordError("[data] private_file: 'ids' holds a duplicate; each record needs its own id")
    return names


def identities(private_x: np.ndarray, private_y: np.ndarray, *, file_hashes: list[str] | None = None,
               ids: list[str] | None = None) -> list[bytes]:
    """What each record is: its user id when given, else its content (the file's sha256 for image
    folders, the image bytes otherwise) with its label."""
    if ids is not None:
        if len(ids) != len(private_y):
            raise RecordError(f"[data] private_file: 'ids' names {len(ids)} records but there are {len(private_y)}")
        return [b"id:" + n.encode() for n in ids]
    labels = np.asarray(private_y, dtype=np.int64)
    if file_hashes is not None:
        return [f"file:{h}:{int(y)}".encode() for h, y in zip(file_hashes, labels)]
    x = np.ascontiguousarray(private_x)
    return [b"image:" + hashlib.sha256(x[i].tobytes()).digest() + int(labels[i]).to_bytes(8, "little", signed=True)
            for i in range(len(labels))]


def _digests(secret: bytes, person: bytes, salt: bytes, names: list[bytes], size: int) -> np.ndarray:
    out = b"".join(hashlib.blake2b(n, key=secret, person=person, salt=salt, digest_size=size).digest()
                   for n in names)
    return np.frombuffer(out, dtype="<u8").reshape(len(names), size // 8)


def shard_digests(secret: bytes, names: list[bytes], split_seed: int) -> np.ndarray:
    """(N, 2) uint64: column 0 picks the record's teacher, column 1 its draw; both depend on the
    record, the key and the public split seed only."""
    return _digests(secret, _SHARD, int(split_seed).to_bytes(16, "little"), names, 16)


def fingerprints(secret: bytes, names: list[bytes]) -> np.ndarray:
    """(N,) uint64 keyed fingerprint of each record: how the spend log knows it (PRIVATE)."""
    return _digests(secret, _FINGERPRINT, b"", names, 8)[:, 0].copy()


def assign(digests: np.ndarray, num_teachers: int, keep_rate: float) -> np.ndarray:
    """(N,) int64 teacher of each record, -1 where the draw leaves it out: teacher = digest mod K,
    kept iff the draw digest / 2^64 < ``keep_rate`` (a fixed threshold, so one record's presence
    changes no other record's fate)."""
    teacher = (digests[:, 0] % np.uint64(num_teachers)).astype(np.int64)
    if keep_rate < 1:
        uniform = (digests[:, 1] >> np.uint64(11)).astype(np.float64) / 2.0 ** 53  # [0, 1), 53 bits
        teacher[uniform >= keep_rate] = -1
    return teacher
