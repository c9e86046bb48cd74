"""Teacher and student architectures, described once as layer specs.

A spec is a plain tuple of layers so that the same architecture can be built as one
ordinary ``nn.Module`` (student, reference teacher) or as a batched K-teacher ensemble
(``pate.teachers.ensemble``) without the two drifting apart. Both builders walk the same concrete
``layer_plan``, so shapes and the index of every parameterised layer agree by construction.

A ``Scatter`` first layer (students only) is the fixed scattering transform of Tramèr & Boneh
(2021), "Differentially Private Learning Needs Better Features": the network learns on its
coefficients, normalised per sample by a GroupNorm without parameters (their choice, which needs no
statistics of any data), and the transform lives inside the model, so the student still takes raw
images wherever it goes. Teachers are ensembles of plain conv/dense layers (``TEACHER_ARCHITECTURES``);
teachers on scattering features are ``[teachers] features = "scattering"``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


SCATTERING_LAYER = "pate.nets.scattering"
AVERAGED_MODULE = "pate.nets.averaged"  # imports torch: loaded by name, as the scattering layer is


@dataclass(frozen=True)
class Conv:
    out_channels: int
    kernel: int
    pool: bool  # 2x2 max-pool after the ReLU


@dataclass(frozen=True)
class Scatter:
    """The scattering transform with J scales and L orientations, then GroupNorm (3 channels a group)."""

    J: int = 2
    L: int = 8


@dataclass(frozen=True)
class Dense:
    out_features: int  # followed by ReLU; the final classifier layer is implicit


ARCHITECTURES: dict[str, tuple] = {
    # 28x28 grey (MNIST, Fashion-MNIST): small enough to train 250 of them on a CPU.
    "cnn-small": (Conv(16, 5, True), Conv(32, 5, True), Dense(64)),
    # Twice cnn-small's channels and four times its dense width: a student with room for the labels.
    "cnn-wide": (Conv(32, 5, True), Conv(64, 5, True), Dense(256)),
    # Students on the scattering coefficients (81 channels of 7x7 on a 28x28 grey image): Tramer &
    # Boneh's ScatterNet + linear, and a ScatterNet + CNN (ReLU and max-pooling as the pixel CNNs,
    # where theirs has tanh and a stride, chosen for DP-SGD's clipped gradients).
    "scatter-linear": (Scatter(),),
    "scatter-cnn": (Scatter(), Conv(64, 3, False), Conv(64, 3, True), Dense(128)),
    # 32x32 colour (SVHN, CIFAR-10).
    "cnn-deep": (
        Conv(32, 3, False), Conv(32, 3, True),
        Conv(64, 3, False), Conv(64, 3, True),
        Conv(128, 3, False), Conv(128, 3, True),
        Dense(256),
    ),
}


@dataclass(frozen=True)
class ConvStep:
    """A concrete conv layer: ``index`` is its position in ``build_model``'s ``nn.Sequential``."""

    index: int
    in_channels: int
    out_channels: int
    kernel: int
    pool: bool
    size: int  # spatial size of the input (square)

    @property
    def padding(self) -> int:
        return self.kernel // 2


@dataclass(frozen=True)
class DenseStep:
    """A concrete linear layer; ``relu`` is False only for the final classifier."""

    index: int
    in_features: int
    out_features: int
    relu: bool


@dataclass(frozen=True)
class ScatterStep:
    """The scattering layer and its GroupNorm, at ``index`` and ``index + 1``."""

    index: int
    in_channels: int
    out_channels: int
    size: int  # spatial size of the input image (square)
    J: int
    L: int

    @property
    def groups(self) -> int:
        return self.out_channels // 3


def has_scattering(arch: str) -> bool:
    return any(isinstance(layer, Scatter) for layer in ARCHITECTURES.get(arch, ()))


TEACHER_ARCHITECTURES = tuple(name for name in ARCHITECTURES if not has_scattering(name))


def architecture(name: str) -> tuple:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}") from None


