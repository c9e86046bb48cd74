"""Training the batched ensemble: each teacher on batches of its own shard only.

Batches are drawn per teacher from ``(seed, teacher id, epoch)``, the loss is a sum of
per-teacher means and ``BatchedOptimizer`` updates each teacher as ``torch.optim`` would update it
alone, so teacher k's weights are a function of shard k alone and the result does not depend on
how teachers are grouped, which process trains them, or where a run was interrupted and resumed.
On CPU, teachers train in cache-sized groups (``default_group_size``); see
benchmarks/TEACHERS_RESULTS.txt for what was measured.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..nets.augment import shift_images
from ..io import check_resumable, load_checkpoint, save_checkpoint
from ..seeds import TAG_SHUFFLE
from .ensemble import TeacherEnsemble, init_teachers, part, widest_activation
from .optim import BatchedOptimizer

CHECKPOINT_FORMAT = "pate.ensemble/1"
Progress = Callable[[int, int, int, int, float, float], None]


# ----------------------------------------------------------------------------- batches


def shards_of(teacher_of: np.ndarray | torch.Tensor, num_teachers: int) -> list[np.ndarray]:
    """Record indices of each teacher's shard, ascending."""
    owner = np.asarray(teacher_of.cpu() if torch.is_tensor(teacher_of) else teacher_of).astype(np.int64)
    if owner.ndim != 1 or (owner.size and (owner.min() < 0 or owner.max() >= num_teachers)):
        raise ValueError(f"teacher_of must be a vector of ids in [0, {num_teachers}).")
    order = np.argsort(owner, kind="stable")
    return np.split(order, np.cumsum(np.bincount(owner, minlength=num_teachers))[:-1])


def epoch_batches(shards: Sequence[np.ndarray], teacher_ids: Sequence[int], *, seed: int, epoch: int,
                  batch_size: int, augment: bool, max_shift: int = 2):
    """Index batches of one epoch for ``teacher_ids``: ``index`` (S, G, B) int64, ``mask`` (S, G, B)
    bool (False = padding slot, zero loss weight), ``shifts`` (S, G, B, 2) int64 or None.

    Teacher t's order and shifts come from ``(seed, t, epoch)`` only; a shard of n records fills
    ceil(n / B) steps, the last one partly; later steps are all padding for that teacher.
    """
    sizes = [len(shards[t]) for t in teacher_ids]
    # A shard may be empty (shards are drawn per record by a keyed hash): that teacher's slots are
    # all padding, so it learns nothing from any record (no loss, no gradient).
    steps = max(1, -(-max(sizes) // batch_size))
    slots = steps * batch_size
    index = np.zeros((len(teacher_ids), slots), np.int64)
    mask = np.zeros((len(teacher_ids), slots), bool)
    shifts = np.zeros((len(teacher_ids), slots, 2), np.int64) if augment else None
    for g, t in enumerate(teacher_ids):
        rng = np.random.default_rng([seed, TAG_SHUFFLE, t, epoch])
        n = sizes[g]
        index[g, :n] = shards[t][rng.permutation(n)]
        index[g, n:] = shards[t][0] if n else 0
        mask[g, :n] = True
        if augment:
            shifts[g, :n] = rng.integers(-max_shift, max_shift + 1, size=(n, 2))

    def by_step(a):
        return torch.from_numpy(np.ascontiguousarray(a.reshape(len(teacher_ids), steps, batch_size, *a.shape[2:])
                                                     .swapaxes(0, 1)))
    return by_step(index), by_step(mask), (by_step(shifts) if augment else None)


# ----------------------------------------------------------------------------- checkpoints


def ensemble_from_checkpoint(checkpoint: dict | str | os.PathLike) -> TeacherEnsemble:
    """The trained ensemble stored in a checkpoint (a dict or a path)."""
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint, CHECKPOINT_FORMAT)
    ensemble = TeacherEnsemble(teacher_ids=checkpoint["teacher_ids"], **checkpoint["spec"])
    ensemble.load_state_dict(checkpoint["model"])
    return ensemble


def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))


