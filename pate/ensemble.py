"""K teachers trained as one batched model, and their votes (Papernot et al. 2017, §2.1).

The K networks share one architecture (``pate.models.layer_plan``) and are evaluated as a single
module: every conv layer is one grouped convolution (``groups=K``, teachers' channels stacked,
channels-last), every dense layer one ``torch.baddbmm`` over the teacher dimension. Teacher k
only ever sees its own shard: batches are drawn per teacher, the loss is a sum of per-teacher
means, and a batched SGD/Adam updates each teacher exactly as ``torch.optim`` would update that
teacher alone, so the ensemble equals K separately trained ``build_model`` networks.
On CPU, teachers train in cache-sized groups (``default_group_size``); see
benchmarks/TEACHERS_RESULTS.txt for what was measured.

All randomness (initial weights, shuffling, augmentation shifts) is derived from
``(seed, teacher id[, epoch])``: results do not depend on which subset of teachers a process
trains, nor on where a run was interrupted and resumed.
"""
from __future__ import annotations

import copy
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pate import checkpoint as checkpoint_io
from pate.models import ConvStep, build_model, layer_plan

CHECKPOINT_FORMAT = "pate.ensemble/1"
_TAG_INIT, _TAG_SHUFFLE = 1, 2
Progress = Callable[[int, int, int, int, float, float], None]


class CheckpointMismatch(checkpoint_io.CheckpointError):
    """A checkpoint was written by a run with a different configuration or teacher set."""


# --------------------------------------------------------------------------------------------
# The batched module
# --------------------------------------------------------------------------------------------


class TeacherEnsemble(nn.Module):
    """Teachers ``teacher_ids`` of one architecture: (K, B, C, H, W) -> (K, B, num_classes).

    Parameters hold a leading teacher dimension: ``weights[i][k]`` is the weight of layer i
    of the k-th teacher here (teacher id ``teacher_ids[k]``), shaped as in ``build_model``.
    """

    def __init__(self, arch: str, in_channels: int, num_classes: int, image_size: int,
                 teacher_ids: int | Sequence[int]):
        super().__init__()
        ids = list(range(teacher_ids)) if isinstance(teacher_ids, int) else [int(t) for t in teacher_ids]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
            raise ValueError(f"teacher_ids must be distinct non-negative ids, at least one. Found {ids[:8]}.")
        self.arch, self.in_channels, self.num_classes, self.image_size = arch, in_channels, num_classes, image_size
        self.plan = layer_plan(arch, in_channels, num_classes, image_size)
        self.teacher_ids = tuple(ids)
        k = len(ids)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for step in self.plan:
            if isinstance(step, ConvStep):
                shape = (k, step.out_channels, step.in_channels, step.kernel, step.kernel)
                self.weights.append(nn.Parameter(torch.zeros(shape)))
                self.biases.append(nn.Parameter(torch.zeros(k, step.out_channels)))
            else:
                self.weights.append(nn.Parameter(torch.zeros(k, step.out_features, step.in_features)))
                self.biases.append(nn.Parameter(torch.zeros(k, step.out_features)))

    @property
    def num_teachers(self) -> int:
        return len(self.teacher_ids)

    def spec(self) -> dict:
        return {"arch": self.arch, "in_channels": self.in_channels, "num_classes": self.num_classes,
                "image_size": self.image_size}

    def forward(self, x: torch.Tensor, teachers: slice | None = None) -> torch.Tensor:
        """Logits of the teachers in ``teachers`` (a slice of positions, default all).

        ``x`` is (G, B, C, H, W), one batch per teacher, or (B, C, H, W), the same images
        for every teacher (voting).
        """
        sl = teachers or slice(0, self.num_teachers)
        g = len(range(*sl.indices(self.num_teachers)))
        shared = x.dim() == 4
        if not shared and x.shape[0] != g:
            raise ValueError(f"input holds batches for {x.shape[0]} teachers, expected {g}")
        b = x.shape[0] if shared else x.shape[1]
        h = x
        dense_in = None
        for i, step in enumerate(self.plan):
            w, bias = self.weights[i][sl], self.biases[i][sl]
            if isinstance(step, ConvStep):
                wg = w.reshape(g * step.out_channels, step.in_channels, step.kernel, step.kernel)
                if i == 0 and shared:
                    # Every teacher sees the same images: one ordinary conv with K*out filters.
                    h = F.conv2d(h.contiguous(memory_format=torch.channels_last), wg, bias.reshape(-1),
                                 padding=step.padding)
                else:
                    if i == 0:
                        h = _stack_channels_last(h)
                    h = F.conv2d(h, wg, bias.reshape(-1), padding=step.padding, groups=g)
                if step.pool:  # relu(maxpool(h)) == maxpool(relu(h)) in value and gradient, 4x less traffic
                    h = F.max_pool2d(h, 2)
                h = F.relu(h)
            else:
                if dense_in is None:  # leave the grouped layout: (B, G*C, H, W) -> (G, B, C*H*W)
                    if i == 0:
                        h = h.flatten(-3).expand(g, b, -1) if shared else h.flatten(-3)
                    else:
                        h = h.unflatten(1, (g, -1)).transpose(0, 1).reshape(g, b, -1)
                    dense_in = True
                h = torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
                if step.relu:
                    h = F.relu(h)
        return h


