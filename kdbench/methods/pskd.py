"""PS-KD (Kim et al., "Self-Knowledge Distillation with Progressive Refinement of Targets",
ICCV 2021; official code lgcnsai/PS-KD-Pytorch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.losses import pskd_targets, soft_cross_entropy
from kdbench.losses.pose import simcc_kl
from kdbench.methods import register
from kdbench.methods.base import Method, MethodContext, RunState, require_target
from kdbench.outputs import Outputs


@register
class PSKD(Method):
    """PS-KD: soft CE to (1−α_t)·onehot + α_t·p_{t−1}(x), α_t = α_T·(e+1)/E; no separate CE.

    One prediction per sample ((B, K) heads with ids, e.g. classification): p_{t−1} is a (N, K)
    table per head indexed by sample id, initialised to one-hot and overwritten after each
    optimiser step with the detached softmax of that step's forward, as the official code.

    Sequence outputs (translation's (B, T, V) next-token heads): a per-token table over the
    vocabulary is impractical (training tokens × V floats), so p_{t−1} comes from the previous
    epoch's model instead, the paper's own definition of p_{t−1} (PS-KD's translation code is unreleased):
    the runner keeps the student as it was at the end of the previous epoch (`past_model`),
    runs it in eval mode on each batch and hands its outputs in as the teacher; during the
    first epoch there is none and the target is the one-hot, as the table's initial value.

    Heads whose target is a label distribution (pose's SimCC Gaussians, (B, K, W)) put it in
    place of the one-hot: ỹ = (1−α_t)·y + α_t·p_{t−1}, with p_{t−1} from the previous epoch's
    model, trained with the loss those heads' labels are trained with, RTMPose's SimCC KL and its
    reduction (`simcc_kl`: per-keypoint KL / W, weighted, summed over the batch, / K), to ỹ; it
    differs from the soft CE −Σ ỹ log σ(z) only by H(ỹ), which has no gradient.
    """

    name = "pskd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"alpha_T": (0.2, 0.4, 0.6, 0.8)}
    paper = "Kim et al., Self-Knowledge Distillation with Progressive Refinement of Targets, ICCV 2021"
    teacher = "self"
    needs = frozenset({"label_heads"})

    @dataclass
    class Config:
        alpha_T: float = 0.8
        ce_weight: float = 0.0  # the soft-target CE replaces the hard-label CE

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        self.table = ctx.student.ids is not None and all(
            h.logits.dim() == 2 for h in self.own_heads(ctx.student).values())
        if not self.table:
            self.runtime_needs = frozenset({"past_model"})
            return
        for name, head in self.own_heads(ctx.student).items():
            table = torch.zeros(ctx.train_size, head.logits.shape[-1])
            self.register_buffer(f"past_{name}", table)
            self.register_buffer(f"seen_{name}", torch.zeros(ctx.train_size, dtype=torch.bool))

    def _past(self, name: str, ids: Tensor, target: Tensor) -> Tensor:
        past: Tensor = getattr(self, f"past_{name}")[ids]
        seen: Tensor = getattr(self, f"seen_{name}")[ids]
        onehot = F.one_hot(target, past.shape[-1]).to(past.dtype)  # the table starts one-hot
        return torch.where(seen[:, None], past, onehot)

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        alpha = self.config.alpha_T * (state.epoch + 1) / state.epochs
        terms = {}
        for name, head in self.own_heads(student).items():
            labels = head.target is not None and head.target.shape == head.logits.shape
            target = head.target if labels and head.target is not None else require_target(head, self.name)
            if self.table:
                assert student.ids is not None
                past = self._past(name, student.ids, target)
            elif teacher is not None:  # the previous epoch's model
                past = F.softmax(teacher.heads[name].logits.float(), -1)
            elif labels:  # first epoch, label distributions: the label
                past = target.float()
            else:  # first epoch: the one-hot target
                past = F.one_hot(target, head.logits.shape[-1]).float()
            soft = pskd_targets(target, past.to(head.logits.dtype), alpha)
            if labels:
                terms[f"pskd/{name}"] = simcc_kl(head.logits, soft, head.weight)
            else:
                terms[f"pskd/{name}"] = soft_cross_entropy(head.logits, soft, head.mask)
        return terms

    def after_step(self, student: Outputs, losses: dict[str, Tensor], state: RunState) -> None:
        if not self.table:
            return
        assert student.ids is not None
        for name, head in self.own_heads(student).items():
            getattr(self, f"past_{name}")[student.ids] = F.softmax(head.logits.float(), -1)
            getattr(self, f"seen_{name}")[student.ids] = True
