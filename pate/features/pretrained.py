"""Frozen pretrained backbones as public feature extractors (``[teachers] features = "pretrained"``).

A backbone trained on public data (ImageNet weights from torchvision or timm, or any weights file
the user holds) maps each image to a feature vector; teachers then fit only a small head on their
own shard's features. The weights never see a private record here, so sharing the backbone across
teachers costs no privacy (Papernot et al. 2018 use public features the same way; Tramèr & Boneh
2021, "Differentially Private Learning Needs Better Features", show how much they help).

``backbone`` names a torchvision architecture (``resnet18``, ``vit_b_16``, …) or a timm one as
``timm:<name>`` (timm is optional: ``pip install timm``). ``weights`` is ``"DEFAULT"`` (the
library's own download, cached under ``$TORCH_HOME``/the Hugging Face cache as usual), a
torchvision weights name such as ``"IMAGENET1K_V2"``, or a local file (a state dict, or a
checkpoint holding one under ``state_dict``/``model``) for machines without internet. The
classifier is cut off (the last linear layer becomes the identity), so a weights file fine-tuned
for another number of classes fits too.

Images arrive as uint8 (N, C, H, W); ``prepare`` scales them to [0, 1], copies grayscale to three
channels, resizes to the backbone's input size and normalises with the weights' own statistics.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import NAMED_WEIGHTS
from ..errors import PateError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
TIMM_PREFIX = "timm:"


class WeightsError(PateError, ValueError):
    """The backbone or its weights cannot be used; the message is one line naming the file or key."""


@dataclass
class Backbone:
    """A frozen headless network and what its inputs must look like."""
    module: nn.Module
    dim: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_id: str  # the weights' name, or a local file's sha256 (public: the weights are public data)


def is_named(weights: str) -> bool:
    """Whether ``weights`` names a library's weights rather than a file."""
    return bool(NAMED_WEIGHTS.match(weights))


def load(backbone: str, weights: str, size: int = 0, device: str | torch.device = "cpu") -> Backbone:
    """The frozen backbone ``backbone`` with ``weights``, its classifier removed, checked by one
    forward pass at input ``size`` (0: the weights' own size). Loaded once per process."""
    found = _cached(backbone, weights, size)
    found.module.to(device)
    return found


@functools.lru_cache(maxsize=2)
def _cached(backbone: str, weights: str, size: int) -> Backbone:
    device = "cpu"
    if backbone.startswith(TIMM_PREFIX):
        model, mean, std, own_size = _timm(backbone[len(TIMM_PREFIX):], weights)
    else:
        model, mean, std, own_size = _torchvision(backbone, weights)
    size = size or own_size
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval().to(device)
    try:
        with torch.no_grad():
            dim = int(model(torch.zeros(1, 3, size, size, device=device)).flatten(1).shape[1])
    except (RuntimeError, AssertionError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"[teachers] backbone {backbone!r} does not take {size}x{size} inputs ({first}); "
                           "set [teachers] backbone_size to the size it was made for") from None
    weights_id = weights if is_named(weights) else f"sha256:{_sha256(weights)}"
    return Backbone(model, dim, size, tuple(mean), tuple(std), weights_id)


def _torchvision(name: str, weights: str):
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        raise WeightsError(f"[teachers] backbone {name!r} is not a torchvision classification model (e.g. "
                           f"resnet18, resnet50, vit_b_16; or 'timm:<name>' for a timm model)")
    try:
        enum = tvm.get_model_weights(name)
    except (KeyError, ValueError):
        enum = None
    default = enum.DEFAULT if enum is not None and hasattr(enum, "DEFAULT") else None
    mean, std, size = _transform_stats(default)
    if is_named(weights):
        if enum is None:
            raise WeightsError(f"[teachers] weights: torchvision has no named weights for {name!r}; give a file")
        try:
            chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
        except KeyError:
            names = ", ".join(["DEFAULT", *(w.name for w in enum)])
            raise WeightsError(f"[teachers] weights {weights!r} is not one of {name}'s: {names}") from None
        mean, std, size = _transform_stats(chosen)
        try:
            state = chosen.get_state_dict(progress=False)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise WeightsError(f"[teachers] weights {weights!r} for {name}: cannot fetch {chosen.url} "
                               f"({_first_line(exc)}); offline, set [teachers] weights to a local weights file")
        model = tvm.get_model(name, weights=None)
        _fit(model, state, f"torchvision's {name} {chosen.name} weights", name)
    else:
        model = tvm.get_model(name, weights=None)
        _fit(model, _read_file(weights), weights, name)
    return model, mean, std, size


