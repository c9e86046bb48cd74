"""Teacher and student architectures, described once as layer specs.

A spec is a plain tuple of layers so that the same architecture can be built as one
ordinary ``nn.Module`` (student, reference teacher) or as a batched K-teacher ensemble
(``pate.ensemble``) without the two drifting apart.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Conv:
    out_channels: int
    kernel: int
    pool: bool  # 2x2 max-pool after the ReLU


@dataclass(frozen=True)
class Dense:
    out_features: int  # followed by ReLU; the final classifier layer is implicit


ARCHITECTURES: dict[str, tuple] = {
    # 28x28 grey (MNIST, Fashion-MNIST): small enough to train 250 of them on a CPU.
    "cnn-small": (Conv(16, 5, True), Conv(32, 5, True), Dense(64)),
    # 32x32 colour (SVHN, CIFAR-10).
    "cnn-deep": (
        Conv(32, 3, False), Conv(32, 3, True),
        Conv(64, 3, False), Conv(64, 3, True),
        Conv(128, 3, False), Conv(128, 3, True),
        Dense(256),
    ),
}


def architecture(name: str) -> tuple:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}") from None


def build_model(arch: str, in_channels: int, num_classes: int, image_size: int) -> nn.Sequential:
    """One network of architecture ``arch``: (B, C, H, W) float -> (B, num_classes) logits."""
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    flat = None
    for layer in architecture(arch):
        if isinstance(layer, Conv):
            layers += [nn.Conv2d(channels, layer.out_channels, layer.kernel, padding=layer.kernel // 2), nn.ReLU()]
            channels = layer.out_channels
            if layer.pool:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        else:
            if flat is None:
                layers.append(nn.Flatten())
                flat = channels * size * size
            layers += [nn.Linear(flat, layer.out_features), nn.ReLU()]
            flat = layer.out_features
    if flat is None:
        layers.append(nn.Flatten())
        flat = channels * size * size
    layers.append(nn.Linear(flat, num_classes))
    return nn.Sequential(*layers)
