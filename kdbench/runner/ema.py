"""Exponential moving average of a model's weights (as RT-DETR/D-FINE's ModelEMA).

decay_t = decay·(1 − exp(−t / warmup_steps)) after t updates, so the average follows the
model closely early on; buffers (BatchNorm statistics) are averaged the same way.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup_steps: int = 2000) -> None:
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup_steps, self.updates = decay, warmup_steps, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / max(self.warmup_steps, 1)))
        source = model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[name].detach(), alpha=1 - d)
            else:
                value.copy_(source[name])

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
