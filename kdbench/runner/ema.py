"""Exponential moving average of a model's weights: the card's `train.ema` (as RT-DETR/D-FINE's
ModelEMA) and the `ema_model` teacher the runner serves to a method (kdbench.methods.base.NEEDS).

After t updates ema ← d_t·ema + (1 − d_t)·θ for every parameter; with `warmup_steps` d_t =
decay·(1 − exp(−t / warmup_steps)), so the average follows the model closely early on (the card's
EMA); with None d_t = decay at every update (a method's EMA teacher, whose momentum the method
gives). Floating-point buffers (BatchNorm's running statistics) are averaged the same way
(`buffers="average"`, ModelEMA's choice) or copied from the model (`"copy"`, the EMA teacher's:
statistics averaged at a momentum like 0.9996 would stay near their initial values for thousands
of steps, and an eval-mode teacher would normalise with them); integer buffers are copied. The
average starts as a copy of the model, in eval mode and without gradients.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup_steps: int | None = 2000,
                 buffers: Literal["average", "copy"] = "average") -> None:
        if buffers not in ("average", "copy"):
            raise ValueError(f"buffers must be 'average' or 'copy', got {buffers!r}")
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup_steps, self.updates = decay, warmup_steps, 0
        self.averaged = {name for name, _ in self.model.named_parameters(remove_duplicate=False)}
        if buffers == "average":
            self.averaged |= {name for name, b in self.model.named_buffers() if b.dtype.is_floating_point}

    def current_decay(self) -> float:
        """d_t of the next update."""
        if self.warmup_steps is None:
            return self.decay
        return self.decay * (1 - math.exp(-(self.updates + 1) / max(self.warmup_steps, 1)))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        source = model.state_dict()
        for name, value in self.model.state_dict().items():
            if name in self.averaged:
                value.mul_(d).add_(source[name].detach(), alpha=1 - d)
            else:
                value.copy_(source[name])

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
