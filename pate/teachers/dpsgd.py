"""A DP-SGD teacher: ScatterNet + linear trained on the private records themselves under DP-SGD.

Its predictions on the public pool are post-processing of a differentially private model, so they
can go to the student beside the (reverse-kNN) votes; what they cost is the DP-SGD mechanism itself,
and it is composed with the votes' mechanism in ONE ``dp_accounting`` composition (``epsilon``,
``calibrate_noise``), never by Opacus's own accountant.

The model is Tramèr & Boneh's ScatterNet + linear (2021, "Differentially Private Learning Needs
Better Features (or Much More Data)", arXiv:2011.11660v4, §3 and App. B): a fixed, data-independent
scattering transform (J = 2, L = 8; ``pate.nets.wavelets``, Kymatio-exact: 81 channels of 7×7 for a
28×28 grey image), GroupNorm with 27 groups and no affine parameters (a per-example map that reads no
statistic of the data set, so applying it once to cached features is the same as applying it in the
model and costs no privacy), then one linear layer. The training is DP-SGD (Abadi et al. 2016, "Deep
Learning with Differential Privacy", arXiv:1607.00133v2, Alg. 1) as Opacus runs it: Poisson sampling,
per-example clipping at C (0.1, the paper's), Gaussian noise of standard deviation σ·C on the sum of
clipped gradients, SGD with momentum 0.9. Each step is the Poisson-subsampled Gaussian mechanism
whose Rényi DP Mironov, Talwar & Zhang bound ("Rényi Differential Privacy of the Sampled Gaussian
Mechanism", 2019, arXiv:1908.10530v1, §3.3) and ``dp_accounting`` computes; T steps compose (``dp_event``).

Sampling rate and steps (``schedule``): Opacus's ``make_private`` samples every record with
probability q = 1/ceil(N/B) (B = ``batch_size``, N = private records) and an epoch is ceil(N/B)
steps, so q is B/N when B divides N and a little below it otherwise (an expected batch of
N/ceil(N/B) ≤ B). q and T are then functions of N: the accounting treats them as public settings, as
DP-SGD always does, so N must be one (for MNIST's training split it is; with a secret
``private_size`` draw it is not, see DESIGN §5.12).

Randomness: Opacus's cryptographically secure mode needs ``torchcsprng``, which has no build for
current torch and is not installed here. Without it (the case here), every random draw of
``train`` (initial weights, Poisson sampling, gradient noise) comes from one ``torch.Generator``
(Mersenne Twister) seeded with 64 bits from ``os.urandom`` when no seed is given, or from
``pate.seeds.derive_seed(seed)``. That is not a CSPRNG, and Opacus then draws the noise as one
float normal per coordinate, without its secure mode's guard against floating-point attacks
(Holohan & Braghin 2021, arXiv:2107.10138): the guarantee below assumes exact Gaussian noise, as
Opacus's own non-secure mode does. When ``torchcsprng`` is importable and no seed is given, Opacus's
secure mode is used instead (not exercised here).

Opacus is an optional dependency (the ``dpsgd`` extra) imported inside the functions that need it.
"""
from __future__ import annotations

import copy
import itertools
import math
import os
import time
import warnings
from importlib.util import find_spec
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..nets import wavelets
from ..nets.averaged import ema_update
from ..privacy.dpsgd import (MAX_NOISE_MULTIPLIER, MIN_NOISE_MULTIPLIER, SIGNIFICANT_DIGITS,  # noqa: F401
                             calibrate_noise, dp_event, epsilon, schedule)
from ..seeds import derive_seed

J, L = 2, 8  # the scattering transform: 81 channels of 7×7 per 28×28 grey image
GROUPS = 27  # GroupNorm groups over the scattering channels (the paper's: 3 channels each for grey images)
MAX_GRAD_NORM = 0.1  # per-example clipping norm C (the paper's)
MOMENTUM = 0.9
INSTALL_HINT = 'pip install -e ".[dpsgd]"  (opacus>=1.5)'

Progress = Callable[[int, int, int, int, float, float], None]


# ----------------------------------------------------------------------------- accounting


# ----------------------------------------------------------------------------- features and model


def scattering_features(images: np.ndarray, batch: int = 2048) -> torch.Tensor:
    """(N, C, H, W) uint8 images -> (N, 81·C, H/4, W/4) float32 scattering coefficients (J = 2,
    L = 8) of the [0, 1] images: a fixed map of each image alone."""
    n, c, h, w = images.shape
    out = torch.empty((n, wavelets.num_channels(c, J, L), h // 2 ** J, w // 2 ** J))
    for i in range(0, n, batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch])).float().div_(255)
        out[i:i + batch] = wavelets.scatter(x, J=J, L=L)
    return out


