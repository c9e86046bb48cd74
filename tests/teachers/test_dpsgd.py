"""The DP-SGD teacher (pate.teachers.dpsgd): its accounting against independent computations (the
Gaussian mechanism's exact (ε, δ) curve and closed-form RDP conversions; the subsampled Gaussian's
Rényi divergence by numerical integration), the calibration's grid, monotonicity and refusals, and
training on a tiny planted-signal set. The training tests are skipped without opacus (the
``dpsgd`` extra)."""
from __future__ import annotations

import importlib.util
import math
import sys

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import integrate, optimize, stats

from pate.privacy.rdp import DEFAULT_ORDERS
from pate.teachers import dpsgd

DELTA = 1e-5
needs_opacus = pytest.mark.skipif(importlib.util.find_spec("opacus") is None,
                                  reason='opacus missing: pip install -e ".[dpsgd]"')


# ----------------------------------------------------------------------------- accounting


def _exact_gaussian_epsilon(sigma: float, delta: float) -> float:
    """The Gaussian mechanism's optimal ε at δ (sensitivity 1; Balle & Wang 2018, Thm 8):
    δ(ε) = Φ(1/(2σ) − εσ) − e^ε Φ(−1/(2σ) − εσ)."""
    def gap(eps):
        return (stats.norm.cdf(0.5 / sigma - eps * sigma)
                - math.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma) - delta)
    return optimize.brentq(gap, 0.0, 100.0, xtol=1e-14)


@pytest.mark.parametrize("sigma", [0.8, 2.0, 5.0, 20.0])
def test_gaussian_epsilon_between_exact_and_classic(sigma):
    """RDP of the Gaussian is α/(2σ²) (Mironov 2017, Prop. 7): the classic conversion
    min_α [α/(2σ²) + log(1/δ)/(α − 1)] (over every real α > 1, closed form at α = 1 + σ√(2 log 1/δ))
    is never below the accountant's tighter one, which is never below the exact optimum."""
    eps = dpsgd.epsilon([dp_accounting.GaussianDpEvent(sigma)], DELTA)
    classic = 1 / (2 * sigma ** 2) + math.sqrt(2 * math.log(1 / DELTA)) / sigma
    assert _exact_gaussian_epsilon(sigma, DELTA) <= eps <= classic
    assert classic <= 1.6 * eps  # the improved conversion gains a few tenths of a nat, not more
    # and it is Canonne, Kamath & Steinke's conversion (2020, Prop. 12) on pate's orders, exactly
    a = DEFAULT_ORDERS
    improved = np.min(a / (2 * sigma ** 2) + np.log1p(-1 / a) - np.log(DELTA * a) / (a - 1))
    assert eps == pytest.approx(max(improved, 0.0), rel=1e-10)


@pytest.mark.parametrize("sigma", [0.7, 3.0])
def test_subsampled_gaussian_at_rate_one_is_the_gaussian(sigma):
    plain = dpsgd.epsilon([dp_accounting.GaussianDpEvent(sigma)], DELTA)
    assert dpsgd.epsilon([dpsgd.dp_event(sigma, 1.0, 1)], DELTA) == pytest.approx(plain, rel=1e-12)
    assert dpsgd.epsilon(dpsgd.dp_event(sigma, 1.0, 1), DELTA) == pytest.approx(plain, rel=1e-12)  # one event


def _renyi_divergence(q: float, sigma: float, order: int, power: int) -> float:
    """(1/(α−1)) log E_{x~N(0,σ²)}[(μ1(x)/μ0(x))^power] by quadrature, μ0 = N(0, σ²) and
    μ1 = (1 − q)N(0, σ²) + qN(1, σ²): power α is D_α(μ1‖μ0), power 1 − α is D_α(μ0‖μ1)."""
    def integrand(x):
        log_ratio = np.logaddexp(np.log1p(-q), np.log(q) + (2 * x - 1) / (2 * sigma ** 2))
        return np.exp(-x * x / (2 * sigma ** 2) - 0.5 * np.log(2 * np.pi * sigma ** 2) + power * log_ratio)
    lo, hi = min(0.0, power) - 40 * sigma, max(1.0, power) + 40 * sigma
    value, _ = integrate.quad(integrand, lo, hi, points=[0.0, 0.5, 1.0, float(power)], epsabs=0, epsrel=1e-12,
                              limit=500)
    return math.log(value) / (order - 1)