def layer_plan(arch: str, in_channels: int, num_classes: int, image_size: int) -> tuple:
    """The concrete layers of ``arch`` for this input: a tuple of ``ConvStep`` then ``DenseStep``.

    Indices follow ``build_model``: conv, ReLU[, MaxPool] ... Flatten, (Linear, ReLU)*, Linear.
    """
    steps: list = []
    channels, size, flat, index = in_channels, image_size, None, 0
    for position, layer in enumerate(architecture(arch)):
        if isinstance(layer, Scatter):
            if position:
                raise ValueError(f"architecture {arch!r}: the scattering layer must come first")
            if size % 2 ** layer.J:
                raise ValueError(f"architecture {arch!r} needs an image size that {2 ** layer.J} divides, not {size}")
            out = channels * (1 + layer.J * layer.L + layer.L ** 2 * layer.J * (layer.J - 1) // 2)
            steps.append(ScatterStep(index, channels, out, size, layer.J, layer.L))
            index += 2
            channels, size = out, size // 2 ** layer.J
        elif isinstance(layer, Conv):
            if flat is not None:
                raise ValueError(f"architecture {arch!r}: a Conv layer follows a Dense layer")
            steps.append(ConvStep(index, channels, layer.out_channels, layer.kernel, layer.pool, size))
            index += 3 if layer.pool else 2
            channels = layer.out_channels
            size = size // 2 if layer.pool else size
        else:
            if flat is None:
                index += 1  # Flatten
                flat = channels * size * size
            steps.append(DenseStep(index, flat, layer.out_features, True))
            index += 2
            flat = layer.out_features
    if flat is None:
        index += 1
        flat = channels * size * size
    steps.append(DenseStep(index, flat, num_classes, False))
    return tuple(steps)


MAX_MEMBERS = 16  # students averaged in one model ([student] members)
MAX_TEACHER_WEIGHT = 100.0  # the most a DP-SGD teacher's logits weigh in it ([student] teacher_weight)


DPSGD_TEACHER_ARCH = "scatter-linear"  # the DP-SGD teacher's network (pate.teachers.dpsgd), on [0, 1] images


def build_student(arch: str, in_channels: int, num_classes: int, image_size: int, *, members: int = 1,
                  flip_average: bool = False, teacher_weight: float = 0.0) -> nn.Module:
    """The student as trained and exported: one ``build_model`` network, or (``members`` > 1,
    ``flip_average`` or ``teacher_weight``) the mean of the logits of ``members`` such networks, each
    on the image and, with ``flip_average``, on its left-right mirror too, plus ``teacher_weight``
    times the logits of a DP-SGD teacher (``dpsgd_teacher``; its weights, mean and std come with the
    state dict). An average of independently trained students forgets what each memorised of its
    noisy labels alone (Hansen & Salamon 1990, "Neural Network Ensembles"); the mirror averages out a
    left-right bias the flips of training did not; the teacher, which learned from every private
    record, still knows what its probabilities on the pool did not teach the students."""
    if not (isinstance(members, int) and not isinstance(members, bool) and 1 <= members <= MAX_MEMBERS):
        raise ValueError(f"members must be an integer in [1, {MAX_MEMBERS}]. Found {members!r}.")
    networks = [build_model(arch, in_channels, num_classes, image_size) for _ in range(members)]
    teacher = (dpsgd_teacher(in_channels, num_classes, image_size, [0.0] * in_channels, [1.0] * in_channels)
               if teacher_weight else None)
    return averaged(networks, flip_average, teacher, teacher_weight)


def dpsgd_teacher(in_channels: int, num_classes: int, image_size: int, mean, std, weight=None, bias=None) -> nn.Module:
    """The DP-SGD teacher's ScatterNet + linear as a module on the students' inputs (normalised by
    ``mean`` and ``std``), with its linear layer's ``weight`` and ``bias`` (arrays) where given."""
    import torch

    network = build_model(DPSGD_TEACHER_ARCH, in_channels, num_classes, image_size)
    if weight is not None:
        linear = network[-1]
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(weight).reshape(linear.weight.shape))
            linear.bias.copy_(torch.as_tensor(bias).reshape(linear.bias.shape))
    return importlib.import_module(AVERAGED_MODULE).OnUnitImages(network, mean, std)


def averaged(networks: list, flip_average: bool = False, teacher: nn.Module | None = None,
             teacher_weight: float = 0.0) -> nn.Module:
    """``networks`` (trained or not) as one student: the lone network itself when there is one and
    nothing else to average (its weights' names stay those of every earlier student), else the module
    whose logits are the mean of theirs (over each image and its mirror with ``flip_average``), plus
    ``teacher_weight`` times ``teacher``'s where both are given."""
    if teacher is None or not teacher_weight:
        teacher, teacher_weight = None, 0.0
    if len(networks) == 1 and not flip_average and teacher is None:
        return networks[0]
    return importlib.import_module(AVERAGED_MODULE).AveragedLogits(networks, flip_average, teacher, teacher_weight)


def build_model(arch: str, in_channels: int, num_classes: int, image_size: int) -> nn.Sequential:
    """One network of architecture ``arch``: (B, C, H, W) float -> (B, num_classes) logits."""
    from torch import nn  # not at import time: the layer plans are needed without torch

    layers: list[nn.Module] = []
    for step in layer_plan(arch, in_channels, num_classes, image_size):
        if isinstance(step, ScatterStep):
            # By name, as the stage registry loads stages: the layer module imports torch, and this
            # one must not (the config and the ONNX-only deployment read the layer plans).
            scattering = importlib.import_module(SCATTERING_LAYER).Scattering
            layers += [scattering(step.in_channels, step.size, step.J, step.L),
                       nn.GroupNorm(step.groups, step.out_channels, affine=False)]
        elif isinstance(step, ConvStep):
            layers += [nn.Conv2d(step.in_channels, step.out_channels, step.kernel, padding=step.padding), nn.ReLU()]
            if step.pool:
                layers.append(nn.MaxPool2d(2))
        else:
            if not any(isinstance(m, nn.Flatten) for m in layers):
                layers.append(nn.Flatten())
            layers.append(nn.Linear(step.in_features, step.out_features))
            if step.relu:
                layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    for step in layer_plan(arch, in_channels, num_classes, image_size):
        expected = {ConvStep: nn.Conv2d, DenseStep: nn.Linear, ScatterStep: nn.Module}[type(step)]
        assert isinstance(model[step.index], expected)
    return model
