"""What a task pipeline provides to the runner (docs/architecture.md, Adapters)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import torch
from torch import Tensor, nn

from kdbench.errors import KDBenchError
from kdbench.methods.base import Method, refusal
from kdbench.outputs import HeadKind, Outputs
from kdbench.protocol import Protocol

Role = Literal["student", "teacher"]
BatchT = TypeVar("BatchT")
"""An adapter's training batch type (its `Batch` dataclass)."""
OutT = TypeVar("OutT", bound=Outputs)
"""What its `forward` returns: `Outputs`, or a subclass carrying what its task loss and `align`
read (detection's `DetectionOutputs`)."""


class Adapter(ABC, Generic[BatchT, OutT]):
    """One task pipeline: data tiers, model factories, task loss, forward, alignment, metrics.

    Attributes:
        task: the task's name on the command line.
        provides: which method needs this adapter can supply, of the two kinds a task supplies
            (kdbench.methods.base): parts of its Outputs (OUTPUT_NEEDS), checked against the
            student's Outputs on one batch before training (kdbench.runner.train.probe_outputs),
            and what only it can serve beside them (ADAPTER_NEEDS); never a RUNNER_NEEDS, which
            the runner serves on every task.
        head_kinds: the final heads its `forward` returns, name → kind (kdbench.outputs.HEAD_KINDS);
            the same probe checks them against the Outputs' heads.
        relative_heads: the binned heads whose bins are relative to a reference of each model's
            own (detection's box edges: offsets from the model's initial box), which `align`
            re-expresses on the student's bins (`Head.rebin`); default none.
        honours: the requests (kdbench.methods.base.REQUESTS) it applies, each only when the
            running method makes it (told through `configure`), so that no other method pays for
            it; a request it does not honour is ignored (default none).
        evaluation_version: bumped whenever data preparation, splits or metric code change what a
            number means; tables never mix versions.
        teacher_inputs_fixed: True when batches and augmentation derive from (seed, epoch) alone
            (default False).

    Every adapter holds three disjoint splits fixed by its card: "train" (fitted), "val"
    (everything a benchmark chooses: schedules, stage fractions, hyperparameters) and "test"
    (the reported numbers, scored once at the end).

    Abstract: `train_size`, `train_batches`, `build_model`, `forward`, `task_loss`, `evaluate`,
    `example_input`. Hooks with a default (the runner calls every one of them): `configure`,
    `steps_per_epoch`, `align`, `attach_teacher`, `head_stage`, `evaluation_info`, `teacher_pass`,
    `arch_name`, `keep_train` and `train_classes` (the data-fraction service).

    Batches (`BatchT`). Under torchrun every rank draws the same global batch and trains on its
    contiguous shard, cut by kdbench.runner.distributed.shard: rank r of N keeps rows
    [B·r // N, B·(r+1) // N). A batch is therefore a Tensor, a list or tuple, a dict, or (as
    every shipped adapter does) a dataclass, and
      - B is read as a Tensor's dim 0; a non-empty list or tuple whose first item is not a
        Tensor, list or tuple: its length; otherwise the dim 0 of the first top-level value (a
        dataclass's first field, in order) that is a Tensor of at least one dimension. Put such a
        per-sample tensor first; with none, `shard` raises TypeError;
      - then, recursively: a Tensor whose dim 0 is B is sliced along dim 0 and any other Tensor
        (0-d, another length) is kept whole; a list or tuple of length B is cut as one item per
        sample (detection's per-image boxes), one of another length item by item; a dict value by
        value; a dataclass is rebuilt with dataclasses.replace from its sliced fields (every
        field must be an init field; `__post_init__` runs again on the shard, so attributes it
        derives, such as detection's concatenated boxes, follow); anything else is kept.
    So per-sample data lies along dim 0 with length B, or in a sequence of B items; shared data
    must not have a leading length that can equal B, or it is cut too.
    """

    task: ClassVar[str]
    provides: ClassVar[frozenset[str]]
    head_kinds: ClassVar[dict[str, HeadKind]]
    relative_heads: ClassVar[frozenset[str]] = frozenset()
    honours: ClassVar[frozenset[str]] = frozenset()
    evaluation_version: ClassVar[int]
    """Bumped whenever data preparation, splits or metric code change what a number means; tables
    never mix versions."""
    teacher_inputs_fixed: ClassVar[bool] = False
    """True promises that an epoch's batches and augmentation derive from (seed, epoch) alone,
    whatever the method, so a frozen teacher's outputs may be cached across the runs of a card
    (kdbench.runner.teacher_cache). Default False: the teacher runs on every batch."""
    train_subsets: ClassVar[bool] = False
    """True when `keep_train` can restrict the training split to some of its samples, so the task
    serves the data-fraction service (card `train.data_fraction`, kdbench.runner.data_fraction).
    Default False: such a card is refused before any work."""

    def __init__(self, protocol: Protocol, data_root: Path | None, device: torch.device) -> None:
        self.protocol = protocol
        self.data_root = data_root
        self.device = device

    def configure(self, needs: frozenset[str]) -> None:
        """Told the method's needs and requests before any model is built (default: nothing)."""

    @property
    @abstractmethod
    def train_size(self) -> int:
        """Number of training samples (sizes per-sample memories such as PS-KD's table)."""

    @abstractmethod
    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[BatchT]:
        """One epoch of augmented training batches on `self.device`, ordered by `generator`."""

    def steps_per_epoch(self, batch_size: int) -> int:
        """How many batches `train_batches(batch_size, ...)` yields: ⌈train_size / batch_size⌉ by
        default (every sample once, the last batch short); it sizes the schedule and the step count."""
        return -(-self.train_size // batch_size)

    def epoch_positions(self, batch_size: int, generator: torch.Generator) -> dict[str, int] | None:
        """Each final head's positions in the epoch `train_batches(batch_size, generator)` yields: the
        product of a head's logits dims but the last, summed over the batches. It sizes the teacher-output
        cache before its first write (kdbench.runner.cache_budget). None (default): every sample once, at
        the probe's positions per sample, exact for heads of a fixed shape; a task whose heads vary in
        length per batch (translation's padded tokens) counts them here, drawing from `generator` as
        `train_batches` does, without building the batches."""
        return None

    @abstractmethod
    def build_model(self, role: Role, needs: frozenset[str]) -> nn.Module:
        """The card's student or teacher; `needs` may ask for extra parts (auxiliary heads)."""

    @abstractmethod
    def forward(self, model: nn.Module, batch: BatchT) -> OutT: ...

    def align(self, student: OutT, teacher: OutT) -> Outputs:
        """The teacher's Outputs position-aligned to the student's (identity by default)."""
        return teacher

    @abstractmethod
    def task_loss(self, outputs: OutT) -> dict[str, Tensor]:
        """The task's supervised loss terms; a final head's hard-label term carries its name."""

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """The task's metrics of `model` on `split`: "val" or "test" (some adapters also "train");
        any other split is a UsageError naming the valid ones (`kdbench.adapters.splits`)."""

    def attach_teacher(self, teacher: nn.Module) -> None:
        """Told the frozen external teacher once it is built (before the student), for adapters
        whose data or scores depend on it: SeqKD's teacher-decoded targets, OOD scores from the
        student-teacher discrepancy. Default: nothing."""

    def head_stage(self, model: nn.Module) -> nn.Module:
        """A copy of `model` with a freshly initialised head and the rest frozen, trained in a
        method's later stage (need `head_stage`; DWPose's second stage). The runner refuses a
        method with later stages before any training when the task does not provide
        `head_stage`. Default: a KDBenchError."""
        raise KDBenchError(f"task {self.task!r} cannot train a head alone (needs head_stage)")

    def evaluation_info(self, split: str) -> dict[str, Any]:
        """What the record's `evaluation` field says about how `split` was scored (translation:
        the dataset's split name, decoding settings, sacrebleu signatures). Default: nothing, {}."""
        return {}

    def keep_train(self, indices: Tensor) -> None:
        """Keep only the training samples at `indices` (sorted, distinct int64 positions in the
        training split), in their order, for the rest of the run: `train_size`, `train_batches`,
        `teacher_pass` and whatever else reads the training split see the kept samples alone, and
        sample ids index them (0 .. len(indices) − 1). Vocabularies, tokenizers, normalisation and
        anything else built from the training split stay as built from all of it, as the
        teacher's. Called once, after the teacher is built, before the student (need: the class
        attribute `train_subsets`). Default: a KDBenchError."""
        raise KDBenchError(f"task {self.task!r} cannot train on a subset of its training split")

    def train_classes(self) -> Tensor | None:
        """(N,) int64 class of each training sample, for class-stratified subsets (the data-fraction
        service), or None where a training sample has no single class (default)."""
        return None

    def teacher_pass(self, model: nn.Module) -> Iterator[Outputs]:
        """Eval-mode Outputs over the training set, without augmentation (need `teacher_pass`)."""
        raise KDBenchError(f"task {self.task!r} does not provide a teacher pass over its training set")

    @abstractmethod
    def example_input(self) -> Any:
        """One sample's model input, for counting FLOPs."""

    def arch_name(self, role: Role) -> str:
        spec = self.protocol.card[role]
        return str(spec["arch"]) if isinstance(spec, dict) else str(spec)


def why_not_served(adapter: type[Adapter], method: type[Method]) -> str | None:
    """Why the task cannot serve the method (one line), or None when it can: its needs against
    `provides`, the kinds it distils against `head_kinds` (kdbench.methods.base.refusal)."""
    return refusal(method, adapter.task, adapter.provides, adapter.head_kinds, adapter.relative_heads)