@pytest.mark.filterwarnings("ignore::pate.privacy.rdp.OrderAtEdgeWarning")  # orders 2..8 only: the optimum is 8
@pytest.mark.parametrize("q,sigma", [(0.01, 1.0), (0.05, 2.0), (0.02, 0.8), (0.001, 0.5)])
def test_poisson_subsampled_gaussian_rdp_by_integration(q, sigma):
    """Mironov, Talwar & Zhang 2019: the sampled Gaussian's RDP under add/remove is the larger of
    the two divergences between N(0, σ²) and the mixture; dp_accounting's at orders 2..8 agrees with
    quadrature, and so does ``epsilon`` of T steps with the conversion applied to T times that curve."""
    orders = list(range(2, 9))
    brute = np.array([max(_renyi_divergence(q, sigma, a, a), _renyi_divergence(q, sigma, a, 1 - a)) for a in orders])
    accountant = rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian(q, sigma, orders)
    np.testing.assert_allclose(accountant, brute, rtol=1e-3)

    steps = 50
    a = np.array(orders, dtype=float)
    terms = steps * brute + np.log1p(-1 / a) - np.log(DELTA * a) / (a - 1)
    assert dpsgd.epsilon([dpsgd.dp_event(sigma, q, steps)], DELTA, orders=orders) == pytest.approx(
        max(terms.min(), 0.0), rel=1e-3)


def test_events_compose():
    """ε of DP-SGD beside a Gaussian is the one composition, not a sum of ε's."""
    sgd, votes = dpsgd.dp_event(1.2, 0.01, 1000), dp_accounting.GaussianDpEvent(8.0)
    both = dpsgd.epsilon([sgd, votes], DELTA)
    assert max(dpsgd.epsilon([sgd], DELTA), dpsgd.epsilon([votes], DELTA)) < both
    assert both < dpsgd.epsilon([sgd], DELTA) + dpsgd.epsilon([votes], DELTA)
    assert dpsgd.epsilon([], DELTA) == 0.0


def test_schedule_and_event_checks():
    assert dpsgd.schedule(60000, 4096, 40) == (1 / 15, 600)  # Opacus's Poisson loader: q = 1/ceil(N/B)
    assert dpsgd.schedule(60000, 6000, 2) == (0.1, 20)      # B/N exactly when B divides N
    with pytest.raises(ValueError, match="sample_rate"):
        dpsgd.dp_event(1.0, 1.5, 10)
    with pytest.raises(ValueError, match="noise_multiplier"):
        dpsgd.dp_event(0.0, 0.1, 10)
    with pytest.raises(ValueError, match="delta"):
        dpsgd.epsilon([dpsgd.dp_event(1.0, 0.1, 10)], 0.0)


# ----------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def calibrated():
    q, steps = dpsgd.schedule(60000, 4096, 40)
    return q, steps, dpsgd.calibrate_noise(1.0, DELTA, q, steps)


def test_calibrate_noise_meets_the_target_on_a_public_grid(calibrated):
    q, steps, sigma = calibrated
    assert float(f"{sigma:.4g}") == sigma  # four significant digits
    assert dpsgd.epsilon([dpsgd.dp_event(sigma, q, steps)], DELTA) <= 1.0
    assert dpsgd.epsilon([dpsgd.dp_event(0.99 * sigma, q, steps)], DELTA) > 1.0
    below = sigma - 10.0 ** (math.floor(math.log10(sigma)) - 3)  # the grid's previous number
    assert dpsgd.epsilon([dpsgd.dp_event(below, q, steps)], DELTA) > 1.0  # the smallest on the grid


def test_calibrate_noise_with_an_event_beside(calibrated):
    q, steps, alone = calibrated
    votes = dp_accounting.GaussianDpEvent(20.9 / math.sqrt(20))  # e.g. reverse-kNN votes, k = 20
    sigma = dpsgd.calibrate_noise(1.0, DELTA, q, steps, beside=[votes])
    assert sigma > alone
    assert dpsgd.epsilon([dpsgd.dp_event(sigma, q, steps), votes], DELTA) <= 1.0
    assert dpsgd.epsilon([dpsgd.dp_event(0.99 * sigma, q, steps), votes], DELTA) > 1.0


def test_calibrate_noise_refuses_the_impossible():
    with pytest.raises(ValueError, match="already spend"):
        dpsgd.calibrate_noise(0.5, DELTA, 0.01, 100, beside=[dp_accounting.GaussianDpEvent(1.0)])
    with pytest.raises(ValueError, match="out of reach"):
        dpsgd.calibrate_noise(1e-6, DELTA, 1.0, 10)
    with pytest.raises(ValueError, match="target_epsilon"):
        dpsgd.calibrate_noise(0.0, DELTA, 0.01, 100)


