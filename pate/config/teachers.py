"""[teachers]: the K teachers' architecture, training and public features."""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..nets.models import TEACHER_ARCHITECTURES
from .checks import MAX_BATCH, MAX_EPOCHS, MAX_SEED, MAX_TEACHERS, _check


FEATURES = ("none", "simclr", "scattering", "pretrained")


NAMED_WEIGHTS = re.compile(r"^[A-Z][A-Z0-9_]*$")  # DEFAULT, IMAGENET1K_V1: a library's weights, not a file


@dataclass(frozen=True)
class TeachersConfig:
    count: int = 250
    arch: str = "cnn-small"
    epochs: int = 15
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    augment: bool = True
    seed: int = 0
    # Public features (pate.features): "simclr" = a frozen contrastive extractor trained on the
    # unlabelled public pool + one logistic head per teacher; "scattering" = a fixed wavelet
    # scattering transform (J=2, L=8; nothing trained, feature_epochs/feature_dim unused) + one
    # logistic head per teacher; "none" = CNN teachers from scratch.
    features: str = "none"
    feature_epochs: int = 30
    feature_dim: int = 128
    # features = "pretrained" (pate.features.pretrained): a frozen torchvision backbone, or
    # "timm:<name>"; weights "DEFAULT" (downloaded as the library does), a torchvision weights name,
    # or a local weights file (relative to the pipeline file); backbone_size = the input size the
    # images are resized to (0 = the weights' own, 224 for ImageNet models).
    backbone: str = "resnet18"
    weights: str = "DEFAULT"
    backbone_size: int = 0
    # A DP-SGD teacher beside reverse-knn's votes (pate.teachers.dpsgd: Tramer & Boneh's ScatterNet +
    # linear, Opacus): dpsgd_noise = its noise multiplier (0 = none); Poisson sampling at rate
    # 1/ceil(N/dpsgd_batch) for dpsgd_epochs epochs, SGD at dpsgd_lr. Its cost is composed with the
    # votes' in one accountant; its probabilities on the pool multiply the votes' soft labels.
    # dpsgd_dim: 0 = every scattering coefficient (Tramer & Boneh's input); d > 0 = the coefficients
    # projected on d whitened principal axes of the public pool first (fewer coordinates for the
    # noise; the projection reads public images only and is folded into the linear layer).
    dpsgd_noise: float = 0.0
    dpsgd_batch: int = 4096
    dpsgd_epochs: int = 40
    dpsgd_lr: float = 8.0
    dpsgd_dim: int = 0

    def validate(self) -> None:
        _check("teachers", "dpsgd_noise", self.dpsgd_noise == 0 or 0.3 <= self.dpsgd_noise <= 1000,
               "0 (no DP-SGD teacher) or in [0.3, 1000]", self.dpsgd_noise)
        _check("teachers", "dpsgd_batch", 1 <= self.dpsgd_batch <= 1_000_000, "between 1 and 1000000",
               self.dpsgd_batch)
        _check("teachers", "dpsgd_epochs", 1 <= self.dpsgd_epochs <= MAX_EPOCHS, f"between 1 and {MAX_EPOCHS}",
               self.dpsgd_epochs)
        _check("teachers", "dpsgd_lr", 0 < self.dpsgd_lr <= 1e4, "in (0, 10000]", self.dpsgd_lr)
        _check("teachers", "dpsgd_dim", 0 <= self.dpsgd_dim <= 4096, "0 (every coefficient) or between 1 and 4096",
               self.dpsgd_dim)
        _check("teachers", "count", 1 <= self.count <= MAX_TEACHERS, f"between 1 and {MAX_TEACHERS}", self.count)
        _check("teachers", "features", self.features in FEATURES, f"one of {list(FEATURES)}", self.features)
        _check("teachers", "feature_epochs", 1 <= self.feature_epochs <= MAX_EPOCHS, f"between 1 and {MAX_EPOCHS}",
               self.feature_epochs)
        _check("teachers", "feature_dim", 2 <= self.feature_dim <= 4096, "between 2 and 4096", self.feature_dim)
        _check("teachers", "backbone", bool(self.backbone.strip()), "a torchvision model name or 'timm:<name>'",
               self.backbone)
        _check("teachers", "weights", bool(self.weights.strip()), "'DEFAULT', a weights name or a file",
               self.weights)
        _check("teachers", "backbone_size", self.backbone_size == 0 or 16 <= self.backbone_size <= 1024,
               "0 (the weights' own) or between 16 and 1024", self.backbone_size)
        _check("teachers", "optimizer", self.optimizer in ("adam", "sgd"), "'adam' or 'sgd'", self.optimizer)
        _check("teachers", "arch", self.arch in TEACHER_ARCHITECTURES, f"one of {list(TEACHER_ARCHITECTURES)} "
               "(the scattering students' feature map is [teachers] features = \"scattering\")", self.arch)
        _check("teachers", "epochs", 1 <= self.epochs <= MAX_EPOCHS, f"between 1 and {MAX_EPOCHS}", self.epochs)
        _check("teachers", "batch_size", 1 <= self.batch_size <= MAX_BATCH, f"between 1 and {MAX_BATCH}",
               self.batch_size)
        _check("teachers", "lr", self.lr > 0, "> 0", self.lr)
        _check("teachers", "momentum", 0 <= self.momentum < 1, "in [0, 1)", self.momentum)
        _check("teachers", "weight_decay", self.weight_decay >= 0, ">= 0", self.weight_decay)
        _check("teachers", "seed", 0 <= self.seed <= MAX_SEED, f"in [0, {MAX_SEED}]", self.seed)

