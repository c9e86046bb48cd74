"""Disjoint teacher shards of the private set, and the split of the public set.

Each private record belongs to exactly one teacher, fixed once and stored (Papernot et al. 2017,
arXiv:1610.05755v4, Section 2.1: teachers train on disjoint data). A record changes at most one
teacher's training set, hence at most one vote per query, which is what the sensitivity of every
aggregator assumes. The split is checked again
whenever it is loaded, so a damaged or foreign partition is never used.
"""
from __future__ import annotations

import numpy as np

from .errors import PateError


class PartitionError(PateError):
    """A stored partition breaks an invariant."""


def make_partition(*, num_train: int, num_private: int, num_public: int, num_teachers: int,
                   student_pool: int, test_size: int, num_queries: int, seed: int,
                   num_pool: int | None = None) -> dict[str, np.ndarray]:
    """Seeded, balanced, disjoint shards (shard sizes differ by at most one) and a public split.

    ``teacher_of[i]`` is record i's teacher, or -1 when record i is left out (``num_private``
    below the number of private records). Queries are the first ``num_queries`` of the shuffled
    pool. With ``num_pool`` (a separate test set) the pool is drawn from the first ``num_pool``
    public images and the held-out test split is the first ``test_size`` of the rest; without it
    both are drawn from one shuffled public set.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9A7E]))
    chosen = rng.permutation(num_train)[:num_private]
    teacher_of = np.full(num_train, -1, dtype=np.int64)
    teacher_of[chosen] = np.arange(num_private) % num_teachers
    if num_pool is None:
        public = rng.permutation(num_public)
        test_index = np.sort(public[:test_size])
        student_pool_index = public[test_size:test_size + student_pool]
    else:
        student_pool_index = rng.permutation(num_pool)[:student_pool]
        test_index = np.arange(num_pool, num_pool + test_size)
    return {
        "teacher_of": teacher_of,
        "query_index": student_pool_index[:num_queries].copy(),
        "student_pool_index": student_pool_index,
        "test_index": test_index,
    }


def verify_partition(arrays: dict[str, np.ndarray], *, num_train: int, num_private: int, num_public: int,
                     num_teachers: int, student_pool: int, test_size: int, num_queries: int,
                     num_pool: int | None = None) -> None:
    """Raise PartitionError unless the arrays are a valid partition of these sizes."""
    missing = {"teacher_of", "query_index", "student_pool_index", "test_index"} - set(arrays)
    if missing:
        raise PartitionError(f"partition lacks {sorted(missing)}")
    teacher_of = arrays["teacher_of"]
    if teacher_of.shape != (num_train,):
        raise PartitionError(f"teacher_of has shape {teacher_of.shape}, expected ({num_train},)")
    used = teacher_of[teacher_of >= 0]
    if used.size != num_private or teacher_of.min() < -1 or (used.size and used.max() >= num_teachers):
        raise PartitionError("teacher_of does not assign the configured records to teachers 0..K-1")
    sizes = np.bincount(used, minlength=num_teachers)
    if sizes.min() == 0 or sizes.max() - sizes.min() > 1:
        raise PartitionError(f"shards are unbalanced or empty (sizes {sizes.min()}..{sizes.max()})")
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
