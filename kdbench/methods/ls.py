"""Label smoothing (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from kdbench.losses import label_smoothing
from kdbench.methods import register
from kdbench.methods.base import Method, RunState, require_target
from kdbench.outputs import Outputs


@register
class LabelSmoothing(Method):
    """Label smoothing: CE to (1−ε)·onehot + ε/K in place of the hard-label CE."""

    name = "ls"
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"epsilon": (0.05, 0.1, 0.2, 0.3)}
    paper = "Szegedy et al., Rethinking the Inception Architecture for Computer Vision, CVPR 2016"
    teacher = "none"
    needs = frozenset({"ce_heads"})
    accepts = frozenset({"categorical"})

    @dataclass
    class Config:
        epsilon: float = 0.1
        ce_weight: float = 0.0  # the smoothed CE replaces the hard-label CE

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        return {
            f"ls/{name}": label_smoothing(
                head.logits, require_target(head, self.name), self.config.epsilon, head.mask
            )
            for name, head in self.own_heads(student).items()
        }
