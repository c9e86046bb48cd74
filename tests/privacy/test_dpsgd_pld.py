"""The DP-SGD teacher's guarantee from its privacy-loss distribution (``accounting.pld_epsilon`` with a ``DpsgdSettings``),
checked against values derived without dp_accounting's PLD code: the analytic Gaussian (Balle & Wang
2018) where there is no subsampling, a brute-force numerical convolution of the subsampled
Gaussian's privacy loss, and Opacus's PRV accountant (Gopi et al. 2021, another method); and the
guarantee a run publishes is the least of that and the RDP composition."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from pate.privacy import accounting, dpsgd, mechanisms as M
from pate.privacy.accounting import DpsgdSettings


def _teacher_alone(settings: DpsgdSettings, delta: float) -> float:
    """The PLD ε of a DP-SGD teacher with no vote beside it (reverse-kNN with knn_k 0, no query)."""
    return accounting.pld_epsilon(M.ReverseKNN(sigma2=1.0, knn_k=0), 0, delta, settings)


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """ε at δ of the Gaussian mechanism with sensitivity/σ = mu, exactly (Balle & Wang 2018, Thm 8):
    δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2), solved for ε."""
    f = lambda eps: stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta  # noqa: E731
    return optimize.brentq(f, 0.0, 100.0, xtol=1e-12)


def brute_force_epsilon(q: float, sigma: float, steps: int, delta: float, up: bool, grid: float = 1e-4,
                        votes: tuple[float, int] | None = None) -> float:
    """ε at δ of ``steps`` compositions of the Poisson-subsampled Gaussian (rate q, noise σ, sensitivity
    1), both neighbour directions, by numerical integration: the privacy loss of one step under its
    own distribution, tabulated on a fine grid of the output and rounded onto a loss grid (``up``: an
    upper bound on the true ε; down: a lower bound), convolved ``steps`` times by FFT, then
    δ(ε) = E[(1 - e^(ε-L))+] + P(L = ∞), solved for ε. Both directions: removal (P the mixture
    (1-q)N(0,σ²) + qN(1,σ²), Q = N(0,σ²)) and addition (P and Q swapped). ``votes`` (σ_v, k): k
    sensitivity-1 discrete Gaussians composed too, their loss (2z − 1)/(2σ_v²) under z ~ N_Z(1, σ_v²)
    summed exactly over the integers (the same in both directions: the pmf is symmetric)."""
    x = np.linspace(-14 * sigma, 14 * sigma + 1, 400_001)  # beyond: under 1e-40 of either distribution
    log_q0 = stats.norm.logpdf(x, 0, sigma)
    log_mixture = np.logaddexp(math.log1p(-q) + log_q0, math.log(q) + stats.norm.logpdf(x, 1, sigma))
    factors = []  # (pmf on the loss grid, its first index, how many times it is composed), per direction
    if votes is not None:
        sigma_v, k = votes
        z = np.arange(-int(40 * sigma_v) - 1, int(40 * sigma_v) + 2)
        mass = np.exp(-(z - 1.0) ** 2 / (2 * sigma_v ** 2))
        factors.append((mass / mass.sum(), (2 * z - 1) / (2 * sigma_v ** 2), k))
    worst = 0.0
    for log_p, loss in ((log_mixture, log_mixture - log_q0), (log_q0, log_q0 - log_mixture)):
        mass = np.exp(log_p - log_p.max())
        pmfs = []
        for weights, values, power in [(mass / mass.sum(), loss, steps)] + factors:
            index = (np.ceil if up else np.floor)(values / grid).astype(np.int64)
            pmfs.append((np.bincount(index - index.min(), weights=weights), int(index.min()), power))
        length = sum((len(pmf) - 1) * power for pmf, _, power in pmfs) + 1
        size = 1 << int(math.ceil(math.log2(length)))
        spectrum = np.prod([np.fft.rfft(pmf, size) ** power for pmf, _, power in pmfs], axis=0)
        total = np.clip(np.fft.irfft(spectrum, size)[:length], 0, None)
        losses = (np.arange(length) + sum(first * power for _, first, power in pmfs)) * grid

        def delta_of(eps):
            return float(np.sum(total * np.clip(1 - np.exp(eps - losses), 0, None)))

        worst = max(worst, optimize.brentq(lambda e: delta_of(e) - delta, 0.0, 50.0, xtol=1e-9))
    return worst


def test_without_subsampling_it_is_the_analytic_gaussian():
    """q = 1: T steps of the Gaussian at σ are one Gaussian at σ/√T; the PLD's ε is an upper bound within 0.2%."""
    for sigma, steps in ((2.0, 4), (5.0, 100)):
        exact = analytic_gaussian_epsilon(math.sqrt(steps) / sigma, 1e-5)
        ours = _teacher_alone(DpsgdSettings(sigma, 1.0, steps), 1e-5)
        assert exact <= ours <= exact * 1.002 + 1e-4, (sigma, steps, exact, ours)


