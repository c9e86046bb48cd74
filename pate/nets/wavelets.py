"""Public features with no training at all: the 2-D wavelet scattering transform (Mallat 2012;
Bruna & Mallat 2013), the fixed feature map Tramèr & Boneh (2021) found to beat learned features
for private learning on small images, with J = 2 scales and L = 8 orientations (81 channels of 7×7,
3 969 coefficients, on 28×28 images).

Why these filters may be shared by every teacher: they are closed-form numbers of (J, L, image
size) alone (Morlet wavelets ψ, σ = 0.8·2^j, ξ = 3π/4·2^-j, slant 4/L; a Gaussian φ, σ = 0.8·2^(J-1)),
so no image, public or private, shapes them and sharing them costs no privacy.

Why Kymatio's definition to the last detail: the scattering features of the papers we follow are
Kymatio's ``Scattering2D`` (Andreux et al. 2020; Tramèr & Boneh's code uses it). A variant (a wider φ,
say, or every layer kept at full resolution) is another feature map with other results, so this
module reproduces Kymatio's filter bank (filters periodised over 5×5 periods of the padded grid,
their spectra kept real, its normalising constant), its reflect padding, its subsampling and its
output order; a test compares the coefficients with Kymatio's own when it is installed (the
``scattering`` extra). Kymatio is not needed to run.

Why it fits in little memory: as in Kymatio, each layer lives on the grid of its scale, the signal
being subsampled by periodising its spectrum right after each filter. The product of a spectrum
with a filter is accumulated directly on the coarse grid, so the (L·L) second-order maps never
exist at full resolution, and images go through in chunks sized to a fixed budget: intermediates
stay tens of MB whatever the number of images.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F

# Kymatio divides its Gabor filters by 2·3.1415·σ²/slant, not 2π·σ²/slant. We keep its constant so
# that coefficients agree to float precision; it only rescales every coefficient by 1 + 3e-5 per
# filter, which standardisation removes anyway.
_KYMATIO_PI = 3.1415
_PERIODS = 2  # filters are summed over (2·_PERIODS + 1)² periods of the padded grid, as Kymatio does
# Names this definition in checkpoints: features saved by an earlier variant (a wider phi, every layer
# at full resolution) are other numbers, so a run directory holding them is refused, not mixed.
DEFINITION = "kymatio-scattering2d"
CHUNK_BYTES = 48 * 2 ** 20  # budget for the largest intermediate of one chunk of images


def padded_size(size: int, J: int) -> int:
    """Kymatio's padded size: the next multiple of 2^J above ``size + 2^J`` (for a multiple of
    2^J, ``size + 2·2^J``: a margin of 2^J on each side)."""
    step = 2 ** J
    return (size // step + 2) * step


def _gabor(m: int, n: int, sigma: float, theta: float, xi: float, slant: float = 1.0) -> torch.Tensor:
    """Spatial complex Gabor filter on the m×n periodic grid (row, column coordinates, origin at
    index 0), periodised over 5×5 periods: a Gaussian envelope elongated by ``1/slant`` across the
    direction ``theta`` (measured from the row axis), times a plane wave of frequency ``xi`` along it."""
    shifts = torch.arange(-_PERIODS, _PERIODS + 1, dtype=torch.float64)
    rows = (torch.arange(m, dtype=torch.float64) + m * shifts[:, None]).view(-1, 1, m, 1)
    cols = (torch.arange(n, dtype=torch.float64) + n * shifts[:, None]).view(1, -1, 1, n)
    c, s = math.cos(theta), math.sin(theta)
    along, across = c * rows + s * cols, -s * rows + c * cols
    envelope = torch.exp(-(along ** 2 + (slant * across) ** 2) / (2 * sigma ** 2))
    filt = (envelope * torch.exp(1j * xi * along)).sum((0, 1))
    return filt / (2 * _KYMATIO_PI * sigma ** 2 / slant)


def _morlet(m: int, n: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    """A Gabor filter minus the multiple of its envelope that makes it sum to zero (no DC response)."""
    gabor = _gabor(m, n, sigma, theta, xi, slant)
    envelope = _gabor(m, n, sigma, theta, 0.0, slant)
    return gabor - (gabor.sum() / envelope.sum()) * envelope


def orientation(l: int, L: int) -> float:
    """Kymatio's angle of orientation index ``l``: (L/2 - 1 - l)·π/L from the row axis."""
    return (math.trunc(L / 2 - 1) - l) * math.pi / L


