"""The averaged student: one module whose logits are the mean of several networks' (and of each
image's left-right mirror), so that the exported graph is the whole student. Imported by name from
``pate.nets.models`` (which must not import torch); written so that TorchScript, torch.export and
the ONNX exporter all take it (a list of tensors stacked, no optional values)."""
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