def normalise(features: torch.Tensor, groups: int = GROUPS, batch: int = 8192) -> torch.Tensor:
    """GroupNorm without affine parameters, the model's first layer, applied once to ``features``:
    a map of each example alone (it reads no statistic of the data set), computed ``batch`` at a time."""
    return torch.cat([nn.functional.group_norm(features[i:i + batch], groups) for i in range(0, len(features), batch)])


def linear_model(channels: int = 81, size: int = 7, num_classes: int = 10, groups: int = GROUPS,
                 generator: Optional[torch.Generator] = None) -> nn.Sequential:
    """ScatterNet + linear on (channels, size, size) scattering features: GroupNorm (no affine
    parameters), flatten, one linear layer. Initialised as ``nn.Linear`` is (uniform in ±1/√fan_in),
    from ``generator``, or from torch's global generator when it is None."""
    return nn.Sequential(nn.GroupNorm(groups, channels, affine=False), nn.Flatten(),
                         initialised_linear(channels * size * size, num_classes, generator))


def initialised_linear(fan_in: int, out_features: int, generator: Optional[torch.Generator] = None) -> nn.Linear:
    """``nn.Linear(fan_in, out_features)`` initialised as torch does (uniform in ±1/√fan_in), from
    ``generator``, or from torch's global generator when it is None."""
    if generator is None:
        return nn.Linear(fan_in, out_features)
    linear = nn.utils.skip_init(nn.Linear, fan_in, out_features)
    bound = 1 / math.sqrt(fan_in)
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound, generator=generator)
        linear.bias.uniform_(-bound, bound, generator=generator)
    return linear


@torch.no_grad()
def public_projection(public: torch.Tensor, dim: int, batch: int = 8192) -> nn.Linear:
    """A fixed linear map from normalised scattering features (N, C, h, w) or (N, C·h·w) to their
    coordinates on the ``dim`` leading principal axes of ``public``, each scaled to unit variance
    (whitened): the principal components of the public pool, so it reads no private record and costs
    nothing. DP-SGD's noise is then spread over ``dim`` coordinates instead of C·h·w (Abadi et al.
    2016 projected MNIST on 60 principal axes for the same reason; theirs were computed privately).

    The axes are the eigenvectors of the pool's covariance (accumulated ``batch`` rows at a time in
    float64), each signed so that its largest entry is positive: the same map on every machine, so a
    seeded run repeats. At most N − 1 axes (the centred pool spans no more); axes whose standard
    deviation is below 1e-3 of the largest keep unit scale, so no near-empty direction is blown up."""
    x = public.flatten(1)
    n, d = x.shape
    if not 1 <= dim <= min(n - 1, d):
        raise ValueError(f"dim must be between 1 and {min(n - 1, d)} (public images - 1, coordinates). Found {dim}.")
    mean = x.double().mean(0)
    covariance = torch.zeros(d, d, dtype=torch.float64)
    for i in range(0, n, batch):
        centred = x[i:i + batch].double() - mean
        covariance += centred.T @ centred
    variance, axes = torch.linalg.eigh(covariance / (n - 1))  # ascending
    variance, axes = variance.flip(0)[:dim].clamp_min(0), axes.flip(1)[:, :dim].T
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
    scale = variance.sqrt()
    scale = torch.where(scale > 1e-3 * scale[0], scale, torch.ones_like(scale))
    weight = axes / scale[:, None]
    projection = nn.utils.skip_init(nn.Linear, d, dim)
    projection.weight.copy_(weight.float())
    projection.bias.copy_((-(weight @ mean)).float())
    return projection.requires_grad_(False)


@torch.no_grad()
def folded(projection: nn.Linear, head: nn.Linear) -> nn.Linear:
    """One linear layer equal to ``head(projection(x))``: the projected teacher as ScatterNet + linear."""
    layer = nn.utils.skip_init(nn.Linear, projection.in_features, head.out_features)
    layer.weight.copy_((head.weight.double() @ projection.weight.double()).float())
    layer.bias.copy_((head.weight.double() @ projection.bias.double() + head.bias.double()).float())
    return layer


class Records(torch.utils.data.Dataset):
    """(features, labels) whose batches are fetched by one fancy index (``__getitems__``), not
    thousands of ``__getitem__`` calls."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.x[index], self.y[index]


def _collate(batch):
    return batch  # already (x, y) tensors from __getitems__


def require_opacus() -> None:
    """Opacus is installed (the ``dpsgd`` extra), or an ImportError naming how to install it."""
    try:
        import opacus  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the DP-SGD teacher needs opacus: {INSTALL_HINT}") from e


def _quiet() -> None:
    """Opacus's notices that change nothing here: the non-cryptographic RNG (the module's docstring
    says what is used instead), and the ghost-clipping hooks' notice."""
    warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
    warnings.filterwarnings("ignore", message=".*full backward hook.*")


