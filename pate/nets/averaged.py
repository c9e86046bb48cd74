"""Averages of networks. Over members: the averaged student, one module whose logits are the mean of
several networks' (and of each image's left-right mirror), plus, where the run has one, a DP-SGD
teacher's logits weighted in, so that the exported graph is the whole student; imported by name from
``pate.nets.models`` (which must not import torch), and written so that TorchScript, torch.export
and the ONNX exporter all take it (a list of tensors stacked, modules in lists rather than optional
values). Over training steps: the exponential moving average of a network's weights (``ema_update``),
which the students and the DP-SGD teacher both keep."""
from __future__ import annotations

import torch
from torch import nn


class AveragedLogits(nn.Module):
    """The mean of ``networks``' logits (over each image and its mirror with ``flip_average``), plus
    ``teacher_weight`` times ``teacher``'s logits where there is a teacher: a product of experts,
    the students' distribution times the teacher's to the power ``teacher_weight`` (logits add), so
    the softmax needs no normalising of either."""

    def __init__(self, networks: list, flip_average: bool, teacher: nn.Module | None = None,
                 teacher_weight: float = 0.0):
        super().__init__()
        self.members = nn.ModuleList(networks)
        self.flip_average = bool(flip_average)
        self.teachers = nn.ModuleList([] if teacher is None else [teacher])
        self.teacher_weight = float(teacher_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = []
        for network in self.members:
            logits.append(network(x))
            if self.flip_average:
                logits.append(network(x.flip(-1)))
        mean = torch.stack(logits).mean(0)
        for teacher in self.teachers:
            mean = mean + self.teacher_weight * teacher(x)
        return mean


def students_alone(model: nn.Module) -> nn.Module:
    """The averaged students of ``model`` without its teacher (sharing their modules): what the
    teacher adds, for evaluation; ``model`` itself when it carries none."""
    if not isinstance(model, AveragedLogits) or not len(model.teachers):
        return model
    return AveragedLogits(list(model.members), model.flip_average)


class OnUnitImages(nn.Module):
    """``network`` (trained on images scaled to [0, 1], as the DP-SGD teacher's scattering features
    are) fed the students' inputs, which are normalised by the data's per-channel ``mean`` and ``std``:
    it undoes that normalisation first. mean and std are buffers, saved with the weights."""

    def __init__(self, network: nn.Module, mean, std):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x * self.std + self.mean)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """Fold ``model``'s weights after optimiser step ``step`` (0-based) into their moving average
    ``ema``, at decay min(``decay``, (1 + step)/(10 + step)) so the first steps are not swamped by the
    initial weights; buffers are copied as they are."""
    weight = 1.0 - min(decay, (1.0 + step) / (10.0 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, weight)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)
