"""Smooth sensitivity of the data-dependent PATE cost and its private release.

Appendix B of Papernot et al. 2018 (arXiv:1802.08908v1). The data-dependent RDP β(x) at a fixed
order λ is a function of the private votes x, so publishing it needs its own privacy analysis:

* local sensitivity at distance d, A⁽ᵈ⁾(x) ≥ max_{y: dist(x,y) ≤ d} LS(y), LS(y) the largest change
  of β under one further vote move (one teacher, i.e. one private record, changes its vote);
* A⁽ᵈ⁾ is non-decreasing in d and A⁽ᵈ⁾(x) ≤ A⁽ᵈ⁺¹⁾(y) for neighbours, so
  SS_β(x) = max_d e^{−βd}·A⁽ᵈ⁾(x) is a β-smooth upper bound on LS (Nissim et al. 2007, Def. 2.1);
* the GNSS mechanism releases β(x) + SS_β(x)·N(0, σ_ss²) with the RDP of Theorem 23.

Per query, A⁽ᵈ⁾ is returned for d = 0..n−1 (n teachers); sum the arrays of the queries whose
cost is summed (every query for the threshold step, answered ones for GNMax) to get the A⁽ᵈ⁾
of the total, since the total of sums changes by at most the sum of changes.

Everything is vectorized over queries and distances: the worst-case vote histograms at
distance d are written in closed form (below), never walked one vote at a time.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.special import log_ndtr, ndtri_exp

from . import discrete, rdp
from .numerics import check_finite, check_orders, check_positive, check_votes, logsumexp_rows

_BLOCK_ROWS = 1024  # queries per block in the (queries × n × m) walks
# The walks of one query hold a few (n × (m − 1)) arrays: a query of n teachers and m classes is
# walked only where n·(m − 1) is at most this (2**23 cells, about 64 MiB per array), and a block
# holds as many queries as keep it there. Beyond it local_sensitivity_gnmax refuses before allocating
# (config and plan check it first: ``walk_fits``).
MAX_WALK_CELLS = 1 << 23
_GRID = 4000  # points of the log(−log q̃) grid used to locate q0 and check C5/C6


# ----------------------------------------------------------------------------- GNMax


class NotApplicable(ValueError):
    """Conditions C5/C6 of Appendix B.4 fail at this (σ, order, m): no smooth-sensitivity bound."""


def _log_bu_bl(logq: np.ndarray, sigma: float, m: int):
    """log of the bounds bu(q̃), bl(q̃) on q̃ of any neighbour (Proposition 13's bu, bl).

    One vote move shifts each gap v_{i*} − v_j by at most 2, i.e. each argument of
    Φ̄(gap/(√2σ)) by at most √2/σ. For a fixed sum of m − 1 such terms the extreme is reached
    with equal terms, q̃/(m − 1) = Φ(t) each, so
        bu = min((m − 1)·Φ(t + √2/σ), 1 − 1/m),   bl = (m − 1)·Φ(t − √2/σ),   t = Φ⁻¹(q̃/(m − 1)),
    (the paper's (m−1)/2·erfc(erfcinv(2q̃/(m−1)) ∓ 1/σ)), with Φ⁻¹ of a logarithm
    (``ndtri_exp``) so q̃ far below 1e-308 is fine.
    """
    lm = math.log(m - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ndtri_exp(np.minimum(logq - lm, 0.0))
        shift = math.sqrt(2.0) / sigma
        log_bu = np.minimum(lm + log_ndtr(t + shift), math.log1p(-1.0 / m))
        log_bl = lm + log_ndtr(t - shift)
    return log_bu, log_bl


def _beta(logq: np.ndarray, sigma: float, order: float) -> np.ndarray:
    return rdp.rdp_gnmax(logq, sigma, [order])[:, 0]


def _ls_bound(logq: np.ndarray, sigma: float, m: int, order: float) -> np.ndarray:
    """Proposition 13: LS(x) ≤ max(β(bu(q̃)) − β(q̃), β(q̃) − β(bl(q̃))) when β is monotone in q̃.

    q̃ = 0 (log q̃ = −inf, σ so small that Φ̄ underflows) gets λ/σ², the largest possible change.
    """
    flat = np.asarray(logq, dtype=float).ravel()
    uniq, inverse = np.unique(flat, return_inverse=True)
    finite = uniq > -np.inf
    res = np.full(uniq.shape, order / sigma**2)
    q = uniq[finite]
    log_bu, log_bl = _log_bu_bl(q, sigma, m)
    b = _beta(np.concatenate([q, log_bu, log_bl]), sigma, order).reshape(3, -1)
    res[finite] = np.maximum(np.maximum(b[1] - b[0], b[0] - b[2]), 0.0)
    return res[inverse.ravel()].reshape(np.shape(logq))


@dataclass(frozen=True)
class _Geometry:
    logq0: float  # β(q̃) < λ/σ² exactly for log q̃ < logq0 (−inf: never)
    logq1: float  # log bl(q0)
    plateau: float  # max over q̃ of the Proposition 13 bound, reached at q1
    ind: float  # λ/σ²


@functools.lru_cache(maxsize=256)
def _geometry(sigma: float, order: float, m: int, u_max: float) -> _Geometry:
    """Locate q0 and q1 and check the paper's conditions C5 and C6 (Appendix B.4) numerically.

    C5: β(q̃) is non-decreasing in q̃ on (0, q0). C6: β(bu(q̃)) − β(q̃) is non-decreasing on
    (0, q1], q1 = bl(q0). Under C5–C6 the Proposition 13 bound is non-decreasing in q̃ below q1,
    at most its value at q1 on [q1, q0], and non-increasing above q0, which is what the closed-form
    walks of ``local_sensitivity_gnmax`` rely on. The check is on a dense log-spaced grid of
    u = −log q̃ ∈ [1e-3, u_max]; a failure raises ValueError rather than publish a wrong bound.
    """
    ind = order / sigma**2
    u = np.logspace(-3, math.log10(u_max), _GRID)
    logq = -u[::-1]  # increasing q̃
    beta, used = rdp.rdp_gnmax(logq, sigma, [order], return_used=True)
    beta, used = beta[:, 0], used[:, 0]
    if not used.any():
        return _Geometry(-np.inf, -np.inf, 0.0, ind)
    k = int(np.argmin(used))  # first grid point (increasing q̃) where the data-independent bound is used
    if not used[0] or used[k:].any() or used.all():
        raise NotApplicable(
            f"smooth sensitivity analysis does not apply at sigma={sigma}, order={order}: "
            "the data-dependent GNMax bound is not used on a single interval (0, q0).")
    lo, hi = logq[k - 1], logq[k]
    for _ in range(60):  # bisection: used(lo) is True, used(hi) is False
        mid = 0.5 * (lo + hi)
        if rdp.rdp_gnmax([mid], sigma, [order], return_used=True)[1][0, 0]:
            lo = mid
        else:
            hi = mid
    logq0 = float(lo)
    tol = 1e-12 * ind
    if np.any(np.diff(beta) < -tol):
        raise NotApplicable(f"condition C5 fails at sigma={sigma}, order={order}: the GNMax RDP "
                         "bound is not monotone in q̃; smooth sensitivity analysis does not apply.")
    logq1 = float(_log_bu_bl(np.array([logq0]), sigma, m)[1][0])
    below = logq[logq <= logq1]
    if below.size:
        log_bu, _ = _log_bu_bl(below, sigma, m)
        delta_beta = _beta(log_bu, sigma, order) - _beta(below, sigma, order)
        if np.any(np.diff(delta_beta) < -tol):
            raise NotApplicable(f"condition C6 fails at sigma={sigma}, order={order}, m={m}; "
                             "smooth sensitivity analysis does not apply.")
    plateau = float(_ls_bound(np.array([logq1]), sigma, m, order)[0])
    return _Geometry(logq0, logq1, plateau, ind)


def check_conditions(sigma, num_classes, order) -> bool:
    """True when conditions C5 and C6 of Appendix B.4 hold (numerically, see ``_geometry``)."""
    try:
        _geometry(float(sigma), float(order), int(num_classes), 1e4)
    except NotApplicable:
        return False
    return True


def _num_teachers(votes: np.ndarray) -> int:
    sums = votes.sum(axis=1)
    if sums.size == 0 or sums.min() != sums.max() or sums[0] < 1:
        raise ValueError("every row of votes must sum to the same number of teachers n ≥ 1. "
                         f"Found row sums from {sums.min() if sums.size else None} "
                         f"to {sums.max() if sums.size else None}.")
    return int(sums[0])


def _logq_from_gaps(log_terms: np.ndarray, m: int) -> np.ndarray:
    return np.minimum(logsumexp_rows(log_terms), math.log1p(-1.0 / m))


def _walk_right(s: np.ndarray, table: np.ndarray, n: int, m: int):
    """log q̃ after d = 0..n−1 moves from the top class to the runner-up (q̃ grows fastest).

    Sorted votes s₀ ≥ s₁ ≥ …: gaps become s₀ − s₁ − 2d and s₀ − s_j − d (j ≥ 2). Moving a vote
    from the top to the class with the smallest gap lowers every gap, the smallest by 2, which
    majorizes any other move, and Σ Φ̄(gap) is Schur-convex in the gaps (Φ̄ convex on gaps ≥ 0).
    Returns (log q̃ (R, n), past_tie (R, n) bool: the runner-up caught up with the top).
    """
    d = np.arange(n)
    gaps = (s[:, :1] - s[:, 1:])[:, None, :] - d[None, :, None]  # (R, n, m−1)
    gaps[:, :, 0] -= d[None, :]
    past_tie = gaps[:, :, 0] <= 0
    logq = _logq_from_gaps(table[np.clip(gaps, 0, n + 1)], m)
    return logq, past_tie


def _walk_left(s: np.ndarray, table: np.ndarray, n: int, m: int) -> np.ndarray:
    """log q̃ after d = 0..n−1 moves into the top class from the largest other class (q̃ falls fastest).

    Each move raises every gap by 1 and the gap of the class it leaves by 2; taking it from the
    largest other class ("water-filling" them down to a level L) raises the smallest gaps. After
    d moves (capped at the n − s₀ votes outside the top): L* = #{L : removed(L) > d} with
    removed(L) = Σ_j max(s_j − L, 0); the classes with s_j ≥ L* sit at L*, except e = d − removed(L*)
    of them at L* − 1; the top has s₀ + d.
    """
    rows, d = s.shape[0], np.arange(n)
    s0, rest = s[:, :1], s[:, 1:]
    d_eff = np.minimum(d[None, :], n - s0)  # (R, n)
    levels = np.arange(n + 1)
    removed = np.clip(rest[:, None, :] - levels[None, :, None], 0, None).sum(axis=2)  # (R, n+1)
    stride = 2 * n + 2
    offs = np.arange(rows)[:, None] * stride
    keys = (offs - removed).ravel()  # non-decreasing: removed(L) is non-increasing in L
    l_star = np.searchsorted(keys, (offs - d_eff).ravel(), side="left").reshape(rows, n)
    l_star -= np.arange(rows)[:, None] * (n + 1)
    r = np.take_along_axis(removed, l_star, axis=1)
    at_level = rest[:, None, :] >= l_star[:, :, None]  # (R, n, m−1)
    c = at_level.sum(axis=2)
    e = d_eff - r
    top = s0 + d_eff
    gaps = np.where(at_level, 0, top[:, :, None] - rest[:, None, :])
    terms = np.where(at_level, -np.inf, table[np.clip(gaps, 0, n + 1)])
    g_level = np.clip(top - l_star, 0, n + 1)
    with np.errstate(divide="ignore"):
        extra = np.stack([np.log(c - e) + table[g_level],
                          np.log(e) + table[np.clip(g_level + 1, 0, n + 1)]], axis=2)
    return _logq_from_gaps(np.concatenate([terms, extra], axis=2), m)


def walk_fits(num_teachers: int, num_classes: int) -> bool:
    """Whether ``local_sensitivity_gnmax`` walks queries of this size (n·(m − 1) ≤ ``MAX_WALK_CELLS``)."""
    return int(num_teachers) * (int(num_classes) - 1) <= MAX_WALK_CELLS


def local_sensitivity_gnmax(votes, sigma, order) -> np.ndarray:
    """(N, n) local sensitivity at distance d = 0..n−1 of the per-query GNMax RDP at ``order``.

    Appendix B.4 of the 2018 paper (Algorithms 3–5, Proposition 13), vectorized. β(q̃) is
    ``rdp.rdp_gnmax`` at this order; with conditions C5–C6 (checked, see ``_geometry``) the
    Proposition 13 bound LS(q̃) = max(β(bu(q̃)) − β(q̃), β(q̃) − β(bl(q̃))) rises up to q1, stays
    ≤ LS(q1) =: plateau on [q1, q0] and falls above q0. So A⁽ᵈ⁾ is LS at the most extreme q̃
    reachable in d moves:
      q̃ < q1: walk right (``_walk_right``) until q̃ ≥ q1 or the tie, plateau from there on;
      q̃ > q0: walk left (``_walk_left``) until q̃ ≤ q0, plateau from there on;
      otherwise: plateau for every d.
    The result is made non-decreasing in d (running max) and capped at λ/σ², the largest
    possible change since 0 ≤ β ≤ λ/σ²; both keep it a valid A⁽ᵈ⁾.

    Args: votes (N, m), each row summing to n; sigma > 0 (GNMax noise); order > 1.
    """
    votes = check_votes(votes)
    sigma = check_positive("sigma", sigma)
    order = float(check_orders([order])[0])
    n = _num_teachers(votes)
    n_rows, m = votes.shape
    if not walk_fits(n, m):
        raise ValueError(f"the smooth-sensitivity analysis walks n·(m − 1) = {n * (m - 1)} cells per query (n = {n} "
                         f"teachers, m = {m} classes); at most {MAX_WALK_CELLS} are walked")
    block = max(1, min(_BLOCK_ROWS, MAX_WALK_CELLS // (n * (m - 1))))  # queries per block: memory bounded
    logq = rdp.logq_gnmax(votes, sigma)
    finite = logq[logq > -np.inf]
    u_max = max(1e4, 10.0 * (order + 1.0) ** 2 / sigma**2,
                4.0 * float(-finite.min()) if finite.size else 0.0)
    u_max = 10.0 ** math.ceil(math.log10(u_max))  # few distinct cache keys
    geo = _geometry(sigma, order, m, u_max)
    table = rdp.gap_log_terms(n + 1, sigma, n)  # the same terms as rdp.logq_gnmax (discrete noise's shift)
    out = np.full((n_rows, n), geo.plateau)
    s = -np.sort(-votes, axis=1)
    for direction in ("right", "left"):
        sel = np.nonzero(logq < geo.logq1 if direction == "right" else logq > geo.logq0)[0]
        for start in range(0, sel.size, block):
            rows = sel[start:start + block]
            if direction == "right":
                walk, past_tie = _walk_right(s[rows], table, n, m)
                stop = past_tie | (walk >= geo.logq1)
            else:
                walk = _walk_left(s[rows], table, n, m)
                stop = walk <= geo.logq0
            stop = np.logical_or.accumulate(stop, axis=1)
            vals = np.full(walk.shape, geo.plateau)
            vals[~stop] = _ls_bound(walk[~stop], sigma, m, order)
            out[rows] = np.maximum.accumulate(vals, axis=1)
    out[logq == -np.inf] = geo.ind  # q̃ = 0 (β = 0): a neighbour may cost up to λ/σ²
    return np.minimum(out, geo.ind)


# ----------------------------------------------------------------------------- threshold step


def local_sensitivity_threshold(votes, threshold, sigma1, order) -> np.ndarray:
    """(N, n) local sensitivity at distance d = 0..n−1 of the threshold step's RDP at ``order``.

    The threshold RDP r(v) (``rdp.rdp_threshold``) depends on the votes only through
    v = max_j v_j, and one vote move changes v by at most 1. So, exactly,
        LS(v) = max(|r(v+1) − r(v)|, |r(v−1) − r(v)|),  A⁽ᵈ⁾(x) = max_{|v' − v| ≤ d} LS(v'),
    tabulated once for v = 0..n; a query's row is the running maximum of that table outward from its
    v, to the left and to the right (the window max for every d at once, O(n) per distinct v: no
    (n+1) × n table, which at n = 100 000 teachers would be 75 GiB). The last column is the maximum
    over all v (every histogram is within n moves).

    Args: votes (N, m), rows summing to n; threshold T; sigma1 > 0; order > 1.
    """
    votes = check_votes(votes)
    threshold = check_finite("threshold", threshold)
    sigma1 = check_positive("sigma1", sigma1)
    order = float(check_orders([order])[0])
    n = _num_teachers(votes)
    r = _threshold_rdp_table(n, threshold, sigma1, order)
    step = np.abs(np.diff(r))  # |r(v+1) − r(v)|, v = 0..n−1
    ls_v = np.maximum(np.append(step, 0.0), np.insert(step, 0, 0.0))  # (n+1,)
    tops, inverse = np.unique(votes.max(axis=1), return_inverse=True)
    rows, d = np.empty((tops.size, n)), np.arange(n)
    for i, v in enumerate(tops.tolist()):
        # A(d) = max ls_v over [v − d, v + d] ∩ [0, n]: the larger of the running maxima leftwards
        # from v and rightwards from v, each held at its last value once it reaches the edge.
        left = np.maximum.accumulate(ls_v[v::-1])  # (v+1,): d = 0..v
        right = np.maximum.accumulate(ls_v[v:])  # (n−v+1,): d = 0..n−v
        rows[i] = np.maximum(left[np.minimum(d, v)], right[np.minimum(d, n - v)])
    rows[:, -1] = ls_v.max()
    return rows[inverse.ravel()]


@functools.lru_cache(maxsize=64)
def _threshold_rdp_table(n: int, threshold: float, sigma1: float, order: float) -> np.ndarray:
    top = np.arange(n + 1)
    logq = np.minimum(discrete.log_pr_at_least(top, threshold, sigma1),  # = rdp.logq_threshold for max vote v
                      discrete.log_pr_below(top, threshold, sigma1))
    return rdp.rdp_gnmax(logq, math.sqrt(2.0) * sigma1, [order])[:, 0]


# ----------------------------------------------------------------------------- release


def smooth_sensitivity(ls_total, beta) -> float:
    """SS_β = max_d e^{−βd}·A⁽ᵈ⁾ (Nissim, Raskhodnikova, Smith 2007, Prop. 2.4; paper §B.3)."""
    ls = np.maximum.accumulate(np.asarray(ls_total, dtype=float))
    betas = np.atleast_1d(np.asarray(beta, dtype=float))
    out = np.max(np.exp(-np.outer(betas, np.arange(ls.size))) * ls, axis=1)
    return float(out[0]) if np.ndim(beta) == 0 else out


def rdp_gnss(beta, sigma_ss, order) -> float:
    """RDP of the GNSS mechanism f(x) + SS_β(x)·N(0, σ_ss²) (Theorem 23 of the 2018 paper).

    ε(λ) = λ·e^{2β}/σ_ss² + (βλ − ½·log(1 − 2λβ))/(λ − 1), valid for β-smooth SS_β and
    1 < λ < 1/(2β). The order λ of this analysis is free: it need not be the order at which f
    (the run's data-dependent RDP) was evaluated.
    """
    if not (beta >= 0 and 1 < order and 2 * order * beta < 1):
        raise ValueError(f"GNSS needs 1 < order < 1/(2·beta). Found order={order}, beta={beta}.")
    return (order * math.exp(2 * beta) / sigma_ss**2
            + (beta * order - 0.5 * math.log1p(-2 * order * beta)) / (order - 1))


def rdp_gnss_curve(beta, sigma_ss, orders) -> np.ndarray:
    """(L,) ``rdp_gnss`` at each order, +inf where the analysis does not apply (λ ≥ 1/(2β)).

    A data-independent bound: added to the worst-case curve of the queries, it gives the
    guarantee of a run that also releases its data-dependent cost.
    """
    orders = check_orders(orders)
    return np.array([rdp_gnss(beta, sigma_ss, o) if 2 * o * beta < 1 else math.inf for o in orders])


def default_betas(order) -> np.ndarray:
    """The β grid of ``choose_parameters``, from the order alone: (0.30, 0.31, …, 0.49)/λ (< 1/(2λ))."""
    return np.arange(0.30, 0.495, 0.01) / float(order)


def _check_ls(ls_total) -> np.ndarray:
    ls = np.asarray(ls_total, dtype=float)
    if ls.ndim != 1 or ls.size == 0 or np.any(np.isnan(ls)) or ls.min() < 0:
        raise ValueError("ls_total must be a non-empty 1-D array of values ≥ 0.")
    return ls


def choose_parameters(ls_total, rdp_at_order, order, delta, *, conversion: str = "improved",
                      betas=None) -> tuple[float, float]:
    """(β, σ_ss) minimising the expected upper bound ε(R(λ) + rdp_gnss) + 2·SS_β·σ_ss (App. B.3).

    For each β of the grid: SS_β = max_d e^{−βd}·ls_total[d] and σ_ss = (λ·e^{2β}/SS_β)^{1/3}
    (which minimises λe^{2β}/σ_ss² + 2·SS_β·σ_ss). Called on the votes of a run, the choice would
    be a function of the private data (the authors' script says of its search: "the results
    cannot be released"), so pate calls it only on HYPOTHETICAL votes, from public settings.
    """
    ls = _check_ls(ls_total)
    order = float(check_orders([order])[0])
    grid = default_betas(order) if betas is None else np.atleast_1d(np.asarray(betas, float))
    ss = np.maximum(np.atleast_1d(smooth_sensitivity(ls, grid)), 1e-300)
    sig = (order * np.exp(2 * grid) / ss) ** (1 / 3)
    cost_ss = np.array([rdp_gnss(b, s, order) for b, s in zip(grid, sig)])
    cost = np.array([rdp.eps_at_order(rdp_at_order + c, order, delta, conversion) for c in cost_ss]) + 2 * ss * sig
    i = int(np.argmin(cost))
    return float(grid[i]), float(sig[i])


SNAP_GRID = 2.0 ** -20  # every released ε lies on this grid
_Z_BITS = 96  # the release's normal draw is an exact discrete Gaussian on the grid 2⁻⁹⁶


def snapped_gaussian(center: float, scale: float, noise) -> float:
    """center + scale·Z rounded to ``SNAP_GRID``, Z ~ N(0, 1), computed without a floating-point draw.

    A float64 ``center + scale·Φ⁻¹(u)`` carries its inputs in its low bits (Mironov 2012), and
    rounding it afterwards does not mend that for a small scale. Here Z is K/2⁹⁶ with K an exact
    discrete Gaussian of σ = 2⁹⁶ (``NoiseSource.discrete_gaussian_exact``), the sum is formed and
    rounded in exact rational arithmetic, and only the grid point is returned. This equals the ideal
    mechanism round(center + scale·Z*), Z* ~ N(0, 1) exactly (a post-processing of GNSS), except
    with probability ``snap_tv(scale_cap)`` at most: K matches round(2⁹⁶·Z*) but for a total
    variation below 2⁻⁶⁰ (the discrete Gaussian against the rounded normal at σ = 2⁹⁶), and the two
    roundings to the grid differ only when center + scale·Z* lies within scale·2⁻⁹⁷ of a grid
    boundary, which a unimodal density of peak 1/(scale·√(2π)) allows with probability at most
    2·scale·2⁻⁹⁷·(1/SNAP_GRID + 1/(scale·√(2π))). The accountant adds (1 + e^ε) times that to δ."""
    k = noise.discrete_gaussian_exact(2 ** (2 * _Z_BITS), 1)
    value = Fraction(float(center)) + Fraction(float(scale)) * Fraction(k, 2 ** _Z_BITS)
    steps = round(value / Fraction(SNAP_GRID))
    return float(steps * Fraction(SNAP_GRID))


def snap_tv(scale_cap: float) -> float:
    """The total variation between ``snapped_gaussian`` and the ideal rounded Gaussian, at any
    scale up to ``scale_cap`` (see there)."""
    return 2.0 ** -60 + 2.0 ** -(_Z_BITS - 1) * (float(scale_cap) / SNAP_GRID + 1.0)


@dataclass(frozen=True)
class SmoothSensitivityRelease:
    """A data-dependent ε released through GNSS with β and σ_ss fixed in advance (Theorem 23).

    PUBLIC: ``released_epsilon`` (a noisy output of the mechanism), and the fixed ``order``,
    ``beta``, ``sigma_ss``, ``delta`` and ``rdp_ss`` (the release's own, data-independent cost).
    PRIVATE (functions of the votes): ``epsilon`` = ε(R(λ) + rdp_ss), ``rdp`` = R(λ),
    ``smooth_sensitivity`` = SS_β and ``noise_std`` = σ_ss·SS_β.
    """
    released_epsilon: float
    order: float
    beta: float
    sigma_ss: float
    delta: float
    rdp_ss: float
    conversion: str
    epsilon: float
    rdp: float
    smooth_sensitivity: float
    noise_std: float


def release(ls_total, rdp_at_order, order, delta, beta, sigma_ss, noise, *,
            conversion: str = "improved", scale_cap: float | None = None) -> SmoothSensitivityRelease:
    """Release ε(R(λ) + rdp_ss) + σ_ss·SS_β(x)·Z, Z ~ N(0, 1) from ``noise`` (GNSS, §B.3), snapped to
    the public grid ``SNAP_GRID`` (``snapped_gaussian``; ``scale_cap`` is the public bound on
    σ_ss·SS_β that its accounting assumed, checked here).

    ε(·) is the fixed-order conversion ``rdp.eps_at_order``, affine with slope 1 in R, so its
    smooth sensitivity is that of R. λ, β and σ_ss must be fixed before the votes are seen: this
    function reads the votes' ``ls_total`` only through SS_β, as Theorem 23 allows.

    Args: ls_total (n,) A⁽ᵈ⁾ of the total cost at ``order`` (sum of the per-query arrays);
        rdp_at_order R(λ); order λ; delta; beta in (0, 1/(2λ)); sigma_ss > 0; noise: a
        ``noise_source()`` object (drawn from once).
    """
    ls = _check_ls(ls_total)
    order = float(check_orders([order])[0])
    delta = float(delta)
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1). Found {delta}.")
    beta, sigma_ss = check_positive("beta", beta), check_positive("sigma_ss", sigma_ss)
    if 2 * order * beta >= 1:
        raise ValueError(f"beta must be below 1/(2·order) = {0.5 / order:.4g}. Found {beta}.")
    ss = float(smooth_sensitivity(ls, beta))
    cost_ss = rdp_gnss(beta, sigma_ss, order)
    eps = rdp.eps_at_order(rdp_at_order + cost_ss, order, delta, conversion)
    noise_std = sigma_ss * ss
    if scale_cap is not None and noise_std > scale_cap * (1 + 1e-9):
        raise ValueError(f"the release's noise scale {noise_std:g} is above its public bound {scale_cap:g}")
    return SmoothSensitivityRelease(
        released_epsilon=snapped_gaussian(eps, noise_std, noise), order=order, beta=beta, sigma_ss=sigma_ss,
        delta=delta,
        rdp_ss=cost_ss, conversion=conversion, epsilon=eps, rdp=float(rdp_at_order), smooth_sensitivity=ss,
        noise_std=noise_std)
