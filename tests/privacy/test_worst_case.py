"""The guarantee: each worst-case bound against values derived independently of the code under test.

- Confident-GNMax's per-query bound against the exact Rényi divergence of the two output
  distributions of pate's integer noise, summed over the integers for every pair of neighbouring
  vote histograms of a small ensemble (labels and whole noisy vectors), and against the design's
  figures for the paper's MNIST setting;
- the discrete Laplace's RDP against a brute-force sum, and LNMax's guarantee against dp_accounting's
  own discrete Laplace accountant;
- the discrete Gaussian (PLD) figure against the exact privacy profile of the composed discrete
  Gaussians, by convolution over the integers;
- the Rényi filter's stopping point; the noise source's uniforms at both ends of its bits.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from dp_accounting.dp_event import DiscreteLaplaceDpEvent, SelfComposedDpEvent
from dp_accounting.pld import pld_privacy_accountant
from scipy import integrate
from scipy.stats import norm

from pate.privacy import accounting, discrete, noise, rdp
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


def dg(sigma, spread=14.0):
    """N_Z(0, σ²) from its definition, on |z| ≤ 14σ + 3 (the rest is below e^{−98})."""
    z = np.arange(-int(spread * sigma) - 3, int(spread * sigma) + 4)
    w = np.exp(-z.astype(float) ** 2 / (2 * sigma * sigma))
    return z, w / w.sum()


def argmax_law(x, sigma):
    """Pr[argmax_j (x_j + Z_j) = j], Z_j iid N_Z(0, σ²), first index on ties: every noise vector summed."""
    z, p = dg(sigma)
    m = len(x)
    grids = np.meshgrid(*[x[j] + z for j in range(m)], indexing="ij")
    weight = np.ones([len(z)] * m)
    for j in range(m):
        weight = weight * p.reshape([-1 if a == j else 1 for a in range(m)])
    winner = np.argmax(np.stack(grids), axis=0)
    return np.array([weight[winner == j].sum() for j in range(m)])


def answered_probability(v, threshold, sigma1):
    z, p = dg(sigma1, spread=40.0)
    return float(p[v + z >= threshold].sum())


def output_law(x, threshold, sigma1, sigma2):
    """Confident-GNMax's outputs (⊥, label 0, ..., label m−1), computed directly from Algorithm 1."""
    p1 = answered_probability(x.max(), threshold, sigma1)
    return np.concatenate([[1 - p1], p1 * argmax_law(x, sigma2)])


def vector_log_factor(x, y, sigma, lam):
    """log Σ over integer vectors u of N_Z(u; x, σ²)^λ N_Z(u; y, σ²)^{1−λ}: the answered branch when the
    whole noisy vector is released (soft labels), coordinate by coordinate, in log space."""
    u = np.arange(-int(40 * sigma) - 20, int(40 * sigma) + 21)
    z, p = dg(sigma, spread=40.0)
    log_norm = -math.log(np.exp(-z.astype(float) ** 2 / (2 * sigma * sigma)).sum())
    total = 0.0
    for a, b in zip(x, y):
        log_pa = -(u - int(a)).astype(float) ** 2 / (2 * sigma * sigma) + log_norm
        log_pb = -(u - int(b)).astype(float) ** 2 / (2 * sigma * sigma) + log_norm
        total += np.logaddexp.reduce(lam * log_pa + (1 - lam) * log_pb)
    return float(total)


def renyi(p, q, lam):
    return math.log(np.sum(p ** lam * q ** (1 - lam))) / (lam - 1)


@pytest.mark.parametrize("threshold, sigma1, sigma2", [(3.0, 1.0, 1.5), (4.5, 0.7, 3.0), (2.0, 2.0, 0.8)])
def test_confident_gnmax_bound_holds_for_every_neighbouring_pair(threshold, sigma1, sigma2):
    n, m = 5, 3
    bound = rdp.rdp_confident_gnmax_worst_case(threshold, sigma1, sigma2, n, m, ORDERS)
    laws = {tuple(x): output_law(x, threshold, sigma1, sigma2) for x in histograms(n, m)}
    worst, worst_vector = np.zeros(len(ORDERS)), np.zeros(len(ORDERS))
    for x in histograms(n, m):
        for y in neighbours(x):
            exact = [renyi(laws[tuple(x)], laws[tuple(y)], lam) for lam in ORDERS]
            worst = np.maximum(worst, exact)
            p1, q1 = answered_probability(x.max(), threshold, sigma1), answered_probability(y.max(), threshold, sigma1)
            vector = [math.log((1 - p1) ** lam * (1 - q1) ** (1 - lam) + p1 ** lam * q1 ** (1 - lam)
                               * math.exp(vector_log_factor(x, y, sigma2, lam))) / (lam - 1) for lam in ORDERS]
            worst_vector = np.maximum(worst_vector, vector)
    assert np.all(worst <= bound * (1 + 1e-9) + 1e-12)
    assert np.all(worst_vector <= bound * (1 + 1e-9) + 1e-12)  # soft labels: the whole integer vector
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
                p, q = answered_probability(v, threshold, sigma1), answered_probability(w, threshold, sigma1)
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


