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
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config.student import PRECISIONS
from ..nets.augment import mix_up, random_erase, strong_augment, weak_augment
from ..io import check_resumable, load_checkpoint, save_checkpoint
from ..nets.averaged import ema_update
from ..nets.models import build_model
from ..seeds import derive_seed

METHODS = ("supervised", "fixmatch", "pseudo-label")
CHECKPOINT_FORMAT = "pate.student.training/1"
HISTORY_KEYS = ("step", "loss", "loss_labeled", "loss_unlabeled", "mask_rate", "labeled_accuracy", "lr")

# --------------------------------------------------------------------------- state and checkpoints


@dataclass
class _State:
    """Everything a training run carries from one step to the next (all of it checkpointed)."""
    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    history: dict = field(default_factory=lambda: {k: [] for k in HISTORY_KEYS})
    sums: dict = field(default_factory=dict)  # running sums of the current log window
    step: int = 0


def _data_digest(tensors: tuple[torch.Tensor, ...]) -> str:
    """sha256 of each tensor's shape, dtype and bytes: exact, so the same data give the same digest in
    any process on any number of threads (students trained side by side are reloaded by their parent)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{tuple(t.shape)} {t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _legacy_digest(tensors: tuple[torch.Tensor, ...]) -> str:
    """The digest of checkpoints written before ``_data_digest`` (a float64 sum, whose rounding
    depends on the thread count, and the first 4096 values), so that they still resume."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float64).sum().numpy().tobytes())
        h.update(t.detach().reshape(-1)[:4096].to("cpu").numpy().tobytes())
    return h.hexdigest()


def _save(path, fingerprint: str, settings: dict, state: _State, seed: int) -> None:
    save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "settings": settings, "step": state.step,
        "model": state.model.state_dict(), "ema": state.ema.state_dict(),
        "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
        "history": state.history, "log_sums": state.sums,
        # Step t's randomness is re-derived from (seed, t); the global RNG is never advanced.
        "rng": {"seed": seed, "torch_cpu": torch.get_rng_state()}})


def _resume(path, fingerprint: str, settings: dict, state: _State, legacy_digest: Callable[[], str]) -> None:
    ck = load_checkpoint(path, CHECKPOINT_FORMAT)
    saved = ck.get("settings") or {}
    if saved.get("data") not in (None, settings["data"]) and saved["data"] == legacy_digest():
        ck["settings"] = {**saved, "data": settings["data"]}  # an older pate's digest of the same data
    check_resumable(ck, path, fingerprint=fingerprint, settings=settings)
    state.model.load_state_dict(ck["model"])
    state.ema.load_state_dict(ck["ema"])
    state.optimizer.load_state_dict(ck["optimizer"])
    state.scheduler.load_state_dict(ck["scheduler"])
    state.history = {k: list(v) for k, v in ck["history"].items()}
    state.sums = dict(ck["log_sums"])
    state.step = int(ck["step"])


# --------------------------------------------------------------------------- training

def _step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, step))


def _lr_factor(steps: int) -> Callable[[int], float]:
    # FixMatch's cosine decay: lr · cos(7πk / 16K).
    return lambda k: math.cos(7.0 * math.pi * min(k, steps) / (16.0 * steps))


def _new_state(arch: str, shape, num_classes: int, *, seed: int, lr: float, weight_decay: float, steps: int,
               device: torch.device) -> _State:
    """The student (initialised from ``seed``), its EMA copy, Nesterov SGD and the cosine schedule."""
    c, h = shape[0], shape[1]
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
    return _State(model, ema, optimizer, scheduler)


