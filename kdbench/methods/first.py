"""FIRST (Shum et al., "FIRST: Teach A Reliable Large Language Model Through Efficient Trustworthy
Distillation", EMNLP 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from kdbench.losses import first_topk_kl
from kdbench.methods import register
from kdbench.methods.base import Method, RunState
from kdbench.outputs import Outputs


@register
class FIRST(Method):
    """FIRST: distil the teacher's top-k token distribution, renormalised, in place of the labels.

    Per token position of a teacher-forced sequence head (`token_heads`), with I the teacher's
    k = 5 most probable tokens at T = 1 and both models' probabilities on I renormalised
    linearly with ε = 1e-6 (`kdbench.losses.first_topk_kl`),

        L = Σ_valid positions KL(t_I ‖ s_I) / B        (term `first/<head>`; ce_weight 0)

    summed over a sentence's tokens and averaged over the batch's B sentences, no T² factor and no
    hard-label term, as the official `distill.py` trains (SHUMKASHUN/FIRST at 3252484,
    `forward_kl_text2text`, `use_norm linear`; example_run.sh's settings but `use_other_token`,
    whose branch hands probabilities to `kl_div` as if they were log-probabilities, so its value
    is not the KL the paper states). The paper's "trustworthy maximization" rescales the
    teacher's top-k by a temperature τ fitted offline for calibration; the released code applies
    none (τ = 1) and does not contain the fit, so τ is this method's `temperature` (default 1)
    and, like any hyperparameter, is chosen on val by `kdbench tune`, never fitted here on the
    teacher's calibration. The teacher's top-k come from its full logits or a top-k cache
    (`train.teacher_cache_topk`), which is exact here when it keeps at least k tokens (the
    automatic top-k cache keeps 8).
    """

    name = "first"
    paper = "Shum et al., EMNLP 2024"
    teacher = "external"
    needs = frozenset({"token_heads"})
    accepts = frozenset({"categorical"})
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"temperature": (0.5, 1.0, 2.0, 4.0)}

    @dataclass
    class Config:
        k: int = 5
        temperature: float = 1.0  # τ of the teacher's top-k; 1 = the released code
        epsilon: float = 1e-6
        ce_weight: float = 0.0  # FIRST trains on the teacher's distribution alone

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        return {
            f"first/{name}": first_topk_kl(s.logits, t.logits, c.k, c.temperature, c.epsilon, s.mask)
            for name, s, t in self.paired(student, teacher)
        }
