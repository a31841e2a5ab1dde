"""Self-distillation with weighted ground-truth targets over generations (Borup & Andersen, "Even
your Teacher Needs Guidance: Ground-Truth Targets Dampen Regularization Imposed by
Self-Distillation", NeurIPS 2021, arXiv 2102.13088; official code Kennethborup/self_distillation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from kdbench.losses import gtsd
from kdbench.methods import register
from kdbench.methods.base import Method, MethodContext, RunState, require_target
from kdbench.outputs import Outputs


@register
class GTSD(Method):
    """GTSD: generation k+1, trained afresh, fits α·onehot + (1−α)·σ(generation k) by squared error.

    Iterated self-distillation in which every step keeps the ground truth: generation 0 is
    trained on the labels alone; generation k + 1 (k ≥ 0) is a fresh student trained on

        L = α·SE(σ(z), y) + (1 − α)·SE(σ(z), σ(sg(z_k)))      SE(p, q) = mean over positions and
                                                              classes of (p − q)²

    with z_k the logits of generation k, frozen; generation 0 minimises SE(σ(z), y) (weight 1).
    α weighs the ground truth: α = 1 trains every generation on the labels only, α = 0 is
    self-distillation without them (Mobahi et al., 2020), which the paper shows to amplify the
    regularisation at every step until the solution collapses, while α > 0 dampens it. The run's
    model is the last generation.

    What the official code computes (Kennethborup/self_distillation at cb20d6c, its latest commit:
    `self_distiller.py`, last changed in 5c69294, which only renamed the argument parser, so its loss
    and loop are the initial 8964caf's; `README.md`, whose command is `--alpha 0.6
    --distillation-steps 5`; `toy_example.ipynb`), and what kdbench does:

    - Loss: `LitResnet.training_step`: `F.mse_loss(F.softmax(pred, dim=1), target)` to the one-hot
      target (its `OneHot` transform), and with a teacher that term times α plus (1 − α) ×
      `F.mse_loss(F.softmax(pred, dim=1), F.softmax(teacher(data), dim=1))`: squared errors between
      probabilities (no KL, no cross-entropy, no temperature, no T²), each the mean over batch and
      classes. Here `kdbench.losses.gtsd` with the same reduction (the mean over valid positions of
      the per-position mean over classes), as terms `gtsd/labels/<head>` and `gtsd/teacher/<head>`.
      The squared error to the labels is the method's ground-truth loss and replaces the task's
      hard-label loss on the heads it distils (`ce_weight` 0, as PS-KD's soft targets do), in every
      generation: generation 0 is the official step 0, trained with this loss, not the card's
      cross-entropy. The teacher's term is on a scale set by this loss (≤ 2/K a position), so taking
      the task's cross-entropy for the labels instead would leave α without its meaning.
    - α is the weight of the ground truth (`loss *= alpha` on the label term; its help text says
      "weight for distillation loss", but the code, the README's toy example, where α = 0 is
      "without the ground-truth", and the notebook's targets α·Y + (1 − α)·Y_{t−1} all weigh the
      labels by α). Default 0.6, the README's ResNet command (the argparse default, 1.0, trains
      every step on the labels alone).
    - Generations: the loop `for step in range(0, distillation_steps)` trains `distillation_steps`
      models, step 0 without a teacher; the README's 5 are generation 0 and 4 distilled
      generations, `generations` = 4 here (G; the run trains G + 1 times the card's epochs).
    - Each step builds a new `LitResnet` (a fresh initialisation: `pretrained` is off by default)
      and a new Trainer, so the optimiser is new; the teacher is the previous step's model as it
      ended training (`teacher = model; teacher.freeze()`). Here the runner's `generations`
      service: a fresh student from the adapter under a seed derived from the run's seed and the
      generation, the card's optimiser and schedule started anew, the previous generation's final
      model (its EMA weights where the card has an EMA) as the teacher, frozen, in eval mode.
      (Lightning's `model.train()` also puts the official teacher, a submodule, back in training
      mode, so its BatchNorm uses batch statistics there; kdbench runs every teacher in eval mode.)
    - Not taken over: the official optimiser (Adam, lr 1e-4 constant), batch 16, 75 epochs and the
      added `reg_coef·Σ‖θ‖` (1e-4, norms not squared): the card's training recipe applies, as for
      every method.

    Heads: categorical and binned heads with targets (`label_heads`): class indices give the
    one-hot y, a label distribution of the logits' shape (pose's SimCC Gaussians) is y itself;
    the head's mask and per-position weight (pose: keypoint visibility) apply to both terms.
    """

    name = "gtsd"
    paper = ("Borup & Andersen, Even your Teacher Needs Guidance: Ground-Truth Targets Dampen "
             "Regularization Imposed by Self-Distillation, NeurIPS 2021")
    teacher = "self"
    needs = frozenset({"label_heads"})
    runtime_needs = frozenset({"generations"})
    tune_grid: ClassVar[dict[str, tuple[float, ...]]] = {"alpha": (0.2, 0.4, 0.6, 0.8)}

    @dataclass
    class Config:
        alpha: float = 0.6  # the weight of the ground truth (official --alpha, the README's value)
        generations: int = 4  # distilled generations after generation 0 (official --distillation-steps 5)
        ce_weight: float = 0.0  # the squared error to the labels replaces the task's hard-label loss

    def __init__(self, config: Config, ctx: MethodContext) -> None:
        super().__init__(config, ctx)
        if not 0.0 <= config.alpha <= 1.0:
            raise ValueError(f"gtsd: alpha is the ground truth's weight, in [0, 1]; got {config.alpha}")
        if config.generations < 0:
            raise ValueError(f"gtsd: generations must be 0 or more; got {config.generations}")

    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        if teacher is None and self.generation > 0:
            raise ValueError("gtsd: generation > 0 distils the previous generation, which this call did not get")
        alpha = self.config.alpha
        terms = {}
        heads = self.own_heads(student) if teacher is None else \
            {name: s for name, s, _ in self.paired(student, teacher)}
        for name, s in heads.items():
            target = s.target if s.target is not None else require_target(s, self.name)  # indices or a distribution
            t = None if teacher is None else teacher.heads[name].logits
            labels, distilled = gtsd(s.logits, target, t, alpha, s.mask, s.weight)
            terms[f"gtsd/labels/{name}"] = labels
            if distilled is not None:
                terms[f"gtsd/teacher/{name}"] = distilled
        return terms