def _at_resolution(f_hat: torch.Tensor, res: int) -> torch.Tensor:
    """The spectrum of a filter for a signal subsampled by 2^res: the frequencies below the new
    Nyquist band (the lowest m/2^(res+1) positive and negative ones on each axis), as Kymatio
    periodises its band-limited filters. Sizes must be multiples of 2^(res+1)."""
    if res == 0:
        return f_hat
    m, n = f_hat.shape[-2:]
    hm, hn = m >> (res + 1), n >> (res + 1)
    rows = torch.cat([torch.arange(hm), torch.arange(m - hm, m)])
    cols = torch.cat([torch.arange(hn), torch.arange(n - hn, n)])
    return f_hat[..., rows, :][..., cols]


def filter_bank(m: int, n: int, J: int = 2, L: int = 8) -> dict:
    """Real Fourier transforms (float32) of the filters on an m×n padded grid, at every resolution
    the transform uses them: ``phi[r]`` (m/2^r, n/2^r) for r < J, and ``psi[j][r]`` (L, m/2^r, n/2^r)
    for r < max(j, 1) (ψ_j filters the image at order 1, and |x ⋆ ψ_j1| at resolution j1 < j at
    order 2)."""
    phi_hat = torch.fft.fft2(_gabor(m, n, 0.8 * 2 ** (J - 1), 0.0, 0.0)).real
    psi = []
    for j in range(J):
        psi_hat = torch.stack([torch.fft.fft2(_morlet(m, n, 0.8 * 2 ** j, orientation(l, L), 0.75 * math.pi / 2 ** j,
                                                      4.0 / L)).real for l in range(L)])
        psi.append([_at_resolution(psi_hat, r).float() for r in range(max(j, 1))])
    return {"phi": [_at_resolution(phi_hat, r).float() for r in range(J)], "psi": psi, "J": J, "L": L}


