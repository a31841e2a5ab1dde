"""Sequence-level KD (Kim & Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from kdbench.losses.sequence import label_smoothed_nll
from kdbench.methods import register
from kdbench.methods.base import Method, RunState, require_target
from kdbench.outputs import Outputs


@register
class SeqKD(Method):
    """SeqKD: plain NLL on the teacher's beam-search outputs, which replace the references.

    The adapter serves the `sequence_targets` need: once the frozen teacher is built it decodes
    every training source (the card's beam, 5 by default) and caches the outputs on disk per
    teacher checkpoint and decode settings. Per final head, with ŷ the teacher's output tokens,

        L = mean_valid(−log p_S(ŷ_t | ŷ_<t, x))   (`seqkd/<head>`; ce_weight 0: the card's
                                                    hard-label term off)

    i.e. the paper's L_SEQ-KD, the NLL of the teacher's beam output, with no label smoothing
    whatever the card's `task_loss.label_smoothing`. The code of the paper's first author
    (harvardnlp/seq2seq-attn at 2d36b43, whose README lists the paper among what it implements:
    s2sa/models.lua `make_generator`, LogSoftMax + ClassNLLCriterion with padding weight 0, the
    criterion train.lua trains with) has no smoothing. That code sums the NLL over tokens and
    divides by the sentence count; kdbench keeps the mean over valid tokens of every translation
    method's task loss, so only the targets and the smoothing differ from the baseline. No
    other term: Kim & Rush train on the distilled data alone (word-level KD on top of it is `kd`
    on token logits).
    """

    name = "seqkd"
    paper = "Kim & Rush, Sequence-Level Knowledge Distillation, EMNLP 2016"
    teacher = "external"
    needs = frozenset({"sequence_targets"})
    accepts = frozenset({"categorical"})

    @dataclass
    class Config:
        ce_weight: float = 0.0  # the plain NLL replaces the card's (possibly smoothed) hard-label CE

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        return {
            f"seqkd/{name}": label_smoothed_nll(head.logits, require_target(head, self.name), 0.0, head.mask)
            for name, head in self.own_heads(student).items()
        }
