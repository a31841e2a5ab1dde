"""TAID (Shing et al., "TAID: Temporally Adaptive Interpolated Distillation for Efficient
Knowledge Transfer in Language Models", ICLR 2025; official code SakanaAI/TAID)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from kdbench.losses import taid
from kdbench.methods import register
from kdbench.methods.base import Method, MethodContext, RunState
from kdbench.outputs import Outputs


@register
class TAID(Method):
    """TAID: CE to σ((1−t)·sg(z_S) + t·z_T), with t raised adaptively over training.

    After every optimiser step, with J that step's TAID loss: δ = (J_prev − J)/(J_prev + 1e-15),
    m ← β·m + (1−β)·δ, t ← min(t_end, max(t_lin, t + α·sigmoid(m)·(1−t))), or t ← t_lin with
    `disable_adaptive`, where t_lin = t_start + (t_end − t_start)·k/N, k the number of optimiser
    steps completed before the step that produced J (its 0-based index) and N the total. The
    first step only records J. Follows the official code (SakanaAI/TAID at a062892,
    src/distil_losses/taid.py, `TAID.update_t`): it updates t inside `training_step` with
    progress `trainer.global_step / estimated_stepping_batches`, and Lightning's global_step
    there counts the steps completed before the current one, so the step with 0-based index k
    computes t_lin at k/N and its new t is first used by step k + 1. `disable_adaptive` (default
    False, as the official `--taid_disable_adaptive` flag) keeps t on the linear schedule; m and
    J_prev are updated all the same. The official code trains on the TAID loss alone
    (ce_weight 0). The loss is `kdbench.losses.taid` (−∞ student logits excluded as there).
    """

    name = "taid"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"alpha": (1e-4, 5e-4, 1e-3, 5e-3)}
    paper = "Shing et al., TAID: Temporally Adaptive Interpolated Distillation, ICLR 2025"
    teacher = "external"
    rebins = True  # reads the teacher only through softmax(z_T) (logits up to a shift)

    @dataclass
    class Config:
        t_start: float = 0.2
        t_end: float = 1.0
        alpha: float = 5e-4
        beta: float = 0.99
        ce_weight: float = 0.0
        disable_adaptive: bool = False

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        self.register_buffer("t", torch.tensor(config.t_start, dtype=torch.float64))
        self.register_buffer("momentum", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("prev_loss", torch.tensor(math.nan, dtype=torch.float64))

    t: Tensor
    momentum: Tensor
    prev_loss: Tensor

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        t = float(self.t)
        return {
            f"taid/{name}": taid(s.logits, tt.in_frame(1.0), t, s.mask)
            for name, s, tt in self.paired(student, teacher)
        }

    def after_step(self, student: Outputs, losses: dict[str, Tensor], state: RunState) -> None:
        c = self.config
        loss = sum(float(v) for k, v in losses.items() if k.startswith("taid/"))
        if not math.isfinite(loss):
            return
        prev = float(self.prev_loss)
        if not math.isnan(prev):
            delta = (prev - loss) / (prev + 1e-15)
            self.momentum.fill_(c.beta * float(self.momentum) + (1 - c.beta) * delta)
            # state.step: 0-based index of the step just taken = steps completed before it.
            progress = state.step / max(state.steps, 1)
            t_lin = c.t_start + (c.t_end - c.t_start) * progress
            if c.disable_adaptive:
                self.t.fill_(t_lin)
            else:
                step = c.alpha * torch.sigmoid(self.momentum).item() * (1 - float(self.t))
                self.t.fill_(min(c.t_end, max(t_lin, float(self.t) + step)))
        self.prev_loss.fill_(loss)