def _stack_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(G, B, C, H, W) -> (B, G*C, H, W) in channels-last memory, as the grouped conv wants it."""
    g, b, c, hh, ww = x.shape
    stacked = x.permute(1, 3, 4, 0, 2).contiguous().view(b, hh, ww, g * c)
    return stacked.permute(0, 3, 1, 2)


def _seed64(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, np.uint64)[0]) >> 1


def init_teachers(ensemble: TeacherEnsemble, seed: int) -> TeacherEnsemble:
    """Initialise each teacher from ``(seed, teacher id)`` with PyTorch's default Conv2d/Linear
    distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    with torch.no_grad():
        for pos, tid in enumerate(ensemble.teacher_ids):
            gen = torch.Generator().manual_seed(_seed64(seed, _TAG_INIT, tid))
            for w, b in zip(ensemble.weights, ensemble.biases):
                bound = 1.0 / float(np.sqrt(w[pos][0].numel()))
                w[pos].copy_(torch.empty(w.shape[1:]).uniform_(-bound, bound, generator=gen))
                b[pos].copy_(torch.empty(b.shape[1:]).uniform_(-bound, bound, generator=gen))
    return ensemble


def extract_teacher(ensemble: TeacherEnsemble, k: int) -> nn.Sequential:
    """The ``build_model`` network holding the weights of the teacher at position ``k``
    (its id is ``ensemble.teacher_ids[k]``)."""
    model = build_model(ensemble.arch, ensemble.in_channels, ensemble.num_classes, ensemble.image_size)
    with torch.no_grad():
        for step, w, b in zip(ensemble.plan, ensemble.weights, ensemble.biases):
            model[step.index].weight.copy_(w[k])
            model[step.index].bias.copy_(b[k])
    return model.to(ensemble.weights[0].device)


def load_teachers(ensemble: TeacherEnsemble, models: Sequence[nn.Module]) -> TeacherEnsemble:
    """Copy ``models[k]`` (``build_model`` networks) into position k of ``ensemble``."""
    if len(models) != ensemble.num_teachers:
        raise ValueError(f"got {len(models)} models for an ensemble of {ensemble.num_teachers} teachers")
    with torch.no_grad():
        for k, model in enumerate(models):
            for step, w, b in zip(ensemble.plan, ensemble.weights, ensemble.biases):
                w[k].copy_(model[step.index].weight)
                b[k].copy_(model[step.index].bias)
    return ensemble


# --------------------------------------------------------------------------------------------
# Per-teacher optimiser: torch.optim.SGD / Adam semantics, one teacher at a time in effect
# --------------------------------------------------------------------------------------------