# ----------------------------------------------------------------------------- training


def fit(model: nn.Module, features: torch.Tensor, labels: torch.Tensor, *, noise_multiplier: float,
        batch_size: int, epochs: int, lr: float, max_grad_norm: float = MAX_GRAD_NORM, momentum: float = MOMENTUM,
        generator: Optional[torch.Generator] = None, secure: bool = False, grad_sample_mode: str = "ghost",
        physical_batch: Optional[int] = None, average: float = 0.0,
        progress: Optional[Progress] = None) -> tuple[nn.Module, dict]:
    """DP-SGD on ``model`` with Opacus's ``PrivacyEngine.make_private`` at the GIVEN noise
    multiplier: Poisson sampling at ``schedule(len(labels), batch_size, epochs)``, per-example
    clipping at ``max_grad_norm`` (``grad_sample_mode`` "ghost": Opacus's fast gradient clipping, the
    same clipped sums as "hooks" without materialising per-example gradients), N(0, (σC)²) noise
    on their sum, SGD with ``momentum``. The privacy cost is ``dp_event(noise_multiplier,
    *schedule(...))``; Opacus's own accountant is not read.

    ``generator``: the source of the sampling and the noise (None: torch's global generator);
    ``secure``: Opacus's secure mode (needs torchcsprng; no generator then). ``physical_batch``
    bounds memory only (Opacus's ``BatchMemoryManager``). ``progress(epoch, epochs, step, steps,
    loss, images_per_s)`` after every batch (1-based; the loss is of private data: for the operator's
    eyes, not a release). ``average`` > 0: the model returned holds the exponential moving average of
    the iterates, decay ``average`` (warmed up as min(average, (1+t)/(10+t)) over steps t), not the
    last iterate: the iterates are all released by the same mechanism, so averaging them is
    post-processing, and it averages the gradient noise away (De et al. 2022, "Unlocking
    High-Accuracy Differentially Private Image Classification through Scale", arXiv:2204.13650, §3.2).
    Returns the trained ``model`` (a plain module again) and
    {sample_rate, steps, expected_batch, noise_multiplier}.
    """
    require_opacus()
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    if not 0.0 <= average < 1.0:
        raise ValueError(f"average must be an EMA decay in [0, 1). Found {average!r}.")
    ema = copy.deepcopy(model) if average else None  # the iterates' average (``ema_update``), before Opacus wraps it
    sample_rate, steps = schedule(len(labels), batch_size, epochs)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loader = torch.utils.data.DataLoader(Records(features, labels), batch_size=batch_size, collate_fn=_collate,
                                         generator=None if secure else generator)
    with warnings.catch_warnings():
        _quiet()
        engine = PrivacyEngine(secure_mode=secure)
        private = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, criterion=nn.CrossEntropyLoss(),
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, grad_sample_mode=grad_sample_mode,
            noise_generator=None if secure else generator)  # poisson_sampling=True: Opacus's default
    if grad_sample_mode == "ghost":
        private_model, optimizer, loss_fn, loader = private
    else:
        (private_model, optimizer, loader), loss_fn = private, nn.CrossEntropyLoss()
    if loader.sample_rate != sample_rate:  # the accounted rate is the sampled one, or nothing holds
        raise RuntimeError(f"Opacus samples at rate {loader.sample_rate}, not {sample_rate} as accounted.")
    private_model.train()
    steps_taken = itertools.count()

    def after_step() -> None:
        if ema is not None:
            ema_update(ema, model, average, next(steps_taken))
    with warnings.catch_warnings():
        _quiet()
        for epoch in range(1, epochs + 1):
            if physical_batch:
                with BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical_batch,
                                        optimizer=optimizer) as batches:
                    _epoch(private_model, optimizer, loss_fn, batches, epoch, epochs, progress, after_step)
            else:
                _epoch(private_model, optimizer, loss_fn, loader, epoch, epochs, progress, after_step)
    info = {"sample_rate": sample_rate, "steps": steps, "expected_batch": float(optimizer.expected_batch_size),
            "noise_multiplier": float(optimizer.noise_multiplier)}
    trained = private_model.to_standard_module().eval()
    if ema is not None:
        trained.load_state_dict(ema.state_dict())
    return trained, info


