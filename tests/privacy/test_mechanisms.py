"""Aggregators against their closed-form output distributions; the noise source's guarantees."""

import math

import numpy as np
import pytest
from scipy import stats
from scipy.stats import norm

from pate.privacy import mechanisms, rdp
from pate.privacy.noise import noise_source

N = 20_000  # draws per distribution test; chi-square / binomial tests at fixed α = 1e-4
ALPHA = 1e-4


def _binomial_ok(successes, trials, p):
    return stats.binomtest(int(successes), trials, p).pvalue > ALPHA


# pate's noise is integer (the discrete Gaussian / discrete Laplace): the reference distributions
# below are summed by brute force over the integers from their definitions, not from pate's tables.
# Ties go to the first index (np.argmax), which the closed forms of the continuous noise never see.


def _pmf(log_kernel, bound):
    z = np.arange(-bound, bound + 1)
    w = np.exp([log_kernel(int(k)) for k in z])
    return z, w / w.sum()


def _gauss(sigma):
    return _pmf(lambda k: -k * k / (2 * sigma * sigma), int(40 * sigma) + 5)


def _dlap(gamma):
    return _pmf(lambda k: -gamma * abs(k), int(60 / gamma) + 5)


def _first_wins_two(v1, v2, pmf):
    """Pr[v1 + Z1 ≥ v2 + Z2]: class 0 wins ties."""
    z, p = pmf
    return float(np.sum(p[:, None] * p[None, :] * ((v1 + z)[:, None] >= (v2 + z)[None, :])))


@pytest.mark.parametrize("v1, v2, gamma", [(10, 8, 0.5), (5, 5, 1.0), (3, 7, 0.25)])
def test_lnmax_two_classes_closed_form(v1, v2, gamma):
    labels = mechanisms.lnmax(np.tile([v1, v2], (N, 1)), gamma, noise_source(11))
    assert _binomial_ok(np.sum(labels == 0), N, _first_wins_two(v1, v2, _dlap(gamma)))


@pytest.mark.parametrize("v1, v2, sigma", [(10, 8, 2.0), (6, 6, 1.0), (2, 9, 5.0)])
def test_gnmax_two_classes_closed_form(v1, v2, sigma):
    labels = mechanisms.gnmax(np.tile([v1, v2], (N, 1)), sigma, noise_source(12))
    assert _binomial_ok(np.sum(labels == 0), N, _first_wins_two(v1, v2, _gauss(sigma)))


def test_the_continuous_closed_form_is_not_what_gnmax_draws():
    # The float noise of earlier versions followed Φ((v1 − v2)/(√2σ)); with integer noise a tie has
    # positive probability and goes to class 0: at v1 = v2, σ = 1, class 0 wins 0.64, not 0.5.
    assert _first_wins_two(6, 6, _gauss(1.0)) == pytest.approx(0.5 + 0.5 * 0.2788, abs=2e-3)
    labels = mechanisms.gnmax(np.tile([6, 6], (N, 1)), 1.0, noise_source(12))
    assert not _binomial_ok(np.sum(labels == 0), N, norm.cdf(0.0))


def test_gnmax_three_classes_chi_square():
    votes, sigma = np.array([12, 10, 6]), 3.0
    z, p = _gauss(sigma)
    keep = p > 1e-15
    z, p = z[keep], p[keep]
    noisy = [votes[i] + z.reshape([-1 if a == i else 1 for a in range(3)]) for i in range(3)]
    weight = p[:, None, None] * p[None, :, None] * p[None, None, :]
    best = np.maximum(np.maximum(noisy[0], noisy[1]), noisy[2])
    won0 = noisy[0] == best
    won1 = (noisy[1] == best) & ~won0
    won2 = ~won0 & ~won1
    probs = np.array([np.sum(weight * won0), np.sum(weight * won1), np.sum(weight * won2)])
    labels = mechanisms.gnmax(np.tile(votes, (N, 1)), sigma, noise_source(13))
    observed = np.bincount(labels, minlength=3)
    assert stats.chisquare(observed, probs / probs.sum() * N).pvalue > ALPHA


