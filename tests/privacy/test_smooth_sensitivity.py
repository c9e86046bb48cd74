"""Smooth sensitivity against brute force over every vote histogram of small ensembles."""

import itertools
import math
from fractions import Fraction

import numpy as np
from scipy import stats
import pytest

from pate.privacy.mechanisms import ConfidentGNMax
from pate.privacy.noise import noise_source
from pate.privacy import rdp
from pate.privacy import smooth_sensitivity as ss


def _histograms(n, m):
    """Every vote histogram of n teachers over m classes."""
    return np.array([c for c in itertools.product(range(n + 1), repeat=m) if sum(c) == n])


def _brute(hists, values):
    """Distances (min number of single-vote moves) and exact local sensitivity of ``values``."""
    dist = np.abs(hists[:, None, :] - hists[None, :, :]).sum(axis=2) // 2
    diff = np.abs(values[:, None] - values[None, :])
    true_ls = np.where(dist == 1, diff, 0.0).max(axis=1)
    return dist, true_ls


def _check_smooth_upper_bound(A, dist, ls_of_hist):
    """A⁽ᵈ⁾(x) ≥ max_{dist(x,y) ≤ d} ls(y), non-decreasing in d, and A⁽ᵈ⁾(x) ≤ A⁽ᵈ⁺¹⁾(y) for neighbours."""
    n = A.shape[1]
    for d in range(n):
        reach = np.where(dist <= d, ls_of_hist[None, :], 0.0).max(axis=1)
        assert np.all(A[:, d] >= reach * (1 - 1e-9) - 1e-15), d
    assert np.all(np.diff(A, axis=1) >= 0)
    xs, ys = np.nonzero(dist == 1)
    shifted = np.concatenate([A[:, 1:], A[:, -1:]], axis=1)  # A⁽ᵈ⁺¹⁾, constant beyond n − 1
    assert np.all(A[xs] <= shifted[ys] * (1 + 1e-9) + 1e-15)


GNMAX_CASES = [(10, 3, 2.0, 2.0), (12, 3, 1.0, 2.0), (20, 2, 3.0, 3.0), (8, 4, 2.0, 2.0),
               (14, 3, 3.0, 3.0)]


@pytest.mark.parametrize("n, m, sigma, order", GNMAX_CASES)
def test_gnmax_local_sensitivity_brute_force(n, m, sigma, order):
    hists = _histograms(n, m)
    beta = rdp.rdp_gnmax(rdp.logq_gnmax(hists, sigma), sigma, [order])[:, 0]
    dist, true_ls = _brute(hists, beta)
    A = ss.local_sensitivity_gnmax(hists, sigma, order)
    assert A.shape == (hists.shape[0], n)
    assert np.all(A[:, 0] >= true_ls * (1 - 1e-9) - 1e-15)  # LS(0) bounds every one-vote move
    assert np.any(true_ls > 0) and np.any(A[:, 0] < A[:, -1])  # the case is not degenerate
    # The closed-form walks reach the worst Proposition 13 bound within d moves ...
    prop13 = ss._ls_bound(rdp.logq_gnmax(hists, sigma), sigma, m, order)
    _check_smooth_upper_bound(A, dist, prop13)
    # ... hence also the exact local sensitivity.
    _check_smooth_upper_bound(A, dist, true_ls)


