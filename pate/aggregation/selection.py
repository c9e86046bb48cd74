"""Which public pool images the teachers are asked about: chosen on public information only.

``random`` asks the first queries of the shuffled pool. ``k-center`` covers the pool: greedy
k-center (Gonzalez 1985; the core-set view of active learning, Sener & Savarese 2018) in a PCA space
of the pool's own pixels, so the labels released spread over the pool instead of piling up where
it is dense. Either way the choice is a function of public images and the public split seed alone:
the query set is fixed before any vote exists, every query is charged its data-independent worst
case as before, and the guarantee (computed from the settings and the number of queries) is
unchanged (a choice that depended on released outputs would still be covered: each query's worst
case holds whatever led to asking it).

``uncertainty`` (Interactive-GNMax only) is that last case: the queries are chosen between rounds,
by ``pate.aggregation.interactive``, as the pool images on which the round's student is least
certain (margin sampling, Settles 2009). At partition time the pool keeps its shuffled order, like
``random``; every pool image is a candidate the teachers vote on (``candidates``), and at most
``max_queries`` of them are asked.
"""
from __future__ import annotations

import numpy as np

from ..config import CHOSEN_BETWEEN_ROUNDS, SELECTIONS  # the accepted names are the config's

PCA_DIMS = 64


def pool_space(images: np.ndarray, dims: int = PCA_DIMS) -> np.ndarray:
    """(N, dims) the pool images' pixels (in [0, 1]) projected on the pool's leading principal axes."""
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:min(dims, vt.shape[0])].T


def k_center(points: np.ndarray, count: int, first: int = 0) -> np.ndarray:
    """Indices of ``count`` points chosen greedily, each the farthest from those chosen before
    (starting from ``first``): a 2-approximation of the k-center cover. O(count·N·d), vectorised
    over the points."""
    count = min(count, len(points))
    chosen = np.empty(count, dtype=np.int64)
    sq = np.einsum("ij,ij->i", points, points)
    nearest = np.full(len(points), np.inf)
    pick = first
    for i in range(count):  # each step depends on the last pick: inherently sequential, count steps
        chosen[i] = pick
        distance = sq + sq[pick] - 2.0 * points @ points[pick]
        nearest = np.minimum(nearest, distance)
        nearest[pick] = -np.inf
        pick = int(np.argmax(nearest))
    return chosen


def order_pool(pool_index: np.ndarray, pool_images: np.ndarray, num_queries: int, selection: str) -> np.ndarray:
    """The student pool reordered so that its first ``num_queries`` entries are the queries
    ``selection`` asks (the rest keep their shuffled order)."""
    if selection == "random" or selection in CHOSEN_BETWEEN_ROUNDS:
        return pool_index  # uncertainty: round 0 asks the first of the shuffled pool
    if selection != "k-center":
        raise ValueError(f"query selection must be one of {list(SELECTIONS)}. Found {selection!r}.")
    picks = k_center(pool_space(pool_images), num_queries)
    rest = np.setdiff1d(np.arange(len(pool_index)), picks, assume_unique=False)
    return pool_index[np.concatenate([picks, rest])]


def candidates(parts: dict[str, np.ndarray], selection: str) -> np.ndarray:
    """The public indices the teachers vote on: the partition's queries, or (a selection made
    between rounds) the whole student pool, of which at most ``max_queries`` are asked."""
    return parts["student_pool_index"] if selection in CHOSEN_BETWEEN_ROUNDS else parts["query_index"]


def margins(probs: np.ndarray) -> np.ndarray:
    """(N,) top-1 minus top-2 probability of each row: how certain a classifier is (0: a tie)."""
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def least_certain(probs: np.ndarray, available: np.ndarray, count: int) -> np.ndarray:
    """Rows of the ``count`` ``available`` candidates with the smallest margin (margin sampling,
    Settles 2009), least certain first; ties keep the candidates' (shuffled) order, so a student
    that knows nothing (all probabilities equal) asks the first available ones."""
    if count > int(available.sum()):
        raise ValueError(f"{count} queries asked of {int(available.sum())} candidates left")
    order = np.argsort(np.where(available, margins(probs), np.inf), kind="stable")
    return order[:count].astype(np.int64)