def test_confident_gnmax_answer_rate_and_labels():
    votes = np.tile([30, 25, 5], (N, 1))
    threshold, sigma1, sigma2 = 32.0, 4.0, 3.0
    labels = mechanisms.confident_gnmax(votes, threshold, sigma1, sigma2, noise_source(14))
    answered = labels >= 0
    z, p = _gauss(sigma1)
    assert _binomial_ok(answered.sum(), N, float(p[30 + z >= threshold].sum()))
    # fresh N_Z(0, σ2²) on every count: label 0 vs 1 as GNMax(σ2) (class 2 is ~never chosen)
    assert _binomial_ok(np.sum(labels[answered] == 0), answered.sum(), _first_wins_two(30, 25, _gauss(sigma2)))
    assert set(np.unique(labels)) <= {-1, 0, 1, 2}


def test_noisy_counts_are_integers():
    votes = np.array([[7, 2, 1], [3, 3, 4]])
    src = noise_source()
    for noisy in (mechanisms.gnmax_noisy(votes, 3.3, src), mechanisms.lnmax_noisy(votes, 0.7, src),
                  mechanisms.confident_gnmax_noisy(votes, -100.0, 2.5, 3.3, src)[1]):
        assert np.array_equal(noisy, np.round(noisy))


def test_draw_count_does_not_depend_on_votes():
    a, b = noise_source(5), noise_source(5)
    mechanisms.confident_gnmax(np.array([[9, 1], [0, 10]]), 5, 1, 1, a)
    mechanisms.confident_gnmax(np.array([[0, 10], [5, 5]]), 500, 1, 1, b)
    assert a.discrete_gaussian(8, 3.0).tolist() == b.discrete_gaussian(8, 3.0).tolist()


# ----------------------------------------------------------------------------- noise source


def test_secure_source_normal_and_laplace():
    src = noise_source()
    assert not src.seeded and "secure" in repr(src)
    x = src.normal(N, scale=2.0)
    assert stats.kstest(x / 2.0, "norm").pvalue > 1e-6
    assert abs(x.mean()) < 5 * 2 / math.sqrt(N) and abs(x.std() - 2) < 0.05
    y = src.laplace(N, scale=0.5)
    assert stats.kstest(y, "laplace", args=(0, 0.5)).pvalue > 1e-6
    assert abs(np.mean(np.abs(y)) - 0.5) < 0.02
    u = src.uniform((100, 3))
    assert u.shape == (100, 3) and np.all((u > 0) & (u < 1))


def test_seeded_reproducible_and_streams_independent():
    a = noise_source(42, stream=0)
    assert a.seeded and a.seed == 42 and a.stream == 0
    x = a.normal(1000)
    np.testing.assert_array_equal(x, noise_source(42, 0).normal(1000))
    y = noise_source(42, 1).normal(1000)
    assert not np.array_equal(x, y) and abs(np.corrcoef(x, y)[0, 1]) < 0.15
    assert not np.array_equal(x, noise_source(43, 0).normal(1000))
    assert stats.kstest(noise_source(42, 2).laplace(N), "laplace").pvalue > ALPHA