class BatchedOptimizer:
    """SGD (momentum, L2 weight decay) or Adam over parameters with a leading teacher dim.

    ``step(sl, active)`` updates only teachers at positions ``sl`` whose ``active`` flag is set,
    exactly as ``torch.optim.SGD``/``Adam`` would update each of them alone; an inactive teacher
    (no record of its shard in this step) keeps its weights and state untouched.
    """

    def __init__(self, params: Sequence[nn.Parameter], *, name: str, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if name not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam'. Found {name!r}.")
        self.params, self.name, self.lr, self.momentum = list(params), name, lr, momentum
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        k = self.params[0].shape[0]
        self.state: dict[str, list[torch.Tensor] | torch.Tensor] = {"step": torch.zeros(k, dtype=torch.float64)}
        if name == "sgd" and momentum:
            self.state["momentum"] = [torch.zeros_like(p) for p in self.params]
        if name == "adam":
            self.state["exp_avg"] = [torch.zeros_like(p) for p in self.params]
            self.state["exp_avg_sq"] = [torch.zeros_like(p) for p in self.params]

    def state_dict(self) -> dict:
        return {key: (value.cpu() if torch.is_tensor(value) else [v.cpu() for v in value])
                for key, value in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.state):
            raise CheckpointMismatch(f"optimizer state holds {sorted(state)}, expected {sorted(self.state)}")
        for key, value in state.items():
            if torch.is_tensor(value):
                self.state[key].copy_(value)
            else:
                for mine, theirs in zip(self.state[key], value):
                    mine.copy_(theirs)

    def part(self, sl: slice) -> "BatchedOptimizer":
        """An optimiser for the teachers at positions ``sl`` (caller sets ``params``), with a copy
        of their state; ``absorb`` writes it back."""
        other = copy.copy(self)
        other.state = {key: (value[sl].clone() if torch.is_tensor(value) else [v[sl].clone() for v in value])
                       for key, value in self.state.items()}
        return other

    @torch.no_grad()
    def absorb(self, sl: slice, part: "BatchedOptimizer") -> None:
        for key, value in self.state.items():
            if torch.is_tensor(value):
                value[sl] = part.state[key]
            else:
                for mine, theirs in zip(value, part.state[key]):
                    mine[sl] = theirs

    @torch.no_grad()
    def step(self, sl: slice, active: torch.Tensor) -> None:
        every = bool(active.all())
        step = self.state["step"]
        step[sl] += active.to(step)
        for i, p in enumerate(self.params):
            pv, grad = p[sl], p.grad[sl]
            mask = active.view(-1, *([1] * (pv.dim() - 1)))
            d = grad.add(pv, alpha=self.weight_decay) if self.weight_decay else grad
            if self.name == "sgd":
                if self.momentum:
                    buf = self.state["momentum"][i][sl]
                    new = buf.mul(self.momentum).add_(d)
                    buf.copy_(new if every else torch.where(mask, new, buf))
                    d = buf
                upd = d.mul(self.lr)
            else:
                b1, b2 = self.betas
                m, v = self.state["exp_avg"][i][sl], self.state["exp_avg_sq"][i][sl]
                new_m = m.lerp(d, 1 - b1)
                new_v = v.mul(b2).addcmul_(d, d, value=1 - b2)
                m.copy_(new_m if every else torch.where(mask, new_m, m))
                v.copy_(new_v if every else torch.where(mask, new_v, v))
                t = step[sl].clamp(min=1).to(pv.device)
                bc1 = (1 - b1 ** t).to(pv.dtype).view_as(mask)
                bc2 = (1 - b2 ** t).to(pv.dtype).view_as(mask)
                upd = m.div(v.sqrt().div_(bc2.sqrt()).add_(self.eps)).mul_(self.lr / bc1)
            pv.sub_(upd if every else torch.where(mask, upd, 0.0))


# --------------------------------------------------------------------------------------------
# Batches: per teacher, from its own shard only
# --------------------------------------------------------------------------------------------


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
    if min(sizes) == 0:
        raise ValueError(f"teacher {teacher_ids[sizes.index(0)]} has an empty shard")
    steps = -(-max(sizes) // batch_size)
    slots = steps * batch_size
    index = np.zeros((len(teacher_ids), slots), np.int64)
    mask = np.zeros((len(teacher_ids), slots), bool)
    shifts = np.zeros((len(teacher_ids), slots, 2), np.int64) if augment else None
    for g, t in enumerate(teacher_ids):
        rng = np.random.default_rng([seed, _TAG_SHUFFLE, t, epoch])
        n = sizes[g]
        index[g, :n] = shards[t][rng.permutation(n)]
        index[g, n:] = shards[t][0]
        mask[g, :n] = True
        if augment:
            shifts[g, :n] = rng.integers(-max_shift, max_shift + 1, size=(n, 2))

    def by_step(a):
        return torch.from_numpy(np.ascontiguousarray(a.reshape(len(teacher_ids), steps, batch_size, *a.shape[2:])
                                                     .swapaxes(0, 1)))
    return by_step(index), by_step(mask), (by_step(shifts) if augment else None)


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


# --------------------------------------------------------------------------------------------
# Checkpoints: plain dicts of tensors and Python values, atomic writes, weights_only loads
# --------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> None:
    """Write ``checkpoint`` atomically (``pate.checkpoint.save``)."""
    checkpoint_io.save(path, checkpoint)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by ``save_checkpoint`` (``weights_only=True``: no pickle code)."""
    checkpoint = checkpoint_io.load(path)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return checkpoint


def ensemble_from_checkpoint(checkpoint: dict | str | os.PathLike) -> TeacherEnsemble:
    """The trained ensemble stored in a checkpoint (a dict or a path)."""
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
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


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def teachers_for_rank(num_teachers: int, rank: int, world_size: int) -> list[int]:
    """The contiguous block of teacher ids that ``rank`` of ``world_size`` trains (sizes differ by ≤ 1)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}). Found {rank}.")
    base, extra = divmod(num_teachers, world_size)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (rank < extra)))


