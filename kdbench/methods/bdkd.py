"""BD-KD, offline variant (Amara et al., "BD-KD: Balancing the Divergences for Online Knowledge
Distillation", 2022). No official code: the entropy-gap weighting rule is kdbench's reading,
documented in `kdbench.losses.bdkd`. The method as the paper states it, online, is `bdkd_online`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from kdbench.losses import bdkd
from kdbench.methods import register
from kdbench.methods.base import Method, RunState
from kdbench.outputs import Outputs


@register
class BDKD(Method):
    """BD-KD, offline: CE + per-sample entropy-gap-weighted forward and reverse KL to a frozen teacher.

    The offline variant: BD-KD's student loss (`kdbench.losses.bdkd`) distilled from the card's
    trained, frozen teacher. The paper's method is online, its teacher trained beside the student
    with its own reverse-KL term: that is `bdkd_online` (kdbench.methods.bdkd_online).
    """

    name = "bdkd"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"temperature": (1.0, 2.0, 4.0, 8.0)}
    paper = "Amara et al., BD-KD: Balancing the Divergences for Online Knowledge Distillation, 2022"
    teacher = "external"

    @dataclass
    class Config:
        temperature: float = 4.0
        kd_weight: float = 1.0
        ce_weight: float = 1.0

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        return {
            f"bdkd/{name}": c.kd_weight * bdkd(s.logits, t.logits, c.temperature, s.mask)
            for name, s, t in self.paired(student, teacher)
        }
