"""MiniLM (Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression
of Pre-Trained Transformers", NeurIPS 2020), v1: last-layer attention and value relations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from kdbench.errors import UsageError
from kdbench.losses import minilm_relations
from kdbench.methods import register
from kdbench.methods.base import Method, MethodContext, RunState
from kdbench.outputs import Outputs


def padding_mask(qkv: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """(B, T) bool, True at real tokens: adapters zero q, k and v at padded positions, so a
    position whose q, k and v are zero in every head is padding."""
    return sum((t != 0).any(-1).any(1) for t in qkv) > 0  # type: ignore[return-value]


@register
class MiniLM(Method):
    """MiniLM v1: weight·(L_AT + L_VR) from the teacher's last attention layer to the student's.

    L_AT = 1/(A_h·|x|)·Σ_a Σ_t KL(A^T_{a,t} ‖ A^S_{a,t}) per sequence x of |x| real tokens, with
    A = σ(QKᵀ/√d_k), L_VR the same with σ(VVᵀ/√d_k), d_k each model's own head size, both
    averaged over the batch's sequences (`kdbench.losses.minilm_relations`); head counts must be
    equal. The normalisation is the paper's, per sequence: no official distillation code exists
    (microsoft/unilm's minilm/README.md releases checkpoints and fine-tuning code only; its
    issues #105, #224, #316 ask for it). The last layer is the last entry of
    `Outputs.attentions` (adapters list layers earliest first). Padding is read from the q/k/v
    themselves (`padding_mask`): padded keys get no attention, padded queries are not counted.
    The task loss is kept at weight 1 ("+ the task loss in task-specific use"); MiniLM's
    pre-training recipe has no other term.
    On an encoder-decoder (translation) the adapter exposes the encoder's self-attention, the
    bidirectional stack MiniLM was defined on.
    """

    name = "minilm"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"weight": (0.5, 1.0, 2.0, 4.0)}
    paper = ("Wang et al., MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression "
             "of Pre-Trained Transformers, NeurIPS 2020")
    teacher = "external"
    needs = frozenset({"attentions"})
    accepts = frozenset()  # attention relations only: no heads

    @dataclass
    class Config:
        weight: float = 1.0

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        assert ctx.teacher is not None
        if not ctx.student.attentions or not ctx.teacher.attentions:
            raise ValueError("minilm needs q/k/v from both student and teacher (Outputs.attentions)")
        heads_s = _last(ctx.student)[0].shape[1]
        heads_t = _last(ctx.teacher)[0].shape[1]
        if heads_s != heads_t:
            raise UsageError(f"minilm needs equal head counts in the last attention layer: student "
                             f"{heads_s}, teacher {heads_t}")

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        assert teacher is not None
        s, t = _last(student), _last(teacher)
        mask = padding_mask(s) & padding_mask(t)
        return {"minilm": self.config.weight * minilm_relations(s, t, mask)}


def _last(outputs: Outputs) -> tuple[Tensor, Tensor, Tensor]:
    return list(outputs.attentions.values())[-1]
