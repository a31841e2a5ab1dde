"""Optimisers and per-step learning-rate schedules built from a card's `train` section.

Both are registries (kdbench.registry): `OPTIMIZERS` maps a card's `optimizer.name` to a builder
`(cfg, params) → torch.optim.Optimizer`, `SCHEDULES` maps `schedule.name` to the factor after
warm-up `(cfg, step, steps_per_epoch, total_steps, warmup_steps) → float`. A card names only
these (`kdbench.cards.sections.Optimizer.name` / `Schedule.name`, kept equal by a test).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from kdbench.registry import Registry

Builder = Callable[[dict[str, Any], Iterable[nn.Parameter]], torch.optim.Optimizer]
Factor = Callable[[dict[str, Any], int, int, int, float], float]

OPTIMIZERS: Registry[Builder] = Registry("optimizer")
SCHEDULES: Registry[Factor] = Registry("schedule")


@OPTIMIZERS.register("sgd")
def _sgd(cfg: dict[str, Any], params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with `lr`, `momentum` (default 0.9), `weight_decay` (0) and `nesterov` (false)."""
    return torch.optim.SGD(params, lr=float(cfg["lr"]), momentum=float(cfg.get("momentum", 0.9)),
                           weight_decay=float(cfg.get("weight_decay", 0.0)), nesterov=bool(cfg.get("nesterov", False)))


def _adam_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """`lr`, `weight_decay` (default 0) and `betas` (default [0.9, 0.999]) of Adam and AdamW."""
    return {"lr": float(cfg["lr"]), "weight_decay": float(cfg.get("weight_decay", 0.0)),
            "betas": tuple(cfg.get("betas", (0.9, 0.999))), "foreach": True}


@OPTIMIZERS.register("adam")
def _adam(cfg: dict[str, Any], params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba, 2015), options as `_adam_options`."""
    return torch.optim.Adam(params, **_adam_options(cfg))


@OPTIMIZERS.register("adamw")
def _adamw(cfg: dict[str, Any], params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter, 2019: decoupled weight decay), options as `_adam_options`."""
    return torch.optim.AdamW(params, **_adam_options(cfg))


@SCHEDULES.register("cosine")
def _cosine(cfg: dict[str, Any], step: int, steps_per_epoch: int, total: int, warmup: float) -> float:
    """Cosine decay from 1 after warm-up to `min_factor` (default 0) at the end of the budget."""
    floor = float(cfg.get("min_factor", 0.0))
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@SCHEDULES.register("multistep")
def _multistep(cfg: dict[str, Any], step: int, steps_per_epoch: int, total: int, warmup: float) -> float:
    """×`gamma` (default 0.1) at each epoch in `milestones`."""
    epoch = step // steps_per_epoch
    passed = sum(epoch >= m for m in cfg.get("milestones", []))
    return float(cfg.get("gamma", 0.1)) ** passed


@SCHEDULES.register("constant")
def _constant(cfg: dict[str, Any], step: int, steps_per_epoch: int, total: int, warmup: float) -> float:
    """1 after warm-up."""
    return 1.0


def build_optimizer(cfg: dict[str, Any], params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser a card's `optimizer` section names (`name`, default sgd) over `params`."""
    return OPTIMIZERS[cfg.get("name", "sgd")](cfg, params)


def lr_factor(cfg: dict[str, Any], step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate before optimiser step `step` (0-based).

    A linear warm-up over `warmup_epochs` ((step + 1) / warm-up steps), then the factor of the
    schedule `name` (default cosine; SCHEDULES): cosine decay to `min_factor` at the end of the
    budget, ×gamma at each epoch in `milestones` (multistep), or 1 (constant).
    """
    schedule = SCHEDULES[cfg.get("name", "cosine")]  # an unknown name fails even during warm-up
    warmup = float(cfg.get("warmup_epochs", 0)) * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    return schedule(cfg, step, steps_per_epoch, max(epochs * steps_per_epoch, 1), warmup)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: dict[str, Any], steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(cfg, 0, steps_per_epoch, epochs)  # fail on a bad name before training
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, epochs))
