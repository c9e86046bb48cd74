"""Exact tails of the noise source (issue 22): the outermost bins of the 53-bit grid are redrawn
from the conditional tail beyond them; every other value is what the old formula gave.

Reference distributions come from scipy's forward functions (log_ndtr, expon, norm, laplace),
never from the inverse functions the code uses.
"""
import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import log_ndtr, ndtri

from pate.privacy import noise
from pate.privacy.noise import noise_source

N = 20_000
P_MIN = 1e-3  # KS p-value floor; every draw below is from a fixed seed, so the tests are deterministic
K_MAX = 2**53 - 1
LOG2 = math.log(2.0)
OLD_NORMAL_CUTOFF = float(ndtri(2.0**-53))  # ≈ −8.2095, the old |Z| maximum
OLD_LAPLACE_CUTOFF = 52 * LOG2  # ≈ 36.04, the old |X|/b maximum


def _fake_bits(first, seed, forced_levels=0):
    """A stand-in for ``_secure_bits``: ``first`` for the main draw, then ``forced_levels`` calls of
    all k = 1 (the tail's own lowest bin), then honest uniform integers on [1, 2⁵³ − 1]."""
    rng = np.random.default_rng(seed)
    calls = []

    def bits(n):
        calls.append(n)
        if len(calls) == 1:
            assert n == len(first)
            return np.asarray(first, dtype=np.uint64)
        if len(calls) <= 1 + forced_levels:
            return np.ones(n, dtype=np.uint64)
        return rng.integers(1, 2**53, size=n, dtype=np.uint64)

    bits.calls = calls
    return bits


def _edges(n):
    return np.where(np.arange(n) % 2 == 0, 1, K_MAX).astype(np.uint64)  # lower, upper, lower, ...


def _lower_tail_cdf(log_mass):
    """CDF of Z | Z < c where log Φ(c) = log_mass: Φ(z)/Φ(c), from the forward log CDF."""
    return lambda z: np.exp(np.minimum(log_ndtr(z) - log_mass, 0.0))


# ----------------------------------------------------------------------------- (a) normal tails


def test_normal_outermost_bins_draw_the_exact_conditional_tail(monkeypatch):
    bits = _fake_bits(_edges(N), seed=1)
    monkeypatch.setattr(noise, "_secure_bits", bits)
    with np.errstate(all="raise"):  # no log(0), no 0 or 1 into an inverse CDF
        z = noise_source().normal(N, scale=1.0)
    lo, hi = z[0::2], z[1::2]
    assert np.all(np.isfinite(z)) and np.all(lo < OLD_NORMAL_CUTOFF) and np.all(hi > -OLD_NORMAL_CUTOFF)
    log_mass = -53 * LOG2  # the bin's mass: Φ(c) = 2⁻⁵³
    assert stats.kstest(lo, _lower_tail_cdf(log_mass)).pvalue > P_MIN
    assert stats.kstest(-hi, _lower_tail_cdf(log_mass)).pvalue > P_MIN
    # E[Z | Z < c] = −φ(c)/Φ(c); the tail's sd is ≈ 1/|c| ≈ 0.12
    mean = -math.exp(stats.norm.logpdf(OLD_NORMAL_CUTOFF) - log_mass)
    assert abs(lo.mean() - mean) < 5 * 0.13 / math.sqrt(lo.size)
    trunc = stats.truncnorm(-np.inf, OLD_NORMAL_CUTOFF)
    np.testing.assert_allclose(np.quantile(lo, [0.1, 0.5, 0.9]), trunc.ppf([0.1, 0.5, 0.9]), atol=0.01)
    assert bits.calls == [N, N]  # one vectorised tail draw, only for the edge entries


def test_normal_tail_goes_deeper_than_two_bins(monkeypatch):
    # the first tail draw is forced into its own lowest bin too: Z must lie beyond Φ⁻¹(2⁻¹⁰⁶)
    bits = _fake_bits(np.ones(N, dtype=np.uint64), seed=2, forced_levels=1)
    monkeypatch.setattr(noise, "_secure_bits", bits)
    z = noise_source().normal(N, scale=3.0) / 3.0
    log_mass = -106 * LOG2
    assert np.all(np.isfinite(z)) and np.all(log_ndtr(z) < log_mass + 1e-12)
    assert stats.kstest(z, _lower_tail_cdf(log_mass)).pvalue > P_MIN


def test_a_source_stuck_at_its_lowest_value_is_refused(monkeypatch):
    monkeypatch.setattr(noise, "_secure_bits", lambda n: np.ones(n, dtype=np.uint64))
    with pytest.raises(RuntimeError, match="lowest value"):
        noise_source().normal(3)
    with pytest.raises(RuntimeError, match="lowest value"):
        noise_source().laplace(3)


# ----------------------------------------------------------------------------- (b) the bulk


