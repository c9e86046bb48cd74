"""The guarantee: each worst-case bound against values derived independently of the code under test.

- Confident-GNMax's per-query bound against the exact Rényi divergence of the two output
  distributions, computed by numerical integration for every pair of neighbouring vote histograms
  of a small ensemble, and against the design's figures for the paper's MNIST setting;
- the exact Laplace RDP against numerical integration and against dp_accounting's own accountant;
- the Gaussian (PLD) figure against the analytic privacy profile of the Gaussian mechanism;
- the Rényi filter's stopping point; the noise source's uniforms at both ends of its bits.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from dp_accounting import LaplaceDpEvent, SelfComposedDpEvent
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import integrate
from scipy.stats import norm

from pate.privacy import accounting, noise, rdp
from pate.privacy.mechanisms import ConfidentGNMax, GNMax, LNMax

ORDERS = np.array([1.5, 2.0, 4.0, 8.0, 20.0])


def histograms(n, m):
    """Every vote histogram of n teachers over m classes."""
    for cuts in itertools.combinations(range(n + m - 1), m - 1):
        bounds = (-1, *cuts, n + m - 1)
        yield np.array([bounds[i + 1] - bounds[i] - 1 for i in range(m)])


def neighbours(x):
    """Histograms where one teacher's vote moved to another class."""
    for a, b in itertools.permutations(range(len(x)), 2):
        if x[a] > 0:
            y = x.copy()
            y[a] -= 1
            y[b] += 1
            yield y


def argmax_law(x, sigma):
    """Pr[argmax_j (x_j + N(0, σ²)) = j], by integrating over the winner's noise (ties have measure 0)."""
    out = []
    for j in range(len(x)):
        def density(z, j=j):
            others = [norm.cdf((x[j] - x[k]) / sigma + z) for k in range(len(x)) if k != j]
            return norm.pdf(z) * np.prod(others)
        out.append(integrate.quad(density, -12, 12, epsabs=1e-13)[0])
    return np.array(out) / sum(out)


def output_law(x, threshold, sigma1, sigma2):
    """Confident-GNMax's outputs (⊥, label 0, ..., label m−1), computed directly from Algorithm 1."""
    p1 = norm.cdf((x.max() - threshold) / sigma1)
    return np.concatenate([[1 - p1], p1 * argmax_law(x, sigma2)])


def renyi(p, q, lam):
    return math.log(np.sum(p ** lam * q ** (1 - lam))) / (lam - 1)


@pytest.mark.parametrize("threshold, sigma1, sigma2", [(3.0, 1.0, 1.5), (4.5, 0.7, 3.0), (2.0, 2.0, 0.8)])
def test_confident_gnmax_bound_holds_for_every_neighbouring_pair(threshold, sigma1, sigma2):
    n, m = 5, 3
    bound = rdp.rdp_confident_gnmax_worst_case(threshold, sigma1, sigma2, n, m, ORDERS)
    laws = {tuple(x): output_law(x, threshold, sigma1, sigma2) for x in histograms(n, m)}
    worst = np.zeros(len(ORDERS))
    for x in histograms(n, m):
        for y in neighbours(x):
            exact = [renyi(laws[tuple(x)], laws[tuple(y)], lam) for lam in ORDERS]
            worst = np.maximum(worst, exact)
    assert np.all(worst <= bound * (1 + 1e-9) + 1e-12)
    # and not vacuous: at small orders the bound is within a factor of about two of the worst pair
    # (at large orders λ/σ2² outgrows what a label out of three classes can reveal)
    assert np.all(worst[:3] >= 0.4 * bound[:3])


def test_bound_is_exact_when_the_answer_carries_no_information():
    # With σ2 huge the label is almost uniform whatever the votes: the bound's GNMax factor
    # e^{(λ−1)λ/σ2²} is ~1, and what is left is exactly the divergence of the threshold bit.
    n, m, threshold, sigma1, sigma2 = 6, 2, 3.0, 1.2, 1e6
    bound = rdp.rdp_confident_gnmax_worst_case(threshold, sigma1, sigma2, n, m, ORDERS)
    worst = np.zeros(len(ORDERS))
    for v in range(3, n + 1):  # max counts of 6 votes over 2 classes
        for w in (v - 1, v + 1):
            if 3 <= w <= n:
                p, q = norm.cdf((v - threshold) / sigma1), norm.cdf((w - threshold) / sigma1)
                worst = np.maximum(worst, [renyi(np.array([1 - p, p]), np.array([1 - q, q]), lam) for lam in ORDERS])
    np.testing.assert_allclose(bound, worst, rtol=1e-6)


def test_paper_mnist_setting_figures():
    # The design's figures: 640 queries of K 250, T 200, σ1 150, σ2 40 at δ 1e-5.
    mech = ConfidentGNMax(200, 150, 40)
    curve = mech.worst_case_rdp(640, rdp.DEFAULT_ORDERS, num_teachers=250, num_classes=10)
    assert rdp.eps_from_rdp(curve, rdp.DEFAULT_ORDERS, 1e-5, warn_edge=False)[0] == pytest.approx(3.32, abs=0.005)
    every_answered = 640 * (rdp.DEFAULT_ORDERS / (2 * 150**2) + rdp.DEFAULT_ORDERS / 40**2)
    assert rdp.eps_from_rdp(every_answered, rdp.DEFAULT_ORDERS, 1e-5, warn_edge=False)[0] == pytest.approx(4.25, abs=0.005)
    assert np.all(curve <= every_answered)  # never worse than charging everything


