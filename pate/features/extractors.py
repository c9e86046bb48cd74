"""Public features: a frozen extractor, shared by all teachers, that no private record shapes.

Two kinds: ``"simclr"`` (learned from the unlabelled public pool, below) and ``"scattering"``
(``scattering_extractor``: fixed wavelet filters, only standardised with public-pool statistics;
``pate.nets.wavelets``).

``train_extractor`` fits a small conv encoder with a SimCLR-style contrastive loss (NT-Xent on two
augmented views of each image; Chen et al. 2020) on the *unlabelled public* student-pool images.
It never sees a private image nor a public label, so it costs no privacy. The encoder is then
frozen; ``embed`` maps images to standardised d-dim features (mean/std taken from the public pool
embeddings, again no private data).

``train_heads`` fits K multinomial logistic-regression heads, teacher k on its own shard's
features only, batched as (B, d, m) weight tensors over blocks of teachers. The objective is a sum
of per-teacher losses and Adam is element-wise, so teacher k's head is a function of shard k alone
(no shared line search or statistics couple the teachers); that is also why blocks of teachers
can be trained one after the other, which keeps memory at the features plus one block's rows.
Heads start at zero (the objective is convex), so training is deterministic. ``predict_heads``
gives exactly one class per teacher per image (argmax, first index on ties).
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nets.augment import contrastive_view
from ..io import check_resumable, load_checkpoint, save_checkpoint
from ..seeds import TAG_EXTRACTOR, derive_seed
from ..nets import wavelets as scattering

EXTRACTOR_FORMAT = "pate.features/1"
HEADS_FORMAT = "pate.heads/1"
CACHE_FORMAT = "pate.feature-cache/1"
CACHE_SAVE_SECONDS = 60.0  # an interrupted embedding loses at most about this much work

# Fixed extractor / head hyperparameters (chosen before any private data is seen).
BATCH_SIZE = 256
LR = 1e-3
WEIGHT_DECAY = 1e-6
TEMPERATURE = 0.2
PROJ_DIM = 64
HEAD_STEPS = 300
HEAD_LR = 0.05
HEAD_L2 = 1e-3
HEAD_BLOCK_BYTES = 32 * 2 ** 20  # the shards gathered at once by train_heads (a memory bound, not a hyperparameter)


class Encoder(nn.Module):
    """Conv trunk -> global average pool -> d-dim representation; ``project`` is the SimCLR head."""

    def __init__(self, in_channels: int, dim: int = 128):
        super().__init__()
        w = 32

        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.trunk = nn.Sequential(*block(in_channels, w, 1), *block(w, 2 * w, 2), *block(2 * w, 2 * w, 1),
                                   *block(2 * w, 4 * w, 2), *block(4 * w, dim, 1),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projection = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, PROJ_DIM))
        self.in_channels, self.dim = in_channels, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy over the 2B views of a batch."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def train_extractor(images: torch.Tensor, *, dim: int = 128, epochs: int = 30, seed: int = 0,
                    batch_size: int = BATCH_SIZE, device: str = "cpu",
                    checkpoint_path: Optional[str | os.PathLike] = None, fingerprint: str = "",
                    progress: Optional[Callable[[int, int, float], None]] = None) -> dict:
    """Train the encoder on PUBLIC, unlabelled ``images`` (N, C, H, W); returns the frozen extractor
    as a plain dict (``state``, ``dim``, ``in_channels``, ``mean``, ``std``) for ``load_extractor``.

    With ``checkpoint_path`` the state is saved atomically after every epoch and a matching
    checkpoint (same fingerprint) is resumed, or reused as is when finished.
    """
    device = torch.device(device)
    in_channels = images.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, TAG_EXTRACTOR, 0))
        model = Encoder(in_channels, dim)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    gen = torch.Generator().manual_seed(derive_seed(seed, TAG_EXTRACTOR, 1))
    start = 0
    settings = {"dim": dim, "epochs": epochs, "seed": seed, "batch_size": batch_size, "n": int(len(images))}
    ckpt = _saved(checkpoint_path, fingerprint, settings)
    if ckpt is not None:
        if ckpt.get("done"):
            return ckpt["extractor"]
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        start = int(ckpt["epoch"])
    n = len(images)
    bs = max(2, min(batch_size, n))
    steps = max(1, n // bs)
    loss_value = float("nan")
    for epoch in range(start, epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for s in range(steps):
            x = images[order[s * bs:(s + 1) * bs]].to(device, torch.float32)
            v1, v2 = contrastive_view(x, gen), contrastive_view(x, gen)
            loss = nt_xent(model.projection(model(v1)), model.projection(model(v2)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        loss_value = total / steps
        if checkpoint_path is not None and epoch + 1 < epochs:
            save_checkpoint(checkpoint_path, {
                "format": EXTRACTOR_FORMAT, "fingerprint": fingerprint, "settings": settings, "done": False,
                "epoch": epoch + 1, "model": {k: v.cpu() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "generator": gen.get_state()})
        if progress is not None:
            progress(epoch + 1, epochs, loss_value)
    model.eval()
    trunk_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    extractor = {"state": trunk_state, "dim": dim, "in_channels": in_channels,
                 "mean": torch.zeros(dim), "std": torch.ones(dim)}
    raw = embed(extractor, images, device=device, standardise=False)
    extractor["mean"], extractor["std"] = raw.mean(0), raw.std(0).clamp_min(1e-6)
    _save_finished(checkpoint_path, fingerprint, settings, extractor)
    return extractor


def scattering_extractor(images: torch.Tensor, *, J: int = 2, L: int = 8, device: str | torch.device = "cpu",
                         checkpoint_path: Optional[str | os.PathLike] = None, fingerprint: str = "",
                         progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """The scattering feature map of PUBLIC ``images`` (N, C, H, W): nothing is trained, the public
    images only give each coefficient's mean and std for standardising. With ``checkpoint_path``
    it is saved like a finished ``train_extractor`` and a matching file is reused as is."""
    settings = {"kind": "scattering", "J": J, "L": L, "n": int(len(images)), "definition": scattering.DEFINITION}
    cached = _saved(checkpoint_path, fingerprint, settings)
    if cached is not None and cached.get("done"):
        return cached["extractor"]
    extractor = {"kind": "scattering", "J": J, "L": L, "in_channels": int(images.shape[1])}
    raw = embed(extractor, images, device=device, standardise=False, progress=progress)
    extractor |= {"dim": int(raw.shape[1]), "mean": raw.mean(0), "std": raw.std(0).clamp_min(1e-6)}
    _save_finished(checkpoint_path, fingerprint, settings, extractor)
    return extractor


def _saved(path, fingerprint: str, settings: dict) -> Optional[dict]:
    """The extractor checkpoint at ``path`` when there is one (it must be this run's, with these
    settings: ``CheckpointMismatch`` otherwise), else None."""
    if path is None or not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path, EXTRACTOR_FORMAT)
    check_resumable(ckpt, path, fingerprint=fingerprint, settings=settings)
    return ckpt


def _save_finished(path, fingerprint: str, settings: dict, extractor: dict) -> None:
    if path is not None:
        save_checkpoint(path, {"format": EXTRACTOR_FORMAT, "fingerprint": fingerprint, "settings": settings,
                               "done": True, "extractor": extractor})


def load_extractor(extractor: dict, device: str | torch.device = "cpu") -> Encoder:
    model = Encoder(int(extractor["in_channels"]), int(extractor["dim"]))
    model.load_state_dict(extractor["state"])
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()


@torch.no_grad()
def embed(extractor: dict, images, *, batch_size: int = 512, device: str | torch.device = "cpu",
          standardise: bool = True, progress: Optional[Callable[[int, int], None]] = None,
          prepare: Optional[Callable] = None) -> torch.Tensor:
    """(N, C, H, W) images -> (N, d) float32 features on CPU, standardised with the public-pool
    statistics stored in the extractor. ``progress(images done, total)`` after each batch. With
    ``prepare``, ``images`` is anything sliceable (uint8 arrays) and ``prepare`` turns each batch
    into float images: the float copy of every image (188 MB for 60 000 28×28 ones) never exists
    beside the features."""
    prepare = prepare or (lambda batch: batch)
    if extractor.get("kind") == "scattering":
        def features_of(x):
            return scattering.scatter(x, J=int(extractor["J"]), L=int(extractor["L"])).flatten(1)
    else:
        features_of = load_extractor(extractor, device)
    out = None  # filled batch by batch: N·d can be GBs, so never a second copy (no list + cat)
    for i in range(0, len(images), batch_size):
        part = features_of(prepare(images[i:i + batch_size]).to(device, torch.float32)).cpu()
        if out is None:
            out = torch.empty((len(images), part.shape[1]), dtype=part.dtype)
        out[i:i + len(part)] = part
        if progress is not None:
            progress(min(i + batch_size, len(images)), len(images))
    if out is None:
        return torch.zeros(0, int(extractor.get("dim", 0)))
    return out.sub_(extractor["mean"]).div_(extractor["std"]) if standardise else out  # in place, likewise


def embed_cached(path: str | os.PathLike, compute: Callable[[int, int], torch.Tensor], total: int, *,
                 fingerprint: str, settings: dict, private: bool, meta: Optional[dict] = None,
                 chunk: int = 2048, progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Rows ``0..total`` of ``compute(start, stop) -> (stop - start, d)`` features, computed once:
    kept at ``path`` with ``meta``, readable by the owner only (as every file of a run directory,
    whether ``private`` images or public ones), saved about every minute while computing, and
    resumed from the rows saved."""
    import time

    parts, done = [], 0
    if os.path.exists(path):
        saved = load_checkpoint(path, CACHE_FORMAT)
        check_resumable(saved, path, fingerprint=fingerprint, settings=settings)
        parts, done = [saved["features"]], int(saved["rows"])
    last_save = time.monotonic()
    while done < total:
        stop = min(total, done + chunk)
        parts.append(compute(done, stop))
        done = stop
        if done == total or time.monotonic() - last_save > CACHE_SAVE_SECONDS:
            parts = [torch.cat(parts)]
            save_checkpoint(path, {"format": CACHE_FORMAT, "fingerprint": fingerprint, "settings": settings,
                                   "rows": done, "features": parts[0], **(meta or {})})  # 0600: in the run dir
            last_save = time.monotonic()
        if progress is not None:
            progress(done, total)
    if not parts:
        return compute(0, 0)
    return torch.cat(parts) if len(parts) != 1 else parts[0]