def test_bulk_is_the_old_inverse_cdf_and_the_distribution_is_unchanged(monkeypatch):
    rng = np.random.default_rng(3)
    k = rng.integers(2, K_MAX, size=N, dtype=np.uint64)  # no edge bin
    monkeypatch.setattr(noise, "_secure_bits", _fake_bits(k, seed=0))
    z = noise_source().normal(N, scale=2.0)
    np.testing.assert_array_equal(z, 2.0 * ndtri(k.astype(np.float64) / 2.0**53))
    monkeypatch.setattr(noise, "_secure_bits", _fake_bits(k, seed=0))
    x = noise_source().laplace(N, scale=0.5)
    u = k.astype(np.float64) / 2.0**53
    np.testing.assert_array_equal(x, np.where(u < 0.5, 0.5 * np.log(2 * u), -0.5 * np.log(2 * (1 - u))))
    # and the genuine OS source still gives N(0, 1) and Laplace(0, 1)
    src = noise_source()
    assert stats.kstest(src.normal(N), "norm").pvalue > 1e-6
    assert stats.kstest(src.laplace(N), "laplace").pvalue > 1e-6


def test_secure_values_pinned_to_the_old_implementation(monkeypatch):
    raw = bytes.fromhex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
                        "4bf5122f344554c53bde2ebb8cd2b7e3d1600ad631c385a5d7cce23c7785459a")
    monkeypatch.setattr(noise.os, "urandom", lambda n: raw[:n])
    assert noise_source().normal(4, scale=3.0).tolist() == [
        0.7260958832222448, -2.8384648006002338, -0.2877353939170865, -3.5897716558028017]
    monkeypatch.setattr(noise.os, "urandom", lambda n: raw[32:32 + n])
    assert noise_source().laplace(4, scale=0.25).tolist() == [
        0.19502194527002284, 0.37745167530127144, 0.0867322924862071, 0.05743085759514904]


def test_scalar_draws_keep_their_types():
    assert np.ndim(noise_source().normal()) == 0 and np.ndim(noise_source().laplace()) == 0
    assert isinstance(noise_source(1).normal(), float) and isinstance(noise_source(1).laplace(), float)


# ----------------------------------------------------------------------------- (c) seeded streams


def test_seeded_streams_pinned_to_the_old_implementation():
    # values of the previous implementation (numpy Generator(PCG64(SeedSequence([seed, stream]))))
    assert noise_source(42, 0).normal(4, scale=2.0).tolist() == [
        0.6094341595088627, -2.079968212480991, 1.5009023916129145, 1.8811294327824277]
    assert noise_source(42, 1).laplace(4, scale=0.5).tolist() == [
        0.4421603500560116, -0.35472231810060423, -0.10606924742311051, 0.15428969584578855]
    ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, 3])))
    src = noise_source(7, 3)
    for _ in range(3):
        np.testing.assert_array_equal(src.laplace((50, 4), scale=20.0), ref.laplace(0.0, 20.0, (50, 4)))
        np.testing.assert_array_equal(src.normal(100, scale=40.0), ref.normal(0.0, 40.0, 100))
        np.testing.assert_array_equal(src.uniform(10), ref.integers(1, 2**53, 10, dtype=np.uint64) / 2.0**53)


class _EdgeInjector:
    """Wraps a seeded generator: its Laplace draws get numpy's two outermost-bin values (U = 2⁻⁵³
    and U = 1 − 2⁻⁵³ give ∓52·log 2·b) at the positions given, as a one-in-2⁵³ draw would."""

    def __init__(self, rng, positions):
        self.rng, self.positions = rng, positions

    def laplace(self, loc, scale, size=None):
        x = self.rng.laplace(loc, scale, size)
        x.flat[self.positions[0::2]] = scale * math.log(2.0 * 2.0**-53)
        x.flat[self.positions[1::2]] = -scale * math.log(2.0 - 2.0 * (1.0 - 2.0**-53))
        return x


def test_seeded_laplace_edge_is_redrawn_and_the_stream_is_not_shifted():
    src = noise_source(5, 0)
    ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence([5, 0])))
    src._rng = _EdgeInjector(src._rng, np.array([3, 8]))
    x = src.laplace(10, scale=2.0)
    expect = ref.laplace(0.0, 2.0, 10)
    keep = np.setdiff1d(np.arange(10), [3, 8])
    np.testing.assert_array_equal(x[keep], expect[keep])
    assert x[3] < -2.0 * OLD_LAPLACE_CUTOFF and x[8] > 2.0 * OLD_LAPLACE_CUTOFF
    src._rng = src._rng.rng  # the tail uniforms came from elsewhere: the main stream goes on as before
    np.testing.assert_array_equal(src.laplace(10, scale=2.0), ref.laplace(0.0, 2.0, 10))
    # and the redraw is itself reproducible from the seed
    again = noise_source(5, 0)
    again._rng = _EdgeInjector(again._rng, np.array([3, 8]))
    np.testing.assert_array_equal(again.laplace(10, scale=2.0), x)