def _timm(name: str, weights: str):
    try:
        import timm
    except ImportError:
        raise WeightsError(f"[teachers] backbone 'timm:{name}' needs timm: pip install timm") from None
    if name not in timm.list_models(pretrained=False):
        raise WeightsError(f"[teachers] backbone 'timm:{name}' is not a timm model")
    if is_named(weights) and weights != "DEFAULT":
        raise WeightsError(f"[teachers] weights: a timm backbone takes 'DEFAULT' or a weights file, not {weights!r}")
    try:
        model = timm.create_model(name, pretrained=weights == "DEFAULT")
    except (OSError, RuntimeError) as exc:  # huggingface_hub's offline errors are OSErrors
        raise WeightsError(f"[teachers] weights 'DEFAULT' for timm:{name}: cannot fetch them ({_first_line(exc)}); "
                           "offline, set [teachers] weights to a local weights file") from None
    if weights != "DEFAULT":
        _fit(model, _read_file(weights), weights, f"timm:{name}")
    else:
        _drop_last_linear(model)
    config = timm.data.resolve_data_config({}, model=model)
    return model, config["mean"], config["std"], int(config["input_size"][-1])


def _transform_stats(weights) -> tuple[tuple, tuple, int]:
    if weights is None:
        return IMAGENET_MEAN, IMAGENET_STD, DEFAULT_SIZE
    transform = weights.transforms()
    crop = getattr(transform, "crop_size", [DEFAULT_SIZE])
    return (tuple(getattr(transform, "mean", IMAGENET_MEAN)), tuple(getattr(transform, "std", IMAGENET_STD)),
            int(crop[0] if isinstance(crop, (list, tuple)) else crop))


def _drop_last_linear(model: nn.Module) -> str:
    """Replace the network's last linear layer (its classifier) by the identity; its name, or ''."""
    last = ""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last:
        parent_name, _, child = last.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    return last


def _read_file(path: str) -> dict:
    """The state dict in a local weights file (plain, or under 'state_dict'/'model'), 'module.' stripped."""
    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"[teachers] weights {path}: no such file (give 'DEFAULT' to download, or a weights file)")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            blob = load_file(str(file))
        else:
            blob = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file must end as one line naming it, never a traceback
        raise WeightsError(f"[teachers] weights {path}: not a readable weights file ({_first_line(exc)})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise WeightsError(f"[teachers] weights {path}: holds no state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in blob.items()}


def _fit(model: nn.Module, state: dict, what: str, backbone: str) -> None:
    """Load ``state`` into ``model`` without its classifier, strictly; one line when it does not fit."""
    head = _drop_last_linear(model)
    if head:
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {wrong[0]}: file {list(state[wrong[0]].shape)}, "
                         f"{backbone} {list(own[wrong[0]].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        raise WeightsError(f"[teachers] weights {what} do not fit backbone {backbone!r}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def prepare(images: torch.Tensor, backbone: Backbone) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the backbone's float input: [0, 1], three channels, resized, normalised."""
    x = images.float().div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != backbone.size or x.shape[-2] != backbone.size:
        x = F.interpolate(x, size=(backbone.size, backbone.size), mode="bilinear", align_corners=False,
                          antialias=True)
    mean = torch.tensor(backbone.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(backbone.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def embed(backbone: Backbone, images: np.ndarray, *, batch_size: int = 256, device: str | torch.device = "cpu",
          progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """uint8 (N, C, H, W) images -> (N, d) float32 features on CPU, batched on ``device``;
    ``progress(images done)`` after each batch."""
    out = torch.empty((len(images), backbone.dim), dtype=torch.float32)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda")
                else contextlib.nullcontext())
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device)
        with autocast:
            out[i:i + len(x)] = backbone.module(prepare(x, backbone)).flatten(1).float().cpu()
        if progress is not None:
            progress(min(i + batch_size, len(images)))
    return out