def _print_progress(epoch, epochs, step, steps, loss, images_per_s):
    if step == steps or step % max(1, steps // 10) == 0:
        print(f"epoch {epoch}/{epochs} step {step}/{steps} loss {loss:.4f} {images_per_s:,.0f} img/s",
              file=sys.stderr, flush=True)


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
    ``default_group_size``);
    the result does not depend on the grouping nor on the subset. With ``checkpoint_path`` a
    checkpoint is written every ``checkpoint_every`` epochs and after the last one; with
    ``resume`` an existing checkpoint is continued (it must carry the same ``fingerprint``,
    hyper-parameters and teachers, else ``CheckpointMismatch``), giving the same result as an
    uninterrupted run. ``progress(epoch, epochs, step, steps, loss, images_per_s)`` is called
    after every step (1-based epoch and step); ``True`` prints to stderr. ``amp`` uses bf16
    autocast on CUDA (ignored on CPU). Returns the ensemble (on ``device``) and an info dict.
    """
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be (N, C, H, W) with H == W. Found {tuple(images.shape)}.")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be ({images.shape[0]},). Found {tuple(labels.shape)}.")
    if batch_size < 1 or epochs < 0 or checkpoint_every < 1:
        raise ValueError("batch_size and checkpoint_every must be positive and epochs non-negative")
    shards = shards_of(teacher_of, num_teachers)
    if len(np.concatenate(shards)) != images.shape[0]:
        raise ValueError(f"teacher_of must hold one id per image ({images.shape[0]}).")
    ids = list(range(num_teachers)) if teacher_ids is None else [int(t) for t in teacher_ids]
    if any(not 0 <= t < num_teachers for t in ids):
        raise ValueError(f"teacher_ids must be in [0, {num_teachers}).")
    device = torch.device(device)
    ensemble = TeacherEnsemble(arch, images.shape[1], num_classes, images.shape[-1], ids)
    init_teachers(ensemble, seed).to(device)
    params = list(ensemble.weights) + list(ensemble.biases)
    opt = BatchedOptimizer(params, name=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
    config = {**ensemble.spec(), "num_teachers": num_teachers, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "momentum": momentum, "optimizer": optimizer, "seed": seed,
              "augment": augment, "amp": amp and device.type == "cuda", "shards": _shards_digest(shards, ids)}

    start = 0
    if checkpoint_path is not None and resume and Path(checkpoint_path).exists():
        ckpt = load_checkpoint(checkpoint_path)
        _check_resumable(ckpt, fingerprint, config, ids)
        ensemble.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"])
        start = ckpt["epoch"]

    report = _print_progress if progress is True else (progress or None)
    group = group_size or default_group_size(ensemble, batch_size, device)
    slices = [slice(a, min(a + group, len(ids))) for a in range(0, len(ids), group)]
    x_all, y_all = images.to(device, torch.float32), labels.to(device, torch.int64)
    teacher_loss = torch.full((len(ids),), float("nan"), dtype=torch.float64)
    info = {"teacher_ids": ids, "epochs": epochs, "start_epoch": start, "epoch_loss": [],
            "shard_sizes": [len(shards[t]) for t in ids], "seconds": 0.0, "images": 0}
    began = time.perf_counter()
    for epoch in range(start, epochs):
        plans = [epoch_batches(shards, ids[sl], seed=seed, epoch=epoch, batch_size=batch_size, augment=augment)
                 for sl in slices]
        steps, done = sum(p[0].shape[0] for p in plans), 0
        loss_sum = torch.zeros(len(ids), dtype=torch.float64)
        for sl, (index, mask, shifts) in zip(slices, plans):
            # A group trains as its own small module: slicing the big parameters would make every
            # backward allocate and zero a gradient for all K teachers.
            part, part_opt = (ensemble, opt) if len(slices) == 1 else (_part(ensemble, sl), opt.part(sl))
            if part is not ensemble:
                part_opt.params = list(part.weights) + list(part.biases)
            for s in range(index.shape[0]):
                per = _train_step(part, part_opt, x_all, y_all, index[s].to(device), mask[s].to(device),
                                  None if shifts is None else shifts[s], amp and device.type == "cuda")
                loss_sum[sl] += per.detach().double().cpu() * mask[s].sum(1)
                done += 1
                info["images"] += int(mask[s].sum())
                if report:
                    active = mask[s].any(1)
                    report(epoch + 1, epochs, done, steps, float(per.detach().cpu()[active].mean()),
                           info["images"] / max(time.perf_counter() - began, 1e-9))
            if part is not ensemble:
                with torch.no_grad():
                    for mine, theirs in zip(params, part_opt.params):
                        mine[sl].copy_(theirs)
                opt.absorb(sl, part_opt)
        teacher_loss = loss_sum / torch.tensor(info["shard_sizes"], dtype=torch.float64)
        info["epoch_loss"].append(float(teacher_loss.mean()))
        if checkpoint_path is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
            save_checkpoint(checkpoint_path, {
                "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "spec": ensemble.spec(),
                "config": config, "teacher_ids": ids, "epoch": epoch + 1, "epochs": epochs,
                "model": {k: v.detach().cpu() for k, v in ensemble.state_dict().items()},
                "optimizer": opt.state_dict(), "rng": _rng_state()})
    info["seconds"] = time.perf_counter() - began
    info["images_per_s"] = info["images"] / max(info["seconds"], 1e-9)
    info["teacher_loss"] = teacher_loss.tolist()
    return ensemble, info


def _check_resumable(ckpt: dict, fingerprint: str, config: dict, ids: list[int]) -> None:
    if ckpt["fingerprint"] != fingerprint:
        raise CheckpointMismatch("the checkpoint was written by a run with a different configuration "
                                 f"(fingerprint {ckpt['fingerprint'][:12]!r}, this run {fingerprint[:12]!r})")
    differ = sorted(k for k in set(config) | set(ckpt["config"]) if config.get(k) != ckpt["config"].get(k))
    if differ:
        raise CheckpointMismatch(f"the checkpoint was trained with different settings: {', '.join(differ)}")
    if list(ckpt["teacher_ids"]) != ids:
        raise CheckpointMismatch("the checkpoint holds a different set of teachers")


def default_group_size(ensemble: TeacherEnsemble, batch_size: int, device: torch.device) -> int:
    """Teachers per training group. On CPU, groups whose widest activation fits in ~16 MiB of cache
    (measured: 8 cnn-small teachers x 32 images beat all 250 at once by ~1.3x, the activations of
    a whole ensemble stream through DRAM). On CUDA, all teachers unless their activations would
    exceed ~8 GiB."""
    widest = max(s.out_channels * s.size * s.size if isinstance(s, ConvStep) else s.out_features
                 for s in ensemble.plan)
    per_teacher = 4 * widest * batch_size
    budget = 16 << 20 if torch.device(device).type == "cpu" else (8 << 30) // 6  # ~6 saved tensors of that size
    return max(1, min(ensemble.num_teachers, budget // per_teacher))


def _part(ensemble: TeacherEnsemble, sl: slice) -> TeacherEnsemble:
    """A copy of the teachers at positions ``sl``, with their own parameters."""
    part = TeacherEnsemble(teacher_ids=ensemble.teacher_ids[sl], **ensemble.spec())
    part.load_state_dict({k: v[sl] for k, v in ensemble.state_dict().items()})
    return part.to(ensemble.weights[0].device)


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


# --------------------------------------------------------------------------------------------
# Distributed scale-out: each rank trains teachers_for_rank(...), the parts are merged
# --------------------------------------------------------------------------------------------


def merge_ensembles(parts: Sequence[TeacherEnsemble]) -> TeacherEnsemble:
    """One ensemble holding the teachers of ``parts`` (same architecture, disjoint ids), by id."""
    spec = parts[0].spec()
    if any(p.spec() != spec for p in parts):
        raise ValueError("cannot merge ensembles of different architectures")
    owner = sorted((t, i, k) for i, p in enumerate(parts) for k, t in enumerate(p.teacher_ids))
    merged = TeacherEnsemble(teacher_ids=[t for t, _, _ in owner], **spec)
    with torch.no_grad():
        for name, tensor in merged.state_dict().items():
            tensor.copy_(torch.stack([parts[i].state_dict()[name][k].cpu() for _, i, k in owner]))
    return merged


def all_gather_ensemble(ensemble: TeacherEnsemble, num_teachers: int, group=None) -> TeacherEnsemble:
    """With ``torch.distributed`` initialised and every rank holding ``teachers_for_rank``'s block,
    return the full K-teacher ensemble on every rank (CPU tensors, gloo-friendly)."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if list(ensemble.teacher_ids) != teachers_for_rank(num_teachers, rank, world):
        raise ValueError(f"rank {rank} holds teachers {ensemble.teacher_ids[:3]}..., not its block")
    width = len(teachers_for_rank(num_teachers, 0, world))
    full = TeacherEnsemble(teacher_ids=num_teachers, **ensemble.spec())
    with torch.no_grad():
        for name, tensor in ensemble.state_dict().items():
            local = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype)
            local[:tensor.shape[0]] = tensor.cpu()
            gathered = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(gathered, local, group=group)
            blocks = [g[:len(teachers_for_rank(num_teachers, r, world))] for r, g in enumerate(gathered)]
            full.state_dict()[name].copy_(torch.cat(blocks))
    return full