def test_two_classes_prop13_is_exact():
    """m = 2: one move shifts the only gap by exactly 2, so bu/bl are the neighbours' q̃."""
    n, sigma, order = 20, 3.0, 3.0
    hists = _histograms(n, 2)
    beta = rdp.rdp_gnmax(rdp.logq_gnmax(hists, sigma), sigma, [order])[:, 0]
    _, true_ls = _brute(hists, beta)
    A0 = ss.local_sensitivity_gnmax(hists, sigma, order)[:, 0]
    gap = np.abs(hists[:, 0] - hists[:, 1])
    geo = ss._geometry(sigma, order, 2, 1e4)
    logq = rdp.logq_gnmax(hists, sigma)
    exact = (gap >= 2) & ((logq < geo.logq1) | (logq > geo.logq0))  # off the plateau
    assert exact.sum() >= 8
    np.testing.assert_allclose(A0[exact], true_ls[exact], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("n, m, threshold, sigma1, order", [(12, 3, 8.0, 2.0, 2.0),
                                                            (10, 2, 4.0, 1.5, 3.0)])
def test_threshold_local_sensitivity_brute_force(n, m, threshold, sigma1, order):
    hists = _histograms(n, m)
    logpr = rdp.logpr_answered(hists, threshold, sigma1)
    r = rdp.rdp_threshold(logpr, sigma1, [order])[:, 0]
    dist, true_ls = _brute(hists, r)
    A = ss.local_sensitivity_threshold(hists, threshold, sigma1, order)
    # d = 0: exact, except where the max count cannot move down (e.g. [6, 6, 0]) and the
    # table still counts |r(v − 1) − r(v)|: a harmless over-estimate.
    assert np.all(A[:, 0] >= true_ls * (1 - 1e-9))
    assert np.mean(np.isclose(A[:, 0], true_ls, rtol=1e-9, atol=1e-15)) > 0.9
    _check_smooth_upper_bound(A, dist, true_ls)


def test_realistic_votes_shapes_and_monotone():
    rng = np.random.default_rng(0)
    votes = rng.multinomial(250, rng.dirichlet(np.full(10, 0.3), size=300))
    votes = np.vstack([votes, [[250] + [0] * 9, [125, 125] + [0] * 8]])
    A = ss.local_sensitivity_gnmax(votes, 40.0, 10.0)
    assert A.shape == (302, 250) and np.all(np.diff(A, axis=1) >= 0)
    assert np.all(A <= 10.0 / 40**2) and np.all(A >= 0)
    T = ss.local_sensitivity_threshold(votes, 200, 150, 10.0)
    assert T.shape == (302, 250) and np.all(np.diff(T, axis=1) >= 0)
    total = ConfidentGNMax(200, 150, 40).local_sensitivity(votes, np.arange(302) % 2 == 0, 10.0)
    np.testing.assert_allclose(total, T.sum(0) + A[::2].sum(0))


def test_conditions_failure_is_refused():
    assert ss.check_conditions(40.0, 10, 10.0)
    assert not ss.check_conditions(40.0, 10, 50.0)
    with pytest.raises(ValueError, match="condition C6 fails"):
        ss.local_sensitivity_gnmax([[200, 50] + [0] * 8], 40.0, 50.0)


def test_unequal_row_sums_are_refused():
    with pytest.raises(ValueError, match="same number of teachers"):
        ss.local_sensitivity_gnmax([[3, 1], [2, 1]], 2.0, 2.0)


# ----------------------------------------------------------------------------- release


def test_release_by_hand():
    ls, beta, order, delta, sigma_ss = np.array([1.0, 2.0, 3.0]), 0.1, 2.0, 1e-5, 1.7
    res = ss.release(ls, 0.5, order, delta, beta, sigma_ss, noise_source(7))
    smooth = max(1.0, 2 * math.exp(-0.1), 3 * math.exp(-0.2))
    rdp_ss = order * math.exp(2 * beta) / sigma_ss**2 + (beta * order - 0.5 * math.log(1 - 2 * order * beta)) / (order - 1)
    eps = 0.5 + rdp_ss + math.log(1 - 1 / order) - math.log(delta * order) / (order - 1)
    # the draw: Z = K/2⁹⁶, K an exact discrete Gaussian of σ 2⁹⁶; the sum rounded to the public grid
    k = noise_source(7).discrete_gaussian_exact(2 ** 192, 1)
    exact = Fraction(eps) + Fraction(sigma_ss * smooth) * Fraction(k, 2 ** 96)
    assert res.smooth_sensitivity == pytest.approx(smooth)
    assert res.sigma_ss == sigma_ss and res.beta == beta and res.rdp_ss == pytest.approx(rdp_ss)
    assert res.epsilon == pytest.approx(eps)
    assert res.noise_std == pytest.approx(sigma_ss * smooth)
    assert res.released_epsilon == pytest.approx(float(exact), abs=ss.SNAP_GRID)
    assert res.released_epsilon / ss.SNAP_GRID == round(res.released_epsilon / ss.SNAP_GRID)  # on the grid
    # the release's own cost at every order below 1/(2β), +inf above
    curve = ss.rdp_gnss_curve(beta, sigma_ss, [2.0, 4.0, 5.0, 6.0])
    assert curve[0] == pytest.approx(rdp_ss) and np.isfinite(curve[1]) and np.isinf(curve[2:]).all()


def test_choose_parameters_picks_the_least_expected_bound():
    ls = np.linspace(0.001, 0.05, 250)
    beta, sigma = ss.choose_parameters(ls, 1.0, 10.0, 1e-5)
    costs = []
    for b in ss.default_betas(10.0):
        s = ss.smooth_sensitivity(ls, b)
        sig = (10 * math.exp(2 * b) / s) ** (1 / 3)
        costs.append(1.0 + ss.rdp_gnss(b, sig, 10.0) + 2 * s * sig)
    best = int(np.argmin(costs))
    assert beta == pytest.approx(ss.default_betas(10.0)[best])
    assert sigma == pytest.approx((10 * math.exp(2 * beta) / ss.smooth_sensitivity(ls, beta)) ** (1 / 3))
    zero = ss.release(np.zeros(250), 1.0, 10.0, 1e-5, beta, sigma, noise_source(1))
    assert zero.noise_std == 0 and zero.released_epsilon == pytest.approx(zero.epsilon, abs=ss.SNAP_GRID / 2)


def test_snapped_release_is_the_rounded_gaussian():
    draws = np.array([ss.snapped_gaussian(1.25, 0.03, noise_source()) for _ in range(3000)])
    assert np.all(draws / ss.SNAP_GRID == np.round(draws / ss.SNAP_GRID))  # every value on the public grid
    assert stats.kstest(draws, "norm", args=(1.25, 0.03)).pvalue > 1e-4
    # the low bits carry nothing: a float draw c + s·Φ⁻¹(u) would be on no common grid
    assert len(np.unique(np.round(draws / ss.SNAP_GRID) % 1)) == 1
    assert ss.snap_tv(1e3) < 1e-15


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta=0.06), "beta must be below"), (dict(delta=2.0), "delta must be in"),
    (dict(ls_total=[-1.0]), "ls_total must be"), (dict(sigma_ss=0.0), "sigma_ss must be > 0"),
])
def test_release_validation(kwargs, message):
    args = dict(ls_total=[1.0, 2.0], rdp_at_order=1.0, order=10.0, delta=1e-5, beta=0.04, sigma_ss=1.0,
                noise=noise_source(0)) | kwargs
    with pytest.raises(ValueError, match=message):
        ss.release(**args)
