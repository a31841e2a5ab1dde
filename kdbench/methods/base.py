"""What a distillation method is: a declared teacher, declared needs, typed hyperparameters,
and named loss terms (docs/architecture.md, Methods).

A method is an `nn.Module` so that what it learns (an auxiliary head, a projector, learnable
layer weights) is optimised with the student, and what it remembers (PS-KD's past predictions,
TAID's interpolation state) is checkpointed and restored with the run.
"""

from __future__ import annotations

import dataclasses
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from kdbench.errors import UsageError
from kdbench.outputs import HEAD_KINDS, OUTPUT_NEEDS, Head, Outputs

#: Who teaches: nobody ("none"), the card's trained and frozen teacher ("external"), the student
#: itself ("self": its layers, past epochs, an average or earlier generations), or the card's teacher
#: architecture trained from scratch beside the student, in the same steps ("online": the runner's
#: `online_teacher` service).
TeacherKind = Literal["none", "external", "self", "online"]
TEACHER_KINDS: tuple[str, ...] = ("none", "external", "self", "online")

# A method's needs are of three kinds, by who supplies them (docs/architecture.md, Methods):
#   OUTPUT_NEEDS (kdbench.outputs): parts of the Outputs beyond the final heads; the adapter's
#     `forward` fills them, and the student's probe checks them against what it returned;
#   ADAPTER_NEEDS: what only the task's adapter can supply beside its Outputs' parts;
#   RUNNER_NEEDS: teachers (and the trainings that make them) the runner serves on any task.
# A method lists the first two in `needs`, which a task must `provide` or it refuses the method,
# and the third in `runtime_needs`, which no adapter provides.

#: The second kind: promises about the task's final heads (their shape, how its task loss trains
#: them), hooks of the adapter the runner calls, and changes to the adapter's data or models.
ADAPTER_NEEDS: dict[str, str] = {
    "teacher_pass": "one teacher pass over the training set before training",
    "sample_heads": "one categorical prediction per sample, (B, K) logits",
    "ce_heads": "final heads trained with softmax cross-entropy on hard targets",
    "label_heads": "final heads trained with (soft) cross-entropy towards their targets: class ids, or "
                   "label distributions of the logits' shape (SimCC's Gaussians)",
    "head_stage": "a copy of the model with a fresh head on the frozen rest of it, trained in a later "
                  "stage (Method.later_stages; DWPose's second stage)",
    "sequence_targets": "the external teacher's decoded outputs replace the training targets (SeqKD)",
    "token_heads": "final heads are a sequence model's teacher-forced next-token distributions over a "
                   "vocabulary, (B, T, V) logits with padding masked (FIRST's top-k token distillation)",
    "label_augmentation": "each training sample also seen under the task's M input transformations, with a joint "
                          "(class × transformation) head of K·M logits beside the final head (SLA's label "
                          "augmentation; Outputs.auxiliary['joint'])",
    "experts": "a student of several experts on a shared trunk, each with its own later layers and classifier, "
               "whose final head (the one evaluated) is the mean of the experts' logits; each expert's heads in "
               "Outputs.auxiliary['experts'], expert 0 first (MDCS's and RIDE's multi-expert model)",
    "weak_strong_views": "each training sample also seen under a strong augmentation beside the weak one (the "
                         "task's own), in the same pass; the strong view's heads in Outputs.auxiliary['strong'] "
                         "(its experts' in ['experts_strong'] under experts) (MDCS's weak and strong views)",
}

#: The third kind: teachers the runner serves on every task (kdbench.runner.train: fit, fit_stages), listed in
#: a method's `runtime_needs`, never in its `needs` nor in an adapter's `provides`.
RUNNER_NEEDS: dict[str, str] = {
    "past_model": "the student as it was at the end of the previous epoch, run on every batch and "
                  "handed to the method as its teacher (served by the runner on any task)",
    "ema_model": "an exponential moving average of the student's weights (a copy of it at the start, then "
                 "ema ← m·ema + (1 − m)·θ after every optimiser step, m = Method.ema_momentum(); buffers such "
                 "as BatchNorm statistics copied from the student), run in eval "
                 "mode without gradients on every batch and handed to the method as its teacher, saved in "
                 "the checkpoint (served by the runner on any task)",
    "generations": "G + 1 trainings of the student for the card's epochs each (G = Method.generations()): "
                   "generation 0 without a teacher, each later one from a fresh initialisation (seed derived from "
                   "the run's seed and the generation) with the previous generation's final model (its EMA "
                   "weights under the card's train.ema) frozen in eval mode as its teacher; the last generation "
                   "is the run's model, each earlier one's val metrics are kept in the record's history, and a "
                   "rerun resumes in the generation a crash interrupted (served by the runner on any task)",
    "online_teacher": "a second trainable model, the card's teacher architecture built fresh under a seed derived "
                      "from the run's seed (no cached teacher is loaded), run in training mode on the student's batch "
                      "in every step and trained in that step by its task loss plus Method.teacher_loss, with its "
                      "own optimiser and schedule (the card's train section, as the student's), saved with the "
                      "student in every checkpoint (weights, optimiser, schedule) and named in the record's teacher "
                      "section as trained online (served by the runner on any task)",
}

