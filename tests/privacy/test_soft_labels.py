"""Soft labels release each answered query's noisy count vector. The worst-case guarantee of every
mechanism already covers the vector: checked here against Rényi divergences of the vector
mechanisms computed by numerical integration (and, for the PLD path, the analytic Gaussian
mechanism's closed form), independently of pate's formulas."""
import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from scipy import integrate, stats
from scipy.special import log_ndtr

from pate.privacy import mechanisms as M
from pate.privacy import rdp
from pate.privacy.noise import noise_source

ORDERS = np.array([2.0, 5.0, 16.0, 40.0])


def renyi_vector(pairs, order, half_width):
    """log ∫ p^λ q^{1−λ} over the vector, for p, q products of independent coordinates: the
    integral factorises into 1-d integrals (numerical, over a range holding the mass), one per
    coordinate ``(logpdf_p, logpdf_q)``."""
    total = 0.0
    for logpdf_p, logpdf_q in pairs:
        f = lambda x: math.exp(order * logpdf_p(x) + (1 - order) * logpdf_q(x))
        value, _ = integrate.quad(f, -half_width, half_width, epsabs=1e-14, epsrel=1e-11, limit=400)
        total += math.log(value)
    return total


def gaussian_pairs(v, w, sigma):
    return [(lambda x, a=a: stats.norm.logpdf(x, a, sigma), lambda x, b=b: stats.norm.logpdf(x, b, sigma))
            for a, b in zip(v, w)]


@pytest.mark.parametrize("sigma", [3.0, 8.0])
def test_the_gnmax_vector_costs_what_gnmax_is_charged(sigma):
    # counts v and a neighbour's v' = v with one vote moved: only two coordinates differ
    v, w = np.array([5.0, 2.0]), np.array([4.0, 3.0])
    charged = rdp.rdp_gnmax_data_independent(sigma, ORDERS)
    for lam, cost in zip(ORDERS, charged):
        exact = renyi_vector(gaussian_pairs(v, w, sigma), lam, 12 * sigma * math.sqrt(lam) + 12 * lam) / (lam - 1)
        assert exact == pytest.approx(cost, rel=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_the_lnmax_vector_costs_what_lnmax_is_charged(gamma):
    b = 1 / gamma
    v, w = np.array([5.0, 2.0]), np.array([4.0, 3.0])
    charged = M.lnmax_rdp(gamma, ORDERS[:2])
    for lam, cost in zip(ORDERS[:2], charged):
        pairs = [(lambda x, a=a: stats.laplace.logpdf(x, a, b), lambda x, c=c: stats.laplace.logpdf(x, c, b))
                 for a, c in zip(v, w)]
        exact = renyi_vector(pairs, lam, 60 * b + 20) / (lam - 1)
        assert exact == pytest.approx(cost, rel=1e-4)


def confident_joint_renyi(v, w, threshold, sigma1, sigma2, lam):
    """D_λ of (answered?, vector if answered) between vote vectors v and w (2 classes), exactly:
    the threshold noise and the answer noise are independent, so the answered branch is
    Pr[answered] times the vector's density."""
    def logs(x):
        z = (max(x) - threshold) / sigma1
        return log_ndtr(-z), log_ndtr(z)  # log Pr[not answered], log Pr[answered]
    (p0, p1), (q0, q1) = logs(v), logs(w)
    branch = renyi_vector(gaussian_pairs(v, w, sigma2), lam, 12 * sigma2 * math.sqrt(lam) + 12 * lam + 10)
    terms = [lam * p0 + (1 - lam) * q0, lam * p1 + (1 - lam) * q1 + branch]
    return float(np.logaddexp(*terms)) / (lam - 1)


def test_the_confident_gnmax_worst_case_covers_the_vector_for_every_neighbouring_pair():
    K, T, s1, s2 = 6, 4.0, 2.0, 2.0
    bound = rdp.rdp_confident_gnmax_worst_case(T, s1, s2, K, 2, ORDERS[:3])
    worst = np.zeros(3)
    for a in range(K + 1):  # every histogram of K votes over 2 classes, and every neighbour
        for b in (a - 1, a + 1):
            if 0 <= b <= K:
                v, w = np.array([a, K - a], float), np.array([b, K - b], float)
                exact = [confident_joint_renyi(v, w, T, s1, s2, lam) for lam in ORDERS[:3]]
                worst = np.maximum(worst, exact)
    assert (worst <= bound * (1 + 1e-6)).all()  # the guarantee holds for the vector release
    assert (worst >= 0.5 * bound).all()  # and is not vacuous


def test_a_private_knn_voter_is_charged_the_vector():
    # one voter more changes one count by one: a 1-d Gaussian shift in one coordinate
    sigma2 = 3.0
    for lam in ORDERS[:3]:
        f = lambda x: math.exp(lam * stats.norm.logpdf(x, 1, sigma2) + (1 - lam) * stats.norm.logpdf(x, 0, sigma2))
        exact = math.log(integrate.quad(f, -60, 60 + 12 * lam, epsabs=1e-14)[0]) / (lam - 1)
        mech = M.PrivateKNN(threshold=3.0, sigma1=2.0, sigma2=sigma2, knn_k=5)
        _, _, answer = mech.query_rdp(np.array([[3, 1]]), np.array([lam]))
        assert exact == pytest.approx(float(answer[0, 0]), rel=1e-6)


def analytic_gaussian_delta(epsilon, sensitivity, sigma):
    """δ(ε) of the Gaussian mechanism (Balle & Wang 2018, Thm 8), closed form."""
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    return stats.norm.cdf(a - b) - math.exp(epsilon) * stats.norm.cdf(-a - b)


def test_the_pld_event_of_gnmax_is_the_whole_vector_mechanism():
    sigma, queries, eps = 40.0, 640, 2.0
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(M.GNMax(sigma2=sigma).dp_event(queries))
    # 640 vector releases of L2 sensitivity sqrt(2) are one Gaussian mechanism of sensitivity sqrt(2 * 640)
    expected = analytic_gaussian_delta(eps, math.sqrt(2 * queries), sigma)
    assert accountant.get_delta(eps) == pytest.approx(expected, rel=1e-2)


@pytest.mark.parametrize("mech", [M.LNMax(gamma=0.5), M.GNMax(sigma2=2.0),
                                  M.ConfidentGNMax(threshold=4.0, sigma1=2.0, sigma2=2.0),
                                  M.InteractiveGNMax(threshold=4.0, sigma1=2.0, sigma2=2.0, student_confidence=0.9)])
def test_the_labels_are_the_argmax_of_the_released_vectors_and_unchanged_by_soft_labels(mech):
    votes = np.random.default_rng(0).multinomial(6, [0.6, 0.3, 0.1], size=50)
    plain = mech.decide(votes, noise_source(5))
    labels, noisy = mech.decide_noisy(votes, noise_source(5))
    assert np.array_equal(plain, labels)
    answered = labels >= 0
    assert np.array_equal(np.argmax(noisy[answered], axis=1), labels[answered])
    assert np.isnan(noisy[~answered]).all()  # nothing of an unanswered query (its noisy max) is released
