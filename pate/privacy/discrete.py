"""Exact samplers and exact tables of the discrete Gaussian and the discrete Laplace.

Why integer noise: a count released as a float64 ``v + σ·Φ⁻¹(k/2⁵³)`` carries the count in its low
bits. For each released value and a neighbouring count one can decide exactly whether any 53-bit
draw maps the neighbour's count to that float; for most values none does, so the neighbour is
impossible and the guarantee is false (Mironov 2012, "On significance of the least significant bits
for differential privacy"). An integer count plus integer noise is an integer: every bit of it is
accounted for by the distribution itself.

The samplers are those of Canonne, Kamath & Steinke 2020 ("The Discrete Gaussian for Differential
Privacy", arXiv:2004.00010v5, Algorithms 1-3): Bernoulli(exp(−γ)) for rational γ from uniform
integers alone, the discrete Laplace by rejection, and the discrete Gaussian by rejection from the
discrete Laplace with t = ⌊σ⌋ + 1. Every comparison is between Python integers, so no rounding
enters: σ² is taken as the exact rational value of the float σ (``Fraction(sigma)**2``), and the
accountant analyses exactly that σ. The random integers come from ``bits.below(n)``: the OS's
CSPRNG, or a seeded PCG64 stream (``pate.privacy.noise``).

The privacy facts the accountant rests on (tested by exact sums over the integers):
- N_Z(0, σ²) with integer sensitivity Δ: D_α ≤ αΔ²/(2σ²), the continuous Gaussian's bound (CKS
  2020, Prop. 5 / Cor. 9: for an integer shift the two normalisers are equal and the Rényi sum is a
  theta function at most its value at 0). A vector of independent discrete Gaussians whose counts
  move by integers is the product, so its divergence is the sum over coordinates:
  α‖Δ‖²/(2σ²) with no extra term (the extra τ term of CKS's multivariate *sum* theorem is for
  noise summed over many parties, which pate never does).
- Lap_Z(1/γ) (pmf ∝ e^{−γ|x|}) with sensitivity 1: D_α = log((e^{(α−1)γ} + e^{−αγ})/(1 + e^{−γ}))/(α−1),
  in closed form (``rdp_discrete_laplace``); pure ε = γ.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Callable

import numpy as np
from scipy.special import logsumexp, ndtri_exp

_MAX_REJECTIONS = 10_000  # a working source is rejected this often with probability < 1e-300


def _bernoulli_exp_le1(below: Callable[[int], int], num: int, den: int) -> bool:
    """Bernoulli(exp(−num/den)) for 0 ≤ num ≤ den (CKS Algorithm 1, first loop): the parity of
    the first K at which Bernoulli(γ/K) fails."""
    k = 1
    while below(den * k) < num:
        k += 1
    return k % 2 == 1


def bernoulli_exp(below: Callable[[int], int], num: int, den: int) -> bool:
    """Bernoulli(exp(−num/den)) for integers num ≥ 0, den > 0: exp(−γ) = exp(−1)^⌊γ⌋·exp(−(γ−⌊γ⌋))."""
    while num > den:
        if not _bernoulli_exp_le1(below, 1, 1):
            return False
        num -= den
    return _bernoulli_exp_le1(below, num, den)


def discrete_laplace_one(below: Callable[[int], int], s: int, t: int) -> int:
    """One draw of Lap_Z(t/s), pmf ∝ exp(−|x|·s/t) (CKS Algorithm 2), for integers s, t ≥ 1."""
    for _ in range(_MAX_REJECTIONS):
        u = below(t)
        if not bernoulli_exp(below, u, t):
            continue
        v = 0
        while bernoulli_exp(below, 1, 1):
            v += 1
        y = (u + t * v) // s
        negative = below(2)
        if negative and y == 0:
            continue
        return -y if negative else y
    raise RuntimeError("the discrete Laplace sampler rejected 10000 times in a row; the random source is broken")


def discrete_gaussian_one(below: Callable[[int], int], p: int, q: int) -> int:
    """One draw of N_Z(0, σ²) with σ² = p/q exactly (CKS Algorithm 3): Y ~ Lap_Z(t), t = ⌊σ⌋ + 1,
    kept with probability exp(−(|Y| − σ²/t)²/(2σ²)) = exp(−(|Y|·q·t − p)²/(2·p·q·t²))."""
    t = math.isqrt(p // q) + 1  # ⌊σ⌋ + 1 (isqrt of ⌊σ²⌋ is ⌊σ⌋)
    den = 2 * p * q * t * t
    for _ in range(_MAX_REJECTIONS):
        y = discrete_laplace_one(below, 1, t)
        if bernoulli_exp(below, (abs(y) * q * t - p) ** 2, den):
            return y
    raise RuntimeError("the discrete Gaussian sampler rejected 10000 times in a row; the random source is broken")


def exact_square(sigma: float) -> tuple[int, int]:
    """σ² as an exact fraction p/q of the float σ: what the sampler draws and the accountant analyses."""
    square = Fraction(float(sigma)) ** 2
    return square.numerator, square.denominator


def exact_rate(gamma: float) -> tuple[int, int]:
    """(s, t) with s/t the exact value of the float γ: Lap_Z(t/s) has pmf ∝ exp(−γ|x|)."""
    rate = Fraction(float(gamma))
    return rate.numerator, rate.denominator


# ----------------------------------------------------------------------------- exact tables


MAX_TABLE_SIGMA = 1e5  # exact tables sum over about 80σ integers: beyond this σ they would not fit memory


def _support(sigma: float, reach: int) -> np.ndarray:
    """Integers |z| ≤ reach + ⌈40σ⌉ + 2. Beyond them, relative to any tail Pr[Z ≥ k] with
    |k| ≤ reach, N_Z(0, σ²) has mass below e^{−800} (the pmf falls by e^{−(S² − k²)/(2σ²)})."""
    if not 0 < float(sigma) <= MAX_TABLE_SIGMA:
        raise ValueError(f"a discrete Gaussian's exact tables need 0 < sigma <= {MAX_TABLE_SIGMA:g}. Found {sigma}.")
    bound = int(reach) + int(math.ceil(40.0 * float(sigma))) + 2
    return np.arange(-bound, bound + 1)


def _log_pmf(zs: np.ndarray, sigma: float) -> np.ndarray:
    log_kernel = -zs.astype(float) ** 2 / (2.0 * float(sigma) ** 2)
    return log_kernel - logsumexp(log_kernel)


@functools.lru_cache(maxsize=64)
def _log_tail_table(sigma: float, reach: int) -> tuple[np.ndarray, np.ndarray]:
    zs = _support(sigma, reach)
    tail = np.logaddexp.accumulate(_log_pmf(zs, sigma)[::-1])[::-1]
    return zs, np.minimum(tail, 0.0)


def log_upper_tail(sigma: float, at) -> np.ndarray:
    """log Pr[Z ≥ k] for Z ~ N_Z(0, σ²) and each integer k of ``at``, exact in log space at any
    depth (the pmf is summed in log space over a support reaching 40σ past every k)."""
    at = np.asarray(at, dtype=np.int64)
    reach = 1 << int(np.abs(at).max(initial=0)).bit_length()  # a power of two: calls with nearby k share a table
    zs, tail = _log_tail_table(float(sigma), reach)
    return tail[at - zs[0]]


def log_pr_at_least(counts, threshold: float, sigma: float) -> np.ndarray:
    """log Pr[c + Z ≥ T] = log Pr[Z ≥ ⌈T − c⌉] for integer counts c, Z ~ N_Z(0, σ²): the
    threshold step of Confident-GNMax on integer counts."""
    return log_upper_tail(sigma, _needed(counts, threshold))


def _needed(counts, threshold: float) -> np.ndarray:
    """⌈T − c⌉ = ⌈T⌉ − c for integer counts, in integers: the float T − c may round (T = 1e-14, c = 250
    gives exactly −250.0), the mechanism's own comparison c + z ≥ T does not."""
    return math.ceil(float(threshold)) - np.asarray(counts, dtype=np.int64)


