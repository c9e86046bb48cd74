"""The scattering transform (Mallat 2012; the fixed feature map of Tramèr & Boneh 2021) as a layer
a student can carry inside itself, so that an exported ScatterNet student still takes raw images.

Why a second implementation beside ``pate.nets.wavelets``: that one computes in complex
arithmetic with ``torch.fft``, which the ONNX exporter cannot translate (ONNX has no complex
tensors). Here every discrete Fourier transform is a product with fixed real cosine and sine
matrices, and every complex product is written out in its real and imaginary parts, so the graph is
matrix products, element-wise arithmetic and one square root: ONNX and ``torch.export`` take it,
and onnxruntime runs it without torch. The numbers are the same transform (the test
compares it with ``scatter`` coefficient by coefficient): the filters are ``filter_bank``'s, the
padding is the same reflection, and subsampling is the same folding of the spectrum.

In torch (training, evaluation, ``pate predict`` on a run) the layer computes through
``pate.nets.wavelets.scatter``, about five times faster on a CPU; the real-arithmetic path is
what ``torch.export`` (and so the ONNX exporter) sees, so it is what every exported file holds
(TorchScript, deprecated, is not offered for these students). The layer has no weights:
nothing about it is learned, from public or private images.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .wavelets import filter_bank, num_channels, padded_size, scatter


def _dft_matrices(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and -sin of 2π·u·x/size: the real and imaginary parts of the (symmetric) DFT matrix."""
    u = torch.arange(size, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(u, u).remainder(size) / size
    return torch.cos(angle).float(), (-torch.sin(angle)).float()


class Scattering(nn.Module):
    """(N, C, H, W) images -> (N, C·(1 + JL + L²J(J-1)/2), H/2^J, W/2^J) scattering coefficients
    (each channel scattered separately), square images of a side that 2^J divides."""

    def __init__(self, in_channels: int, image_size: int, J: int = 2, L: int = 8):
        super().__init__()
        step = 2 ** J
        if image_size % step:
            raise ValueError(f"the scattering layer needs an image size that 2^J = {step} divides, not {image_size}")
        self.in_channels, self.image_size, self.J, self.L = in_channels, image_size, J, L
        self.out_channels = num_channels(in_channels, J, L)
        m = padded_size(image_size, J)
        self.pad = ((m - image_size) // 2, (m - image_size + 1) // 2) * 2
        bank = filter_bank(m, m, J, L)
        # Filters are stored scaled by 1/k² for the factor k they subsample by, so folding (summing
        # the k² aliases) averages them, as the complex implementation does.
        for r, phi in enumerate(bank["phi"]):
            self.register_buffer(f"phi{r}", phi / 4 ** (J - r), persistent=False)
        for j, levels in enumerate(bank["psi"]):
            for r, psi in enumerate(levels):
                self.register_buffer(f"psi{j}_{r}", psi / 4 ** (j - r), persistent=False)
        for r in range(J + 1):
            cos, sin = _dft_matrices(m >> r)
            self.register_buffer(f"cos{r}", cos, persistent=False)
            self.register_buffer(f"sin{r}", sin, persistent=False)

    def _dft(self, x: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The 2-D DFT of real (..., s, s) planes on the grid of resolution r: (real, imaginary)."""
        cos, sin = getattr(self, f"cos{r}"), getattr(self, f"sin{r}")
        yr, yi = x @ cos, x @ sin
        return cos @ yr - sin @ yi, cos @ yi + sin @ yr

    def _idft(self, zr: torch.Tensor, zi: torch.Tensor, r: int, real_only: bool = False):
        """The inverse 2-D DFT of (real, imaginary) spectra on the grid of resolution r."""
        cos, sin = getattr(self, f"cos{r}"), getattr(self, f"sin{r}")
        scale = 1.0 / cos.shape[0] ** 2
        ar, ai = zr @ cos + zi @ sin, zi @ cos - zr @ sin
        real = (cos @ ar + sin @ ai) * scale
        if real_only:
            return real
        return real, (cos @ ai - sin @ ar) * scale

    @staticmethod
    def _filter_fold(zr: torch.Tensor, zi: torch.Tensor, filt: torch.Tensor, k: int):
        """The spectrum of (u ⋆ f) subsampled by k: (..., s, s) spectra times the L real filter
        spectra (L, s, s) -> (..., L, s/k, s/k), the k² aliases of each frequency summed."""
        s = filt.shape[-1]

        def fold(z: torch.Tensor) -> torch.Tensor:
            product = z.unsqueeze(-3) * filt
            return product.unflatten(-1, (k, s // k)).unflatten(-3, (k, s // k)).sum((-4, -2))

        return fold(zr), fold(zi)

    def _modulus(self, zr, zi, psi, r: int, k: int) -> torch.Tensor:
        """|u ⋆ ψ| on the grid k times coarser than resolution r, for every orientation of ψ."""
        fr, fi = self._filter_fold(zr, zi, psi, k)
        ur, ui = self._idft(fr, fi, r + int(math.log2(k)))
        return torch.sqrt(ur * ur + ui * ui)

    def _average(self, zr, zi, r: int) -> torch.Tensor:
        """u ⋆ φ subsampled to 2^J, without the one-sample margin of the padding."""
        k = 2 ** (self.J - r)
        fr, fi = self._filter_fold(zr, zi, getattr(self, f"phi{r}").unsqueeze(0), k)
        return self._idft(fr, fi, self.J, real_only=True)[..., 0, 1:-1, 1:-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return self.real_arithmetic(images)
        return self._fast(images)

    def _fast(self, images: torch.Tensor) -> torch.Tensor:
        """Training and evaluation in torch: the same numbers through torch.fft, about 5 times faster
        on a CPU (the test holds the two to float precision)."""
        return scatter(images, self.J, self.L)

    def real_arithmetic(self, images: torch.Tensor) -> torch.Tensor:
        """The transform in real matrix products: what every exported graph holds."""
        n, c, h, w = images.shape
        J = self.J
        planes = nn.functional.pad(images.reshape(n * c, 1, h, w), self.pad, mode="reflect")[:, 0]
        xr, xi = self._dft(planes, 0)
        order0, order1, order2 = [self._average(xr, xi, 0).unsqueeze(1)], [], []
        for j1 in range(J):
            u1 = self._modulus(xr, xi, getattr(self, f"psi{j1}_0"), 0, 2 ** j1)  # (P, L, s1, s1)
            u1r, u1i = self._dft(u1, j1)
            order1.append(self._average(u1r, u1i, j1))
            deeper = [self._average(*self._dft(self._modulus(u1r, u1i, getattr(self, f"psi{j2}_{j1}"), j1,
                                                             2 ** (j2 - j1)), j2), j2)
                      for j2 in range(j1 + 1, J)]  # each (P, L1, L2, h, w)
            if deeper:
                order2.append(torch.cat(deeper, 2).flatten(1, 2))
        out = torch.cat(order0 + order1 + order2, 1)
        return out.reshape(n, self.out_channels, h >> J, w >> J)
