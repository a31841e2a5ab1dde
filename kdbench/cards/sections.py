"""The typed protocol card: one dataclass per section, validated on load (kdbench.cards.typed).

The sections every task shares are here (train, optimizer, schedule, EMA, teacher training,
metrics); each task's card type adds its data, model and loss sections (kdbench.cards.tasks).
Optional model fields default to None and are then left out of the card as the adapters see
it, so a model's own constructor defaults apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kdbench.cards.typed import bounded

TIERS = ("smoke", "small", "medium", "standard")


@dataclass(frozen=True, kw_only=True)
class Optimizer:
    name: Literal["sgd", "adam", "adamw"]
    lr: float = bounded(gt=0)
    weight_decay: float = bounded(0.0, ge=0)
    momentum: float | None = bounded(None, ge=0, lt=1)  # sgd (default 0.9)
    nesterov: bool | None = None  # sgd (default false)
    betas: list[float] | None = None  # adam, adamw (default [0.9, 0.999])


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Per-step learning-rate factor (kdbench.runner.optim.lr_factor, the SCHEDULES registry)."""

    name: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_epochs: float = bounded(0.0, ge=0)
    min_factor: float | None = bounded(None, ge=0, le=1)  # cosine's floor (default 0)
    milestones: list[int] | None = None  # multistep: epochs where the rate is multiplied by gamma
    gamma: float | None = bounded(None, gt=0)


@dataclass(frozen=True, kw_only=True)
class EMA:
    decay: float = bounded(gt=0, lt=1)
    warmup_steps: int = bounded(2000, ge=0)


#: The data-fraction service's pruning rules (kdbench.runner.data_fraction): which training
#: samples the student keeps.
DATA_FRACTION_RULES = ("random", "el2n")


@dataclass(frozen=True, kw_only=True)
class DataFraction:
    """The student trains on a fraction of the training split; the teacher, val and test do not
    change (the data-fraction service, kdbench.runner.data_fraction; Ben-Baruch et al., "Distilling
    the Knowledge in Data Pruning", ICML 2025).

    `keep` is the fraction kept, in (0, 1]: round(keep · n_c) samples of each class c on tasks with
    a class per training sample, round(keep · N) of the N samples on the others. `rule`: `random`
    (drawn from the run's seed) or `el2n` (the samples of highest EL2N score, Paul et al. 2021:
    the mean over `score_runs` models of the student's architecture, each trained `score_epochs`
    epochs of the card's schedule on the whole training split, of ‖softmax(f(x)) − onehot(y)‖₂).
    """

    keep: float = bounded(gt=0, le=1)
    rule: Literal["random", "el2n"] = "random"
    score_epochs: int | None = bounded(None, ge=1)  # el2n: default a tenth of train.epochs (at least 1)
    score_runs: int | None = bounded(None, ge=1)  # el2n: independent scoring models averaged (default 10)


@dataclass(frozen=True, kw_only=True)
class Train:
    epochs: int = bounded(ge=1)
    batch_size: int = bounded(ge=1)
    optimizer: Optimizer
    schedule: Schedule = field(default_factory=Schedule)
    grad_clip: float | None = bounded(None, gt=0)
    ema: EMA | None = None
    eval_every: int = bounded(0, ge=0)  # epochs between val evaluations logged in the history (0: none)
    threads: int = bounded(1, ge=1)  # CPU intra-op threads: a CPU run is bit-identical only at the same count
    amp: Literal["bf16"] | None = None  # bf16 autocast on CUDA (ignored on CPU)
    teacher_cache_topk: int | None = bounded(None, ge=1)  # store the teacher's top-k log-probs only
    # one epoch's teacher-output cache files per rank, at most (unset: 1024; kdbench.runner.cache_budget)
    teacher_cache_budget_mib: int | None = bounded(None, ge=0)
    # the student's training subset (the teacher always trains on the whole split); unset: all of it
    data_fraction: DataFraction | None = None


@dataclass(frozen=True, kw_only=True)
class TeacherTrain:
    """What differs from `train` when kdbench trains the card's teacher."""

    epochs: int | None = bounded(None, ge=1)
    batch_size: int | None = bounded(None, ge=1)
    optimizer: Optimizer | None = None
    schedule: Schedule | None = None


@dataclass(frozen=True, kw_only=True)
class Metrics:
    primary: str  # the one metric tables rank by; its direction is in kdbench.metrics


@dataclass(frozen=True, kw_only=True)
class Card:
    """The fields every task's card has; `kdbench.cards.tasks` adds the task's own."""

    name: str
    task: str
    tier: Literal["smoke", "small", "medium", "standard"]
    default: bool = False  # the card `--protocol <tier>` picks where a task has several of a tier
    description: str = ""
    train: Train
    metrics: Metrics
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # the seeds a table of this card runs
    # The Holm family (methods besides the baseline) this card's power is stated for; unset, the
    # methods the task serves today. `kdbench protocol check` fails R3 when the task serves more.
    comparisons: int | None = None
    # How many of `seeds` (the first ones) `kdbench protocol check` also trains at 2x the epochs to judge
    # R1 by the mean change; unset, the first seed alone. Cards whose seed SD is a large part of the gap
    # need several, or one seed's noise decides R1.
    convergence_seeds: int | None = None
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method settings of this card
    tuning: dict[str, str] = field(default_factory=dict)  # method → its `kdbench tune` file (card folder)
    reference: Any = None  # published numbers quoted for context; never compared automatically