def log_pr_below(counts, threshold: float, sigma: float) -> np.ndarray:
    """log Pr[c + Z < T] = log Pr[Z ≤ ⌈T − c⌉ − 1] = log Pr[Z ≥ 1 − ⌈T − c⌉] (symmetry)."""
    return log_upper_tail(sigma, 1 - _needed(counts, threshold))


@functools.lru_cache(maxsize=64)
def log_tail_difference(sigma: float, max_gap: int) -> np.ndarray:
    """(max_gap + 1,) an upper bound on log Pr[Z₁ − Z₂ ≥ g] for independent Z₁, Z₂ ~ N_Z(0, σ²),
    g = 0..max_gap, tight to float precision: logsumexp_z [log p(z) + log Pr[Z₁ ≥ g + z]] over
    |z| ≤ B, plus Pr[|Z₂| > B] for the rest. It is the chance that a count g below the top one draws
    level with it or overtakes it (ties counted, so it bounds the error of any tie rule).

    A deep tail comes from Z₂ near −g/2, so B reaches max_gap + 40σ (the rest is then below e^{−800}
    relative to every tail), or max_gap + 12σ where that already leaves the rest below 1e-12 of
    every tail (large σ, where every tail is near ½)."""
    sigma, max_gap = float(sigma), int(max_gap)
    for spread in (12.0, 40.0):
        bound = max_gap + int(math.ceil(spread * sigma)) + 2
        out, dropped = _tail_difference(sigma, max_gap, bound)
        if dropped - out.min() < math.log(1e-12):
            break
    return np.minimum(np.logaddexp(out, dropped), 0.0)