def test_laplace_rdp_against_integration_and_dp_accounting():
    for b in (0.5, 2.0, 10.0):
        for lam in (1.5, 3.0, 30.0):
            def integrand(x):
                log_p, log_q = -abs(x) / b - math.log(2 * b), -abs(x - 1) / b - math.log(2 * b)
                return math.exp(lam * log_p + (1 - lam) * log_q)
            exact = math.log(integrate.quad(integrand, -60 * b, 60 * b, points=[0, 1], limit=200)[0]) / (lam - 1)
            assert rdp.rdp_laplace(b, [lam])[0] == pytest.approx(exact, rel=1e-7)
    # LNMax's cost of Q answers (two Laplace mechanisms each) is what dp_accounting's RDP accountant finds
    orders = [float(o) for o in rdp.DEFAULT_ORDERS]
    ours = LNMax(0.05).worst_case_rdp(100, rdp.DEFAULT_ORDERS, num_teachers=250, num_classes=10)
    theirs = rdp_privacy_accountant.RdpAccountant(orders).compose(SelfComposedDpEvent(LaplaceDpEvent(20.0), 200))
    assert rdp.eps_from_rdp(ours, rdp.DEFAULT_ORDERS, 1e-5, warn_edge=False)[0] == pytest.approx(
        theirs.get_epsilon(1e-5), rel=1e-9)


def test_gaussian_guarantee_is_the_analytic_privacy_profile():
    # Q GNMax answers = one Gaussian mechanism with μ = √(2Q)/σ; its exact δ(ε) (Balle & Wang 2018).
    def delta_of(eps, mu):
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)

    settings = accounting.Settings(GNMax(40.0), 250, 10, 640, 1e-5, tuple(rdp.DEFAULT_ORDERS))
    g = accounting.guarantee(settings)
    mu = math.sqrt(2 * 640) / 40
    assert g.accountant == "pld" and delta_of(g.epsilon, mu) <= 1e-5 < delta_of(g.epsilon - 1e-4, mu)
    # and it is below the RDP route, which is valid but looser
    assert g.epsilon < rdp.eps_from_rdp(640 * rdp.DEFAULT_ORDERS / 1600, rdp.DEFAULT_ORDERS, 1e-5, warn_edge=False)[0]


def test_guarantee_is_the_least_valid_bound_and_covers_the_release():
    base = accounting.Settings(ConfidentGNMax(200, 150, 40), 250, 10, 640, 1e-5, tuple(rdp.DEFAULT_ORDERS))
    g = accounting.guarantee(base)
    assert g.accountant == "rdp" and g.epsilon == pytest.approx(3.3167, abs=1e-4)
    assert g.epsilon <= accounting.pld_epsilon(base.mechanism, 640, 1e-5)  # every answered: 3.93
    release = accounting.ReleaseParameters(order=14.0, beta=0.0343, sigma_ss=6.56)
    with_release = accounting.guarantee(accounting.Settings(**{**base.__dict__, "release": release}))
    assert with_release.epsilon > g.epsilon  # releasing the data-dependent cost is itself a cost


def test_renyi_filter_stops_where_the_worst_case_passes_the_budget():
    s = accounting.Settings(ConfidentGNMax(200, 150, 40), 250, 10, 640, 1e-5, tuple(rdp.DEFAULT_ORDERS),
                            epsilon_budget=2.0)
    plan = accounting.plan_filter(s)
    j = int(np.flatnonzero(rdp.DEFAULT_ORDERS == plan.order)[0])
    rho = s.per_query_worst_case()[j]
    assert plan.max_queries * rho <= plan.budget_rdp < (plan.max_queries + 1) * rho
    assert rdp.eps_at_order(plan.budget_rdp, plan.order, 1e-5, "improved") == pytest.approx(2.0, abs=1e-12)
    g = accounting.guarantee(s)
    assert g.epsilon <= 2.0 and g.queries == plan.max_queries
    f = accounting.RenyiFilter(plan.budget_rdp)
    assert f.admit(np.full(1000, rho)) == plan.max_queries
    f.charge(plan.max_queries * rho)
    assert f.admit([rho]) == 0


def test_release_parameters_are_proposed_where_the_analysis_applies():
    from pate.privacy import smooth_sensitivity

    mech = ConfidentGNMax(200, 150, 40)
    p = accounting.propose_release(mech, 250, 10, 640, tuple(rdp.DEFAULT_ORDERS), 1e-5, "improved")
    assert smooth_sensitivity.check_conditions(40, 10, p.order) and 0 < p.beta < 1 / (2 * p.order)
    assert p == accounting.propose_release(mech, 250, 10, 640, tuple(rdp.DEFAULT_ORDERS), 1e-5, "improved")
    assert accounting.propose_release(LNMax(0.05), 250, 10, 640, tuple(rdp.DEFAULT_ORDERS), 1e-5, "improved") is None


@pytest.mark.parametrize("byte", [b"\x00", b"\xff"])
def test_secure_uniforms_at_both_ends_of_their_bits(monkeypatch, byte):
    calls = []

    def fake(n):
        calls.append(n)
        return byte * n

    monkeypatch.setattr(noise.os, "urandom", fake)
    source = noise.noise_source()
    if byte == b"\x00":  # k = 0 would be u = 0: redrawn, and a source of only zeros is refused
        with pytest.raises(RuntimeError, match="only zero bits"):
            source.uniform(4)
        return
    u = source.uniform(4)
    assert np.all(u == (2.0**53 - 1) / 2.0**53) and np.all(u < 1)
    assert np.all(np.isfinite(source.normal(4))) and np.all(np.isfinite(source.laplace(4)))


def test_a_zero_draw_is_redrawn(monkeypatch):
    draws = iter([b"\x00" * 8 + b"\x01" * 8, b"\x02" * 8])
    monkeypatch.setattr(noise.os, "urandom", lambda n: next(draws))
    u = noise.noise_source().uniform(2)
    assert np.all((0 < u) & (u < 1))
