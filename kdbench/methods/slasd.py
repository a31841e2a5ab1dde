"""SLA-SD, self-supervised label augmentation with self-distillation (Lee, Hwang & Shin,
"Self-supervised Label Augmentation via Input Transformations", ICML 2020; official code hankook/SLA)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from kdbench.losses import sla_joint_ce, sla_sd
from kdbench.methods import register
from kdbench.methods.base import Method, RunState
from kdbench.outputs import Outputs


@register
class SLASD(Method):
    """SLA-SD: joint (class × transformation) CE + single-head CE + T²·KL(σ(sg(z_agg)/T) ‖ σ(z/T)).

    The aggregated joint classifier z_agg is distilled into the single K-way head z.

    Every training sample x with label y is also seen under M input transformations t_0 = id, ...,
    t_{M−1} (the task's `label_augmentation`: rotations by 0/90/180/270° of square images; for
    1-D signals, identity, time reversal, sign flip and both, kdbench.adapters.classification.
    label_augmentation, which says why). The student has two linear heads on one embedding: the
    single K-way head z (the model's prediction, `cls`) and a joint head over the K·M labels
    (k, m) at index k·M + m. With z_m the joint logits of t_m(x) and z the single head's logits of
    the untransformed x:

        L_joint = (1/M) Σ_m CE(z_m, y·M + m)                 (term `slasd_joint/<head>`)
        z_agg,k = (1/M) Σ_m z_m[k·M + m]
        L_sd    = T²·KL(σ(sg(z_agg)/T) ‖ σ(z/T))              (term `slasd/<head>`)
        L       = L_joint + ce_weight·CE(z, y) + L_sd         (CE(z, y): the task's `cls` term)

    What the official code computes, read at hankook/SLA bc5d9cd (`trainers.py`
    `create_sla_sd_trainer`, `augmentations.py` `rotation`, `train.py` for the defaults and the
    `sla+sd` model `check_model(name, n*m, n)`, `models/modules.py` `PredictionModel`), and kept:
    one forward pass of the B·M copies (row b·M + m = t_m(x_b)) through the shared network, so
    BatchNorm sees all of them; the joint CE a mean over the B·M rows (`F.cross_entropy`), ×M with
    `large_loss` (`--with-large-loss`, off by default, meant for ImageNet-scale data); the single
    head's CE and the distillation on the untransformed rows only (`single_preds[::n]`); the
    aggregate a mean of joint *logits* at each copy's own transformation (`joint_preds[i::n, i::n]`);
    the KL `F.kl_div(log_softmax(z/T), softmax(z_agg.detach()/T), reduction="batchmean")`, summed
    over classes, averaged over samples, × T², the aggregated side detached (no gradient reaches
    the joint head or the network through the target); every term at weight 1; T = 1 (`--T`).
    The reported metrics are the single head's on plain inputs (the official `single_acc`, which
    selects its checkpoint; kdbench keeps the card's final model); the classification adapter
    adds `agg_top1`, the aggregated classifier's accuracy over the M transformed passes (the
    official `agg_acc`, SLA+AG).

    Departures: the 1-D transformation group (SLA transforms images only); no other of SLA's
    transformation sets (colour permutations, rotation × colour) is offered, since the shipped
    cards' inputs are 1-channel or a 3-channel CIFAR where the paper's main results use rotation.
    The joint head is part of the student, a head of the network as in SLA's `PredictionModel`,
    not a method module: the record counts it in the student's parameters (as the auxiliary heads
    of `layers` methods), not in its FLOPs (a plain forward, inference, does not run it).
    """

    name = "slasd"
    paper = ("Lee, Hwang & Shin, Self-supervised Label Augmentation via Input Transformations, ICML 2020 "
             "(SLA+SD)")
    teacher = "self"
    needs = frozenset({"label_augmentation"})
    accepts = frozenset({"categorical"})
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"temperature": (1.0, 2.0, 4.0, 8.0)}

    @dataclass
    class Config:
        temperature: float = 1.0  # the official --T
        large_loss: bool = False  # the official --with-large-loss: the joint CE summed over transformations
        ce_weight: float = 1.0  # the single head's CE, weight 1 in the official loss

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        c = self.config
        stack = student.auxiliary.get("joint")
        if not stack:
            raise ValueError("slasd needs the joint head of the task's label_augmentation "
                             "(Outputs.auxiliary['joint'])")
        joint = stack[-1]
        terms: dict[str, Tensor] = {}
        for name, head in self.own_heads(student).items():
            j = joint[name]
            if j.target is None:
                raise ValueError(f"slasd: the joint head {name!r} carries no joint labels")
            terms[f"slasd_joint/{name}"] = sla_joint_ce(j.logits, j.target, head.mask, c.large_loss)
            terms[f"slasd/{name}"] = sla_sd(head.logits, j.logits, c.temperature, head.mask)
        return terms