def train_heads(features: torch.Tensor, labels: torch.Tensor, teacher_of: np.ndarray, teacher_ids,
                num_classes: int, *, steps: int = HEAD_STEPS, lr: float = HEAD_LR, l2: float = HEAD_L2,
                device: str | torch.device = "cpu", progress: Optional[Callable[[int, int], None]] = None,
                block_bytes: int = HEAD_BLOCK_BYTES) -> dict:
    """K logistic-regression heads, teacher ``teacher_ids[k]`` on rows with ``teacher_of == id`` only.

    Returns ``{"teacher_ids", "weight" (K, d, m), "bias" (K, m)}``. Full-batch Adam on the sum of
    per-teacher mean cross-entropies + ``l2``·||W_k||²: each head's gradient, and so its update,
    depends on its own shard alone. So the teachers are trained in blocks, one after the other,
    each block's rows gathered only while it trains (about ``block_bytes``; the (K, n, d) copy of
    every shard at once would double the features' memory); every block pads its shards to the
    same length, the largest shard's, so a block computes exactly what it would within all K.
    """
    ids = [int(t) for t in teacher_ids]
    teacher_of = np.asarray(teacher_of)
    shards = [np.flatnonzero(teacher_of == t) for t in ids]
    k, d = len(ids), features.shape[1]
    n_max = max([1] + [len(s) for s in shards])
    per_block = max(1, block_bytes // max(1, n_max * d * features.element_size()))
    blocks = [range(a, min(k, a + per_block)) for a in range(0, k, per_block)] or [range(0)]
    weights, biases = [], []
    for b, block in enumerate(blocks):
        def report(step, _steps, _b=b):  # one bar over every block: steps·(blocks done + this block's share)
            if progress is not None:
                progress((_b * steps + step) // len(blocks), steps)
        w, bias = _train_head_block(features, labels, [shards[i] for i in block], n_max, num_classes,
                                    steps=steps, lr=lr, l2=l2, device=device, progress=report)
        weights.append(w)
        biases.append(bias)
    return {"format": HEADS_FORMAT, "teacher_ids": ids, "weight": torch.cat(weights), "bias": torch.cat(biases)}


def _train_head_block(features: torch.Tensor, labels: torch.Tensor, shards: list, n_max: int, num_classes: int, *,
                      steps: int, lr: float, l2: float, device, progress) -> tuple[torch.Tensor, torch.Tensor]:
    """``train_heads`` for the teachers of ``shards`` (row indices), each padded to ``n_max`` rows
    (masked out of the loss): (weight (B, d, m), bias (B, m)) on CPU. Heads start at zero (the
    objective is convex), so the result is deterministic."""
    k, d = len(shards), features.shape[1]
    index = torch.zeros((k, n_max), dtype=torch.long)
    mask = torch.zeros((k, n_max))
    for i, s in enumerate(shards):
        index[i, :len(s)] = torch.from_numpy(s)
        mask[i, :len(s)] = 1.0
    x = features[index].to(device)  # (B, n, d): each teacher's own rows only (padding masked out)
    y = labels[index].to(device)
    mask = mask.to(device)
    counts = mask.sum(1).clamp_min(1.0)
    # The weights are held transposed, (B, m, d): logits come out as (B, m, n), and the weight
    # gradient as (B, m, n) @ (B, n, d). Both products are several times faster on CPU than with
    # (B, d, m), whose gradient multiplies by x transposed; element-wise (Adam) nothing changes.
    weight_t = torch.zeros((k, num_classes, d), device=device, requires_grad=True)
    bias = torch.zeros((k, num_classes), device=device, requires_grad=True)
    opt = torch.optim.Adam([weight_t, bias], lr=lr)
    for step in range(steps):
        logits = torch.bmm(weight_t, x.transpose(1, 2)) + bias.unsqueeze(2)  # (B, m, n)
        ce = F.cross_entropy(logits, y, reduction="none")  # (B, n): class axis 1
        loss = ((ce * mask).sum(1) / counts).sum() + l2 * weight_t.pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step + 1, steps)
    return weight_t.detach().transpose(1, 2).contiguous().cpu(), bias.detach().cpu()


@torch.no_grad()
def predict_heads(heads: dict, features: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
    """Each head's class (argmax, first index on ties) for each feature row: (K, Q) int64."""
    w, b = heads["weight"].float(), heads["bias"].float()
    out = torch.empty((w.shape[0], len(features)), dtype=torch.int64)
    for i in range(0, len(features), chunk_size):
        f = features[i:i + chunk_size].float()
        out[:, i:i + chunk_size] = (torch.einsum("qd,kdm->kqm", f, w) + b.unsqueeze(1)).argmax(-1)
    return out