# --------------------------------------------------------------------------------------------
# Voting
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(ensemble: TeacherEnsemble, queries: torch.Tensor, *, chunk_size: int = 64,
            device: str | torch.device = "cpu", teacher_chunk: int | None = None,
            max_activation_bytes: int | None = None, amp: bool = False) -> torch.Tensor:
    """Each teacher's predicted class (argmax, first index on ties) for each query: (K, Q) int64.

    Queries are processed ``chunk_size`` at a time and teachers ``teacher_chunk`` at a time
    (default: as many as keep the largest activation under ``max_activation_bytes``: 32 MiB on
    CPU, where cache-sized chunks measured 1.6x faster than 1 GiB ones, 2 GiB on CUDA), so memory
    is bounded whatever K and Q are; the result is identical for any chunking.
    """
    device = torch.device(device)
    if max_activation_bytes is None:
        max_activation_bytes = 32 << 20 if device.type == "cpu" else 2 << 30
    model = ensemble if ensemble.weights[0].device == device else copy.deepcopy(ensemble).to(device)
    was_training = model.training
    model.eval()
    k, q = model.num_teachers, queries.shape[0]
    if teacher_chunk is None:
        widest = max(s.out_channels * s.size * s.size if isinstance(s, ConvStep) else s.out_features
                     for s in model.plan)
        teacher_chunk = max(1, min(k, max_activation_bytes // (4 * widest * max(1, min(chunk_size, q)))))
    out = torch.empty((k, q), dtype=torch.int64)
    for a in range(0, k, teacher_chunk):
        sl = slice(a, min(a + teacher_chunk, k))
        for i in range(0, q, chunk_size):
            chunk = queries[i:i + chunk_size].to(device, torch.float32)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                logits = model(chunk, teachers=sl)
            out[sl, i:i + chunk_size] = logits.float().argmax(-1).cpu()
    model.train(was_training)
    return out


def votes_from_predictions(preds: torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    """Vote counts (Q, m) int64 from teacher predictions (K, Q): one vote per teacher per query,
    so every row sums to K (Papernot et al. 2018, invariant 2 of DESIGN.md)."""
    preds = torch.as_tensor(preds, dtype=torch.int64)
    if preds.dim() != 2:
        raise ValueError(f"preds must be (K, Q). Found {tuple(preds.shape)}.")
    if preds.numel() and (preds.min() < 0 or preds.max() >= num_classes):
        raise ValueError(f"predictions must be classes in [0, {num_classes}).")
    votes = torch.zeros((preds.shape[1], num_classes), dtype=torch.int64)
    return votes.scatter_add_(1, preds.t(), torch.ones_like(preds.t()))


def teacher_accuracies(preds: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Fraction of queries each teacher labels correctly: (K,) float64."""
    preds, labels = torch.as_tensor(preds), torch.as_tensor(labels)
    return (preds == labels.view(1, -1)).double().mean(1)