MAX_DIFFERENCE_WORK = 10 ** 9  # terms summed by ``log_tail_difference`` (about 20 s on one core)


def _tail_difference(sigma: float, max_gap: int, bound: int) -> tuple[np.ndarray, float]:
    big, tail = _log_tail_table(sigma, bound + max_gap)  # Pr[Z ≥ k] for every k = g + z needed
    zs = np.arange(-bound, bound + 1)
    logp = _log_pmf(big, sigma)[zs - big[0]]
    dropped = math.log(2.0) + float(tail[bound + 1 - big[0]])  # Pr[|Z₂| > bound] bounds the terms left out
    out = np.empty(max_gap + 1)
    block = max(1, 4_000_000 // len(zs))  # (block, support) at a time
    for first in range(0, max_gap + 1, block):
        gaps = np.arange(first, min(first + block, max_gap + 1))
        out[gaps] = logsumexp(logp[None, :] + tail[gaps[:, None] + zs[None, :] - big[0]], axis=1)
    return out, dropped


@functools.lru_cache(maxsize=64)
def gap_shift(sigma: float, num_teachers: int) -> float:
    """The least c ≥ 0 with Pr[Z₁ − Z₂ ≥ g] ≤ Φ̄((g − c)/(√2σ)) for every gap g = 0..n.

    The data-dependent analysis of Papernot et al. 2018 (Prop. 7, Thm 6, App. B) is written for
    the continuous Gaussian, through q̃ = Σ_j Φ̄(gap_j/(√2σ)). With discrete noise each term is
    replaced by Φ̄((gap_j − c)/(√2σ)): an upper bound on the discrete overtaking probability
    (``log_tail_difference``), so q̃ still bounds Pr[GNMax ≠ i*], and a function of the gaps of the
    same form, so every step of the analysis that only uses how gaps move (one vote moves each gap
    by at most 2) holds unchanged. c depends on σ and n only (public), a little above 0.5; +inf (q̃ at
    its cap, the data-independent cost) where the exact table is too large to sum (``MAX_DIFFERENCE_WORK``)."""
    smallest = (int(num_teachers) + 1) * (2 * (int(num_teachers) + int(math.ceil(12.0 * sigma)) + 2) + 1)
    if smallest > MAX_DIFFERENCE_WORK or float(sigma) > MAX_TABLE_SIGMA:  # minutes of summing (tens of thousands
        return math.inf  # of teachers): q̃ is then its cap 1 − 1/m, the data-dependent cost λ/σ², still valid
    logt = log_tail_difference(float(sigma), int(num_teachers))
    gaps = np.arange(logt.size, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = gaps + math.sqrt(2.0) * float(sigma) * ndtri_exp(logt)  # Φ̄((g − c)/(√2σ)) = tail
    # A tail of 1 (σ so small that a tie is near certain) needs c = +inf: q̃ is then its cap 1 − 1/m.
    return float(max(np.nanmax(c, initial=0.0), 0.0)) * (1 + 1e-9) + 1e-9


def rdp_discrete_laplace(gamma: float, orders) -> np.ndarray:
    """(L,) RDP of Lap_Z(1/γ) (pmf ∝ e^{−γ|x|}) with sensitivity 1, exact:
    D_α = log((e^{(α−1)γ} + e^{−αγ})/(1 + e^{−γ}))/(α − 1), the sum over z ≤ 0 and z ≥ 1 of
    p(z)^α p(z − 1)^{1−α} in closed form (two geometric series)."""
    a = np.asarray(orders, dtype=float)
    g = float(gamma)
    num = np.logaddexp((a - 1.0) * g, -a * g)
    return (num - math.log1p(math.exp(-g))) / (a - 1.0)
