"""Image augmentations, batched as tensor ops with an explicit generator (no global RNG).

Teachers train with random shifts (``shift_images``, the shifts drawn per teacher from its own
seed); the student with FixMatch's weak (shift, optional flip) and strong (RandAugment-like)
views (Sohn et al. 2020, arXiv:2001.07685v2), and random erasing on its labelled batches; the public feature extractor with SimCLR-style
contrastive views (Chen et al. 2020, arXiv:2002.05709v3). Every function takes normalised float
images (B, C, H, W) on any device and returns the same shape.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def shift_images(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each image (..., C, H, W) by its (dy, dx) in ``shifts`` (..., 2), repeating the
    border pixels (so a constant background stays constant)."""
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    flat, s = x.reshape(-1, c, h, w), shifts.reshape(-1, 2).to(x.device)
    rows = (torch.arange(h, device=x.device) + s[:, :1]).clamp_(0, h - 1)
    cols = (torch.arange(w, device=x.device) + s[:, 1:]).clamp_(0, w - 1)
    n = torch.arange(flat.shape[0], device=x.device)[:, None, None]
    out = flat[n, :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).reshape(*lead, c, h, w)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by an independent integer offset in [-max_shift, max_shift]²."""
    if max_shift <= 0:
        return x
    off = torch.randint(0, 2 * max_shift + 1, (2, x.shape[0]), generator=gen, device=x.device)
    return shift_images(x, off.t() - max_shift)


def _uniform(lo: float, hi: float, n: int, gen: torch.Generator, device) -> torch.Tensor:
    """(n,) draws uniform in [lo, hi) from ``gen``."""
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _rectangles(top: torch.Tensor, height: torch.Tensor, left: torch.Tensor, width: torch.Tensor,
                h: int, w: int) -> torch.Tensor:
    """(B, 1, h, w) bool: each image's rows [top, top + height) × columns [left, left + width)."""
    ys, xs = torch.arange(h, device=top.device)[None], torch.arange(w, device=top.device)[None]
    in_y = (ys >= top[:, None]) & (ys < (top + height)[:, None])  # (B, H)
    in_x = (xs >= left[:, None]) & (xs < (left + width)[:, None])  # (B, W)
    return (in_y[:, :, None] & in_x[:, None, :])[:, None]


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def weak_augment(x: torch.Tensor, gen: torch.Generator, *, max_shift: int = 2, hflip: bool = False) -> torch.Tensor:
    """Random shift by up to ``max_shift`` pixels; horizontal flip only when ``hflip`` (not digits)."""
    x = random_shift(x, max_shift, gen)
    return _flip(x, gen) if hflip else x


def random_erase(x: torch.Tensor, gen: torch.Generator, probability: float, *, area: tuple[float, float] = (0.02, 0.4),
                 aspect: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020, "Random Erasing Data Augmentation"): with ``probability``,
    one rectangle of each image, ``area`` of it in proportion and of aspect ratio in ``aspect``
    (log-uniform), is filled with noise, so the model cannot lean on any one part of the object
    (a sleeve, a collar). Batched: every image draws its own rectangle."""
    if probability <= 0:
        return x
    b, _, h, w = x.shape
    dev = x.device
    target = _uniform(*area, b, gen, dev) * h * w
    ratio = torch.exp(_uniform(math.log(aspect[0]), math.log(aspect[1]), b, gen, dev))
    eh = torch.sqrt(target * ratio).round().clamp(1, h).long()
    ew = torch.sqrt(target / ratio).round().clamp(1, w).long()
    top = (torch.rand(b, generator=gen, device=dev) * (h - eh + 1)).long()
    left = (torch.rand(b, generator=gen, device=dev) * (w - ew + 1)).long()
    on = torch.rand(b, generator=gen, device=dev) < probability
    box = _rectangles(top, eh, left, ew, h, w) & on[:, None, None, None]
    fill = torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype)
    return torch.where(box, fill, x)


def mix_up(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", arXiv:1710.09412v2):
    each image and its target row are blended with another of the batch (a permutation from ``gen``),
    λ·(x, y) + (1 − λ)·(x', y'), λ ~ Beta(alpha, alpha) per image (by inverting the Beta's CDF at a
    uniform from ``gen``). Wrong labels then teach a blend, not a memorised image: mixup was proposed
    for robustness to corrupted labels among other things. ``y`` is (B, m) float rows."""
    from scipy.special import betaincinv  # the Beta's inverse CDF: draws stay on ``gen``

    b = len(x)
    partner = torch.randperm(b, generator=gen, device=x.device)
    u = torch.rand(b, generator=gen, device=x.device, dtype=torch.float64)
    lam = torch.from_numpy(betaincinv(alpha, alpha, u.cpu().numpy())).to(x.device, x.dtype)
    mixed_x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partner]
    mixed_y = lam[:, None] * y + (1 - lam[:, None]) * y[partner]
    return mixed_x, mixed_y


