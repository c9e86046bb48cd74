"""Student training: supervised and semi-supervised learning from privately labelled public data.

The student sees exactly two things: the labelled images with the labels the noisy aggregator
released (``labeled_x``, ``labeled_y``) and the unlabelled rest of the public student pool
(``unlabeled_x``, images only). Test data never enters this module except through
``predict``/``accuracy``, which do not train.

Methods
- ``"supervised"``: cross-entropy on weakly augmented labelled batches.
- ``"fixmatch"``: Sohn et al. 2020, "FixMatch": the model's prediction on a weakly augmented
  unlabelled image (no gradient) becomes a hard target for a strongly augmented view of the same
  image when its confidence is at least ``threshold``.
- ``"pseudo-label"``: Lee 2013, confident pseudo-labelling: as above, but the target is learnt
  on a second *weak* view (no strong augmentation).

Randomness of step ``t`` (batch indices, augmentation, dropout) comes from a generator seeded
by ``(seed, t)`` only, so a run resumed from a checkpoint ends bit-for-bit where an uninterrupted
one does. The returned model is the exponential moving average (EMA) of the weights.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pate import checkpoint as checkpoint_io
from pate.models import build_model

METHODS = ("supervised", "fixmatch", "pseudo-label")
CHECKPOINT_FORMAT = 1


class CheckpointMismatch(checkpoint_io.CheckpointError):
    """A checkpoint on disk was written by a run with a different fingerprint or settings."""


# --------------------------------------------------------------------------- augmentation

def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by an independent integer offset in [-max_shift, max_shift]²."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    xp = F.pad(x, (max_shift,) * 4, mode="replicate")
    off = torch.randint(0, 2 * max_shift + 1, (2, b), generator=gen, device=x.device)
    rows = off[0, :, None] + torch.arange(h, device=x.device)          # (B, H)
    cols = off[1, :, None] + torch.arange(w, device=x.device)          # (B, W)
    idx = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]   # (B, H, W, C)
    return out.permute(0, 3, 1, 2)


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def weak_augment(x: torch.Tensor, gen: torch.Generator, *, max_shift: int = 2, hflip: bool = False) -> torch.Tensor:
    """Random shift by up to ``max_shift`` pixels; horizontal flip only when ``hflip`` (not digits)."""
    x = _shift(x, max_shift, gen)
    return _flip(x, gen) if hflip else x


def strong_augment(x: torch.Tensor, gen: torch.Generator, *, hflip: bool = False,
                   rotate_deg: float = 20.0, shear: float = 0.25, scale: float = 0.15,
                   max_shift_frac: float = 0.15, cutout_frac: float = 0.4,
                   contrast: float = 0.5, brightness: float = 0.5, noise: float = 0.15) -> torch.Tensor:
    """Batched RandAugment-like distortion: random affine (rotation, shear, scale, shift),
    contrast / brightness jitter, Gaussian noise and a cutout square, all as tensor ops."""
    b, _, h, w = x.shape
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen, device=dev)

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

    size = max(1, int(round(cutout_frac * min(h, w))))
    cy = torch.randint(0, h, (b,), generator=gen, device=dev)[:, None]
    cx = torch.randint(0, w, (b,), generator=gen, device=dev)[:, None]
    ys = torch.arange(h, device=dev)[None]
    xs = torch.arange(w, device=dev)[None]
    in_y = (ys - cy).abs() <= size // 2                                # (B, H)
    in_x = (xs - cx).abs() <= size // 2                                # (B, W)
    box = (in_y[:, :, None] & in_x[:, None, :])[:, None]              # (B, 1, H, W)
    return torch.where(box, mean, x)


# --------------------------------------------------------------------------- checkpoints

def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` so that ``path`` holds either the old or the new file (``pate.checkpoint.save``)."""
    checkpoint_io.save(path, obj)


def load_checkpoint(path: str | os.PathLike) -> dict:
    return checkpoint_io.load(path)


def _settings_digest(settings: dict, tensors: tuple[torch.Tensor, ...]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float64).sum().numpy().tobytes())
        h.update(t.detach().reshape(-1)[:4096].to("cpu").numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- training

def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    s = int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0]) >> 1
    return torch.Generator(device=device).manual_seed(s)


