"""Averages of networks. Over members: the averaged student, one module whose logits are the mean of
several networks' (and of each image's left-right mirror), so that the exported graph is the whole
student; imported by name from ``pate.nets.models`` (which must not import torch), and written so
that TorchScript, torch.export and the ONNX exporter all take it (a list of tensors stacked, no
optional values). Over training steps: the exponential moving average of a network's weights
(``ema_update``), which the students and the DP-SGD teacher both keep."""
from __future__ import annotations

import torch
from torch import nn


class AveragedLogits(nn.Module):
    def __init__(self, networks: list, flip_average: bool):
        super().__init__()
        self.members = nn.ModuleList(networks)
        self.flip_average = bool(flip_average)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = []
        for network in self.members:
            logits.append(network(x))
            if self.flip_average:
                logits.append(network(x.flip(-1)))
        return torch.stack(logits).mean(0)


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
