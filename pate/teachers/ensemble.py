"""K teachers as one batched model, and their votes (Papernot et al. 2017, arXiv:1610.05755v4, §2.1).

The K networks share one architecture (``pate.nets.models.layer_plan``) and are evaluated as a single
module: every conv layer is one grouped convolution (``groups=K``, teachers' channels stacked,
channels-last), every dense layer one ``torch.baddbmm`` over the teacher dimension, so the
ensemble computes exactly what K separate ``build_model`` networks would. Each teacher's initial
weights come from ``(seed, teacher id)`` alone (``pate.seeds``).
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..nets.models import ConvStep, build_model, layer_plan
from ..seeds import TAG_INIT, derive_seed


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


def init_teachers(ensemble: TeacherEnsemble, seed: int) -> TeacherEnsemble:
    """Initialise each teacher from ``(seed, teacher id)`` with PyTorch's default Conv2d/Linear
    distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    with torch.no_grad():
        for pos, tid in enumerate(ensemble.teacher_ids):
            gen = torch.Generator().manual_seed(derive_seed(seed, TAG_INIT, tid))
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


def part(ensemble: TeacherEnsemble, sl: slice) -> TeacherEnsemble:
    """A copy of the teachers at positions ``sl``, with their own parameters."""
    out = TeacherEnsemble(teacher_ids=ensemble.teacher_ids[sl], **ensemble.spec())
    out.load_state_dict({k: v[sl] for k, v in ensemble.state_dict().items()})
    return out.to(ensemble.weights[0].device)


def widest_activation(ensemble: TeacherEnsemble) -> int:
    """Elements of the largest per-image activation of one teacher (sizes the memory of a chunk)."""
    return max(s.out_channels * s.size * s.size if isinstance(s, ConvStep) else s.out_features
               for s in ensemble.plan)


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
        widest = widest_activation(model)
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
    so every row sums to K (Papernot et al. 2018: one vote per teacher is what bounds the sensitivity)."""
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
