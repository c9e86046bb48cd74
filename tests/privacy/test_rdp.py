"""pate.privacy.rdp against independent derivations, published values and dp_accounting."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import integrate
from scipy.stats import norm

from pate.privacy import discrete, rdp

ORDERS = rdp.DEFAULT_ORDERS


# ----------------------------------------------------------------------------- published values


def test_default_orders_are_the_papers_list():
    assert ORDERS[0] == 2 and ORDERS[-1] == pytest.approx(500)
    assert np.all(np.diff(ORDERS) > 0) and ORDERS.size == 297


def _discrete_pmf(sigma):
    """N_Z(0, σ²) summed from its definition, over |z| ≤ 60σ + 10."""
    z = np.arange(-int(60 * sigma) - 10, int(60 * sigma) + 11)
    w = np.exp(-z.astype(float) ** 2 / (2 * sigma * sigma))
    return z, w / w.sum()


def _overtake(sigma, gap):
    """Pr[Z₁ − Z₂ ≥ gap] for two discrete Gaussians, by direct convolution."""
    z, p = _discrete_pmf(sigma)
    diff = np.convolve(p, p)  # support −2B..2B
    return float(diff[gap + 2 * int(z[-1]):].sum())


def test_unanimous_250_teachers_sigma_40():
    votes = np.zeros((1, 10), dtype=int)
    votes[0, 3] = 250
    logq = rdp.logq_gnmax(votes, 40)
    # The paper's MNIST unanimous figure is 9·Φ̄(250/(√2·40)), log q̃ ≈ −10.02, for continuous noise.
    # pate's noise is the discrete Gaussian: each term is Pr[Z₁ − Z₂ ≥ 250] (a tie counted), whose
    # bound Φ̄((250 − c)/(√2·40)), c ≈ ½ (a continuity correction), is a little larger: −9.98.
    assert logq[0] == pytest.approx(-9.98, abs=0.005)
    assert logq[0] >= math.log(9 * _overtake(40.0, 250))
    assert logq[0] == pytest.approx(math.log(9 * _overtake(40.0, 250)), abs=2e-3)
    assert logq[0] > math.log(9 * norm.sf(250 / (math.sqrt(2) * 40)))


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5, 40.0])
def test_each_term_of_q_bounds_the_discrete_overtaking_probability(sigma):
    votes = np.array([[12, 12, 9, 5, 0]])
    terms = rdp.gap_log_terms(12, sigma, 38)
    for gap in (0, 3, 7, 12):
        exact = _overtake(sigma, gap)
        assert math.exp(terms[gap]) >= exact * (1 - 1e-9)
        if sigma >= 2.5:  # and not far above it (one shift for every gap is loose deep in a small σ's tail)
            assert math.exp(terms[gap]) <= exact * 1.5 + 1e-12
    assert np.isfinite(rdp.logq_gnmax(votes, sigma)).all()


def test_mnist_data_independent_epsilon():
    # T=200, σ1=150, σ2=40, 640 queries all answered, δ=1e-5 (2018 paper, MNIST row).
    total = (640 * rdp.rdp_threshold_data_independent(150, ORDERS)
             + 640 * rdp.rdp_gnmax_data_independent(40, ORDERS))
    eps_classic, _ = rdp.eps_from_rdp(total, ORDERS, 1e-5, "classic")
    eps_improved, _ = rdp.eps_from_rdp(total, ORDERS, 1e-5)
    assert eps_classic == pytest.approx(4.786, abs=5e-4)
    assert eps_improved == pytest.approx(4.247, abs=5e-4)


# ----------------------------------------------------------------------------- q̃ vs Monte Carlo


@pytest.mark.parametrize("votes, sigma", [
    ([50, 45, 3, 2], 5.0),     # one competitor dominates: q̃ ≈ Pr[error]
    ([30, 25, 25, 20], 4.0),   # several competitors: union bound is loose
    ([12, 12, 0], 3.0),        # exact tie
    ([40, 0, 0], 8.0),
])
def test_logq_bounds_monte_carlo_error(votes, sigma):
    rng = np.random.default_rng(0)
    v = np.asarray(votes)
    z, p = _discrete_pmf(sigma)  # the discrete Gaussian GNMax draws, sampled from its pmf directly
    draws = v + rng.choice(z, p=p, size=(200_000, v.size))
    err = np.mean(np.argmax(draws, axis=1) != np.argmax(v))
    q = math.exp(rdp.logq_gnmax([votes], sigma)[0])
    assert err <= q + 4 * math.sqrt(q * (1 - q) / 200_000) + 1e-4
    if votes[0] - votes[1] > 0 and votes[1] - votes[2] > 30:  # dominated case: tight but for ties, which
        assert abs(err - q) < 0.05  # q̃ counts as errors (Pr[tie at gap 5] ≈ 0.04) and argmax gives the top


def test_logq_underflow_and_cap():
    votes = np.array([[250, 0, 0], [1, 1, 1], [125, 125, 0]])
    logq = rdp.logq_gnmax(votes, 0.5)
    assert np.isfinite(logq[0]) and logq[0] < -1e4  # far below 1e-308, still finite
    assert logq[1] == pytest.approx(math.log(2 / 3))  # capped at 1 − 1/m
    c = discrete.gap_shift(0.5, 250)  # a tie at σ ½: Φ̄(−c/(√2σ)) ≈ 0.76 > 1 − 1/m, so capped too
    assert norm.sf(-c / (math.sqrt(2) * 0.5)) > 2 / 3 and logq[2] == pytest.approx(math.log(2 / 3))
    tie = rdp.logq_gnmax([[125, 125, 0]], 40.0)[0]
    assert tie == pytest.approx(math.log(norm.sf(-discrete.gap_shift(40.0, 250) / (math.sqrt(2) * 40))
                                         + norm.sf((125 - discrete.gap_shift(40.0, 250)) / (math.sqrt(2) * 40))))
    # σ so small that a tie is near certain: no finite shift bounds Pr[tie], so q̃ is its cap
    assert rdp.logq_gnmax(votes, 0.01)[0] == pytest.approx(math.log(2 / 3))


# ----------------------------------------------------------------------------- Thm 6 vs integration


def _gnmax_output_probs(votes, sigma):
    """Pr[argmax_j (v_j + N(0,σ²)) = i] = ∫ φ(z) Π_{j≠i} Φ((v_i − v_j)/σ + z) dz."""
    v = np.asarray(votes, dtype=float)
    probs = []
    for i in range(v.size):
        others = np.delete(v, i)
        f = lambda z: norm.pdf(z) * np.prod(norm.cdf((v[i] - others) / sigma + z))  # noqa: E731
        probs.append(integrate.quad(f, -12, 12, epsabs=1e-15, epsrel=1e-11, limit=400)[0])
    return np.array(probs)


def _renyi(p, q, order):
    return math.log(np.sum(p**order * q ** (1 - order))) / (order - 1)


@pytest.mark.parametrize("votes, sigma", [([20, 4], 3.0), ([24, 2], 4.0), ([22, 3, 1], 3.0),
                                          ([30, 6, 4], 4.0)])
def test_data_dependent_rdp_bounds_exact_divergence(votes, sigma):
    orders = np.arange(2.0, 11.0)
    logq = rdp.logq_gnmax([votes], sigma)
    bound, used = rdp.rdp_gnmax(logq, sigma, orders, return_used=True)
    assert used.any()  # the case exercises the data-dependent bound
    p = _gnmax_output_probs(votes, sigma)
    assert p.sum() == pytest.approx(1, abs=1e-9)
    m = len(votes)
    for a in range(m):
        for b in range(m):
            if a == b or votes[a] == 0:
                continue
            neighbour = list(votes)
            neighbour[a] -= 1
            neighbour[b] += 1
            q = _gnmax_output_probs(neighbour, sigma)
            for k, order in enumerate(orders):
                assert _renyi(p, q, order) <= bound[0, k] * (1 + 1e-9) + 1e-12


def test_m2_bound_is_reasonably_tight():
    votes, sigma = [20, 4], 3.0
    logq = rdp.logq_gnmax([votes], sigma)
    bound = rdp.rdp_gnmax(logq, sigma, [2.0])[0, 0]
    p = _gnmax_output_probs(votes, sigma)
    true = max(_renyi(p, _gnmax_output_probs(n, sigma), 2.0) for n in ([19, 5], [21, 3]))
    assert true <= bound < 2.0 / sigma**2 and bound < 20 * true


# ----------------------------------------------------------------------------- data-independent


def test_data_independent_matches_dp_accounting():
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as rpa

    sigma1, sigma2, asked, answered, delta = 150.0, 40.0, 640, 500, 1e-5
    acc = rpa.RdpAccountant(orders=list(ORDERS))
    # GNMax: L2 sensitivity √2 at std σ ⇔ noise multiplier σ/√2; threshold: sensitivity 1.
    acc.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(sigma2 / math.sqrt(2)),
                                             answered))
    acc.compose(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(sigma1), asked))
    ours = (answered * rdp.rdp_gnmax_data_independent(sigma2, ORDERS)
            + asked * rdp.rdp_threshold_data_independent(sigma1, ORDERS))
    np.testing.assert_allclose(ours, acc._rdp, rtol=1e-12)
    assert rdp.eps_from_rdp(ours, ORDERS, delta)[0] == pytest.approx(acc.get_epsilon(delta),
                                                                     rel=1e-12)


# ----------------------------------------------------------------------------- conversion


def test_conversions_by_hand():
    orders = np.array([2.0, 10.0, 50.0])
    curve = np.array([5.0, 1.0, 3.0])
    classic, order_c = rdp.eps_from_rdp(curve, orders, 1e-5, "classic")
    improved, order_i = rdp.eps_from_rdp(curve, orders, 1e-5)
    assert (classic, order_c) == (pytest.approx(1 + math.log(1e5) / 9), 10.0)
    assert improved == pytest.approx(1 + math.log(0.9) - math.log(1e-5 * 10) / 9)
    assert order_i == 10.0 and improved <= classic
    assert rdp.eps_at_order(1.0, 10, 1e-5, "classic") == pytest.approx(classic)
    assert rdp.eps_at_order(1.0, 10, 1e-5) == pytest.approx(improved)
    # The vectorised conversion against the same hand-derived values (a second row: the curve + 1).
    rows = np.stack([curve, curve + 1.0])
    np.testing.assert_allclose(rdp.eps_from_rdp_rows(rows, orders, 1e-5, "classic"),
                               [1 + math.log(1e5) / 9, 2 + math.log(1e5) / 9], rtol=1e-12)
    np.testing.assert_allclose(rdp.eps_from_rdp_rows(rows, orders, 1e-5),
                               [1 + math.log(0.9) - math.log(1e-4) / 9, 2 + math.log(0.9) - math.log(1e-4) / 9],
                               rtol=1e-12)


def test_edge_order_warns():
    curve = rdp.rdp_gnmax_data_independent(1e4, ORDERS)  # tiny cost: best order is the largest
    with pytest.warns(rdp.OrderAtEdgeWarning, match="edge of the order list"):
        _, order = rdp.eps_from_rdp(curve, ORDERS, 1e-5, "classic")
    assert rdp.order_at_edge(order, ORDERS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rdp.eps_from_rdp(curve, ORDERS, 1e-5, "classic", warn_edge=False)


@pytest.mark.parametrize("conversion", ["improved", "classic"])
def test_row_conversion_equals_one_by_one(conversion):
    """The vectorised conversion gives each row's eps_from_rdp exactly, over tiny (KL branch, ε = 0),
    moderate and huge curves, and on an order list with orders ≤ 1.01."""
    rng = np.random.default_rng(0)
    scale = 10.0 ** rng.uniform(-9, 2, size=(200, 1))
    curves = np.abs(rng.normal(size=(200, len(ORDERS)))) * scale * ORDERS
    curves[0] = 0.0
    for orders, rows in ((ORDERS, curves), (np.array([1.005, 1.5, 3.0, 20.0]), curves[:, :4])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rdp.OrderAtEdgeWarning)
            one_by_one = np.array([rdp.eps_from_rdp(row, orders, 1e-5, conversion)[0] for row in rows])
        np.testing.assert_allclose(rdp.eps_from_rdp_rows(rows, orders, 1e-5, conversion), one_by_one,
                                   rtol=1e-12, atol=1e-15)
    assert rdp.eps_from_rdp_rows(curves[:1], ORDERS, 1e-5, conversion)[0] == pytest.approx(
        0.0 if conversion == "improved" else math.log(1e5) / (ORDERS.max() - 1))
    with pytest.raises(ValueError, match="shape"):
        rdp.eps_from_rdp_rows(np.ones((2, 3)), ORDERS, 1e-5, conversion)


@pytest.mark.parametrize("kwargs, message", [
    (dict(delta=0.0), "delta must be in"), (dict(conversion="best"), "conversion must be"),
])
def test_conversion_validation(kwargs, message):
    args = dict(rdp_curve=np.ones(3), orders=[2, 3, 4], delta=1e-5) | kwargs
    with pytest.raises(ValueError, match=message):
        rdp.eps_from_rdp(**args)


@pytest.mark.parametrize("call, message", [
    (lambda: rdp.logq_gnmax([[1, 2]], -1), "sigma must be > 0. Found -1"),
    (lambda: rdp.logq_gnmax([[1, -2]], 1), "non-negative"),
    (lambda: rdp.logq_gnmax([[1.5, 2]], 1), "integer"),
    (lambda: rdp.logq_gnmax([1, 2], 1), "2-D"),
    (lambda: rdp.rdp_gnmax([-1.0], 1, [1.0]), "orders must all be finite and > 1"),
    (lambda: rdp.rdp_gnmax([0.5], 1, [2.0]), "logq must be"),
])
def test_validation_messages(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- threshold + totals


def test_threshold_step():
    votes = np.array([[250, 0, 0], [100, 100, 50], [0, 0, 250]])
    logpr = rdp.logpr_answered(votes, 200, 150)
    z, p = _discrete_pmf(150.0)  # answered iff v + Z ≥ T, Z ~ N_Z(0, 150²)
    np.testing.assert_allclose(np.exp(logpr), [p[v + z >= 200].sum() for v in votes.max(1)], rtol=1e-10)
    r, used = rdp.rdp_threshold(logpr, 150, ORDERS, return_used=True)
    logq = np.minimum(logpr, np.log1p(-np.exp(logpr)))
    np.testing.assert_allclose(r, rdp.rdp_gnmax(logq, math.sqrt(2) * 150, ORDERS))
    assert np.all(r <= rdp.rdp_threshold_data_independent(150, ORDERS) + 1e-15)
    # Pr ≈ 1 keeps log(1 − Pr) finite: a far-above-threshold vote gets a small data-dependent cost
    far = rdp.logq_threshold([[400, 0], [5000, 0]], 200, 50)
    z, p = _discrete_pmf(50.0)
    assert far[0] == pytest.approx(math.log(p[400 + z < 200].sum()), rel=1e-9)
    # 96σ deep: summed in log space, against the log of the pmf's largest term and the geometric rest
    first = -(4801 ** 2) / (2 * 50.0 ** 2) - math.log(np.exp(-np.arange(-5000, 5001) ** 2 / 5000.0).sum())
    assert far[1] == pytest.approx(first, rel=1e-4)
    r_far, used_far = rdp.rdp_gnmax(far, math.sqrt(2) * 50, [2.0], return_used=True)
    assert used_far.all() and np.all((0 <= r_far) & (r_far < 1e-3))
    np.testing.assert_allclose(rdp.logq_threshold(votes, 200, 150), logq)


def test_gnmax_total_is_the_sum_of_per_query_costs():
    rng = np.random.default_rng(3)
    votes = rng.multinomial(250, rng.dirichlet(np.full(10, 0.2), size=400))
    gn = rdp.rdp_gnmax(rdp.logq_gnmax(votes, 40), 40, ORDERS)
    np.testing.assert_allclose(rdp.rdp_gnmax_total(votes, 40), gn.sum(0), rtol=1e-10)


def test_q_zero_costs_nothing_and_extremes_are_finite():
    r = rdp.rdp_gnmax([-np.inf, -1e9, -1e-300, math.log(0.5)], 1e-3, ORDERS)
    assert np.all(r[0] == 0) and np.all(np.isfinite(r))
    assert np.all(r >= 0)
    huge = rdp.rdp_gnmax(rdp.logq_gnmax([[250, 0]], 1e4), 1e4, ORDERS)
    np.testing.assert_allclose(huge[0], ORDERS / 1e8)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(logq=st.floats(-200, -1e-6), sigma=st.floats(0.5, 300))
def test_rdp_properties(logq, sigma):
    r = rdp.rdp_gnmax([logq], sigma, ORDERS)[0]
    ind = rdp.rdp_gnmax_data_independent(sigma, ORDERS)
    assert np.all(r >= 0) and np.all(r <= ind)
    assert np.all(np.diff(r) >= -1e-12 * r[1:])  # non-decreasing in the order


@settings(max_examples=60, deadline=None)
@given(logq=st.floats(-500, -1e-6), sigma=st.floats(0.5, 200), factor=st.floats(1.01, 4))
def test_rdp_decreases_with_sigma_at_fixed_q(logq, sigma, factor):
    small = rdp.rdp_gnmax([logq], sigma, ORDERS)
    large = rdp.rdp_gnmax([logq], sigma * factor, ORDERS)
    assert np.all(large <= small * (1 + 1e-9) + 1e-15)


def test_rdp_at_fixed_votes_is_not_monotone_in_sigma():
    """Known property of Prop. 10's μ choice: for one dominant class μ1 ≈ gap/√2 + 1 whatever σ,
    so the μ1 > λ cutoff can switch a larger σ to the data-independent λ/σ² (found by hypothesis).
    """
    votes = [[0, 250, 0, 0]]
    small = rdp.rdp_gnmax(rdp.logq_gnmax(votes, 1.0), 1.0, ORDERS)
    large = rdp.rdp_gnmax(rdp.logq_gnmax(votes, 2.0), 2.0, ORDERS)
    assert np.any(large > small) and np.all(large <= ORDERS / 4)


def test_threshold_tails_are_exact_for_a_threshold_just_above_an_integer():
    # T − c in floats rounds for T = 1e-14 and c = 250 (−250.0 exactly); the mechanism answers iff
    # 250 + Z ≥ 1e-14, i.e. Z ≥ −249: the tail the accountant uses must be that one.
    z = np.arange(-3000, 3001)
    w = np.exp(-z.astype(float) ** 2 / (2 * 100.0 ** 2))
    answered = w[250 + z >= 1e-14].sum() / w.sum()
    assert math.exp(rdp.logpr_answered([[250, 0]], 1e-14, 100.0)[0]) == pytest.approx(answered, rel=1e-12)
    assert math.exp(rdp.logq_threshold([[250, 0]], 1e-14, 100.0)[0]) == pytest.approx(1 - answered, rel=1e-9)