def test_calibrate_noise_by_a_tighter_accountant_is_not_refused_by_rdp():
    """Votes as a Gaussian of noise 5 spend ε 0.794 alone by RDP but 0.726 by their privacy-loss
    distribution: with ``epsilon_of`` the PLD composition (dp_accounting's PLDAccountant, not pate's
    code), a target of 0.75 is met by some σ (the least on the grid), where the RDP check alone
    refused it; 0.72, below what the votes spend by any accountant, is still refused."""
    from dp_accounting.pld import pld_privacy_accountant

    votes, q, steps = dp_accounting.GaussianDpEvent(5.0), 0.01, 100

    def pld(sigma):
        accountant = pld_privacy_accountant.PLDAccountant()
        accountant.compose(votes)
        accountant.compose(dpsgd.dp_event(sigma, q, steps))
        return accountant.get_epsilon(DELTA)

    with pytest.raises(ValueError, match="already spend"):
        dpsgd.calibrate_noise(0.75, DELTA, q, steps, beside=[votes])
    sigma = dpsgd.calibrate_noise(0.75, DELTA, q, steps, beside=[votes], epsilon_of=pld)
    assert pld(sigma) <= 0.75 < pld(sigma * (1 - 10 ** -dpsgd.SIGNIFICANT_DIGITS))
    with pytest.raises(ValueError, match="out of reach"):
        dpsgd.calibrate_noise(0.72, DELTA, q, steps, beside=[votes], epsilon_of=pld)


