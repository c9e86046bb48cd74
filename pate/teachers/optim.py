"""SGD and Adam over parameters with a leading teacher dimension, one teacher at a time in effect.

Each teacher must train as if alone (its weights a function of its own shard), so the update of
teacher k uses only teacher k's gradient and its own optimiser state, and a teacher with no record
in a step (its shard is exhausted for this epoch) is left untouched, state included. The update
rules are ``torch.optim.SGD`` (momentum, L2 weight decay) and ``torch.optim.Adam`` exactly.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ..io import CheckpointMismatch


class BatchedOptimizer:
    """SGD (momentum, L2 weight decay) or Adam over parameters with a leading teacher dim.

    ``step(sl, active)`` updates only teachers at positions ``sl`` whose ``active`` flag is set,
    exactly as ``torch.optim.SGD``/``Adam`` would update each of them alone; an inactive teacher
    (no record of its shard in this step) keeps its weights and state untouched.
    """

    def __init__(self, params: Sequence[nn.Parameter], *, name: str, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if name not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam'. Found {name!r}.")
        self.params, self.name, self.lr, self.momentum = list(params), name, lr, momentum
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        k = self.params[0].shape[0]
        self.state: dict[str, list[torch.Tensor] | torch.Tensor] = {"step": torch.zeros(k, dtype=torch.float64)}
        if name == "sgd" and momentum:
            self.state["momentum"] = [torch.zeros_like(p) for p in self.params]
        if name == "adam":
            self.state["exp_avg"] = [torch.zeros_like(p) for p in self.params]
            self.state["exp_avg_sq"] = [torch.zeros_like(p) for p in self.params]

    def state_dict(self) -> dict:
        return {key: (value.cpu() if torch.is_tensor(value) else [v.cpu() for v in value])
                for key, value in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.state):
            raise CheckpointMismatch(f"optimizer state holds {sorted(state)}, expected {sorted(self.state)}")
        for key, value in state.items():
            if torch.is_tensor(value):
                self.state[key].copy_(value)
            else:
                for mine, theirs in zip(self.state[key], value):
                    mine.copy_(theirs)

    def part(self, sl: slice) -> "BatchedOptimizer":
        """An optimiser for the teachers at positions ``sl`` (caller sets ``params``), with a copy
        of their state; ``absorb`` writes it back."""
        other = copy.copy(self)
        other.state = {key: (value[sl].clone() if torch.is_tensor(value) else [v[sl].clone() for v in value])
                       for key, value in self.state.items()}
        return other

    @torch.no_grad()
    def absorb(self, sl: slice, part: "BatchedOptimizer") -> None:
        for key, value in self.state.items():
            if torch.is_tensor(value):
                value[sl] = part.state[key]
            else:
                for mine, theirs in zip(value, part.state[key]):
                    mine[sl] = theirs

    @torch.no_grad()
    def step(self, sl: slice, active: torch.Tensor) -> None:
        every = bool(active.all())
        step = self.state["step"]
        step[sl] += active.to(step)
        for i, p in enumerate(self.params):
            pv, grad = p[sl], p.grad[sl]
            mask = active.view(-1, *([1] * (pv.dim() - 1)))
            d = grad.add(pv, alpha=self.weight_decay) if self.weight_decay else grad
            if self.name == "sgd":
                if self.momentum:
                    buf = self.state["momentum"][i][sl]
                    new = buf.mul(self.momentum).add_(d)
                    buf.copy_(new if every else torch.where(mask, new, buf))
                    d = buf
                upd = d.mul(self.lr)
            else:
                b1, b2 = self.betas
                m, v = self.state["exp_avg"][i][sl], self.state["exp_avg_sq"][i][sl]
                new_m = m.lerp(d, 1 - b1)
                new_v = v.mul(b2).addcmul_(d, d, value=1 - b2)
                m.copy_(new_m if every else torch.where(mask, new_m, m))
                v.copy_(new_v if every else torch.where(mask, new_v, v))
                t = step[sl].clamp(min=1).to(pv.device)
                bc1 = (1 - b1 ** t).to(pv.dtype).view_as(mask)
                bc2 = (1 - b2 ** t).to(pv.dtype).view_as(mask)
                upd = m.div(v.sqrt().div_(bc2.sqrt()).add_(self.eps)).mul_(self.lr / bc1)
            pv.sub_(upd if every else torch.where(mask, upd, 0.0))
