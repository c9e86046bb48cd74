"""The scattering transform: equal to Kymatio's (when it is installed), and checked without it
against properties derived independently of its FFT code: filter moments, a brute-force spatial
re-computation of every order, rotation covariance and frequency selectivity."""
import math

import numpy as np
import pytest
import torch

from pate.nets import wavelets as scattering


def _images(n, c, h, w, seed=0):
    """Random images with some structure (a bright square and a gradient), like normalised digits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g) * 0.5
    x[..., h // 4:h // 2, w // 3:2 * w // 3] += 2.0
    return x + torch.linspace(-1, 1, w)


@pytest.mark.parametrize("J,L,shape,c", [(2, 8, (28, 28), 1), (2, 8, (28, 28), 3), (3, 8, (32, 32), 1),
                                         (2, 6, (16, 24), 2)])
def test_equals_kymatio(J, L, shape, c):
    frontend = pytest.importorskip("kymatio.scattering2d.frontend.torch_frontend")
    x = _images(5, c, *shape)
    ref = frontend.ScatteringTorch2D(J=J, shape=shape, L=L, max_order=2)(x)  # (N, C, K, h, w)
    ours = scattering.scatter(x, J=J, L=L, batch_size=2)
    assert ours.shape == (5, scattering.num_channels(c, J, L), shape[0] // 2 ** J, shape[1] // 2 ** J)
    torch.testing.assert_close(ours, ref.reshape(ours.shape), rtol=1e-4, atol=1e-5)


def test_filter_moments():
    bank = scattering.filter_bank(36, 36, J=2, L=8)
    # Low-pass: a normalised Gaussian, whose DC gain is 1 but for Kymatio's 3.1415 in place of pi.
    assert bank["phi"][0][0, 0].item() == pytest.approx(math.pi / 3.1415, rel=1e-6)
    assert bank["phi"][1].shape == (18, 18) and bank["phi"][1][0, 0] == bank["phi"][0][0, 0]
    # Wavelets: no DC response, at every resolution.
    for j, levels in enumerate(bank["psi"]):
        assert len(levels) == max(j, 1)
        for r, psi in enumerate(levels):
            assert psi.shape == (8, 36 >> r, 36 >> r)
            assert psi[:, 0, 0].abs().max().item() < 1e-6 * psi.abs().max().item()


@pytest.mark.parametrize("j,l", [(0, 0), (0, 3), (1, 6)])
def test_wavelet_peaks_at_its_frequency_and_orientation(j, l):
    n, L = 64, 8
    psi_hat = scattering.filter_bank(n, n, J=2, L=L)["psi"][j][0][l]
    peak = np.unravel_index(int(psi_hat.argmax()), psi_hat.shape)
    freq = np.fft.fftfreq(n) * 2 * math.pi  # radians per pixel, FFT order
    f_row, f_col = freq[peak[0]], freq[peak[1]]
    xi, theta = 0.75 * math.pi / 2 ** j, scattering.orientation(l, L)
    assert math.hypot(f_row, f_col) == pytest.approx(xi, abs=2 * math.pi / n * 1.5)
    # Orientation: the peak lies along theta, measured from the row axis (one lobe, not two).
    assert math.cos(math.atan2(f_col, f_row) - theta) > 0.95


def _circular_conv(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Brute-force periodic convolution in space: out[y, x] = sum_{u,v} image[y-u, x-v] kernel[u, v]."""
    out = np.zeros(image.shape, dtype=complex)
    for u in range(image.shape[0]):
        for v in range(image.shape[1]):
            out += kernel[u, v] * np.roll(np.roll(image, u, 0), v, 1)
    return out


def test_every_order_matches_a_spatial_computation():
    """Kymatio's algorithm written out in space, from the filters alone: convolve on the padded grid
    (the filters' spatial form is the inverse DFT of their spectra at that resolution), take the
    modulus, keep every 2^j-th sample, and at the end every 2^J-th sample less a one-sample margin.
    The FFT code instead subsamples by periodising spectra; the two must agree."""
    J, L, h = 2, 4, 8
    img = _images(1, 1, h, h, seed=3)[0, 0].double().numpy()
    out = scattering.scatter(torch.tensor(img).view(1, 1, h, h), J=J, L=L)
    assert out.shape == (1, 1 + J * L + L * L, 2, 2)
    m = scattering.padded_size(h, J)
    pad = (m - h) // 2
    x = np.pad(img, pad, mode="reflect")
    bank = scattering.filter_bank(m, m, J, L)

    def spatial(spectrum):
        return np.fft.ifft2(spectrum.double().numpy())

    def average(u, r):  # u at resolution r -> u * phi sampled to 2^J, margin removed
        step = 2 ** (J - r)
        return _circular_conv(u, spatial(bank["phi"][r])).real[::step, ::step][1:-1, 1:-1]

    def wavelet_modulus(u, j, l, r):  # u at resolution r -> |u * psi_j| at resolution j
        step = 2 ** (j - r)
        return np.abs(_circular_conv(u, spatial(bank["psi"][j][r][l])))[::step, ::step]

    expected = [average(x, 0)]
    first = [[wavelet_modulus(x, j1, l1, 0) for l1 in range(L)] for j1 in range(J)]
    expected += [average(first[j1][l1], j1) for j1 in range(J) for l1 in range(L)]
    expected += [average(wavelet_modulus(first[0][l1], 1, l2, 0), 1) for l1 in range(L) for l2 in range(L)]
    np.testing.assert_allclose(out[0].numpy(), np.stack(expected), atol=2e-6, rtol=1e-4)


