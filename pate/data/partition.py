"""Disjoint teacher shards of the private set, and the split of the public set.

Each private record belongs to exactly one teacher, fixed once and stored (Papernot et al. 2017,
arXiv:1610.05755v4, Section 2.1: teachers train on disjoint data). A record's teacher, and whether
a ``private_size`` draw keeps it, come from a keyed hash of that record alone (``pate.data.records``),
so adding or removing one record changes one teacher's shard and no other record's teacher: the
add/remove neighbour relation every guarantee is stated for. Shards are therefore near balanced
(multinomial sizes), not exactly; a teacher may even have none, and then votes as an untrained
model, which depends on no private record. The split is checked again whenever it is loaded, so a
damaged or foreign partition is never used.
"""
from __future__ import annotations

import numpy as np

from ..errors import PateError
from .records import SCHEME, assign


class PartitionError(PateError):
    """A stored partition breaks an invariant."""


def split_public(*, num_public: int, student_pool: int, test_size: int, num_queries: int, seed: int,
                 num_pool: int | None = None) -> dict[str, np.ndarray]:
    """The public split, seeded (public information): queries are the first ``num_queries`` of the
    shuffled pool. With ``num_pool`` (a separate test set) the pool is drawn from the first
    ``num_pool`` public images and the held-out test split is the first ``test_size`` of the rest;
    without it both are drawn from one shuffled public set."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9A7E, 1]))
    if num_pool is None:
        public = rng.permutation(num_public)
        test_index = np.sort(public[:test_size])
        student_pool_index = public[test_size:test_size + student_pool]
    else:
        student_pool_index = rng.permutation(num_pool)[:student_pool]
        test_index = np.arange(num_pool, num_pool + test_size)
    return {"query_index": student_pool_index[:num_queries].copy(), "student_pool_index": student_pool_index,
            "test_index": test_index}


def make_partition(*, digests: np.ndarray, fingerprints: np.ndarray, key_id: str, num_teachers: int,
                   keep_rate: float = 1.0, num_train: int | None = None, **public) -> dict[str, np.ndarray]:
    """Shards from each record's keyed digests (``pate.data.records.shard_digests``), and the public split.

    ``teacher_of[i]`` is record i's teacher, or -1 when the ``keep_rate`` draw leaves it out;
    ``record_fingerprint[i]`` names it in the spend log. Both are PRIVATE. ``key_id`` names the
    spend directory's key the fingerprints were made with (``pate.data.records.key_id``)."""
    if num_train is not None and len(digests) != num_train:
        raise PartitionError(f"{len(digests)} record digests for {num_train} private records")
    return {"scheme": np.array(SCHEME), "key_id": np.array(key_id),
            "teacher_of": assign(digests, num_teachers, keep_rate),
            "shard_digest": np.asarray(digests, dtype=np.uint64),
            "record_fingerprint": np.asarray(fingerprints, dtype=np.uint64), **split_public(**public)}


def leave_out(arrays: dict[str, np.ndarray], past: np.ndarray) -> dict[str, np.ndarray]:
    """The partition less the drawn records that ``past`` marks: the individual filter of ``[privacy]
    total_budget`` (``pate.run.spend_log.past_budget``), applied before anything learns from the data.
    A left-out record's ``teacher_of`` becomes -1, as if the draw had left it out: no teacher trains
    on it, no neighbourhood holds it, the spend log never charges it. ``left_out`` says which
    (PRIVATE, as is how many: both depend on the spend log and on which records are in the data)."""
    teacher_of = np.array(arrays["teacher_of"], copy=True)
    left = np.asarray(past, dtype=bool).reshape(teacher_of.shape) & (teacher_of >= 0)
    teacher_of[left] = -1
    return {**arrays, "teacher_of": teacher_of, "left_out": left}


def verify_partition(arrays: dict[str, np.ndarray], *, num_train: int, num_public: int, num_teachers: int,
                     student_pool: int, test_size: int, num_queries: int, keep_rate: float = 1.0,
                     num_pool: int | None = None) -> None:
    """Raise PartitionError unless the arrays are a valid partition of these sizes."""
    if "scheme" not in arrays or str(arrays["scheme"]) != SCHEME:
        raise PartitionError("it was made by an earlier version of pate (a shuffle of all records, whose guarantee "
                             "covers replacing a record, not adding or removing one); start a new run directory")
    if "key_id" not in arrays or arrays["key_id"].shape != () or arrays["key_id"].dtype.kind != "U":
        raise PartitionError("it was made by an earlier version of pate, which did not record which spend directory's "
                             "key names its records (so its spend could be charged to another spend log); start a "
                             "new run directory")
    missing = {"teacher_of", "shard_digest", "record_fingerprint", "query_index", "student_pool_index",
               "test_index"} - set(arrays)
    if missing:
        raise PartitionError(f"partition lacks {sorted(missing)}")
    teacher_of, digests, prints = arrays["teacher_of"], arrays["shard_digest"], arrays["record_fingerprint"]
    if teacher_of.shape != (num_train,) or prints.shape != (num_train,) or prints.dtype != np.uint64 \
            or digests.shape != (num_train, 2) or digests.dtype != np.uint64:
        raise PartitionError(f"teacher_of, shard_digest and record_fingerprint must describe {num_train} records")
    drawn = assign(digests, num_teachers, keep_rate)
    left_out = arrays["left_out"] if "left_out" in arrays else np.zeros(num_train, dtype=bool)
    if left_out.shape != (num_train,) or left_out.dtype != bool or (left_out & (drawn < 0)).any():
        raise PartitionError(f"left_out must mark which of the {num_train} records drawn [privacy] total_budget left out")
    if (drawn >= 0).sum() == 0 or not np.array_equal(teacher_of, np.where(left_out, -1, drawn)):
        raise PartitionError("teacher_of does not assign each record to the teacher its keyed hash names "
                             f"(teachers 0..{num_teachers - 1}, the configured draw, less the records left out)")
    pool, test, queries = arrays["student_pool_index"], arrays["test_index"], arrays["query_index"]
    for name, index, size in (("student_pool_index", pool, student_pool), ("test_index", test, test_size),
                              ("query_index", queries, num_queries)):
        if index.shape != (size,) or np.unique(index).size != size:
            raise PartitionError(f"{name} must hold {size} distinct indices")
        if size and (index.min() < 0 or index.max() >= num_public):
            raise PartitionError(f"{name} points outside the public set")
    if np.intersect1d(pool, test).size:
        raise PartitionError("the student pool and the held-out test split overlap")
    if num_pool is not None and ((pool.size and pool.max() >= num_pool) or (test.size and test.min() < num_pool)):
        raise PartitionError("the student pool or the held-out test split is drawn from the wrong public images")
    if not np.array_equal(queries, pool[:num_queries]):
        raise PartitionError("queries are not the first entries of the student pool")
