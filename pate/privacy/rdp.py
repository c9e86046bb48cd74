"""Rényi-DP accounting of the PATE aggregators (Papernot et al. 2018, arXiv:1802.08908v1).

Every function is vectorized over queries (rows) and Rényi orders (columns) and works in log
space, so unanimous votes (q̃ → 0), exact ties and very small or very large σ stay finite.

Notation (Papernot et al. 2018, arXiv:1802.08908v1): m classes, n teachers, votes v (one row per
query), order λ, Φ̄ the standard normal upper tail. All RDP values are in nats.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
from scipy.special import log_ndtr

from . import discrete
from .numerics import check_finite, check_orders, check_positive, check_votes, log1mexp, logsumexp_rows

DEFAULT_ORDERS = np.unique(
    np.concatenate([np.arange(2, 101, 0.5), np.logspace(2, np.log10(500), 100)])
)
"""The paper's order list: arange(2, 101, 0.5) ∪ logspace(2, log10 500, 100), sorted, unique."""


class OrderAtEdgeWarning(UserWarning):
    """The optimal order of an (ε, δ) conversion is the first or last order of the list.

    ε would likely be smaller with a wider order list; the figure is still a valid bound.
    """


# ----------------------------------------------------------------------------- GNMax


def logq_gnmax(votes, sigma) -> np.ndarray:
    """log q̃ per query: the bound on Pr[GNMax ≠ argmax] of Proposition 7 (2018 paper), for the
    discrete Gaussian noise pate draws.

    q̃ = min( Σ_{j≠i*} Φ̄((v_{i*} − v_j − c)/(√2 σ)), 1 − 1/m ), i* = argmax v (first index on ties).
    The paper's term Φ̄(gap/(√2σ)) is Pr[Z_j − Z_{i*} ≥ gap] for continuous noise; pate's noise is
    N_Z(0, σ²) on integer counts, whose overtaking probability (ties included) is bounded by the same
    form at the gap less c = ``discrete.gap_shift(σ, n)`` (about ½, a continuity correction, computed
    exactly from the discrete pmfs for σ and n). The union bound sums the terms, and 1 − 1/m is the
    trivial cap. Computed as logsumexp of log Φ̄ terms (``scipy.special.log_ndtr``) so q̃ far
    below 1e-308 keeps its logarithm; integer gaps make them a lookup table of size n + 1.

    Args: votes (N, m) non-negative integer counts; sigma > 0 (GNMax noise parameter).
    Returns: (N,) float array, log q̃ ∈ [−inf, log(1 − 1/m)].
    """
    votes = check_votes(votes)
    sigma = check_positive("sigma", sigma)
    n_rows, m = votes.shape
    if n_rows == 0:
        return np.zeros(0)
    top_idx = np.argmax(votes, axis=1)
    top = votes[np.arange(n_rows), top_idx]
    gaps = top[:, None] - votes  # ≥ 0
    table = gap_log_terms(int(gaps.max()), sigma, int(votes.sum(axis=1).max()))
    terms = table[gaps]
    terms[np.arange(n_rows), top_idx] = -np.inf
    return np.minimum(logsumexp_rows(terms), math.log1p(-1.0 / m))


def gap_log_terms(max_gap: int, sigma: float, num_teachers: int) -> np.ndarray:
    """(max_gap + 1,) log Φ̄((g − c)/(√2σ)), g = 0..max_gap: each count's term of q̃ (``logq_gnmax``),
    with the discrete noise's shift c = ``discrete.gap_shift(σ, n)`` (n teachers: a public number)."""
    # One shift for every table of n teachers (up to gap n + 1, which the smooth-sensitivity walks index).
    shift = discrete.gap_shift(float(sigma), max(int(num_teachers) + 1, int(max_gap)))
    return log_ndtr(-(np.arange(int(max_gap) + 1) - shift) / (math.sqrt(2.0) * sigma))


class _Prop10(NamedTuple):
    """Per-query quantities of Theorem 6 with the μ1, μ2 of Proposition 10."""
    applies: np.ndarray  # (N,) bool: the order-free conditions hold
    mu1: np.ndarray
    log1q: np.ndarray  # log(1 − q̃)
    log_a: np.ndarray  # log A
    log_b: np.ndarray  # log B


