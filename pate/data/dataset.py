"""What every data source gives the pipeline: private images with labels, public images, and how
they may be split, as uint8 arrays in memory.

The private set is (``private_x``, ``private_y``). The public set ``public_x`` holds the images
the student pool may be drawn from (the first ``num_pool``) and, for sources with a labelled test
folder or file, the held-out test candidates after them; ``public_y`` is -1 where a public image
has no label. For the built-in datasets the pool and the held-out test split are both drawn from
one labelled public set (``shared_split``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DatasetSpec
from ..errors import PateError

DEFAULT_ROOT = Path(os.environ.get("PATE_DATA", "data"))


class DataError(PateError):
    """The data is missing, damaged or unusable; the message names the file or the command that fixes it."""


@dataclass(frozen=True)
class Dataset:
    name: str
    private_x: np.ndarray  # uint8 (N, C, H, W)
    private_y: np.ndarray  # int64 (N,)
    public_x: np.ndarray  # uint8 (M, C, H, W)
    public_y: np.ndarray  # int64 (M,), -1 = no label
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per-channel mean and std of [0, 1] pixels, public information
    std: tuple[float, ...]
    num_pool: int  # public_x[:num_pool] may join the student pool
    shared_split: bool  # True: pool and held-out test are drawn from the same public images
    files: dict = field(default_factory=dict, compare=False)  # source files and their sha256, by set

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_test_candidates(self) -> int:
        return len(self.public_y) if self.shared_split else len(self.public_y) - self.num_pool

    @property
    def spec(self) -> DatasetSpec:
        _, channels, size, _ = self.private_x.shape if len(self.private_x) else (0, *self.public_x.shape[1:])
        return DatasetSpec(num_private=len(self.private_y), num_public=len(self.public_y),
                           num_classes=self.num_classes, channels=int(channels), image_size=int(size),
                           mean=tuple(self.mean), std=tuple(self.std), num_pool=self.num_pool,
                           num_test=self.num_test_candidates, classes=tuple(self.classes),
                           shared_split=self.shared_split)



def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (std at least 1e-3) of the [0, 1] pixels of uint8 (N, C, H, W)
    PUBLIC images, a chunk at a time (no float copy of the whole set)."""
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].astype(np.float64) / 255.0
        total += part.sum(axis=(0, 2, 3))
        squares += np.square(part).sum(axis=(0, 2, 3))
    count = max(len(images) * images.shape[2] * images.shape[3], 1)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    return tuple(float(v) for v in mean), tuple(max(float(v), 1e-3) for v in std)


def to_float(images: np.ndarray, mean, std):
    """uint8 (N, C, H, W) -> float32 torch tensor, normalised per channel."""
    import torch  # not at import time: `pate --help` and the privacy views never need torch

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