def test_discrete_laplace_rdp_against_a_sum_over_the_integers():
    for gamma in (2.0, 0.5, 0.1):
        z = np.arange(-int(80 / gamma) - 5, int(80 / gamma) + 6)
        log_norm = math.log((1 + math.exp(-gamma)) / (1 - math.exp(-gamma)))
        log_p, log_q = -gamma * np.abs(z) - log_norm, -gamma * np.abs(z - 1) - log_norm
        for lam in (1.5, 3.0, 30.0):
            exact = np.logaddexp.reduce(lam * log_p + (1 - lam) * log_q) / (lam - 1)
            assert discrete.rdp_discrete_laplace(gamma, [lam])[0] == pytest.approx(exact, rel=1e-9)
    # LNMax's guarantee of Q answers (two discrete Laplace mechanisms each): the PLD accountant on
    # dp_accounting's own DiscreteLaplaceDpEvent, below the RDP route, both above the ε-DP floor.
    ours = LNMax(0.05).worst_case_rdp(100, rdp.DEFAULT_ORDERS, num_teachers=250, num_classes=10)
    rdp_eps = rdp.eps_from_rdp(ours, rdp.DEFAULT_ORDERS, 1e-5, warn_edge=False)[0]
    theirs = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4).compose(
        SelfComposedDpEvent(DiscreteLaplaceDpEvent(0.05, 1), 200)).get_epsilon(1e-5)
    settings = accounting.Settings(LNMax(0.05), 250, 10, 100, 1e-5, tuple(rdp.DEFAULT_ORDERS))
    g = accounting.guarantee(settings)
    assert g.accountant == "pld" and g.epsilon == pytest.approx(theirs, rel=1e-9) and g.epsilon < rdp_eps


def discrete_gaussian_profile(sigma, draws, eps):
    """Exact δ(ε) of ``draws`` sensitivity-1 discrete Gaussians composed: under P = N_Z(0, σ²)^k and
    Q = N_Z(1, σ²)^k the privacy loss is (k − 2S)/(2σ²), S the sum of the k draws, whose law is the
    k-fold convolution of the pmf; δ(ε) = E_P[(1 − e^{ε − L})₊] (the hockey-stick divergence)."""
    z, p = dg(sigma, spread=40.0)
    law = np.array([1.0])
    for _ in range(draws):
        law = np.convolve(law, p)
    s = np.arange(len(law)) + draws * int(z[0])
    loss = (draws - 2.0 * s) / (2.0 * sigma * sigma)
    return float(np.sum(law * np.clip(1.0 - np.exp(np.minimum(eps - loss, 700.0)), 0.0, None)))


def test_gaussian_guarantee_is_the_discrete_gaussians_exact_privacy_profile():
    # Q GNMax answers = 2Q sensitivity-1 discrete Gaussians (two counts move per query).
    settings = accounting.Settings(GNMax(3.0), 5, 3, 4, 1e-5, tuple(rdp.DEFAULT_ORDERS))
    g = accounting.guarantee(settings)
    assert g.accountant == "pld"
    assert discrete_gaussian_profile(3.0, 8, g.epsilon) <= 1e-5 < discrete_gaussian_profile(3.0, 8, g.epsilon - 2e-3)
    # the continuous Gaussian's analytic profile is about another mechanism; at σ 3 the two differ
    mu = math.sqrt(8) / 3
    continuous = norm.cdf(-g.epsilon / mu + mu / 2) - math.exp(g.epsilon) * norm.cdf(-g.epsilon / mu - mu / 2)
    assert continuous != pytest.approx(discrete_gaussian_profile(3.0, 8, g.epsilon), rel=1e-3)
    # and at the paper's σ 40 the PLD is below the RDP route, which is valid but looser
    big = accounting.guarantee(accounting.Settings(GNMax(40.0), 250, 10, 640, 1e-5, tuple(rdp.DEFAULT_ORDERS)))
    assert big.accountant == "pld"
    assert big.epsilon < rdp.eps_from_rdp(640 * rdp.DEFAULT_ORDERS / 1600, rdp.DEFAULT_ORDERS, 1e-5, warn_edge=False)[0]


def test_guarantee_is_the_least_valid_bound_and_covers_the_release():
    base = accounting.Settings(ConfidentGNMax(200, 150, 40), 250, 10, 640, 1e-5, tuple(rdp.DEFAULT_ORDERS))
    g = accounting.guarantee(base)
    # 3.3167 with continuous noise; the discrete Gaussian's threshold probabilities give 3.3201
    assert g.accountant == "rdp" and g.epsilon == pytest.approx(3.3201, abs=1e-4)
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


@pytest.mark.parametrize("sigma", [0.4, 1.0, 3.0])
def test_discrete_gaussian_divergences_are_at_most_the_continuous_bounds(sigma):
    # What every Gaussian-noise mechanism's worst case rests on, summed exactly over the integers:
    # one count moved by one (the threshold step, Private-kNN) costs at most λ/(2σ²), two counts
    # (a vote moved: GNMax, the answer step, Interactive's teachers) at most λ/σ², and the whole
    # vector of a GNMax answer no more than that (the per-query charge of GNMax and LNMax alike).
    for lam in ORDERS:
        one = vector_log_factor([1], [0], sigma, lam) / (lam - 1)
        two = vector_log_factor([3, 0, 2], [2, 1, 2], sigma, lam) / (lam - 1)
        assert one <= lam / (2 * sigma ** 2) * (1 + 1e-9) and two <= lam / sigma ** 2 * (1 + 1e-9)
        assert two == pytest.approx(2 * one, rel=1e-9)  # independent coordinates: the divergences add
        assert GNMax(sigma).worst_case_rdp(1, [lam], num_teachers=5, num_classes=3)[0] >= two * (1 - 1e-9)
