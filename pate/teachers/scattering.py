"""Public features with no training at all: a 2-D wavelet scattering transform (Mallat 2012; Bruna
& Mallat 2013), the fixed feature map Tramèr & Boneh (2021) found to beat learned features for
private learning on small images.

The filters (Morlet wavelets at ``J`` scales and ``L`` orientations, and a Gaussian low-pass) are
fixed numbers computed from (J, L, image size) alone; no image, public or private, shapes them, so
every teacher may share them at no privacy cost. Per image the transform keeps the local averages
of |x * ψ1| (order 1) and ||x * ψ1| * ψ2| (order 2, coarser ψ2 only) and of x itself (order 0),
subsampled by 2^J: ``1 + J·L + L²·J(J-1)/2`` channels of (H/2^J, W/2^J).

Convolutions are products in the Fourier domain on a reflect-padded image (padding 2^J each side),
so the cost is a handful of batched FFTs per image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _grid(size: int) -> torch.Tensor:
    """Coordinates 0, 1, ..., -2, -1 (FFT order) so a filter centred at 0 wraps periodically."""
    return torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64)


def _gabor(m: int, n: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    """Spatial complex Gabor filter on an m×n periodic grid: a Gaussian envelope (elongated by
    ``1/slant`` along ``theta``) times a plane wave of frequency ``xi`` along ``theta``."""
    y, x = torch.meshgrid(_grid(m), _grid(n), indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * x + s * y, -s * x + c * y  # rotated coordinates: u along theta
    envelope = torch.exp(-(u ** 2 + (slant * v) ** 2) / (2 * sigma ** 2))
    wave = torch.exp(1j * xi * u)
    return envelope * wave / (2 * math.pi * sigma ** 2 / slant)


def _morlet(m: int, n: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    """A Gabor filter minus the multiple of its envelope that makes it sum to zero (no DC response)."""
    gabor = _gabor(m, n, sigma, theta, xi, slant)
    envelope = _gabor(m, n, sigma, theta, 0.0, slant)
    return gabor - (gabor.sum() / envelope.sum()) * envelope


def filter_bank(m: int, n: int, J: int = 2, L: int = 8) -> dict:
    """Fourier transforms of the low-pass φ (m, n) and of the wavelets ψ (J, L, m, n), complex128."""
    psi = torch.stack([
        torch.stack([torch.fft.fft2(_morlet(m, n, 0.8 * 2 ** j, math.pi * l / L, 0.75 * math.pi / 2 ** j, 4.0 / L))
                     for l in range(L)])
        for j in range(J)])
    phi = torch.fft.fft2(_gabor(m, n, 0.8 * 2 ** J, 0.0, 0.0, 1.0)).real
    return {"phi": phi, "psi": psi, "J": J, "L": L}


def num_channels(in_channels: int, J: int = 2, L: int = 8) -> int:
    return in_channels * (1 + J * L + L * L * J * (J - 1) // 2)


@torch.no_grad()
def scatter(images: torch.Tensor, J: int = 2, L: int = 8, batch_size: int = 1024) -> torch.Tensor:
    """(N, C, H, W) float images -> (N, C·(1 + JL + L²J(J-1)/2), H/2^J, W/2^J) float32 coefficients.

    H and W must be multiples of 2^J."""
    n, c, h, w = images.shape
    step = 2 ** J
    if h % step or w % step:
        raise ValueError(f"image size {h}x{w} is not a multiple of 2^J = {step}")
    pad = step
    m, k = h + 2 * pad, w + 2 * pad
    bank = filter_bank(m, k, J, L)
    phi = bank["phi"].to(images.device, torch.complex64)
    psi = bank["psi"].to(images.device, torch.complex64)
    out = []
    for i in range(0, n, batch_size):
        x = images[i:i + batch_size].float().reshape(-1, 1, h, w)
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")[:, 0]  # (B·C, m, k)

        def low_pass(u_hat: torch.Tensor) -> torch.Tensor:
            s = torch.fft.ifft2(u_hat * phi).real
            return s[..., pad:pad + h:step, pad:pad + w:step]

        x_hat = torch.fft.fft2(x)
        parts = [low_pass(x_hat).unsqueeze(1)]
        first = [torch.fft.ifft2(x_hat.unsqueeze(1) * psi[j]).abs() for j in range(J)]  # each (B·C, L, m, k)
        first_hat = [torch.fft.fft2(u) for u in first]
        parts += [low_pass(u_hat) for u_hat in first_hat]
        for j1 in range(J):
            for j2 in range(j1 + 1, J):
                u2 = torch.fft.ifft2(first_hat[j1].unsqueeze(2) * psi[j2].view(1, 1, L, m, k)).abs()
                parts.append(low_pass(torch.fft.fft2(u2)).flatten(1, 2))
        coeffs = torch.cat(parts, 1)  # (B·C, channels, h/step, w/step)
        out.append(coeffs.reshape(-1, c * coeffs.shape[1], h // step, w // step))
    return torch.cat(out) if out else torch.zeros(0, num_channels(c, J, L), h // step, w // step)
