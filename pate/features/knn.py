"""Neighbourhoods of public queries among the private records, in a public feature space.

Private-kNN (Zhu et al., CVPR 2020) lets the private records near a query vote on its label. Which
records count as near must not depend on the other private records, or removing one record would
change who else votes and the individual accounting (``pate.privacy.individual``) would not hold.
So each query gets a radius from PUBLIC information only, the distance to its ``k``-th nearest
image of the public pool (the query itself excluded), and its neighbourhood is every private
record within that radius. With N private and P pool images from one distribution a query has
about k·N/P private neighbours.

The feature space is a public extractor's (SimCLR on the public pool, scattering, a pretrained
backbone), optionally projected on the leading principal axes of the public pool's features and
whitened (public information too): fewer dimensions make the exact search cheaper, and whitening
made neighbourhoods purer on a split of the public pool. The search is exact: squared
distances |q|² + |x|² − 2 q·x for blocks of private records at once, one matrix product per block
(CPU or GPU), never a loop over queries.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from ..privacy.individual import Neighbourhoods

BLOCK = 16384  # private records per distance block: (Q × BLOCK) floats at a time


def rows_of(index: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where each of ``wanted`` sits in ``index`` (distinct values); ValueError if one is missing."""
    index, wanted = np.asarray(index), np.asarray(wanted)
    if len(wanted) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(index, kind="stable")
    at = np.searchsorted(index[order], wanted)
    found = order[np.minimum(at, len(index) - 1)] if len(index) else None
    if found is None or (at >= len(index)).any() or (index[found] != wanted).any():
        raise ValueError("some rows are missing from the index")
    return found


def fit_projection(public: torch.Tensor, dim: int) -> dict:
    """The mean of ``public`` (pool features) and its top ``dim`` principal axes, whitened (each
    axis scaled to unit variance on the pool); dim 0, or at least the feature size: no projection,
    only centring. Whitening the leading axes made neighbours agree with their query's class more
    often on a split of the public pool (MNIST, scattering: 96.0% of 20-NN majorities vs 95.1%
    unwhitened, ``BENCHMARKS.md``)."""
    x = public.double()
    mean = x.mean(0)
    if dim <= 0 or dim >= min(x.shape):
        return {"mean": mean.float(), "components": None}
    # Right singular vectors of the centred pool; signs fixed (largest entry positive) so the
    # projection is a function of the pool alone, not of the SVD routine.
    _, singular, vh = torch.linalg.svd(x - mean, full_matrices=False)
    components = vh[:dim]
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    scale = math.sqrt(max(len(x) - 1, 1)) / singular[:dim].clamp_min(1e-12)
    return {"mean": mean.float(), "components": (components * signs * scale[:, None]).float()}


def project(features: torch.Tensor, projection: dict) -> torch.Tensor:
    x = features.float() - projection["mean"]
    return x if projection["components"] is None else x @ projection["components"].T


