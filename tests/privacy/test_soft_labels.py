"""Soft labels release each answered query's noisy count vector, an integer vector (pate's noise is
the discrete Gaussian or discrete Laplace). The worst-case guarantee of every mechanism already
covers the vector: checked here against Rényi divergences of the vector mechanisms summed over the
integers from the pmfs' definitions, independently of pate's formulas."""
import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from scipy import integrate, stats
from scipy.special import log_ndtr

from pate.privacy import mechanisms as M
from pate.privacy import accounting, rdp
from pate.privacy.noise import noise_source

ORDERS = np.array([2.0, 5.0, 16.0, 40.0])


def renyi_vector(pairs, order, half_width):
    """log Σ p^λ q^{1−λ} over the integer vectors, for p, q products of independent coordinates: the
    sum factorises into 1-d sums over the integers (a range holding the mass), one per coordinate
    ``(logpmf_p, logpmf_q)``."""
    x = np.arange(-int(half_width) - 1, int(half_width) + 2)
    return float(sum(np.logaddexp.reduce(order * lp(x) + (1 - order) * lq(x)) for lp, lq in pairs))


def discrete_gaussian_logpmf(sigma):
    z = np.arange(-int(60 * sigma) - 10, int(60 * sigma) + 11)
    log_norm = float(np.logaddexp.reduce(-z.astype(float) ** 2 / (2 * sigma * sigma)))
    return lambda x, centre: -(np.asarray(x, float) - centre) ** 2 / (2 * sigma * sigma) - log_norm


def gaussian_pairs(v, w, sigma):
    logpmf = discrete_gaussian_logpmf(sigma)
    return [(lambda x, a=a: logpmf(x, a), lambda x, b=b: logpmf(x, b)) for a, b in zip(v, w)]


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
    log_norm = math.log((1 + math.exp(-gamma)) / (1 - math.exp(-gamma)))  # Σ_z e^{−γ|z|}
    for lam, cost in zip(ORDERS[:2], charged):
        pairs = [(lambda x, a=a: -gamma * np.abs(x - a) - log_norm, lambda x, c=c: -gamma * np.abs(x - c) - log_norm)
                 for a, c in zip(v, w)]
        exact = renyi_vector(pairs, lam, 60 * b + 20) / (lam - 1)
        assert exact == pytest.approx(cost, rel=1e-4)


def confident_joint_renyi(v, w, threshold, sigma1, sigma2, lam):
    """D_λ of (answered?, vector if answered) between vote vectors v and w (2 classes), exactly:
    the threshold noise and the answer noise are independent, so the answered branch is
    Pr[answered] times the vector's density."""
    def logs(x):
        z = np.arange(-60 * int(sigma1) - 10, 60 * int(sigma1) + 11)
        p = np.exp(-z.astype(float) ** 2 / (2 * sigma1 * sigma1))
        answered = p[max(x) + z >= threshold].sum() / p.sum()
        return math.log1p(-answered), math.log(answered)  # log Pr[not answered], log Pr[answered]
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
    # one voter more changes one count by one: a 1-d discrete Gaussian shift in one coordinate
    sigma2 = 3.0
    for lam in ORDERS[:3]:
        exact = renyi_vector(gaussian_pairs([1.0], [0.0], sigma2), lam, 60 + 12 * lam) / (lam - 1)
        mech = M.PrivateKNN(threshold=3.0, sigma1=2.0, sigma2=sigma2, knn_k=5)
        _, _, answer = mech.query_rdp(np.array([[3, 1]]), np.array([lam]))
        assert exact == pytest.approx(float(answer[0, 0]), rel=1e-6)


def analytic_gaussian_delta(epsilon, sensitivity, sigma):
    """δ(ε) of the continuous Gaussian mechanism (Balle & Wang 2018, Thm 8), closed form."""
    a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
    return stats.norm.cdf(a - b) - math.exp(epsilon) * stats.norm.cdf(-a - b)


def test_the_pld_of_gnmax_is_the_whole_vector_mechanism():
    # 640 vector releases move two counts each: 1280 sensitivity-1 discrete Gaussians, whose PLD
    # (dp_accounting's discrete Gaussian) at σ 40 is within 1e-3 of the continuous Gaussian's of
    # sensitivity √(2·640) (the exact discrete profile is checked in test_worst_case at small σ).
    sigma, queries = 40.0, 640
    assert M.GNMax(sigma2=sigma).discrete_gaussians(queries) == [(sigma, 2 * queries)]
    eps = accounting.pld_epsilon(M.GNMax(sigma2=sigma), queries, 1e-5)
    assert analytic_gaussian_delta(eps, math.sqrt(2 * queries), sigma) == pytest.approx(1e-5, rel=1e-3)


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