@pytest.mark.parametrize("call, message", [
    (lambda: mechanisms.gnmax([[1, 2]], -1, noise_source(0)), "sigma must be > 0. Found -1"),
    (lambda: mechanisms.lnmax([[1, 2]], 0, noise_source(0)), "gamma must be > 0. Found 0"),
    (lambda: mechanisms.gnmax([[1, -2]], 1, noise_source(0)), "non-negative"),
    (lambda: mechanisms.gnmax([1, 2], 1, noise_source(0)), "2-D"),
    (lambda: mechanisms.confident_gnmax([[1, 2]], float("nan"), 1, 1, noise_source(0)),
     "threshold must be a finite number"),
    (lambda: mechanisms.gnmax([[1, 2]], 1, np.random.default_rng()), "noise must be"),
    (lambda: noise_source(-3), "seed must be a non-negative integer"),
])
def test_validation_messages(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- mechanism objects

ORDERS = np.array([2.0, 5.0, 10.0, 32.0, 100.0])


def _votes(n=400, seed=3):
    rng = np.random.default_rng(seed)
    return rng.multinomial(250, rng.dirichlet(np.full(10, 0.2), size=n))


def test_confident_gnmax_costs_match_per_query_sums():
    votes, mech = _votes(), mechanisms.ConfidentGNMax(threshold=200, sigma1=150, sigma2=40)
    answered = np.random.default_rng(4).random(len(votes)) < 0.6
    logpr = rdp.logpr_answered(votes, 200, 150)
    thr = rdp.rdp_threshold(logpr, 150, ORDERS)
    gn = rdp.rdp_gnmax(rdp.logq_gnmax(votes, 40), 40, ORDERS)
    realized = mech.per_query_rdp(votes, answered, ORDERS).sum(0)
    np.testing.assert_allclose(realized, thr.sum(0) + gn[answered].sum(0), rtol=1e-10)
    # The expected cost (the paper's Table 1): the curve composition equals the per-row sum.
    np.testing.assert_allclose(mech.expected_rdp(votes, ORDERS), thr.sum(0) + np.exp(logpr) @ gn, rtol=1e-9)
    independent = mech.data_independent_rdp(len(votes), answered.sum(), ORDERS)
    np.testing.assert_allclose(independent, len(votes) * ORDERS / (2 * 150**2) + answered.sum() * ORDERS / 40**2)
    assert np.all(realized <= independent * (1 + 1e-12))


def test_gnmax_and_lnmax_costs():
    votes = _votes(50)
    answered = np.ones(50, bool)
    gn = mechanisms.GNMax(sigma2=40)
    np.testing.assert_allclose(gn.per_query_rdp(votes, answered, ORDERS).sum(0), gn.expected_rdp(votes, ORDERS),
                               rtol=1e-10)
    np.testing.assert_allclose(gn.data_independent_rdp(50, 50, ORDERS), 50 * ORDERS / 1600)
    ln = mechanisms.LNMax(gamma=0.05)
    # Two discrete Laplace mechanisms (pmf ∝ e^{−γ|z|}) per answer, their Rényi divergence summed by
    # brute force over the integers; never above the generic bounds: 2γ-DP, and ε²/2-zCDP from pure
    # DP (Bun & Steinke 2016). (The continuous Laplace(20)'s would be lower: the discrete one is a
    # little less private at the same γ, so the earlier closed form would understate the cost.)
    z = np.arange(-4000, 4001)
    log_p = -0.05 * np.abs(z) - math.log((1 + math.exp(-0.05)) / (1 - math.exp(-0.05)))
    log_q = -0.05 * np.abs(z - 1) - math.log((1 + math.exp(-0.05)) / (1 - math.exp(-0.05)))
    summed = np.array([np.logaddexp.reduce(a * log_p + (1 - a) * log_q) / (a - 1) for a in ORDERS])
    per_answer = 2 * summed
    assert np.all(per_answer > 2 * rdp.rdp_laplace(20.0, ORDERS))
    np.testing.assert_allclose(ln.data_independent_rdp(7, 7, ORDERS), 7 * per_answer, rtol=1e-9)
    assert np.all(per_answer <= np.minimum(0.1, ORDERS * 0.005) + 1e-15)
    np.testing.assert_allclose(ln.per_query_rdp(votes[:3], [True, False, True], ORDERS).sum(0), 2 * per_answer,
                               rtol=1e-9)
    assert not ln.data_dependent and not ln.thresholded


def test_registry_builds_each_mechanism_from_settings():
    settings = {"threshold": 200.0, "sigma1": 150.0, "sigma2": 40.0, "gamma": 0.05, "unrelated": 1}
    built = {name: mechanisms.build(name, settings) for name in mechanisms.NAMES}
    assert built["confident-gnmax"] == mechanisms.ConfidentGNMax(200.0, 150.0, 40.0)
    assert built["gnmax"] == mechanisms.GNMax(40.0) and built["lnmax"] == mechanisms.LNMax(0.05)
    assert built["confident-gnmax"].describe() == "T 200, sigma1 150, sigma2 40"
    with pytest.raises(ValueError, match="mechanism must be one of"):
        mechanisms.build("laplace", settings)
    votes = np.array([[240, 10] + [0] * 8, [0, 125, 125] + [0] * 7])
    for mech in built.values():  # same noise stream, same number of draws: decide is deterministic given it
        assert np.array_equal(mech.decide(votes, noise_source(1)), mech.decide(votes, noise_source(1)))