#: Every need a method may declare, of all three kinds, with its meaning (error messages, the catalog).
NEEDS: dict[str, str] = {**OUTPUT_NEEDS, **ADAPTER_NEEDS, **RUNNER_NEEDS}

#: The head kinds (kdbench.outputs.HEAD_KINDS) a softmax-family method distils: one distribution
#: per position, whether over classes or over the bins of a coordinate. Never "binary": a softmax
#: over independent sigmoid logits is not a distribution the model predicts.
SOFTMAX_KINDS: frozenset[str] = frozenset({"categorical", "binned"})

#: Optional adapter behaviours a method may request: an adapter applies those it `honours`, only
#: for a method that requests them, and ignores the others (the method runs without them).
REQUESTS: dict[str, str] = {
    "union_matching": "GO-LSD's union of ground-truth matches across decoder layers for box losses, and the "
                      "box heads' DDF weights and matched flags from it (Head.weight, Head.matched)",
}


@dataclass
class RunState:
    """Where training stands when a loss is computed."""

    epoch: int  # 0-based
    epochs: int
    step: int  # global optimiser step, 0-based
    steps: int  # total optimiser steps


@dataclass(frozen=True)
class Stage:
    """A training stage after the first, run by the runner (DWPose's head-only second stage).

    The runner trains a copy of the previous stage's final model whose head the adapter has
    re-initialised and whose other parameters it has frozen (`head_stage`), for
    `epochs_fraction` of the card's epochs (at least one), with the previous stage's final
    model, frozen, as the teacher, with `train` overriding the card's train section (e.g. the
    schedule). The method learns which stage runs from `Method.stage`.
    """

    epochs_fraction: float
    train: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class MethodContext:
    """What a method may size itself from, built by the runner from a probe forward pass."""

    student: Outputs  # detached example outputs of the student on one training batch
    teacher: Outputs | None  # the same for the teacher, aligned; None without one
    train_size: int
    epochs: int
    #: (N,) int64 class of each training sample (`Adapter.train_classes`, the training split the
    #: student trains on), for methods that use the training label distribution (MDCS); None where
    #: the task's training samples have no single class.
    train_classes: Tensor | None = None


#: Runs every method's tuning grid gets (kdbench.runner.tune): equal budgets, or the comparison is not fair.
TUNE_BUDGET = 4