def num_channels(in_channels: int, J: int = 2, L: int = 8) -> int:
    return in_channels * (1 + J * L + L * L * J * (J - 1) // 2)


def _polyphase(x: torch.Tensor, k: int) -> torch.Tensor:
    """(..., m, n) -> (..., k, k, m/k, n/k), contiguous: entry [a, b, f, g] is x[a·m/k + f, b·n/k + g],
    i.e. for a spectrum, the k² frequencies that fold onto (f, g) when the signal is subsampled by k."""
    m, n = x.shape[-2:]
    return x.unflatten(-1, (k, n // k)).unflatten(-3, (k, m // k)).transpose(-3, -2).contiguous()


def _prepare(filt: torch.Tensor, k: int) -> torch.Tensor:
    """A real filter spectrum (L, m, n) in the layout of ``_filter_subsampled`` for factor ``k``:
    complex64 (L, k, k, m/k, n/k), scaled by 1/k² (exact: a power of two) so that summing the
    aliases averages them."""
    return _polyphase(filt, k).div(k * k).to(torch.complex64)


def _filter_subsampled(u_hat: torch.Tensor, filt: torch.Tensor, k: int) -> torch.Tensor:
    """Spectrum of (u ⋆ f) subsampled by ``k`` on both axes, for each of the L filters:
    (..., m, n) and ``_prepare(f, k)`` -> (..., L, m/k, n/k). Subsampling in space is periodising
    in frequency: the mean of the k² aliases of û·f̂, here accumulated alias by alias, so the
    full-resolution product of every signal with every filter never exists."""
    u = _polyphase(u_hat, k).unsqueeze(-5)  # (..., 1, k, k, m/k, n/k)
    out = u[..., 0, 0, :, :] * filt[:, 0, 0]
    for a in range(k):
        for b in range(k):
            if a or b:
                out.addcmul_(u[..., a, b, :, :], filt[:, a, b])
    return out


def _wavelet_modulus(u_hat: torch.Tensor, psi: torch.Tensor, k: int) -> torch.Tensor:
    """Spectrum of |u ⋆ ψ| for every orientation of ``psi`` (a new axis before the spatial ones),
    on the grid ``k`` times coarser than u's."""
    return torch.fft.fft2(torch.fft.ifft2(_filter_subsampled(u_hat, psi, k)).abs())


def _average(u_hat: torch.Tensor, phi: torch.Tensor, k: int) -> torch.Tensor:
    """u ⋆ φ subsampled by ``k`` (to 2^J overall), without the one-sample margin of the padding."""
    return torch.fft.ifft2(_filter_subsampled(u_hat, phi, k)).real[..., 0, 1:-1, 1:-1]


@functools.lru_cache(maxsize=8)
def _prepared_bank(m: int, n: int, J: int, L: int, device: str) -> dict:
    """``filter_bank`` on ``device``, each filter prepared for the one subsampling factor it is used
    with: φ at resolution r subsamples to 2^J overall (factor 2^(J-r)); ψ_j on a signal at
    resolution r subsamples it to resolution j (factor 2^(j-r))."""
    bank = filter_bank(m, n, J, L)
    phi = [_prepare(f.unsqueeze(0), 2 ** (J - r)).to(device) for r, f in enumerate(bank["phi"])]
    psi = [[_prepare(f, 2 ** (j - r)).to(device) for r, f in enumerate(levels)]
           for j, levels in enumerate(bank["psi"])]
    return {"phi": phi, "psi": psi, "J": J, "L": L}


def _scatter_planes(x: torch.Tensor, bank: dict, pad: tuple) -> torch.Tensor:
    """(P, H, W) real planes -> (P, 1 + JL + L²J(J-1)/2, H/2^J, W/2^J), in Kymatio's order: order
    0, then order 1 by (j1, θ1), then order 2 by (j1, θ1, j2, θ2) with j1 < j2."""
    J, phi, psi = bank["J"], bank["phi"], bank["psi"]
    x_hat = torch.fft.fft2(F.pad(x.unsqueeze(1), pad, mode="reflect")[:, 0].to(torch.complex64))
    order0, order1, order2 = [_average(x_hat, phi[0], 2 ** J).unsqueeze(1)], [], []
    for j1 in range(J):
        u1_hat = _wavelet_modulus(x_hat, psi[j1][0], 2 ** j1)  # (P, L, H'/2^j1, W'/2^j1)
        order1.append(_average(u1_hat, phi[j1], 2 ** (J - j1)))
        deeper = [_average(_wavelet_modulus(u1_hat, psi[j2][j1], 2 ** (j2 - j1)), phi[j2], 2 ** (J - j2))
                  for j2 in range(j1 + 1, J)]  # each (P, L1, L2, h, w)
        if deeper:
            order2.append(torch.cat(deeper, 2).flatten(1, 2))
        del u1_hat
    return torch.cat(order0 + order1 + order2, 1)


@torch.no_grad()
def scatter(images: torch.Tensor, J: int = 2, L: int = 8, batch_size: Optional[int] = None) -> torch.Tensor:
    """(N, C, H, W) float images -> (N, C·(1 + JL + L²J(J-1)/2), H/2^J, W/2^J) float32 coefficients,
    equal (to float32 precision) to Kymatio's ``Scattering2D(J, (H, W), L, max_order=2)`` with its
    (N, C, K, h, w) output flattened to (N, C·K, h, w). Each channel is scattered separately.

    H and W must be multiples of 2^J. ``batch_size`` images at a time (default: as many as fit
    ``CHUNK_BYTES`` of intermediates)."""
    n, c, h, w = images.shape
    step = 2 ** J
    if h % step or w % step:
        raise ValueError(f"image size {h}x{w} is not a multiple of 2^J = {step}")
    m, k = padded_size(h, J), padded_size(w, J)
    pad = ((k - w) // 2, (k - w + 1) // 2, (m - h) // 2, (m - h + 1) // 2)
    bank = _prepared_bank(m, k, J, L, str(images.device))
    per_image = 4 * c * L * L * (m // 2) * (k // 2) * 8  # about 4 arrays (C, L, L, m/2, k/2) complex64 at once
    if batch_size is None:
        batch_size = max(1, CHUNK_BYTES // per_image)
    out = torch.empty((n, num_channels(c, J, L), h // step, w // step), device=images.device)
    for i in range(0, n, batch_size):
        planes = images[i:i + batch_size].float().reshape(-1, h, w)
        out[i:i + batch_size] = _scatter_planes(planes, bank, pad).reshape(-1, *out.shape[1:])
    return out
