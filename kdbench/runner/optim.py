"""Optimisers and per-step learning-rate schedules built from a card's `train` section."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from kdbench.errors import UsageError

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("cosine", "multistep", "constant")


def build_optimizer(cfg: dict[str, Any], params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """`{name: sgd, lr, momentum, weight_decay, nesterov}` or `{name: adamw, lr, weight_decay}`."""
    name = cfg.get("name", "sgd")
    lr = float(cfg["lr"])
    wd = float(cfg.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.9)),
                               weight_decay=wd, nesterov=bool(cfg.get("nesterov", False)))
    if name in ("adamw", "adam"):
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        betas = tuple(cfg.get("betas", (0.9, 0.999)))
        return cls(params, lr=lr, weight_decay=wd, betas=betas, foreach=True)  # type: ignore[arg-type]
    raise UsageError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def lr_factor(cfg: dict[str, Any], step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate before optimiser step `step` (0-based).

    cosine: linear warm-up over `warmup_epochs`, then cosine decay to `min_factor` at the end
    of the budget. multistep: ×gamma at each epoch in `milestones`. constant: 1 after warm-up.
    """
    name = cfg.get("name", "cosine")
    warmup = float(cfg.get("warmup_epochs", 0)) * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    total = max(epochs * steps_per_epoch, 1)
    if name == "cosine":
        floor = float(cfg.get("min_factor", 0.0))
        progress = (step - warmup) / max(total - warmup, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if name == "multistep":
        epoch = step // steps_per_epoch
        passed = sum(epoch >= m for m in cfg.get("milestones", []))
        return float(cfg.get("gamma", 0.1)) ** passed
    if name == "constant":
        return 1.0
    raise UsageError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: dict[str, Any], steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(cfg, 0, steps_per_epoch, epochs)  # fail on a bad name before training
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, epochs))
