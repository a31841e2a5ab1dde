"""Sequence-level KD (Kim & Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdbench.methods import register
from kdbench.methods.base import Method, RunState
from kdbench.outputs import Outputs


@register
class SeqKD(Method):
    """SeqKD: NLL on the teacher's beam-search outputs, which replace the references.

    The adapter serves the `sequence_targets` need: once the frozen teacher is built it
    decodes every training source (the card's beam, 5 by default) and caches the outputs on disk
    per teacher checkpoint and decode settings; training then runs the task loss on them. The
    loss is the plain task loss, so this method adds no term of its own (Kim & Rush train on the
    distilled data alone; word-level KD on top of it is `kd` on token logits).
    """

    name = "seqkd"
    paper = "Kim & Rush, Sequence-Level Knowledge Distillation, EMNLP 2016"
    teacher = "external"
    needs = frozenset({"sequence_targets"})

    @dataclass
    class Config:
        pass

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        return {}
