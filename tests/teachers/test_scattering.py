"""The scattering transform, checked against properties derived independently of its FFT code:
filter moments, a brute-force spatial convolution, rotation covariance and frequency selectivity."""
import math

import numpy as np
import pytest
import torch

from pate.teachers import scattering


def test_filter_moments():
    bank = scattering.filter_bank(36, 36, J=2, L=8)
    # Low-pass: a normalised Gaussian (integral 1, so its DC gain is 1); wavelets: no DC response.
    assert bank["phi"][0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert bank["psi"][:, :, 0, 0].abs().max().item() < 1e-9
    assert bank["psi"].shape == (2, 8, 36, 36)


@pytest.mark.parametrize("j,l", [(0, 0), (0, 3), (1, 6)])
def test_wavelet_peaks_at_its_frequency_and_orientation(j, l):
    n, L = 64, 8
    psi_hat = scattering.filter_bank(n, n, J=2, L=L)["psi"][j, l].abs()
    peak = np.unravel_index(int(psi_hat.argmax()), psi_hat.shape)
    freq = np.fft.fftfreq(n) * 2 * math.pi  # radians per pixel, FFT order
    fy, fx = freq[peak[0]], freq[peak[1]]
    xi, theta = 0.75 * math.pi / 2 ** j, math.pi * l / L
    assert math.hypot(fx, fy) == pytest.approx(xi, abs=2 * math.pi / n * 1.5)
    # Orientation: the peak lies along theta (the filter is analytic-like: one lobe, not two).
    assert math.cos(math.atan2(fy, fx) - theta) > 0.95


def _circular_conv(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Brute-force periodic convolution in space: out[y, x] = sum_{u,v} image[y-u, x-v] kernel[u, v]."""
    out = np.zeros(image.shape, dtype=complex)
    m, n = image.shape
    for u in range(m):
        for v in range(n):
            if abs(kernel[u, v]) > 1e-12:
                out += kernel[u, v] * np.roll(np.roll(image, u, 0), v, 1)
    return out


def test_coefficients_match_spatial_convolution():
    rng = np.random.default_rng(0)
    h = 8  # J=1: padding 2 each side, padded 12x12
    img = rng.normal(size=(h, h))
    out = scattering.scatter(torch.tensor(img).view(1, 1, h, h), J=1, L=4)
    assert out.shape == (1, 1 + 4, 4, 4)
    pad = 2
    x = np.pad(img, pad, mode="reflect")
    m = x.shape[0]
    phi = scattering._gabor(m, m, 0.8 * 2, 0.0, 0.0, 1.0).numpy().real
    def low(u):
        return _circular_conv(u, phi).real[pad:pad + h:2, pad:pad + h:2]
    np.testing.assert_allclose(out[0, 0].numpy(), low(x), atol=1e-4)
    for l in range(4):
        psi = scattering._morlet(m, m, 0.8, math.pi * l / 4, 0.75 * math.pi, 1.0).numpy()
        np.testing.assert_allclose(out[0, 1 + l].numpy(), low(np.abs(_circular_conv(x, psi))), atol=1e-4)


def test_transposing_the_image_reflects_the_orientations():
    """Transposing (reflection about the diagonal) maps orientation theta to pi/2 - theta: index l
    to (L/2 - l) mod L (theta and theta + pi give the same modulus on real images), and transposes
    every coefficient map (the 2^J sampling grid is the same on both axes)."""
    J, L = 2, 8
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(2, 1, 28, 28)), dtype=torch.float32)
    s = scattering.scatter(x, J=J, L=L).transpose(2, 3)
    r = scattering.scatter(x.transpose(2, 3), J=J, L=L)
    assert s.shape == (2, scattering.num_channels(1, J, L), 7, 7)
    mirror = [(L // 2 - l) % L for l in range(L)]
    torch.testing.assert_close(r[:, 0], s[:, 0], atol=1e-4, rtol=1e-4)
    first_s = s[:, 1:1 + J * L].reshape(2, J, L, 7, 7)[:, :, mirror]
    torch.testing.assert_close(r[:, 1:1 + J * L].reshape(2, J, L, 7, 7), first_s, atol=1e-4, rtol=1e-3)
    second_s = s[:, 1 + J * L:].reshape(2, L, L, 7, 7)[:, mirror][:, :, mirror]
    torch.testing.assert_close(r[:, 1 + J * L:].reshape(2, L, L, 7, 7), second_s, atol=1e-4, rtol=1e-3)
    # And the orientations do matter: without the reflection the maps differ.
    assert not torch.allclose(r[:, 1:1 + J * L], s[:, 1:1 + J * L], atol=1e-2)


def test_a_grating_excites_the_matching_wavelet_most():
    n, L = 28, 8
    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    theta, xi = math.pi * 2 / L, 0.75 * math.pi
    grating = np.cos(xi * (math.cos(theta) * xx + math.sin(theta) * yy))
    s = scattering.scatter(torch.tensor(grating, dtype=torch.float32).view(1, 1, n, n), J=2, L=L)
    first = s[0, 1:1 + 2 * L].reshape(2, L, 7, 7)[:, :, 2:5, 2:5].mean((-1, -2))  # interior energy
    assert int(first[0].argmax()) == 2 and first[0].max() > 2 * first[1].max()


def test_batches_are_independent_and_sizes_checked():
    x = torch.randn(5, 3, 16, 16)
    whole = scattering.scatter(x, J=2, L=4, batch_size=5)
    assert whole.shape == (5, scattering.num_channels(3, 2, 4), 4, 4)
    torch.testing.assert_close(scattering.scatter(x, J=2, L=4, batch_size=2), whole)
    torch.testing.assert_close(scattering.scatter(x[3:4], J=2, L=4), whole[3:4])
    with pytest.raises(ValueError, match="multiple"):
        scattering.scatter(torch.randn(1, 1, 30, 30), J=2)