def strong_augment(x: torch.Tensor, gen: torch.Generator, *, hflip: bool = False,
                   rotate_deg: float = 20.0, shear: float = 0.25, scale: float = 0.15,
                   max_shift_frac: float = 0.15, cutout_frac: float = 0.4,
                   contrast: float = 0.5, brightness: float = 0.5, noise: float = 0.15) -> torch.Tensor:
    """Batched RandAugment-like distortion: random affine (rotation, shear, scale, shift),
    contrast / brightness jitter, Gaussian noise and a cutout square, all as tensor ops."""
    b, _, h, w = x.shape
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return _uniform(lo, hi, b, gen, dev)

    if hflip:
        x = _flip(x, gen)
    ang = u(-1, 1) * math.radians(rotate_deg)
    sh = u(-shear, shear)
    sc = 1.0 + u(-scale, scale)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([
        torch.stack([cos, -sin + sh * cos, u(-2 * max_shift_frac, 2 * max_shift_frac)], 1),
        torch.stack([sin, cos + sh * sin, u(-2 * max_shift_frac, 2 * max_shift_frac)], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    bg = x.amin(dim=(1, 2, 3), keepdim=True)                      # background (e.g. MNIST black)
    x = F.grid_sample(x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + bg

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1.0 + u(-contrast, contrast))[:, None, None, None] + mean
    x = x + (u(-brightness, brightness)[:, None, None, None] * std)
    x = x + noise * std * torch.randn(x.shape, generator=gen, device=dev)

    half = max(1, int(round(cutout_frac * min(h, w)))) // 2
    cy = torch.randint(0, h, (b,), generator=gen, device=dev)
    cx = torch.randint(0, w, (b,), generator=gen, device=dev)
    side = torch.full_like(cy, 2 * half + 1)  # the square of rows and columns within half of the centre
    return torch.where(_rectangles(cy - half, side, cx - half, side, h, w), mean, x)


def contrastive_view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random view of each image (batched): affine (rotation, scale, shift, shear), brightness /
    contrast jitter, cutout and a little noise. ``x`` is normalised float (B, C, H, W) on CPU/GPU."""
    b, _, h, w = x.shape
    dev = x.device

    def u(lo, hi, *shape):
        return (torch.rand(shape or (b,), generator=gen) * (hi - lo) + lo).to(dev)

    angle = u(-0.3, 0.3)  # ~ +-17 degrees
    scale = u(0.8, 1.15)
    shear = u(-0.15, 0.15)
    tx, ty = u(-0.2, 0.2), u(-0.2, 0.2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast, brightness = u(0.6, 1.4).view(b, 1, 1, 1), u(-0.4, 0.4).view(b, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean + brightness
    # Cutout: one square of side ~H/4 per image, for half of the images.
    side = max(1, h // 4)
    cy, cx = (torch.rand(b, generator=gen) * h).long().to(dev), (torch.rand(b, generator=gen) * w).long().to(dev)
    on = (torch.rand(b, generator=gen) < 0.5).to(dev)
    ys, xs = torch.arange(h, device=dev).view(1, h, 1), torch.arange(w, device=dev).view(1, 1, w)
    hole = ((ys - cy.view(b, 1, 1)).abs() <= side // 2) & ((xs - cx.view(b, 1, 1)).abs() <= side // 2)
    out = torch.where((hole & on.view(b, 1, 1)).unsqueeze(1), mean.expand_as(out), out)
    noise = torch.randn(out.shape, generator=gen).to(dev)
    return out + 0.1 * noise
