"""EMA self-distillation (Hu et al., "Decoupled Global-Local Alignment for Improving Compositional
Understanding" (DeGLA), ACM MM 2025, arXiv 2504.16801; official code xiaoxing2001/DeGLA)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from kdbench.losses import emasd
from kdbench.methods import register
from kdbench.methods.base import Method, RunState
from kdbench.outputs import HEAD_KINDS, Outputs


@register
class EMASD(Method):
    """EMA self-distillation: L_task + w·Σ_positions Σ_k (z_S − sg(z_EMA))² on every final head.

    DeGLA keeps its fine-tuned CLIP close to what it already knows with a frozen teacher that is
    an exponential moving average of the student itself. What the official code computes
    (xiaoxing2001/DeGLA at 1c5e960, its latest commit: src/training/train.py
    `train_one_epoch_DeGLA` and `update_teacher_ema`, src/open_clip/loss.py `CLIPloss_DeGLA`,
    src/main.py, src/training/params.py, scripts/train_DeGLA.sh), and what kdbench does:

    - Teacher: a second model with the student's initial weights (DeGLA loads the same
      pretrained CLIP for both), frozen, in eval mode, run under no_grad on the student's batch.
      Here the runner's `ema_model` service: a copy of the student at the start of training,
      run in eval mode without gradients on every batch (kdbench.runner.train, ema.EMA).
    - EMA update: θ_EMA ← m·θ_EMA + (1 − m)·θ after every optimiser step (the forward of the next
      step sees the updated teacher), m = 0.9996 constant (no warm-up or schedule), for every
      parameter. DeGLA's loop touches parameters only: CLIP has no running statistics. kdbench's
      CNN students have BatchNorm, whose running statistics the runner copies from the student at
      every update (mean-teacher practice for buffers; ema.EMA `buffers="copy"`): left at their
      initial values, or averaged at m = 0.9996 (which keeps them near those values for thousands
      of steps, the card's `train.ema` convention), they would have the eval-mode teacher
      normalise with statistics no model of this run has. Even so, eval-mode BatchNorm differs from
      the student's train-mode (batch-statistics) forward until the running statistics settle, so
      on BatchNorm models the term starts large at the first steps, where both models are equal.
    - Loss: `F.mse_loss(reduction="sum")` between the student's and the teacher's outputs (its
      L2-normalised image and text embeddings), weight 0.005 (`--distill_weight`, the script's
      `--distill_mse`), added to the task loss, which keeps weight 1. The released `CLIPloss_DeGLA`
      applies it whenever the weight is positive (train.py still passes `distill_mse`/`distill_kl`
      flags that it no longer takes); a temperature-KL variant over the contrastive logits
      existed only in an earlier commit (4e66c08).
      kdbench's models output their heads' logits, so those are what is distilled
      (`kdbench.losses.emasd`): the squared error summed over the last dimension and over the valid
      positions (no mean, as DeGLA), one term per head (DeGLA adds its image and text terms).
      Logits are not normalised: DeGLA's normalisation is part of CLIP's forward, not of its loss.
      The sum makes the term grow with the batch and the number of positions per sample, as in
      DeGLA, so `weight` is the hyperparameter to tune per card. Under torchrun each rank sums
      its shard and the gradients are averaged over ranks, as DeGLA's DDP does with its per-GPU
      batches.

    Head kinds: the squared error reads logits, not a distribution, so it applies to every kind
    (categorical, binned, binary); the per-position weights of a head (`Head.weight`) are not
    applied, as DeGLA weights nothing. Detection's box bins are offsets from each model's own
    initial box, and the EMA teacher's initial boxes are not the student's, so its logits are not
    on the student's bins: that head keeps only its task loss (no `rebins`: the loss reads logits,
    not σ(z_T/T)); the VFL `cls` head is distilled at the queries both models matched.

    Not taken over: DeGLA's own contrastive terms (NegCLIP, image- and text-grounded contrasts
    over LLM-written negatives) are its compositional objective, not its self-distillation.
    """

    name = "emasd"
    paper = ("Hu, Yang, Wang, Xu, Feng & Wang, Decoupled Global-Local Alignment for Improving "
             "Compositional Understanding, ACM MM 2025")
    teacher = "self"
    accepts = frozenset(HEAD_KINDS)
    runtime_needs = frozenset({"ema_model"})
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"weight": (0.0005, 0.005, 0.05, 0.5)}

    @dataclass
    class Config:
        weight: float = 0.005  # DeGLA's --distill_weight
        ema_momentum: float = 0.9996  # DeGLA's --ema_alpha

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        if teacher is None:
            raise ValueError("emasd distils the runner's EMA teacher (ema_model), which this call did not get")
        return {f"emasd/{name}": self.config.weight * emasd(s.logits, t.logits, s.mask)
                for name, s, t in self.paired(student, teacher)}