def _arithmetic(precision: str, device: torch.device):
    """The forward passes' arithmetic: float32, or with ``"bf16"`` mixed precision (convolutions and
    matrix products in bfloat16 under autocast; weights, gradients' accumulation, optimiser and EMA
    in float32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (AVX512-BF16 or AMX on a CPU; a GPU that
    supports it), so ``precision = "bf16"`` is faster there, not slower."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return device.type == "cpu" and any(check() for check in checks if check is not None)


def _check_inputs(labeled_x, labeled_y, unlabeled_x, *, method, num_classes, steps, batch_size,
                  unlabeled_ratio, threshold, mixup=0.0, precision="fp32") -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Found {method!r}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}. Found {precision!r}.")
    if labeled_x.ndim != 4 or labeled_y.shape[:1] != labeled_x.shape[:1] or len(labeled_y) == 0:
        raise ValueError(f"labeled_x must be (N, C, H, W) and labeled_y (N,) or (N, m) with N > 0. "
                         f"Found {tuple(labeled_x.shape)} and {tuple(labeled_y.shape)}.")
    if labeled_y.ndim == 2:  # soft targets: a distribution over the classes per image
        if labeled_y.shape[1] != num_classes or not labeled_y.dtype.is_floating_point \
                or not torch.isfinite(labeled_y).all() or (labeled_y < 0).any() \
                or not torch.allclose(labeled_y.sum(1), torch.ones(len(labeled_y), dtype=labeled_y.dtype), atol=1e-4):
            raise ValueError(f"soft labeled_y must be (N, {num_classes}) float rows of probabilities.")
    elif labeled_y.ndim != 1 or labeled_y.dtype != torch.int64 or labeled_y.min() < 0 or labeled_y.max() >= num_classes:
        raise ValueError(f"labeled_y must be int64 in [0, {num_classes}).")
    semi = method != "supervised"
    if semi and (unlabeled_x is None or len(unlabeled_x) == 0):
        raise ValueError(f"method {method!r} needs unlabeled_x.")
    if semi and tuple(unlabeled_x.shape[1:]) != tuple(labeled_x.shape[1:]):
        raise ValueError(f"unlabeled_x images must have shape {tuple(labeled_x.shape[1:])}. "
                         f"Found {tuple(unlabeled_x.shape[1:])}.")
    if not (mixup == 0 or 0 < mixup < math.inf):
        raise ValueError(f"mixup must be 0 (none) or a positive Beta parameter. Found {mixup!r}.")
    if steps < 1 or batch_size < 1 or unlabeled_ratio < 0 or not 0.0 <= threshold <= 1.0:
        raise ValueError("steps and batch_size must be >= 1, unlabeled_ratio >= 0, threshold in [0, 1].")


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
    erase: float = 0.0,
    mixup: float = 0.0,
    precision: str = "fp32",
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
    (possibly wrong), or (N, m) float soft targets (``soft_targets``); ``unlabeled_x`` (M, C, H, W) images of the public pool without labels
    (required for the semi-supervised methods, ignored by ``"supervised"``).

    One step = one labelled batch of ``batch_size`` (+ ``unlabeled_ratio · batch_size``
    unlabelled images for the semi-supervised methods); SGD with Nesterov momentum and
    FixMatch's cosine learning-rate decay. ``history`` holds lists keyed ``step``, ``loss``,
    ``loss_labeled``, ``loss_unlabeled``, ``mask_rate`` (fraction of unlabelled images above
    ``threshold``), ``labeled_accuracy`` (on the augmented labelled batches) and ``lr``, each
    averaged over the ``log_every`` steps before the logged step; only training data is used.
    ``hflip``, ``erase`` and ``mixup`` (Beta(mixup, mixup) blends of labelled images and targets,
    ``mix_up``) augment the labelled batches; each is part of the checkpoint's settings when on, as
    is ``precision = "bf16"`` (mixed-precision forward passes, ``native_bf16`` says where it is faster).

    With ``checkpoint_path`` the state is saved atomically every ``checkpoint_every`` steps
    (default: at the end only) and a run finding a checkpoint there resumes from it; a checkpoint
    from different settings or another ``fingerprint`` raises ``CheckpointMismatch``.
    """
    _check_inputs(labeled_x, labeled_y, unlabeled_x, method=method, num_classes=num_classes, steps=steps,
                  batch_size=batch_size, unlabeled_ratio=unlabeled_ratio, threshold=threshold, mixup=mixup,
                  precision=precision)
    checkpoint_every = steps if checkpoint_every is None else checkpoint_every
    log_every = max(1, steps // 100) if log_every is None else log_every
    if checkpoint_every < 1 or log_every < 1:
        raise ValueError("checkpoint_every and log_every must be >= 1.")
    semi = method != "supervised"
    device = torch.device(device)
    data_tensors = (labeled_x, labeled_y) + ((unlabeled_x,) if semi else ())
    settings = dict(arch=arch, num_classes=num_classes, method=method, steps=steps, batch_size=batch_size,
                    unlabeled_ratio=unlabeled_ratio, lr=lr, weight_decay=weight_decay, threshold=threshold,
                    unlabeled_weight=unlabeled_weight, ema_decay=ema_decay, hflip=hflip, seed=seed,
                    log_every=log_every, **({"erase": erase} if erase else {}), **({"mixup": mixup} if mixup else {}),  # old checkpoints still resume
                    **({"precision": precision} if precision != "fp32" else {}),
                    data=_data_digest(data_tensors))
    state = _new_state(arch, labeled_x.shape[1:], num_classes, seed=seed, lr=lr, weight_decay=weight_decay,
                       steps=steps, device=device)
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        _resume(checkpoint_path, fingerprint, settings, state, lambda: _legacy_digest(data_tensors))
    lx = labeled_x.to(device, torch.float32)
    if mixup and labeled_y.ndim == 1:  # blends of two labels are rows
        labeled_y = F.one_hot(labeled_y, num_classes).float()
    ly = labeled_y.to(device, torch.float32) if labeled_y.ndim == 2 else labeled_y.to(device)
    data = (lx, ly, unlabeled_x.to(device, torch.float32) if semi else None,
            batch_size * unlabeled_ratio if semi else 0)
    step_kwargs = dict(method=method, batch_size=batch_size, threshold=threshold,
                       unlabeled_weight=unlabeled_weight, hflip=hflip, erase=erase, mixup=mixup,
                       precision=precision)

    def save(done: int) -> None:
        if checkpoint_path is not None and (done % checkpoint_every == 0 or done == steps):
            _save(checkpoint_path, fingerprint, settings, state, seed)

    _train_steps(state, data, steps=steps, seed=seed, ema_decay=ema_decay, log_every=log_every, device=device,
                 step_kwargs=step_kwargs, save=save, progress=progress)
    state.ema.eval()
    return state.ema, state.history


def _train_steps(state: _State, data: tuple, *, steps: int, seed: int, ema_decay: float, log_every: int,
                 device: torch.device, step_kwargs: dict, save, progress) -> None:
    """The steps from ``state.step`` to ``steps``: one seeded optimiser step, the EMA, the log window,
    progress, and the checkpoint (``save(done)``) after each."""
    lx, ly, ux, n_unl = data
    state.model.train()
    # Weights and momenta decaying towards zero become subnormal floats, which made CPU steps
    # several times slower late in training; flush them to zero while training.
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        for step in range(state.step, steps):
            stats = _seeded_step(state, lx, ly, ux, n_unl, _step_generator(seed, step, device), device, step_kwargs)
            ema_update(state.ema, state.model, ema_decay, step)
            state.step = done = step + 1
            _log(state, stats, done, steps, log_every)
            if progress is not None:
                progress(done, steps, stats["loss"], stats)
            save(done)
    finally:
        if flush:
            torch.set_flush_denormal(False)


def _seeded_step(state: _State, lx, ly, ux, n_unl: int, gen: torch.Generator, device: torch.device,
                 step_kwargs: dict) -> dict:
    """One optimiser step whose randomness (batches, augmentation, dropout) comes from ``gen`` alone."""
    fork_devices = ([device.index if device.index is not None else torch.cuda.current_device()]
                    if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen, device=device)))
        stats = _train_step(state.model, state.optimizer, lx, ly, ux, n_unl, gen, **step_kwargs)
    stats["lr"] = state.optimizer.param_groups[0]["lr"]
    state.scheduler.step()
    return stats


