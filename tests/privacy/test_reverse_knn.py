"""Reverse-kNN's accounting against computations that share nothing with pate.privacy: the Rényi
divergence of the discrete Gaussian summed over the integers, and the hockey-stick divergence of
the whole release computed from the exact distribution of the noise (the k shifted coordinates'
noise summed by convolution). The sensitivity itself (a record moves exactly k counts by one) is
checked on real neighbour searches in tests/test_knn.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp

from pate.privacy import accounting, rdp
from pate.privacy.mechanisms import MECHANISMS, ReverseKNN
from pate.privacy.noise import noise_source


def settings(sigma: float, k: int, queries: int = 500, delta: float = 1e-5) -> accounting.Settings:
    return accounting.Settings(mechanism=ReverseKNN(sigma2=sigma, knn_k=k), num_teachers=1, num_classes=10,
                               max_queries=queries, delta=delta, orders=tuple(rdp.DEFAULT_ORDERS))


def log_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    """log N_Z(0, σ²) on ``support`` (wide enough that the mass outside is below 1e-40)."""
    logits = -support.astype(float) ** 2 / (2 * sigma ** 2)
    return logits - logsumexp(logits)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
@pytest.mark.parametrize("alpha", [2.0, 5.0, 16.0])
def test_the_rdp_bound_holds_against_the_exact_renyi_sum(sigma, alpha):
    """D_α(P‖Q) of k independent coordinates, each N_Z(0, σ²) against N_Z(1, σ²), summed exactly over
    the integers, is at most the mechanism's αk/(2σ²), and close to it (CKS 2020: equal up to a theta term)."""
    z = np.arange(-int(60 * sigma) - 60, int(60 * sigma) + 61)
    p, q = log_pmf(sigma, z), log_pmf(sigma, z - 1)
    one = logsumexp(alpha * p + (1 - alpha) * q) / (alpha - 1)
    for k in (1, 4, 40):
        bound = ReverseKNN(sigma2=sigma, knn_k=k).release_rdp([alpha])[0]
        assert k * one <= bound * (1 + 1e-12)
        assert k * one >= 0.9 * bound if sigma >= 1 else k * one > 0


def exact_epsilon(sigma: float, k: int, delta: float) -> float:
    """ε at δ of the release, from the hockey-stick divergence of P = N_Z(0, σ²)^k and Q its shift by
    one on each coordinate. The privacy loss is (k − 2·S)/(2σ²) with S the sum of the k noises, so only
    S's pmf is needed: the k-fold convolution of the discrete Gaussian's. Symmetric, so one direction."""
    z = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    pmf = np.exp(log_pmf(sigma, z))
    total = np.array([1.0])
    for _ in range(k):
        total = np.convolve(total, pmf)
    s = np.arange(len(total)) + k * z[0]
    loss = (k - 2 * s) / (2 * sigma ** 2)

    def delta_at(eps: float) -> float:
        return float(np.sum(total * np.clip(1 - np.exp(eps - loss), 0, None)))
    lo, hi = 0.0, 50.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if delta_at(mid) <= delta else (mid, hi)
    return hi


@pytest.mark.parametrize("sigma, k, delta", [(2.0, 1, 1e-5), (3.0, 5, 1e-5), (8.0, 20, 1e-5), (20.0, 40, 1e-5),
                                             (4.0, 5, 1e-4)])
def test_the_published_epsilon_against_the_exact_hockey_stick(sigma, k, delta):
    """The statement's ε: never below the exact one (it would be a false guarantee), and within a few
    percent of it (PLD's pessimistic grid and the 1e-15 of δ kept for the noise's far tail)."""
    g = accounting.guarantee(settings(sigma, k, delta=delta))
    exact = exact_epsilon(sigma, k, delta)
    assert g.accountant == "pld"
    assert exact <= g.epsilon <= exact * 1.03 + 1e-3


def test_the_cost_does_not_grow_with_the_anchors():
    """One release: 100 anchors or 9 000, the same guarantee and the same spend-log curve."""
    few, many = settings(30.0, 40, queries=100), settings(30.0, 40, queries=9000)
    assert accounting.guarantee(few).epsilon == accounting.guarantee(many).epsilon
    assert np.array_equal(accounting.worst_case_curve(few), accounting.worst_case_curve(many))
    mech = ReverseKNN(sigma2=30.0, knn_k=40)
    assert np.allclose(mech.worst_case_rdp(9000, [2.0, 10.0], num_teachers=1, num_classes=10),
                       [2 * 40 / 1800, 10 * 40 / 1800])
    assert mech.worst_case_rdp(0, [2.0], num_teachers=1, num_classes=10)[0] == 0
    # and it grows with k as k/σ²: doubling k costs what σ/√2 costs
    assert accounting.guarantee(settings(30.0, 80)).epsilon == pytest.approx(
        accounting.guarantee(settings(30.0 / math.sqrt(2), 40)).epsilon, rel=1e-3)


def test_decisions_are_integer_noise_on_every_anchor():
    mech = MECHANISMS["reverse-knn"](sigma2=3.0, knn_k=5)
    votes = np.array([[9, 0, 1], [0, 0, 0], [2, 2, 2]] * 50)
    labels, noisy = mech.decide_noisy(votes, noise_source(3))
    assert (labels >= 0).all() and np.array_equal(labels, noisy.argmax(1))  # every anchor answered
    assert np.array_equal(noisy, np.round(noisy)) and np.isfinite(noisy).all()
    assert (labels[::3] == 0).mean() > 0.9 and 2 < np.std(noisy - votes) < 4
    assert not mech.thresholded and not mech.data_dependent and not mech.individual and mech.reads_records