def _lr_factor(steps: int) -> Callable[[int], float]:
    # FixMatch's cosine decay: lr · cos(7πk / 16K).
    return lambda k: math.cos(7.0 * math.pi * min(k, steps) / (16.0 * steps))


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def train_student(
    labeled_x: torch.Tensor,
    labeled_y: torch.Tensor,
    unlabeled_x: torch.Tensor | None = None,
    *,
    arch: str = "cnn-small",
    num_classes: int = 10,
    method: str = "fixmatch",
    steps: int = 4500,
    batch_size: int = 32,
    unlabeled_ratio: int = 4,
    lr: float = 0.03,
    weight_decay: float = 5e-4,
    threshold: float = 0.95,
    unlabeled_weight: float = 1.0,
    ema_decay: float = 0.99,
    hflip: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    log_every: int | None = None,
    fingerprint: str = "",
    progress: Callable[[int, int, float, dict], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Train a student of architecture ``arch`` and return ``(ema_model, history)``.

    ``labeled_x`` (N, C, H, W) float, normalised; ``labeled_y`` (N,) int64 labels as released
    (possibly wrong); ``unlabeled_x`` (M, C, H, W) images of the public pool without labels
    (required for the semi-supervised methods, ignored by ``"supervised"``).

    One step = one labelled batch of ``batch_size`` (+ ``unlabeled_ratio · batch_size``
    unlabelled images for the semi-supervised methods); SGD with Nesterov momentum and
    FixMatch's cosine learning-rate decay. ``history`` holds lists keyed ``step``, ``loss``,
    ``loss_labeled``, ``loss_unlabeled``, ``mask_rate`` (fraction of unlabelled images above
    ``threshold``), ``labeled_accuracy`` (on the augmented labelled batches) and ``lr``, each
    averaged over the ``log_every`` steps before the logged step; only training data is used.

    With ``checkpoint_path`` the state is saved atomically every ``checkpoint_every`` steps
    (default: at the end only) and a run finding a checkpoint there resumes from it; a checkpoint
    from different settings or another ``fingerprint`` raises ``CheckpointMismatch``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Found {method!r}.")
    if labeled_x.ndim != 4 or labeled_y.shape != labeled_x.shape[:1] or len(labeled_y) == 0:
        raise ValueError(f"labeled_x must be (N, C, H, W) and labeled_y (N,) with N > 0. "
                         f"Found {tuple(labeled_x.shape)} and {tuple(labeled_y.shape)}.")
    if labeled_y.dtype != torch.int64 or labeled_y.min() < 0 or labeled_y.max() >= num_classes:
        raise ValueError(f"labeled_y must be int64 in [0, {num_classes}).")
    semi = method != "supervised"
    if semi and (unlabeled_x is None or len(unlabeled_x) == 0):
        raise ValueError(f"method {method!r} needs unlabeled_x.")
    if semi and tuple(unlabeled_x.shape[1:]) != tuple(labeled_x.shape[1:]):
        raise ValueError(f"unlabeled_x images must have shape {tuple(labeled_x.shape[1:])}. "
                         f"Found {tuple(unlabeled_x.shape[1:])}.")
    if steps < 1 or batch_size < 1 or unlabeled_ratio < 0 or not 0.0 <= threshold <= 1.0:
        raise ValueError("steps and batch_size must be >= 1, unlabeled_ratio >= 0, threshold in [0, 1].")
    checkpoint_every = steps if checkpoint_every is None else checkpoint_every
    log_every = max(1, steps // 100) if log_every is None else log_every
    if checkpoint_every < 1 or log_every < 1:
        raise ValueError("checkpoint_every and log_every must be >= 1.")

    device = torch.device(device)
    settings = dict(format=CHECKPOINT_FORMAT, arch=arch, num_classes=num_classes, method=method,
                    steps=steps, batch_size=batch_size, unlabeled_ratio=unlabeled_ratio, lr=lr,
                    weight_decay=weight_decay, threshold=threshold, unlabeled_weight=unlabeled_weight,
                    ema_decay=ema_decay, hflip=hflip, seed=seed, log_every=log_every)
    data = (labeled_x, labeled_y) + ((unlabeled_x,) if semi else ())
    digest = _settings_digest(settings, data)

    _, c, h, w = labeled_x.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, c, num_classes, h)
    model = model.to(device, memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=lr, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(steps))
    history: dict[str, list] = {k: [] for k in ("step", "loss", "loss_labeled", "loss_unlabeled",
                                                "mask_rate", "labeled_accuracy", "lr")}
    sums: dict[str, float] = {}  # running sums of the current log window
    start = 0

    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        ck = load_checkpoint(checkpoint_path)
        if ck.get("fingerprint") != fingerprint or ck.get("settings_digest") != digest:
            raise CheckpointMismatch(
                f"checkpoint {os.fspath(checkpoint_path)!r} was written by a run with other settings "
                f"or data; delete it or use the original settings.")
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        history = {k: list(v) for k, v in ck["history"].items()}
        sums = dict(ck["log_sums"])
        start = int(ck["step"])

    def save(step: int) -> None:
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "settings_digest": digest,
            "step": step, "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "history": history, "log_sums": sums,
            # Step t's randomness is re-derived from (seed, t); the global RNG is never advanced.
            "rng": {"seed": seed, "torch_cpu": torch.get_rng_state()},
        }, checkpoint_path)

    lx = labeled_x.to(device, torch.float32)
    ly = labeled_y.to(device)
    ux = unlabeled_x.to(device, torch.float32) if semi else None
    n_unl = batch_size * unlabeled_ratio if semi else 0
    fork_devices = ([device.index if device.index is not None else torch.cuda.current_device()]
                    if device.type == "cuda" else [])
    model.train()
    # Weights and momenta decaying towards zero become subnormal floats, which made CPU steps
    # several times slower late in training; flush them to zero while training.
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        for step in range(start, steps):
            gen = _step_generator(seed, step, device)
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen, device=device)))
                stats = _train_step(model, optimizer, lx, ly, ux, n_unl, gen, method=method,
                                    batch_size=batch_size, threshold=threshold,
                                    unlabeled_weight=unlabeled_weight, hflip=hflip)
            stats["lr"] = optimizer.param_groups[0]["lr"]
            scheduler.step()
            _ema_update(ema, model, min(ema_decay, (1.0 + step) / (10.0 + step)))
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            done = step + 1
            if done % log_every == 0 or done == steps:
                n = done - (done - 1) // log_every * log_every if done == steps else log_every
                history["step"].append(done)
                for k in stats:
                    history[k].append(sums[k] / n)
                sums = {}
            if progress is not None:
                progress(done, steps, stats["loss"], stats)
            if checkpoint_path is not None and (done % checkpoint_every == 0 or done == steps):
                save(done)
    finally:
        if flush:
            torch.set_flush_denormal(False)
    ema.eval()
    return ema, history