class Method(nn.Module, metaclass=ABCMeta):
    """Base class of every registered method.

    Subclasses set the class attributes, a `Config` dataclass with the paper's defaults,
    and implement `loss`. The runner sums `task_weight(progress) × task loss` and every term
    `loss` returns; it never branches on a method's name.
    """

    name: ClassVar[str]
    #: Names it had before a rename: they resolve to it everywhere a method name is read (the
    #: command line, cards' `methods:` sections, records; docs/architecture.md, Registries).
    aliases: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[str]
    teacher: ClassVar[TeacherKind]
    #: What the task must provide (OUTPUT_NEEDS and ADAPTER_NEEDS); a task that does not is
    #: refused before training (`refusal`).
    needs: ClassVar[frozenset[str]] = frozenset()
    #: Optional adapter behaviours it asks for (REQUESTS); a task without them still serves it.
    requests: ClassVar[frozenset[str]] = frozenset()
    #: The kinds of head it distils (kdbench.outputs.HEAD_KINDS); heads of other kinds are left to
    #: the task loss. Empty: it reads no heads (attention or nothing). A task offering no head of
    #: these kinds is refused before training (`refusal`).
    accepts: ClassVar[frozenset[str]] = SOFTMAX_KINDS
    #: Whether it distils a teacher's binned head whose bins are relative to each model's own
    #: reference (an adapter's `relative_heads`, detection's box edges), re-expressed on the
    #: student's bins (`Head.rebin`, `Head.in_frame`). True only where its loss reads the teacher
    #: solely as softmax(z_T/T) at one T and stays finite where the re-expressed distribution has
    #: empty bins (no reverse KL); a method that does not is not given such heads.
    rebins: ClassVar[bool] = False
    #: `kdbench tune`'s grid: one or two key hyperparameters, TUNE_BUDGET points in all (the same
    #: budget for every method), the paper default among them. Empty: nothing to tune.
    tune_grid: ClassVar[dict[str, tuple[Any, ...]]] = {}
    #: The RUNNER_NEEDS (`past_model`, `ema_model`, `generations`, `online_teacher`) this instance uses,
    #: decided once it has seen the Outputs: PS-KD keeps a per-sample table where heads are (B, K), else
    #: the previous epoch. A method that needs `generations` declares it on the class (sweeps size its
    #: cost by it), and so does one that needs `online_teacher` (its teacher kind is "online", and the
    #: run builds that teacher before the method).
    runtime_needs: frozenset[str] = frozenset()
    Config: ClassVar[type]

    def __init__(self, config: Any, ctx: MethodContext) -> None:
        super().__init__()
        self.config = config
        # the heads it distils, whose hard-label terms `ce_weight` re-weights (others keep weight 1)
        self.head_names = frozenset(n for n, h in ctx.student.heads.items() if h.kind in self.accepts)
        self.stage = 0  # which stage trains: 0 the first, i the i-th of `later_stages()`
        self.generation = 0  # which generation trains under the `generations` service (0: no teacher)

    def later_stages(self) -> tuple[Stage, ...]:
        """Stages after the first (none by default); a method with some needs `head_stage`."""
        return ()

    def task_weight(self, term: str, progress: float) -> float:
        """Weight of one term of the adapter's own supervised loss.

        Adapters name the hard-label term of each final head after the head ("cls",
        "simcc_x"); methods that re-weight or replace the hard-label loss (KD's w_ce, PS-KD's
        soft targets) use `ce_weight` below, other terms (box regression) keep weight 1.
        """
        return self.ce_weight() if term in self.head_names else 1.0

    def ce_weight(self) -> float:
        """Weight of the hard-label terms; 1 unless the method's config says otherwise."""
        return float(getattr(self.config, "ce_weight", 1.0))

    def ema_momentum(self) -> float:
        """m of the `ema_model` teacher: `Config.ema_momentum` of a method that uses one."""
        return float(self.config.ema_momentum)

    def generations(self) -> int:
        """G of the `generations` service, the generations trained after generation 0:
        `Config.generations` of a method that uses it."""
        return int(self.config.generations)

    def prepare(self, teacher_pass: Callable[[], Iterable[Outputs]]) -> None:
        """Called once before training when `teacher_pass` is needed."""

    @abstractmethod
    def loss(
        self, student: Outputs, teacher: Outputs | None, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        """Named loss terms for this step; the runner sums them with the weighted task loss."""

    def backward(self, loss: Tensor, terms: dict[str, Tensor], params: list[nn.Parameter]) -> None:
        """Fill the gradients of `params` (what the optimiser steps) for this step.

        `loss` is the sum of `terms`: the adapter's weighted task terms, named `task/<term>`,
        and the method's own. The default is one backward pass of `loss`; a method that
        combines the gradients of its objectives otherwise (DHKD's gradient alignment)
        overrides it. The runner then averages gradients across ranks, clips and steps.
        """
        loss.backward()

    def teacher_loss(
        self, student: Outputs, teacher: Outputs, progress: float, state: RunState
    ) -> dict[str, Tensor]:
        """The `online_teacher` service's teacher terms for this step, beside the teacher's own task
        loss (which the runner adds at weight 1); the runner names them `teacher/<term>`, sums them
        and back-propagates the sum into the teacher alone. `student` is detached (the runner cuts
        it from the graph), `teacher` is the online teacher's aligned outputs with their graph, and
        `loss`, which trains the student, gets those outputs detached: each model's objective
        trains only that model. The default adds none (the teacher learns from its task loss
        alone); every method with teacher kind "online" overrides it (registration checks)."""
        return {}

    def after_step(self, student: Outputs, losses: dict[str, Tensor], state: RunState) -> None:
        """Called after each optimiser step with that step's (detached) student outputs."""

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else cls.name

    def own_heads(self, outputs: Outputs) -> dict[str, Head]:
        """The final heads of `outputs` whose kind the method accepts (the ones it distils)."""
        return {name: head for name, head in outputs.heads.items() if head.kind in self.accepts}

    def paired(self, student: Outputs, teacher: Outputs | None) -> Iterator[tuple[str, Head, Head]]:
        """`paired_heads` over the heads this method distils: of a kind it accepts, and a teacher
        head re-expressed on the student's bins (`Head.rebin`) only when it `rebins`."""
        for name, s, t in paired_heads(student, teacher):
            if s.kind in self.accepts and (t.rebin is None or self.rebins):
                yield name, s, t


def paired_heads(student: Outputs, teacher: Outputs | None) -> Iterator[tuple[str, Head, Head]]:
    """(name, student head, teacher head) for every final head the two share.

    The student head's mask is narrowed to the positions the teacher's aligned head marks valid
    (a detector's teacher covers only queries matched to the same ground-truth object). Methods
    call `Method.paired`, which keeps the heads they distil.
    """
    if teacher is None:
        raise ValueError("this method needs a teacher's outputs")
    for name, head in student.heads.items():
        other = teacher.heads[name]
        if other.kind != head.kind:
            raise ValueError(f"head {name!r}: the student's is {head.kind}, the teacher's {other.kind}")
        if other.mask is not None:
            mask = other.mask if head.mask is None else head.mask & other.mask
            head = dataclasses.replace(head, mask=mask)
        yield name, head, other


def trainings(method: type[Method], config: Any) -> int:
    """How many times a run of `method` with `config` trains the student for the card's epochs:
    G + 1 under the `generations` service (`Config.generations`), else 1 (sweep cost estimates).
    Read from the class's `runtime_needs`, which a method with generations declares on the class."""
    return 1 + int(config.generations) if "generations" in method.runtime_needs else 1


def across_models(method: type[Method]) -> bool:
    """Whether the method compares heads of two models: an external or online teacher's, or (a self-teacher
    without `layers`) another pass of the student's own (PS-KD's previous epoch). Layers of one
    forward pass (GO-LSD, LSSKD) share their model's reference."""
    return method.teacher in ("external", "online") or (method.teacher == "self" and "layers" not in method.needs)


def head_refusals(method: type[Method], heads: Mapping[str, str], relative: Iterable[str] = ()) -> dict[str, str]:
    """For each head of a task (name → kind), why the method does not distil it ("" where it does).

    A head is distilled when its kind is in `method.accepts` and, for a head whose bins are
    relative to each model's own reference (`relative`) compared across two models, the method
    `rebins`. The single rule behind `refusal`, `Method.paired` and `Method.own_heads`.
    """
    relative = frozenset(relative)
    out = {}
    for name, kind in heads.items():
        if kind not in method.accepts:
            out[name] = f"{name} is {kind} ({HEAD_KINDS[kind].split(':')[0]})"
        elif name in relative and across_models(method) and not method.rebins:
            out[name] = (f"{name} is {kind} with bins relative to each model's own reference, which "
                         f"{method.name} does not re-express on the student's bins (Method.rebins)")
        else:
            out[name] = ""
    return out


def refusal(method: type[Method], task: str, provides: Iterable[str], heads: Mapping[str, str],
            relative: Iterable[str] = ()) -> str | None:
    """Why `task` cannot serve `method`, in one line, or None when it can: the one decision
    `kdbench run`, sweeps, the protocol check, `kdbench list`, the site catalog and the contract
    tests share.

    Refused: a need the task does not provide (`needs` ⊄ `provides`), or, for a method that
    reads heads (`accepts` not empty), no head it would distil (`head_refusals`).
    """
    missing = method.needs - frozenset(provides)
    if missing:
        what = "; ".join(f"{n} ({NEEDS.get(n, n)})" for n in sorted(missing))
        return f"task {task!r} cannot serve method {method.name!r}: it needs {what}, which this task does not provide"
    if not method.accepts:
        return None
    why = head_refusals(method, heads, relative)
    if any(not reason for reason in why.values()):
        return None
    kinds = " and ".join(sorted(method.accepts))
    return (f"task {task!r} cannot serve method {method.name!r}: it distils {kinds} heads, and no head of "
            f"this task is one it can distil: {'; '.join(why.values()) or 'the task has no heads'}")


def require_target(head: Head, method: str) -> Tensor:
    target = head.hard_target
    if target is None:
        raise ValueError(f"method {method!r} needs targets on every head")
    return target


def make_config(cls: type, overrides: dict[str, Any]) -> Any:
    """Build a method's config dataclass, rejecting unknown keys by name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in overrides:
        if key not in fields:
            raise UsageError(
                f"unknown hyperparameter {key!r} for {cls.__qualname__.split('.')[0]}; "
                f"valid: {', '.join(fields) or '(none)'}"
            )
    return cls(**{k: _coerce(fields[k], v) for k, v in overrides.items()})


def _coerce(field: dataclasses.Field[Any], value: Any) -> Any:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    try:
        if kind == "float":
            return float(value)
        if kind == "int":
            return int(value)
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
    except (TypeError, ValueError):
        raise UsageError(f"hyperparameter {field.name!r} must be {kind}, got {value!r}") from None
    return value