def _prop10(logq: np.ndarray, sigma: float) -> _Prop10:
    """μ2 = σ√(−log q̃), μ1 = μ2 + 1, εᵢ = μᵢ/σ², A and B of Theorem 6, and its conditions."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        finite = np.isfinite(logq) & (logq < 0)
        lq = np.where(finite, logq, -1.0)
        mu2 = sigma * np.sqrt(-lq)
        mu1 = mu2 + 1.0
        eps1 = mu1 / sigma**2
        eps2 = mu2 / sigma**2
        # Lemma 9 condition, log(μ1/(μ1−1)) = log(μ1/μ2).
        lemma9 = lq <= (mu2 - 1.0) * eps2 - mu2 * (np.log(mu1 / mu2) + np.log(mu2 / (mu2 - 1.0)))
        applies = finite & (mu2 > 1.0) & (-lq > eps2) & lemma9
        lq_a = np.where(applies, lq, -1.0)
        mu2_a = np.where(applies, mu2, 2.0)
        eps2_a = np.where(applies, eps2, 0.0)
        log1q = log1mexp(lq_a)
        log_a = log1q - log1mexp((lq_a + eps2_a) * (1.0 - 1.0 / mu2_a))
        log_b = eps1 - lq_a / np.where(applies, mu1 - 1.0, 1.0)
    return _Prop10(applies, mu1, log1q, log_a, log_b)


_BLOCK_ROWS = 512  # rows per kernel call: (512 × L) float64 blocks stay in cache


def _dd_kernel(p: _Prop10, lq: np.ndarray, orders: np.ndarray, ind: np.ndarray):
    """min(D(λ), λ/σ²) where μ1 > λ (else λ/σ²) for rows where Theorem 6 applies.

    (λ−1)·D = logaddexp(log(1−q̃) + (λ−1)·log A, log q̃ + (λ−1)·log B)
            = log(1−q̃) + (λ−1)·log A + softplus(t),  t = log q̃ − log(1−q̃) + (λ−1)(log B − log A),
    softplus(t) = max(t, 0) + log1p(e^{−|t|}); evaluated in place on (rows × L) blocks.
    Returns the (rows, L) values and the bool mask of entries where D was used.
    """
    lm1 = orders - 1.0
    t = np.multiply.outer(p.log_b - p.log_a, lm1)
    t += (lq - p.log1q)[:, None]
    dd = np.abs(t)
    np.negative(dd, out=dd)
    np.exp(dd, out=dd)
    np.log1p(dd, out=dd)
    np.maximum(t, 0.0, out=t)
    dd += t
    dd += p.log1q[:, None]
    dd /= lm1
    dd += p.log_a[:, None]
    np.maximum(dd, 0.0, out=dd)  # a Rényi divergence is ≥ 0; only rounding can go below
    used = (p.mu1[:, None] > orders) & (dd < ind)
    return np.where(used, dd, ind), used


def _rows(p: _Prop10, rows: np.ndarray) -> _Prop10:
    return _Prop10(*(x[rows] for x in p))


def rdp_gnmax(logq, sigma, orders, *, return_used: bool = False):
    """Data-dependent RDP of one GNMax answer (Theorem 6 with Proposition 10, 2018 paper).

    For q̃ ≥ Pr[M(D) ≠ i*], Theorem 6 bounds D_λ(M(D) ‖ M(D')) for every neighbour D' by
        D(λ) = log((1 − q̃)·A^{λ−1} + q̃·B^{λ−1}) / (λ − 1),
        A = (1 − q̃) / (1 − (q̃·e^{ε2})^{(μ2−1)/μ2}),   B = e^{ε1} / q̃^{1/(μ1−1)},
    whenever the Gaussian mechanism is (μᵢ, εᵢ)-RDP (εᵢ = μᵢ/σ², L2 sensitivity √2) and
    μ1 > λ, μ2 > 1, q̃ < e^{−ε2} and q̃ ≤ e^{(μ2−1)ε2}/(μ1/(μ1−1)·μ2/(μ2−1))^{μ2} (Lemma 9).
    Proposition 10 picks μ2 = σ√(−log q̃), μ1 = μ2 + 1. Where the conditions hold the cost is
    min(D(λ), λ/σ²); elsewhere the data-independent λ/σ². q̃ = 0 costs 0.

    Args: logq (N,) from ``logq_gnmax``; sigma > 0; orders (L,) all > 1.
        return_used: also return the (N, L) bool mask "data-dependent bound used" (conditions
        hold and D(λ) < λ/σ²) — the per-query explanation an audit needs.
    Returns: (N, L) RDP in nats [, (N, L) bool].
    """
    sigma = check_positive("sigma", sigma)
    orders = check_orders(orders)
    logq = _check_logq(logq)
    ind = orders / sigma**2
    out = np.empty((logq.size, orders.size))
    out[:] = ind
    out[logq == -np.inf] = 0.0  # q̃ = 0: the output is deterministic on both datasets.
    used = np.zeros(out.shape, dtype=bool)
    p = _prop10(logq, sigma)
    rows = np.nonzero(p.applies & (p.mu1 > orders.min()))[0]
    for start in range(0, rows.size, _BLOCK_ROWS):
        r = rows[start:start + _BLOCK_ROWS]
        out[r], used[r] = _dd_kernel(_rows(p, r), logq[r], orders, ind)
    return (out, used) if return_used else out


def _check_logq(logq) -> np.ndarray:
    logq = np.atleast_1d(np.asarray(logq, dtype=float))
    if logq.ndim != 1:
        raise ValueError(f"logq must be a 1-D array. Found shape {logq.shape}.")
    if np.any(np.isnan(logq)) or np.any(logq > 0):
        raise ValueError("logq must be ≤ 0 and not NaN.")
    return logq


def rdp_gnmax_curve(logq, sigma, orders=DEFAULT_ORDERS, weights=None) -> np.ndarray:
    """(L,) Σᵢ wᵢ·rdp_gnmax(logqᵢ): the composed cost of many GNMax answers, without the (N, L) array.

    Sequential composition adds RDP at each order (Mironov 2017, arXiv:1702.07476v3, Prop. 1). Equal q̃ are costed
    once (weighted); rows are sorted by μ1 so each block only evaluates orders λ < max μ1.
    Same values as ``(weights @ rdp_gnmax(logq, sigma, orders))`` up to float rounding.
    """
    sigma = check_positive("sigma", sigma)
    orders = check_orders(orders)
    logq = _check_logq(logq)
    weights = np.ones(logq.size) if weights is None else np.asarray(weights, dtype=float)
    if weights.shape != logq.shape:
        raise ValueError(f"weights must have shape {logq.shape}. Found {weights.shape}.")
    uniq, inverse = np.unique(logq, return_inverse=True)
    w = np.bincount(inverse.ravel(), weights=weights, minlength=uniq.size)
    sort = np.argsort(orders)
    srt = orders[sort]
    ind = srt / sigma**2
    total = (w[uniq > -np.inf].sum()) * ind  # every q̃ > 0 starts at λ/σ², corrected below
    p = _prop10(uniq, sigma)
    rows = np.nonzero(p.applies & (p.mu1 > srt[0]))[0]
    rows = rows[np.argsort(-p.mu1[rows], kind="stable")]
    for start in range(0, rows.size, _BLOCK_ROWS):
        r = rows[start:start + _BLOCK_ROWS]
        k = int(np.searchsorted(srt, p.mu1[r].max(), side="left"))
        vals, _ = _dd_kernel(_rows(p, r), uniq[r], srt[:k], ind[:k])
        total[:k] -= w[r] @ (ind[:k] - vals)  # subtract the saving over data-independent
    out = np.empty_like(total)
    out[sort] = total
    return out


def rdp_gnmax_data_independent(sigma, orders) -> np.ndarray:
    """λ/σ²: RDP of the Gaussian mechanism with L2 sensitivity √2 (one vote moves: −1, +1).

    (Mironov 2017, Prop. 7: D_λ(N(0,σ²) ‖ N(Δ,σ²)) = λΔ²/(2σ²); Δ² = 2.) Post-processing by
    argmax keeps the bound (used in the 2018 paper, Section 4.1).
    """
    sigma = check_positive("sigma", sigma)
    return check_orders(orders) / sigma**2


def rdp_gnmax_total(votes, sigma, orders=DEFAULT_ORDERS) -> np.ndarray:
    """(L,) total RDP of answering every row of ``votes`` with GNMax(σ) (data-dependent).

    Sequential composition (Mironov 2017, Prop. 1) of ``rdp_gnmax(logq_gnmax(votes, σ))``.
    """
    return rdp_gnmax_curve(logq_gnmax(votes, sigma), sigma, orders)


# ----------------------------------------------------------------------------- threshold step


def logpr_answered(votes, threshold, sigma1) -> np.ndarray:
    """log Pr[Confident-GNMax answers] (Algorithm 1, 2018 paper), exact for pate's integer noise.

    The query is answered iff max_j v_j + Z ≥ T with Z ~ N_Z(0, σ1²) (``confident_gnmax``), i.e.
    Z ≥ ⌈T − max_j v_j⌉: a tail of the discrete Gaussian, summed exactly (``discrete.log_pr_at_least``),
    where the paper's continuous noise would give Φ̄((T − max_j v_j)/σ1).
    """
    votes = check_votes(votes)
    threshold = check_finite("threshold", threshold)
    sigma1 = check_positive("sigma1", sigma1)
    return discrete.log_pr_at_least(votes.max(axis=1), threshold, sigma1)


def rdp_threshold(logpr, sigma1, orders, *, return_used: bool = False):
    """Data-dependent RDP of the threshold step (2018 paper, Section 4.2 / Appendix).

    The threshold step releases one bit, answered or not, from max_j v_j + N(0, σ1²). Its
    outcome distribution has "error" probability q = min(Pr, 1 − Pr) (the less likely bit), and
    max_j v_j has sensitivity 1 instead of GNMax's √2, so the Theorem 6 / Proposition 10 bound of
    ``rdp_gnmax`` applies at q with σ replaced by √2·σ1; log(1 − Pr) is computed as
    log1mexp(log Pr). Data-independent: λ/(2σ1²).

    Args: logpr (N,) from ``logpr_answered``; sigma1 > 0; orders (L,).
    Returns: (N, L) RDP in nats [, (N, L) bool "data-dependent bound used"].
    """
    sigma1 = check_positive("sigma1", sigma1)
    return rdp_gnmax(_threshold_logq(logpr), math.sqrt(2.0) * sigma1, orders, return_used=return_used)


def _threshold_logq(logpr) -> np.ndarray:
    """log min(Pr, 1 − Pr): the threshold step's "error" probability (see ``rdp_threshold``)."""
    logpr = np.atleast_1d(np.asarray(logpr, dtype=float))
    if logpr.ndim != 1 or np.any(np.isnan(logpr)) or np.any(logpr > 0):
        raise ValueError("logpr must be a 1-D array of values ≤ 0 (not NaN).")
    return np.minimum(logpr, log1mexp(logpr))


def logq_threshold(votes, threshold, sigma1) -> np.ndarray:
    """log min(Pr, 1 − Pr) of the threshold step, each tail of the discrete Gaussian summed directly.

    Same value as ``_threshold_logq(logpr_answered(...))`` but exact when Pr is within 1e-16 of 1
    (there log(1 − Pr) cannot be recovered from log Pr). Feed it to ``rdp_gnmax`` at √2·σ1.
    """
    votes = check_votes(votes)
    threshold = check_finite("threshold", threshold)
    sigma1 = check_positive("sigma1", sigma1)
    top = votes.max(axis=1)
    return np.minimum(discrete.log_pr_at_least(top, threshold, sigma1), discrete.log_pr_below(top, threshold, sigma1))


def rdp_threshold_data_independent(sigma1, orders) -> np.ndarray:
    """λ/(2σ1²): Gaussian mechanism on max_j v_j, whose sensitivity is 1 (Mironov 2017, Prop. 7)."""
    sigma1 = check_positive("sigma1", sigma1)
    return check_orders(orders) / (2.0 * sigma1**2)


# ----------------------------------------------------------------------------- worst case (the guarantee)


def rdp_laplace(scale, orders) -> np.ndarray:
    """(L,) RDP of the Laplace mechanism with L1 sensitivity 1 and scale b (Mironov 2017,
    arXiv:1702.07476v3, Prop. 6; exact):

        D_λ = log( λ/(2λ−1)·e^{(λ−1)/b} + (λ−1)/(2λ−1)·e^{−λ/b} ) / (λ−1).

    One teacher's vote moving changes two counts by 1 each, so LNMax's noisy histogram is two such
    mechanisms at once: its per-answer cost is twice this.
    """
    b = check_positive("scale", scale)
    lam = check_orders(orders)
    with np.errstate(over="ignore"):
        log_terms = np.logaddexp(np.log(lam / (2 * lam - 1)) + (lam - 1) / b,
                                 np.log((lam - 1) / (2 * lam - 1)) - lam / b)
    return np.minimum(log_terms / (lam - 1), 1.0 / b)  # pure 1/b-DP caps every order (rounding only)


_WORST_BLOCK = 4096  # max counts per block in the worst-case search


def rdp_confident_gnmax_worst_case(threshold, sigma1, sigma2, num_teachers, num_classes, orders) -> np.ndarray:
    """(L,) per-query RDP of Confident-GNMax that holds for every dataset: the guarantee's building block.

    One query on votes x with max count v is one mechanism with outputs {⊥} ∪ {labels or vectors}.
    pate's noise is integer (``pate.privacy.discrete``): Pr[⊥] = P0 = Pr[v + Z1 < T] and
    P1 = 1 − P0 = Pr[Z1 ≥ ⌈T − v⌉] for Z1 ~ N_Z(0, σ1²), summed exactly; an answered query
    releases x + Z2 (or its argmax), Z2 ~ N_Z(0, σ2²)^m (Algorithm 1 of Papernot et al. 2018,
    arXiv:1802.08908v1, with the discrete Gaussian of Canonne, Kamath & Steinke 2020). For a
    neighbour x' (one teacher's vote moved), with Q0, Q1 its probabilities and v' ∈ {v − 1, v, v + 1}
    its max count (the max moves by at most 1):

        e^{(λ−1)·D_λ(M(x) ‖ M(x'))} = P0^λ Q0^{1−λ} + P1^λ Q1^{1−λ} · e^{(λ−1)·D_λ(x + Z2 ‖ x' + Z2)}
                                    ≤ P0^λ Q0^{1−λ} + P1^λ Q1^{1−λ} · e^{(λ−1)·λ/σ2²},

    because x − x' moves two counts by one each, the coordinates are independent, and for an
    integer shift the discrete Gaussian's divergence is at most the continuous one's, λ/(2σ2²) per
    coordinate (CKS 2020; ``discrete``). The bound covers the whole released vector (soft labels),
    not only its argmax. The right side depends on x only through (v, v'); its maximum over every
    realisable max count v ∈ [⌈n/m⌉, n] and neighbour v' in that range is returned, evaluated in
    log space. Composition over the queries asked is a sum (Mironov 2017, Prop. 1), whatever was
    answered.
    """
    threshold = check_finite("threshold", threshold)
    sigma1, sigma2 = check_positive("sigma1", sigma1), check_positive("sigma2", sigma2)
    lam = check_orders(orders)
    n, m = int(num_teachers), int(num_classes)
    if n < 1 or m < 2:
        raise ValueError(f"need at least 1 teacher and 2 classes. Found {n} and {m}.")
    lo = -(-n // m)
    counts = np.arange(lo, n + 1)
    log_p1 = discrete.log_pr_at_least(counts, threshold, sigma1)
    log_p0 = discrete.log_pr_below(counts, threshold, sigma1)
    gnmax = (lam - 1.0) * lam / sigma2**2
    worst = np.zeros(lam.size)
    for start in range(0, counts.size, _WORST_BLOCK):
        i = np.arange(start, min(start + _WORST_BLOCK, counts.size))
        for shift in (-1, 0, 1):
            j = i + shift
            ok = (j >= 0) & (j < counts.size)
            a, b = i[ok], j[ok]
            if a.size == 0:
                continue
            t0 = np.multiply.outer(log_p0[a], lam) + np.multiply.outer(log_p0[b], 1.0 - lam)
            t1 = np.multiply.outer(log_p1[a], lam) + np.multiply.outer(log_p1[b], 1.0 - lam) + gnmax
            worst = np.maximum(worst, (np.logaddexp(t0, t1) / (lam - 1.0)).max(axis=0))
    return worst


# ----------------------------------------------------------------------------- conversion


def _check_conversion(curves: np.ndarray, delta, conversion: str) -> float:
    """The inputs every conversion refuses: a NaN or negative RDP value, δ outside (0, 1), an
    unknown conversion. Returns δ as a float."""
    if np.any(np.isnan(curves)) or np.any(curves < 0):
        raise ValueError("rdp_curve must be non-negative and not NaN.")
    delta = float(delta)
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1). Found {delta}.")
    if conversion not in ("improved", "classic"):
        raise ValueError(f'conversion must be "improved" or "classic". Found {conversion!r}.')
    return delta


def eps_from_rdp(rdp_curve, orders, delta, conversion: str = "improved", *,
                 warn_edge: bool = True):
    """Convert a total RDP curve to (ε, δ)-DP; return (ε, optimal order).

    "classic": ε = min_λ [R(λ) + log(1/δ)/(λ − 1)] (Mironov 2017, Prop. 3; the 2018 paper's).
    "improved": ``dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon`` (Canonne, Kamath,
    Steinke 2020, Prop. 12 / Asoodeh et al. 2020): ε = min_λ [R + log(1 − 1/λ) − log(δλ)/(λ−1)],
    never larger than classic.
    With ``warn_edge`` an ``OrderAtEdgeWarning`` is issued when the optimum is the first or last
    order (a wider list could give a smaller ε; see ``order_at_edge``).
    """
    orders = check_orders(orders)
    curve = np.asarray(rdp_curve, dtype=float)
    if curve.shape != orders.shape:
        raise ValueError(f"rdp_curve must have shape {orders.shape}. Found {curve.shape}.")
    delta = _check_conversion(curve, delta, conversion)
    if conversion == "classic":
        eps_all = curve + math.log(1.0 / delta) / (orders - 1.0)
        i = int(np.argmin(eps_all))
        eps, order = float(eps_all[i]), float(orders[i])
    else:  # "improved"
        from dp_accounting.rdp import rdp_privacy_accountant

        eps, order = rdp_privacy_accountant.compute_epsilon(orders, curve, delta)
        eps, order = float(eps), float(order)
    if warn_edge and order_at_edge(order, orders) and eps > 0:
        warnings.warn(
            f"optimal Rényi order {order:g} is at the edge of the order list "
            f"[{orders.min():g}, {orders.max():g}]; ε = {eps:.4g} is valid but a wider list "
            "might give a smaller ε.", OrderAtEdgeWarning, stacklevel=2)
    return eps, order


def eps_from_rdp_rows(rdp_curves, orders, delta, conversion: str = "improved") -> np.ndarray:
    """``eps_from_rdp``'s ε for each row of ``rdp_curves`` (N, L) at once, without edge warnings.

    The same per-order terms as ``dp_accounting``'s ``compute_epsilon`` (0 where the KL bound
    δ² > 1 − e^(−R) already gives ε = 0; ∞ at orders ≤ 1.01), minimised over the orders and
    clipped at 0, vectorised so that ε after every query of a long run is one array operation.
    """
    orders = check_orders(orders)
    curves = np.atleast_2d(np.asarray(rdp_curves, dtype=float))
    if curves.shape[1:] != orders.shape:
        raise ValueError(f"rdp_curves must have shape (N, {len(orders)}). Found {curves.shape}.")
    delta = _check_conversion(curves, delta, conversion)
    if conversion == "classic":
        return (curves + math.log(1.0 / delta) / (orders - 1.0)).min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = curves + np.log1p(-1.0 / orders) - np.log(delta * orders) / (orders - 1.0)
        terms = np.where(orders > 1.01, terms, np.inf)
        terms = np.where(delta ** 2 + np.expm1(-curves) > 0, 0.0, terms)
    return np.maximum(terms.min(axis=1), 0.0)


def order_at_edge(order, orders) -> bool:
    """True when ``order`` is the smallest or largest of ``orders``."""
    orders = np.asarray(orders, dtype=float)
    return bool(order <= orders.min() or order >= orders.max())


def eps_at_order(rdp_value, order, delta, conversion: str = "improved") -> float:
    """ε of an RDP value at one fixed order (the per-order terms of ``eps_from_rdp``)."""
    order = float(order)
    if conversion == "classic":
        return float(rdp_value + math.log(1.0 / delta) / (order - 1.0))
    if conversion == "improved":
        return float(rdp_value + math.log1p(-1.0 / order) - math.log(delta * order) / (order - 1.0))
    raise ValueError(f'conversion must be "improved" or "classic". Found {conversion!r}.')