def test_subsampled_matches_a_brute_force_convolution():
    """The tiny tests' teacher (q 1/4, σ 1.5, 8 steps) and a sparser one: the numerical integration,
    its losses rounded down and up, brackets the true ε; the PLD's (an upper bound) is at or above the
    lower end and at or below the upper, and the RDP bound (the guarantee before) is above all."""
    for q, sigma, steps in ((0.25, 1.5, 8), (0.125, 3.0, 40)):
        settings = DpsgdSettings(sigma, q, steps)
        low, high = (brute_force_epsilon(q, sigma, steps, 1e-4, up) for up in (False, True))
        ours = _teacher_alone(settings, 1e-4)
        assert low < high < low + steps * 2e-4  # the rounding moves each step's loss by one grid step at most
        assert low <= ours <= high, (q, sigma, steps, low, ours, high)
        assert dpsgd.epsilon([settings.event()], 1e-4) > high


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # Opacus's RDP side, read for comparison
def test_the_pipelines_teacher_matches_opacus_prv_and_dp_accounting():
    """fashion-mnist-dpsgd-teacher's schedule (q 1/8, 320 steps): dp_accounting's PLDAccountant on the
    same DpEvent gives the same number (the wiring), Opacus's PRV accountant (another method, its
    own error of at most 0.01 in ε) agrees within 0.02, and the RDP bound is about 9% above."""
    pytest.importorskip("opacus")
    from dp_accounting.pld import pld_privacy_accountant
    from opacus.accountants import PRVAccountant
    settings = DpsgdSettings(4.949, 0.125, 320)
    ours = _teacher_alone(settings, 1e-5)
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    assert ours == pytest.approx(accountant.compose(settings.event()).get_epsilon(1e-5), rel=1e-9)
    prv = PRVAccountant()
    prv.history = [(4.949, 0.125, 320)]
    assert ours == pytest.approx(prv.get_epsilon(delta=1e-5), abs=0.02)
    assert 1.05 * ours < dpsgd.epsilon([settings.event()], 1e-5) < 1.15 * ours


def test_with_votes_it_matches_a_brute_force_convolution_of_both():
    """The tiny stage tests' release (k 5 votes at σ2 4) beside their teacher (q 1/4, σ 1.5, 8 steps),
    at δ 1e-4: the numerical integration of both losses together brackets the true ε, and the
    guarantee's PLD (less PLD_TAIL of δ for the votes' truncated support) lies inside, up to that
    δ's worth (its ε moves by under 1e-6)."""
    settings = DpsgdSettings(1.5, 0.25, 8)
    low, high = (brute_force_epsilon(0.25, 1.5, 8, 1e-4, up, votes=(4.0, 5)) for up in (False, True))
    ours = accounting.pld_epsilon(M.ReverseKNN(sigma2=4.0, knn_k=5), 300, 1e-4, settings)
    assert low < high < low + 13 * 2e-4
    assert low - 1e-6 <= ours <= high + 1e-6, (low, ours, high)


def test_with_votes_the_composition_lies_between_either_side_and_the_rdp_bound():
    """Reverse-kNN votes (discrete Gaussian, k coordinates) beside the teacher, in one PLD: above each
    side alone, below the RDP composition; a teacher of enormous noise adds almost nothing."""
    votes = M.ReverseKNN(sigma2=30.0, knn_k=40)
    teacher = DpsgdSettings(4.949, 0.125, 320)
    both = accounting.pld_epsilon(votes, 9000, 1e-5, teacher)
    votes_alone = accounting.pld_epsilon(votes, 9000, 1e-5)
    teacher_alone = accounting.pld_epsilon(votes, 0, 1e-5, teacher)
    assert max(votes_alone, teacher_alone) < both < dpsgd.epsilon([votes.dp_event(9000), teacher.event()], 1e-5)
    quiet = accounting.pld_epsilon(votes, 9000, 1e-5, DpsgdSettings(1e4, 0.125, 320))
    assert votes_alone <= quiet <= votes_alone + 1e-3


def test_the_guarantee_is_the_least_of_rdp_and_pld_and_knn_k_zero_is_the_teacher_alone():
    settings = accounting.Settings(mechanism=M.ReverseKNN(sigma2=30.0, knn_k=0), num_teachers=1, num_classes=10,
                                   max_queries=9000, delta=1e-5, orders=tuple(accounting.resolve_orders(())),
                                   dpsgd=DpsgdSettings(4.949, 0.125, 320))
    g = accounting.guarantee(settings)
    assert g.accountant == "pld" and g.order is None
    assert g.epsilon == pytest.approx(_teacher_alone(settings.dpsgd, 1e-5), rel=1e-12)
    assert g.epsilon < dpsgd.epsilon([settings.dpsgd.event()], 1e-5)