def _log(state: _State, stats: dict, done: int, steps: int, log_every: int) -> None:
    """Add ``stats`` to the log window; at its end append the window's means to the history."""
    for k, v in stats.items():
        state.sums[k] = state.sums.get(k, 0.0) + v
    if done % log_every == 0 or done == steps:
        n = done - (done - 1) // log_every * log_every if done == steps else log_every
        state.history["step"].append(done)
        for k in stats:
            state.history[k].append(state.sums[k] / n)
        state.sums = {}


def _train_step(model, optimizer, lx, ly, ux, n_unl, gen, *, method, batch_size, threshold,
                unlabeled_weight, hflip, erase, mixup=0.0, precision="fp32") -> dict:
    li = torch.randint(0, len(lx), (batch_size,), generator=gen, device=lx.device)
    xb = random_erase(weak_augment(lx[li], gen, hflip=hflip), gen, erase)
    yb = ly[li]
    if mixup:  # the targets are rows here (``train_student``)
        xb, yb = mix_up(xb, yb, gen, mixup)
    stats = {"loss_unlabeled": 0.0, "mask_rate": 0.0}
    if n_unl:
        ui = torch.randint(0, len(ux), (n_unl,), generator=gen, device=ux.device)
        u = ux[ui]
        with torch.no_grad(), _arithmetic(precision, lx.device):
            probs = torch.softmax(model(weak_augment(u, gen, hflip=hflip).contiguous(
                memory_format=torch.channels_last)).float(), dim=1)
        conf, target = probs.max(dim=1)
        mask = (conf >= threshold).float()
        view = strong_augment(u, gen, hflip=hflip) if method == "fixmatch" else weak_augment(u, gen, hflip=hflip)
        xb = torch.cat([xb, view])
    with _arithmetic(precision, lx.device):
        logits = model(xb.contiguous(memory_format=torch.channels_last)).float()  # the losses in float32
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
    hard = yb if yb.ndim == 1 else yb.argmax(1)
    stats["labeled_accuracy"] = (logits[:batch_size].detach().argmax(1) == hard).float().mean().item()
    return stats