def test_transposing_the_image_reflects_the_orientations():
    """Transposing (reflection about the diagonal) maps the angle theta from the row axis to
    pi/2 - theta: index l to (L/2 - 2 - l) mod L with Kymatio's angles (L/2 - 1 - l)·pi/L (theta and
    theta + pi give the same modulus on real images), and transposes every coefficient map (the
    padding, the grids and the filters' periods are the same on both axes)."""
    J, L = 2, 8
    x = _images(2, 1, 28, 28, seed=1)
    s = scattering.scatter(x, J=J, L=L).transpose(2, 3)
    r = scattering.scatter(x.transpose(2, 3).contiguous(), J=J, L=L)
    mirror = [(L // 2 - 2 - l) % L for l in range(L)]
    torch.testing.assert_close(r[:, 0], s[:, 0], atol=1e-5, rtol=1e-4)
    first_s = s[:, 1:1 + J * L].reshape(2, J, L, 7, 7)[:, :, mirror]
    torch.testing.assert_close(r[:, 1:1 + J * L].reshape(2, J, L, 7, 7), first_s, atol=1e-5, rtol=1e-4)
    second_s = s[:, 1 + J * L:].reshape(2, L, L, 7, 7)[:, mirror][:, :, mirror]
    torch.testing.assert_close(r[:, 1 + J * L:].reshape(2, L, L, 7, 7), second_s, atol=1e-5, rtol=1e-4)
    # And the orientations do matter: without the reflection the maps differ.
    assert not torch.allclose(r[:, 1:1 + J * L], s[:, 1:1 + J * L], atol=1e-2)


def test_a_grating_excites_the_matching_wavelet_most():
    n, L, l = 28, 8, 2
    rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    theta, xi = scattering.orientation(l, L), 0.75 * math.pi
    grating = np.cos(xi * (math.cos(theta) * rows + math.sin(theta) * cols))
    s = scattering.scatter(torch.tensor(grating, dtype=torch.float32).view(1, 1, n, n), J=2, L=L)
    first = s[0, 1:1 + 2 * L].reshape(2, L, 7, 7)[:, :, 2:5, 2:5].mean((-1, -2))  # interior energy
    assert int(first[0].argmax()) == l and first[0].max() > 2 * first[1].max()


def test_order_zero_is_the_local_average_and_constants_have_no_detail():
    """A constant image c: order 0 is c times the low-pass DC gain everywhere, and every wavelet
    coefficient vanishes (Morlet wavelets have zero mean, and reflect padding keeps it constant)."""
    s = scattering.scatter(torch.full((1, 1, 28, 28), 3.0), J=2, L=8)
    torch.testing.assert_close(s[0, 0], torch.full((7, 7), 3.0 * math.pi / 3.1415), atol=1e-5, rtol=1e-6)
    assert s[0, 1:].abs().max() < 1e-5


def test_channels_and_batches_are_independent_and_sizes_checked():
    x = _images(5, 3, 16, 16)
    whole = scattering.scatter(x, J=2, L=4, batch_size=5)
    k = scattering.num_channels(1, 2, 4)
    assert whole.shape == (5, 3 * k, 4, 4)
    torch.testing.assert_close(scattering.scatter(x, J=2, L=4, batch_size=2), whole)
    torch.testing.assert_close(scattering.scatter(x, J=2, L=4), whole)
    torch.testing.assert_close(scattering.scatter(x[3:4], J=2, L=4), whole[3:4])
    torch.testing.assert_close(scattering.scatter(x[:, 1:2], J=2, L=4), whole[:, k:2 * k])
    assert scattering.scatter(x[:0], J=2, L=4).shape == (0, 3 * k, 4, 4)
    with pytest.raises(ValueError, match="multiple"):
        scattering.scatter(torch.randn(1, 1, 30, 30), J=2)