def _shards_digest(shards: Sequence[np.ndarray], teacher_ids: Sequence[int]) -> str:
    digest = hashlib.sha256()
    for t in teacher_ids:
        digest.update(np.asarray(shards[t], np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def _resume(path, fingerprint: str, settings: dict, ensemble: TeacherEnsemble, opt: BatchedOptimizer) -> int:
    """Load a matching checkpoint into ``ensemble`` and ``opt``; the epoch to continue from."""
    ckpt = load_checkpoint(path, CHECKPOINT_FORMAT)
    check_resumable(ckpt, path, fingerprint=fingerprint, settings=settings)
    ensemble.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    _set_rng_state(ckpt["rng"])
    return int(ckpt["epoch"])


def _save(path, fingerprint: str, settings: dict, ensemble: TeacherEnsemble, opt: BatchedOptimizer,
          epoch: int, epochs: int) -> None:
    save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "settings": settings, "spec": ensemble.spec(),
        "teacher_ids": list(ensemble.teacher_ids), "epoch": epoch, "epochs": epochs,
        "model": {k: v.detach().cpu() for k, v in ensemble.state_dict().items()},
        "optimizer": opt.state_dict(), "rng": _rng_state()})


# ----------------------------------------------------------------------------- training


def _print_progress(epoch, epochs, step, steps, loss, images_per_s):
    if step == steps or step % max(1, steps // 10) == 0:
        print(f"epoch {epoch}/{epochs} step {step}/{steps} loss {loss:.4f} {images_per_s:,.0f} img/s",
              file=sys.stderr, flush=True)


def default_group_size(ensemble: TeacherEnsemble, batch_size: int, device: torch.device) -> int:
    """Teachers per training group. On CPU, groups whose widest activation fits in ~16 MiB of cache
    (measured: 8 cnn-small teachers x 32 images beat all 250 at once by ~1.3x, the activations of
    a whole ensemble stream through DRAM). On CUDA, all teachers unless their activations would
    exceed ~8 GiB."""
    per_teacher = 4 * widest_activation(ensemble) * batch_size
    budget = 16 << 20 if torch.device(device).type == "cpu" else (8 << 30) // 6  # ~6 saved tensors of that size
    return max(1, min(ensemble.num_teachers, budget // per_teacher))


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, batch_size: int, epochs: int,
                  checkpoint_every: int) -> None:
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be (N, C, H, W) with H == W. Found {tuple(images.shape)}.")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be ({images.shape[0]},). Found {tuple(labels.shape)}.")
    if batch_size < 1 or epochs < 0 or checkpoint_every < 1:
        raise ValueError("batch_size and checkpoint_every must be positive and epochs non-negative")


def train_ensemble(images: torch.Tensor, labels: torch.Tensor, teacher_of, num_teachers: int, *,
                   arch: str, num_classes: int, epochs: int, batch_size: int = 32, lr: float = 0.05,
                   weight_decay: float = 0.0, momentum: float = 0.9, optimizer: str = "sgd", seed: int = 0,
                   device: str | torch.device = "cpu", augment: bool = False,
                   teacher_ids: Sequence[int] | None = None, group_size: int | None = None,
                   checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int = 1,
                   resume: bool = True, fingerprint: str = "", progress: Progress | bool | None = None,
                   amp: bool = False) -> tuple[TeacherEnsemble, dict]:
    """Train teachers ``teacher_ids`` (default all ``num_teachers``), each on its own shard only.

    ``images`` (N, C, H, W) float, normalised; ``labels`` (N,) int64; ``teacher_of`` (N,) the
    shard of each record. Teachers are trained ``group_size`` at a time (default
    ``default_group_size``); the result does not depend on the grouping nor on the subset. With
    ``checkpoint_path`` a checkpoint is written every ``checkpoint_every`` epochs and after the last
    one; with ``resume`` an existing checkpoint is continued (it must carry the same
    ``fingerprint``, hyper-parameters and teachers, else ``CheckpointMismatch``), giving the same
    result as an uninterrupted run. ``progress(epoch, epochs, step, steps, loss, images_per_s)`` is
    called after every step (1-based epoch and step); ``True`` prints to stderr. ``amp`` uses bf16
    autocast on CUDA (ignored on CPU). Returns the ensemble (on ``device``) and an info dict.
    """
    _check_inputs(images, labels, batch_size, epochs, checkpoint_every)
    shards = shards_of(teacher_of, num_teachers)
    if len(np.concatenate(shards)) != images.shape[0]:
        raise ValueError(f"teacher_of must hold one id per image ({images.shape[0]}).")
    ids = list(range(num_teachers)) if teacher_ids is None else [int(t) for t in teacher_ids]
    if any(not 0 <= t < num_teachers for t in ids):
        raise ValueError(f"teacher_ids must be in [0, {num_teachers}).")
    device = torch.device(device)
    ensemble = TeacherEnsemble(arch, images.shape[1], num_classes, images.shape[-1], ids)
    init_teachers(ensemble, seed).to(device)
    opt = BatchedOptimizer(list(ensemble.weights) + list(ensemble.biases), name=optimizer, lr=lr,
                           momentum=momentum, weight_decay=weight_decay)
    amp = amp and device.type == "cuda"
    settings = {**ensemble.spec(), "num_teachers": num_teachers, "batch_size": batch_size, "lr": lr,
                "weight_decay": weight_decay, "momentum": momentum, "optimizer": optimizer, "seed": seed,
                "augment": augment, "amp": amp, "shards": _shards_digest(shards, ids), "teacher_ids": ids}
    start = 0
    if checkpoint_path is not None and resume and Path(checkpoint_path).exists():
        start = _resume(checkpoint_path, fingerprint, settings, ensemble, opt)

    report = _print_progress if progress is True else (progress or None)
    group = group_size or default_group_size(ensemble, batch_size, device)
    slices = [slice(a, min(a + group, len(ids))) for a in range(0, len(ids), group)]
    data = (images.to(device, torch.float32), labels.to(device, torch.int64))
    teacher_loss = torch.full((len(ids),), float("nan"), dtype=torch.float64)
    info = {"teacher_ids": ids, "epochs": epochs, "start_epoch": start, "epoch_loss": [],
            "shard_sizes": [len(shards[t]) for t in ids], "seconds": 0.0, "images": 0}
    began = time.perf_counter()
    for epoch in range(start, epochs):
        plans = [epoch_batches(shards, ids[sl], seed=seed, epoch=epoch, batch_size=batch_size, augment=augment)
                 for sl in slices]
        loss_sum = _train_epoch(ensemble, opt, slices, plans, data, device, amp, report, epoch, epochs, info, began)
        teacher_loss = loss_sum / torch.tensor(info["shard_sizes"], dtype=torch.float64)
        info["epoch_loss"].append(float(teacher_loss.mean()))
        if checkpoint_path is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
            _save(checkpoint_path, fingerprint, settings, ensemble, opt, epoch + 1, epochs)
    info["seconds"] = time.perf_counter() - began
    info["images_per_s"] = info["images"] / max(info["seconds"], 1e-9)
    info["teacher_loss"] = teacher_loss.tolist()
    return ensemble, info


def _train_epoch(ensemble, opt, slices, plans, data, device, amp, report, epoch, epochs, info, began):
    """One epoch of every group; returns each teacher's summed loss over its real slots (float64)."""
    x_all, y_all = data
    params = list(ensemble.weights) + list(ensemble.biases)
    steps, done = sum(p[0].shape[0] for p in plans), 0
    loss_sum = torch.zeros(ensemble.num_teachers, dtype=torch.float64)
    if len(x_all) == 0:  # every shard empty (a total_budget filter left every record out): nothing to learn
        return loss_sum
    for sl, (index, mask, shifts) in zip(slices, plans):
        # A group trains as its own small module: slicing the big parameters would make every
        # backward allocate and zero a gradient for all K teachers.
        grouped = len(slices) > 1
        group, group_opt = (part(ensemble, sl), opt.part(sl)) if grouped else (ensemble, opt)
        if grouped:
            group_opt.params = list(group.weights) + list(group.biases)
        for s in range(index.shape[0]):
            per = _train_step(group, group_opt, x_all, y_all, index[s].to(device), mask[s].to(device),
                              None if shifts is None else shifts[s], amp)
            loss_sum[sl] += per.detach().double().cpu() * mask[s].sum(1)
            done += 1
            info["images"] += int(mask[s].sum())
            if report:
                active = mask[s].any(1)
                report(epoch + 1, epochs, done, steps, float(per.detach().cpu()[active].mean()),
                       info["images"] / max(time.perf_counter() - began, 1e-9))
        if grouped:
            with torch.no_grad():
                for mine, theirs in zip(params, group_opt.params):
                    mine[sl].copy_(theirs)
            opt.absorb(sl, group_opt)
    return loss_sum


def _train_step(ensemble, opt, x_all, y_all, index, mask, shifts, amp) -> torch.Tensor:
    """One step for all teachers of ``ensemble``: loss = Σ_k mean CE over teacher k's real slots."""
    x, y = x_all[index], y_all[index]
    if shifts is not None:
        x = shift_images(x, shifts)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        logits = ensemble(x)
    ce = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(mask.shape)
    weight = mask.to(ce.dtype)
    per_teacher = (ce * weight).sum(1) / weight.sum(1).clamp(min=1)
    for p in opt.params:
        if p.grad is not None:
            p.grad.zero_()  # in place: a fresh K-teacher gradient every step costs page faults
    per_teacher.sum().backward()
    opt.step(slice(None), mask.any(1))
    return per_teacher