def _squared_distances(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    q2 = queries.pow(2).sum(1, keepdim=True)
    p2 = points.pow(2).sum(1)
    return (q2 + p2 - 2.0 * queries @ points.T).clamp_min_(0.0)


@torch.no_grad()
def radii(queries: torch.Tensor, pool: torch.Tensor, k: int, query_pool_position: Optional[np.ndarray] = None,
          device: str | torch.device = "cpu") -> torch.Tensor:
    """(Q,) squared radius of each query: its squared distance to its ``k``-th nearest pool image.
    ``query_pool_position[i]`` is query i's own row in ``pool`` (excluded), or −1 for a query that
    is not a pool image."""
    if not 1 <= k <= len(pool) - (query_pool_position is not None and (np.asarray(query_pool_position) >= 0).any()):
        raise ValueError(f"k must be between 1 and the number of other pool images; found {k}")
    out = torch.empty(len(queries))
    pool_d = pool.to(device)
    for i in range(0, len(queries), 1024):
        d = _squared_distances(queries[i:i + 1024].to(device), pool_d)
        if query_pool_position is not None:
            own = torch.as_tensor(np.asarray(query_pool_position[i:i + 1024]), dtype=torch.long, device=device)
            rows = torch.nonzero(own >= 0).flatten()
            d[rows, own[rows]] = float("inf")
        out[i:i + len(d)] = d.topk(k, dim=1, largest=False).values[:, -1].cpu()
    return out


@torch.no_grad()
def neighbourhoods(queries: torch.Tensor, radius2: torch.Tensor, private: torch.Tensor, *,
                   device: str | torch.device = "cpu", block: int = BLOCK,
                   progress: Optional[Callable[[int, int], None]] = None) -> Neighbourhoods:
    """Every private record within each query's radius (``radius2`` squared), exactly: compressed
    rows of private indices, ascending within a query."""
    q = queries.to(device)
    r2 = radius2.to(device).unsqueeze(1)
    rows, cols = [], []
    for start in range(0, len(private), block):
        d = _squared_distances(q, private[start:start + block].to(device))
        hit = torch.nonzero(d <= r2).cpu()  # (hits, 2): query, record within block; row-major order
        rows.append(hit[:, 0])
        cols.append(hit[:, 1] + start)
        if progress is not None:
            progress(min(start + block, len(private)), len(private))
    query_of = torch.cat(rows).numpy() if rows else np.zeros(0, np.int64)
    member = torch.cat(cols).numpy() if cols else np.zeros(0, np.int64)
    order = np.lexsort((member, query_of))  # by query, then record
    counts = np.bincount(query_of, minlength=len(queries))
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Neighbourhoods(indptr, member[order].astype(np.int64))


GRID_BITS = 8  # reverse-knn: features on the grid 2^-8 (in standardised units) before distances are ranked
GRID_CLIP = 2.0 ** 15  # |feature| ≤ 2^15 grid steps (128 standard deviations)


def on_grid(features: torch.Tensor) -> torch.Tensor:
    """``features`` as integers (float64) on a public grid: with |x| ≤ 2^15 and at most 2^22 dimensions
    every dot product and partial sum below 2^53 is an exact float64 integer, so the squared distances
    ``nearest_anchors`` ranks are the same whatever the order the matrix product adds them in."""
    if features.shape[1] > 2 ** 22:
        raise ValueError(f"at most 2^22 feature dimensions for exact distances; found {features.shape[1]}")
    return torch.round(features.double() * 2.0 ** GRID_BITS).clamp_(-GRID_CLIP, GRID_CLIP)


@torch.no_grad()
def nearest_anchors(private: torch.Tensor, anchors: torch.Tensor, k: int, *, device: str | torch.device = "cpu",
                    block: int = 2048, progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """(N, k) the ``k`` nearest anchors of each private record, nearest first, ties to the lower anchor.

    Reverse-kNN's accounting rests on a record's votes being a function of that record and the public
    anchors alone. So the distances are exact (integer features, ``on_grid``: no rounding that a block's
    shape, and so the other records, could change) and ties are broken by anchor index, never by the
    order a sort happens to leave them in."""
    if not 1 <= k <= len(anchors):
        raise ValueError(f"k must be between 1 and the {len(anchors)} anchors; found {k}")
    a = on_grid(anchors).to(device)
    a2 = a.pow(2).sum(1)
    out = torch.empty((len(private), k), dtype=torch.long)
    for start in range(0, len(private), block):
        x = on_grid(private[start:start + block]).to(device)
        d = x.pow(2).sum(1, keepdim=True) + a2 - 2.0 * (x @ a.T)
        out[start:start + len(x)] = torch.sort(d, dim=1, stable=True).indices[:, :k].cpu()
        if progress is not None:
            progress(min(start + block, len(private)), len(private))
    return out


def anchor_votes(nearest: np.ndarray, labels: np.ndarray, num_anchors: int, num_classes: int,
                 counts: np.ndarray | None = None) -> np.ndarray:
    """(A, m) int64: each record's label counted once at each of its nearest anchors (row of ``nearest``),
    or, with ``counts``, at the first ``counts[i]`` of them only (a record with a smaller budget)."""
    nearest = np.asarray(nearest)
    flat = (nearest.astype(np.int64) * num_classes + np.asarray(labels, dtype=np.int64)[:, None])
    if counts is not None:
        flat = flat[np.arange(nearest.shape[1])[None, :] < np.asarray(counts)[:, None]]
    flat = flat.ravel()
    return np.bincount(flat, minlength=num_anchors * num_classes).astype(np.int64).reshape(num_anchors, num_classes)