def _epoch(model, optimizer, loss_fn, batches, epoch: int, epochs: int, progress: Optional[Progress],
           after_step: Callable[[], None]) -> None:
    total, t0 = len(batches), time.monotonic()
    for step, (x, y) in enumerate(batches, 1):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if not getattr(optimizer, "_is_last_step_skipped", False):  # a physical batch that only accumulated
            after_step()
        if progress is not None:
            progress(epoch, epochs, step, total, float(loss.detach()), len(y) / max(time.monotonic() - t0, 1e-9))
            t0 = time.monotonic()


def train(features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, num_classes: int, *,
          noise_multiplier: float, batch_size: int, epochs: int, lr: float, max_grad_norm: float = MAX_GRAD_NORM,
          seed: Optional[int] = None, public: Optional[torch.Tensor] = None, dim: int = 0,
          progress: Optional[Progress] = None) -> nn.Module:
    """The DP-SGD teacher (Tramèr & Boneh 2021's ScatterNet + linear) trained on the private
    records' scattering features (N, 81·C, h, w) (``scattering_features``; not yet normalised),
    on the CPU.

    Its privacy cost is exactly ``dp_event(noise_multiplier, *schedule(N, batch_size, epochs))``:
    Poisson sampling at rate q = 1/ceil(N/B), i.e. batch_size/N rounded down to the reciprocal of
    an integer (equal to it when B divides N), for epochs·ceil(N/B) steps; calibrate the multiplier
    with ``calibrate_noise`` on those numbers (and whatever composes with it). The GroupNorm is applied
    once to ``features`` (a per-example map, the model's own first layer), then Flatten + Linear are
    trained with ``fit``. Every random draw comes from one generator: seeded from ``seed`` (runs are
    reproducible; a seeded run is not a production guarantee) or from ``os.urandom``; see the module
    docstring for what that generator is. Returns the whole model (GroupNorm, Flatten, Linear) in eval
    mode: it takes raw scattering features, as ``predict_proba`` gives them.

    ``dim`` > 0 with ``public`` (the public pool's raw scattering features): DP-SGD trains a linear
    layer on the ``dim`` whitened principal coordinates of the public pool (``public_projection``),
    then the projection is folded into it, so the model returned is the same ScatterNet + linear.
    """
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    if x.ndim != 4 or x.shape[2] != x.shape[3] or x.shape[1] % GROUPS:
        raise ValueError(f"features must be (N, channels, size, size) with channels a multiple of {GROUPS}. "
                         f"Found {tuple(x.shape)}.")
    if y.shape != (len(x),) or (len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes)):
        raise ValueError(f"labels must be one class in [0, {num_classes}) per record ({len(x)}).")
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be positive and finite. Found {noise_multiplier!r}.")
    require_opacus()
    secure = seed is None and find_spec("torchcsprng") is not None
    start = derive_seed(seed) if seed is not None else int.from_bytes(os.urandom(8), "little")
    generator = torch.Generator().manual_seed(start)
    model = linear_model(x.shape[1], x.shape[-1], num_classes, generator=generator)
    if not dim:
        fit(model[1:], normalise(x), y, noise_multiplier=noise_multiplier, batch_size=batch_size, epochs=epochs,
            lr=lr, max_grad_norm=max_grad_norm, generator=generator, secure=secure, progress=progress)
        return model.eval()
    if public is None:
        raise ValueError("dim > 0 projects on the public pool's principal axes: give its features as `public`.")
    public = torch.as_tensor(public, dtype=torch.float32)
    if public.shape[1:] != x.shape[1:]:
        raise ValueError(f"public features must be shaped as the private ones, (P, {', '.join(map(str, x.shape[1:]))}). "
                         f"Found {tuple(public.shape)}.")
    projection = public_projection(normalise(public), dim)
    head = initialised_linear(dim, num_classes, generator)
    with torch.no_grad():
        projected = torch.cat([projection(normalise(x[i:i + 8192]).flatten(1)) for i in range(0, len(x), 8192)])
    fit(head, projected, y, noise_multiplier=noise_multiplier, batch_size=batch_size, epochs=epochs, lr=lr,
        max_grad_norm=max_grad_norm, generator=generator, secure=secure, progress=progress)
    model[2] = folded(projection, head)
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, features: torch.Tensor | np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """(P, m) class probabilities (softmax of the logits, in float64) of ``model`` on ``features``
    (P, 81·C, h, w), ``batch_size`` at a time, without gradients: post-processing of the DP model."""
    model.eval()
    x = torch.as_tensor(features, dtype=torch.float32)
    starts = range(0, max(len(x), 1), batch_size)  # no features: one empty batch, (0, m)
    return torch.cat([model(x[i:i + batch_size]).double().softmax(1) for i in starts]).numpy()