# ----------------------------------------------------------------------------- (d) Laplace tails


def test_secure_laplace_outermost_bins_draw_cutoff_plus_exponential(monkeypatch):
    monkeypatch.setattr(noise, "_secure_bits", _fake_bits(_edges(N), seed=4))
    b = 0.7
    with np.errstate(all="raise"):
        x = noise_source().laplace(N, scale=b)
    lo, hi = x[0::2], x[1::2]
    assert np.all(lo < -b * OLD_LAPLACE_CUTOFF) and np.all(hi > b * OLD_LAPLACE_CUTOFF)
    assert stats.kstest(-lo / b - OLD_LAPLACE_CUTOFF, "expon").pvalue > P_MIN
    assert stats.kstest(hi / b - OLD_LAPLACE_CUTOFF, "expon").pvalue > P_MIN


def test_secure_laplace_tail_goes_deeper_than_two_bins(monkeypatch):
    monkeypatch.setattr(noise, "_secure_bits", _fake_bits(np.full(N, K_MAX, dtype=np.uint64), seed=5,
                                                          forced_levels=1))
    x = noise_source().laplace(N)
    assert stats.kstest(x - (52 + 53) * LOG2, "expon").pvalue > P_MIN


def test_seeded_laplace_outermost_bins_draw_cutoff_plus_exponential():
    src = noise_source(9, 2)
    src._rng = _EdgeInjector(src._rng, np.arange(N))
    x = src.laplace(N, scale=20.0) / 20.0
    lo, hi = x[0::2], x[1::2]
    assert np.all(lo < -OLD_LAPLACE_CUTOFF) and np.all(hi > OLD_LAPLACE_CUTOFF)
    assert stats.kstest(-lo - OLD_LAPLACE_CUTOFF, "expon").pvalue > P_MIN
    assert stats.kstest(hi - OLD_LAPLACE_CUTOFF, "expon").pvalue > P_MIN


def test_seeded_laplace_bulk_never_reaches_the_edge_threshold():
    # numpy's next-to-outermost bins are at ±51·log 2·b, below the 51.5·log 2·b detection line
    assert -math.log(2.0 * 2 * 2.0**-53) == pytest.approx(51 * LOG2)
    assert 51 * LOG2 < noise._NUMPY_LAPLACE_EDGE < OLD_LAPLACE_CUTOFF
    x = noise_source(0).laplace(10**6, scale=1e-3)
    assert np.max(np.abs(x)) < 1e-3 * 51 * LOG2


# ----------------------------------------------------------------------------- the integer samplers


def _chi_square_against_pmf(draws, log_kernel, inner):
    """Chi-square of ``draws`` against the pmf ∝ exp(log_kernel(z)) summed from its definition: one bin
    per integer |z| ≤ inner, and one for each tail beyond (the tails tested as bins of their own)."""
    z = np.arange(-20 * inner - 50, 20 * inner + 51)
    p = np.exp(log_kernel(z.astype(float)))
    p /= p.sum()
    inside = np.abs(z) <= inner
    expected = np.concatenate([[p[z < -inner].sum()], p[inside], [p[z > inner].sum()]]) * len(draws)
    observed = np.concatenate([[np.sum(draws < -inner)], [np.sum(draws == k) for k in z[inside]],
                               [np.sum(draws > inner)]])
    return stats.chisquare(observed, expected).pvalue


@pytest.mark.parametrize("seed", [None, 3])
@pytest.mark.parametrize("sigma", [0.7, 3.0])
def test_discrete_gaussian_matches_its_pmf_and_tails(seed, sigma):
    draws = noise_source(seed).discrete_gaussian(20_000, sigma)
    assert draws.dtype == np.int64
    assert _chi_square_against_pmf(draws, lambda z: -z * z / (2 * sigma * sigma), int(2 * sigma) + 1) > 1e-4


@pytest.mark.parametrize("seed", [None, 3])
@pytest.mark.parametrize("gamma", [0.4, 1.5])
def test_discrete_laplace_matches_its_pmf_and_tails(seed, gamma):
    draws = noise_source(seed).discrete_laplace(20_000, gamma)
    assert draws.dtype == np.int64
    assert _chi_square_against_pmf(draws, lambda z: -gamma * np.abs(z), int(2 / gamma) + 1) > 1e-4


def test_the_integer_samplers_reproduce_with_a_seed_and_differ_without():
    assert noise_source(9, 2).discrete_gaussian(50, 4.0).tolist() == noise_source(9, 2).discrete_gaussian(50, 4.0).tolist()
    assert noise_source(9, 2).discrete_gaussian(50, 4.0).tolist() != noise_source(9, 3).discrete_gaussian(50, 4.0).tolist()
    assert noise_source().discrete_laplace(50, 0.2).tolist() != noise_source().discrete_laplace(50, 0.2).tolist()