def _train_step(model, optimizer, lx, ly, ux, n_unl, gen, *, method, batch_size, threshold,
                unlabeled_weight, hflip) -> dict:
    li = torch.randint(0, len(lx), (batch_size,), generator=gen, device=lx.device)
    xb = weak_augment(lx[li], gen, hflip=hflip)
    yb = ly[li]
    stats = {"loss_unlabeled": 0.0, "mask_rate": 0.0}
    if n_unl:
        ui = torch.randint(0, len(ux), (n_unl,), generator=gen, device=ux.device)
        u = ux[ui]
        with torch.no_grad():
            probs = torch.softmax(model(weak_augment(u, gen, hflip=hflip).contiguous(
                memory_format=torch.channels_last)), dim=1)
        conf, target = probs.max(dim=1)
        mask = (conf >= threshold).float()
        view = strong_augment(u, gen, hflip=hflip) if method == "fixmatch" else weak_augment(u, gen, hflip=hflip)
        xb = torch.cat([xb, view])
    logits = model(xb.contiguous(memory_format=torch.channels_last))
    loss_l = F.cross_entropy(logits[:batch_size], yb)
    loss = loss_l
    if n_unl:
        loss_u = (F.cross_entropy(logits[batch_size:], target, reduction="none") * mask).mean()
        loss = loss_l + unlabeled_weight * loss_u
        stats["loss_unlabeled"] = loss_u.item()
        stats["mask_rate"] = mask.mean().item()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    stats["loss"] = loss.item()
    stats["loss_labeled"] = loss_l.item()
    stats["labeled_accuracy"] = (logits[:batch_size].detach().argmax(1) == yb).float().mean().item()
    return stats


# --------------------------------------------------------------------------- evaluation

@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024,
            device: str | torch.device = "cpu") -> torch.Tensor:
    """Class predictions (N,) int64 of ``model`` on ``x`` (N, C, H, W), in eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device, torch.float32).contiguous(memory_format=torch.channels_last)
        out.append(model(xb).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024,
             device: str | torch.device = "cpu") -> float:
    """Fraction of ``x`` whose predicted class equals ``y``."""
    if len(x) == 0:
        raise ValueError("accuracy of an empty set is undefined.")
    return float((predict(model, x, batch_size=batch_size, device=device) == y.cpu()).float().mean())