# ----------------------------------------------------------------------------- training


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster, and does not crawl when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _planted(n: int = 400, classes: int = 4, seed: int = 0):
    """Random (81, 7, 7) features; class c raises channel 3c and lowers 3c + 1 (a contrast inside
    one GroupNorm group, which the per-example normalisation keeps)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 81, 7, 7, generator=g)
    for c in range(classes):
        x[y == c, 3 * c] += 1.5
        x[y == c, 3 * c + 1] -= 1.5
    return x, y


@needs_opacus
def test_train_learns_a_planted_signal_reproducibly(one_thread):
    x, y = _planted()
    settings = dict(noise_multiplier=0.5, batch_size=50, epochs=8, lr=0.5, seed=3)
    torch.manual_seed(0)
    model = dpsgd.train(x[:300], y[:300], 4, **settings)
    torch.manual_seed(1)  # the global generator plays no part
    again = dpsgd.train(x[:300], y[:300], 4, **settings)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    proba = dpsgd.predict_proba(model, x[300:])
    assert proba.shape == (100, 4) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert (proba.argmax(axis=1) == y[300:].numpy()).mean() >= 0.8  # chance is 0.25
    other = dpsgd.train(x[:300], y[:300], 4, **{**settings, "seed": None})  # fresh OS randomness
    assert not torch.equal(other[-1].weight, model[-1].weight)


@needs_opacus
def test_fit_samples_at_the_accounted_rate(one_thread):
    x, y = _planted(n=230)
    model = dpsgd.linear_model(num_classes=4, generator=torch.Generator().manual_seed(0))
    calls = []
    trained, info = dpsgd.fit(model[1:], dpsgd.normalise(x), y, noise_multiplier=1.0, batch_size=64, epochs=2,
                              lr=0.5, generator=torch.Generator().manual_seed(1), progress=lambda *a: calls.append(a))
    assert [c[:4] for c in calls] == [(e, 2, s, 4) for e in (1, 2) for s in (1, 2, 3, 4)]
    assert (info["sample_rate"], info["steps"]) == dpsgd.schedule(230, 64, 2) == (0.25, 8)
    assert info["noise_multiplier"] == 1.0
    assert type(trained) is torch.nn.Sequential and trained[-1] is model[-1]  # Opacus's wrapper removed


@needs_opacus
def test_fit_returns_the_moving_average_of_its_iterates(one_thread):
    """The iterates are the same with or without averaging (same draws); the model returned with
    ``average`` is their EMA, recomputed here by hand from the iterates the last-iterate run went
    through, with the warm-up min(d, (1+t)/(10+t))."""
    x, y = _planted(n=230)
    features = dpsgd.normalise(x)

    def run(average, record=None):
        model = dpsgd.linear_model(num_classes=4, generator=torch.Generator().manual_seed(0))[1:]
        start = [p.detach().clone() for p in model.parameters()]
        progress = (lambda *a: record.append([p.detach().clone() for p in model.parameters()])) if record is not None else None
        trained, _ = dpsgd.fit(model, features, y, noise_multiplier=1.0, batch_size=64, epochs=3, lr=0.5,
                               generator=torch.Generator().manual_seed(1), average=average, progress=progress)
        return start, [p.detach() for p in trained.parameters()]

    iterates = []
    start, last = run(0.0, iterates)
    assert len(iterates) == 12 and all(torch.equal(a, b) for a, b in zip(last, iterates[-1]))
    _, averaged = run(0.6)
    expected = [s.double() for s in start]
    for t, params in enumerate(iterates):
        weight = 1.0 - min(0.6, (1.0 + t) / (10.0 + t))
        expected = [e + weight * (p.double() - e) for e, p in zip(expected, params)]
    for got, want, final in zip(averaged, expected, last):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got, final)  # the average is not the last iterate
    with pytest.raises(ValueError, match="average"):
        run(1.0)


def test_public_projection_whitens_the_public_features_and_folds_into_one_linear_layer():
    """The projection's output on the public features it was built from has mean 0 and identity
    covariance (checked with numpy's covariance, not the SVD it was built with); folding it into a
    head gives the same logits as the two layers one after the other."""
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(20, 20, generator=g)
    public = (torch.randn(500, 20, generator=g) * torch.linspace(0.1, 5, 20)) @ mixing + 3.0
    projection = dpsgd.public_projection(public, 6)
    with torch.no_grad():
        z = projection(public).double().numpy()
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(6), atol=1e-4)
    direction = np.linalg.eigh(np.cov(public.double().numpy(), rowvar=False))[1][:, -1]  # the widest axis
    weight = projection.weight.double().numpy()
    assert abs(weight[0] @ direction) / np.linalg.norm(weight[0]) == pytest.approx(1.0, abs=1e-5)
    head = torch.nn.Linear(6, 3)
    layer = dpsgd.folded(projection, head)
    x = torch.randn(7, 20, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), head(projection(x)), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="dim"):
        dpsgd.public_projection(public, 21)
    with pytest.raises(ValueError, match="dim"):
        dpsgd.public_projection(public[:5], 5)  # 5 centred images span 4 axes
    flipped = dpsgd.public_projection(public[torch.randperm(500, generator=g)], 6)  # the same pool, reordered
    torch.testing.assert_close(flipped.weight, projection.weight, atol=1e-4, rtol=1e-3)  # signs fixed, not LAPACK's
    assert (projection.weight.gather(1, projection.weight.abs().argmax(1, keepdim=True)) > 0).all()


@needs_opacus
def test_train_on_public_axes_returns_the_same_scatternet_and_linear(one_thread):
    x, y = _planted(n=500)
    settings = dict(noise_multiplier=0.5, batch_size=50, epochs=8, lr=0.5, seed=3)
    model = dpsgd.train(x[:300], y[:300], 4, public=x[300:], dim=32, **settings)
    shape = dpsgd.linear_model(num_classes=4)
    assert [type(m) for m in model] == [type(m) for m in shape]
    assert model[-1].weight.shape == shape[-1].weight.shape  # the projection folded in: (4, 81·7·7)
    again = dpsgd.train(x[:300], y[:300], 4, public=x[300:], dim=32, **settings)
    assert torch.equal(model[-1].weight, again[-1].weight)
    assert (dpsgd.predict_proba(model, x[300:]).argmax(axis=1) == y[300:].numpy()).mean() >= 0.8
    with pytest.raises(ValueError, match="public"):
        dpsgd.train(x[:300], y[:300], 4, dim=32, **settings)
    with pytest.raises(ValueError, match="shaped"):
        dpsgd.train(x[:300], y[:300], 4, public=x[300:, :54], dim=32, **settings)


def test_the_configs_scattering_channel_count_is_the_transforms():
    from pate.config.pipeline import SCATTERING_CHANNELS
    from pate.nets import wavelets
    assert wavelets.num_channels(1, dpsgd.J, dpsgd.L) == SCATTERING_CHANNELS
    assert dpsgd.scattering_features(np.zeros((1, 1, 28, 28), np.uint8)).shape == (1, SCATTERING_CHANNELS, 7, 7)


def test_train_refuses_bad_inputs():
    x, y = _planted(n=20)
    with pytest.raises(ValueError, match="multiple of 27"):
        dpsgd.train(x[:, :80], y, 4, noise_multiplier=1.0, batch_size=5, epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="labels"):
        dpsgd.train(x, y + 4, 4, noise_multiplier=1.0, batch_size=5, epochs=1, lr=0.1)


def test_train_without_opacus_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # import opacus now raises ImportError
    x, y = _planted(n=20)
    with pytest.raises(ImportError, match=r"\.\[dpsgd\]"):
        dpsgd.train(x, y, 4, noise_multiplier=1.0, batch_size=5, epochs=1, lr=0.1)