def soft_targets(noisy: np.ndarray, labels: np.ndarray, temperature: float) -> torch.Tensor:
    """(N, m) training targets from released soft labels: softmax(noisy vector / ``temperature``),
    and one-hot rows where a label came without a vector (NaN rows: Interactive-GNMax's student
    answers). Post-processing of the release: it costs nothing."""
    noisy = np.asarray(noisy, dtype=np.float64)
    missing = ~np.isfinite(noisy).all(axis=1)
    logits = torch.from_numpy(np.where(missing[:, None], 0.0, noisy) / temperature)
    probs = torch.softmax(logits, dim=1)
    probs[torch.from_numpy(missing)] = F.one_hot(torch.from_numpy(np.asarray(labels, dtype=np.int64)[missing]),
                                                 noisy.shape[1]).double()
    return probs.float()


# --------------------------------------------------------------------------- evaluation

@torch.no_grad()
@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Softmax class probabilities (N, m) float32 of ``model`` on ``x`` (N, C, H, W), in eval mode."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device, torch.float32).contiguous(memory_format=torch.channels_last)
        out.append(torch.softmax(model(xb).float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024,
            device: str | torch.device = "cpu") -> torch.Tensor:
    """Class predictions (N,) int64 of ``model`` on ``x`` (N, C, H, W), in eval mode."""
    probs = probabilities(model, x, batch_size=batch_size, device=device)
    return probs.argmax(1) if len(probs) else torch.empty(0, dtype=torch.int64)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024,
             device: str | torch.device = "cpu") -> float:
    """Fraction of ``x`` whose predicted class equals ``y``."""
    if len(x) == 0:
        raise ValueError("accuracy of an empty set is undefined.")
    return float((predict(model, x, batch_size=batch_size, device=device) == y.cpu()).float().mean())
