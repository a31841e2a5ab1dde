"""Resolving a command line into a frozen, validated run spec before anything trains."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.adapters import Adapter, get_adapter
from kdbench.adapters.base import why_not_served
from kdbench.errors import UsageError
from kdbench.methods import METHODS, get_method
from kdbench.methods.base import Method, make_config
from kdbench.metrics import METRICS
from kdbench.protocol import Protocol, apply_overrides, load_protocol
from kdbench.record_checks import SEED_LIMIT
from kdbench.records import default_results, record_path
from kdbench.runner.data_fraction import SubsetRefused
from kdbench.runner.data_fraction import refusal as data_fraction_refusal

#: The method slot of a teacher-only run (`kdbench teacher`, a sweep's teacher items, the protocol
#: check's teacher rows). It is no registered method: it names no loss, takes no `--set method.*`
#: and is never refused for what a method distils; such runs write the teacher's record.
TEACHER_ONLY = "teacher"


class _TeacherOnly(Method):
    """The method of a teacher-only run: the card's external teacher, and nothing to distil."""

    name = TEACHER_ONLY
    paper = ""
    teacher = "external"  # `--teacher PATH` and the cards' given teachers apply as to any KD run
    accepts = frozenset()

    @dataclass(frozen=True)
    class Config:
        pass

    def loss(self, student: Any, teacher: Any, progress: float, state: Any) -> dict[str, Any]:
        raise AssertionError("a teacher-only run trains no student")


@dataclass
class RunOptions:
    """What `kdbench run` was asked for."""

    task: str
    method: str
    protocol: str = "small"
    seed: int = 0
    device: str = "auto"
    data_root: Path | None = None
    results: Path = field(default_factory=default_results)
    teacher: Path | None = None
    sets: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False  # replace an existing record of the same key (else refuse)


@dataclass
class RunSpec:
    """A resolved run: everything that determines its result."""

    options: RunOptions
    adapter_cls: type[Adapter]
    method_cls: type[Method]
    protocol: Protocol  # the effective card: the method's `--set`s are in its `methods` section
    config: Any  # the method's Config dataclass instance
    teacher_seed_override: int | None = None  # `kdbench teacher --seed N`: another seed of the card's teacher

    @property
    def hparams(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @property
    def teacher_seed(self) -> int:
        if self.teacher_seed_override is not None:
            return self.teacher_seed_override
        return int(self.protocol.typed.teacher.seed)  # type: ignore[attr-defined]

    @property
    def primary_metric(self) -> str:
        """The card's primary metric: the one place that defines it."""
        return self.protocol.typed.metrics.primary

    @property
    def record_path(self) -> Path:
        """Where the run's record is: under the method's name, unless none is there and a record of
        this very run was written under one of the method's earlier names (`Method.aliases`); that
        record is then the run's (refused without `--overwrite`, replaced in place with it, done
        for a sweep), so a renamed method never gets a second record of one run."""
        def at(method: str) -> Path:
            return record_path(self.options.results, self.protocol.task, self.protocol.key, method, self.options.seed)

        path = at(self.options.method)
        if path.exists():
            return path
        earlier = METHODS.aliases_of(self.options.method) if self.options.method in METHODS else ()
        return next((p for p in map(at, earlier) if p.exists()), path)


def resolve(options: RunOptions) -> RunSpec:
    """Check every name, value and override; raise UsageError with the valid choices on bad input.
    The spec's options name the method by its registered name (an alias, an earlier name of a
    renamed method, resolves to it)."""
    adapter_cls = get_adapter(options.task)
    teacher_only = options.method == TEACHER_ONLY
    method_cls: type[Method] = _TeacherOnly if teacher_only else get_method(options.method)
    options = dataclasses.replace(options, method=method_cls.name)
    hyper = [k for k in options.sets if k.split(".")[0] == "method"] if teacher_only else []
    if hyper:
        raise UsageError(f"--set {hyper[0]}: a teacher-only run trains the card's teacher and takes no "
                         "method hyperparameters; valid --set keys are the card's (e.g. teacher.train.epochs=5)")
    loaded = load_protocol(options.task, options.protocol)
    if teacher_only:
        protocol, config = apply_overrides(loaded, options.sets), _TeacherOnly.Config()
    else:
        section = card_section(loaded, options.method)
        protocol = apply_overrides(loaded, options.sets, section)
        config = make_config(method_cls.Config, protocol.method_hparams(section))
    primary = protocol.typed.metrics.primary
    if primary not in METRICS:
        raise UsageError(f"protocol {protocol.name!r}: metrics.primary {primary!r} is not a registered "
                         f"metric; valid: {', '.join(sorted(METRICS))}")
    refused = None if teacher_only else why_not_served(adapter_cls, method_cls)  # needs, head kinds
    if refused:
        raise UsageError(refused)
    subset = None if teacher_only else data_fraction_refusal(adapter_cls, protocol, method_cls)  # the teacher sees all
    if subset:
        raise SubsetRefused(subset)
    if not 0 <= options.seed < SEED_LIMIT:
        shown = str(options.seed) if len(str(options.seed)) <= 40 else f"an integer of {len(str(options.seed))} digits"
        raise UsageError(f"--seed must be an integer in [0, 2**32), got {shown} (torch seeds with 32 bits: "
                         "a larger seed would train the same model as a smaller one)")
    if options.teacher is not None and not options.teacher.is_file():
        raise UsageError(f"--teacher {options.teacher}: no such file")
    if options.teacher is not None and method_cls.teacher != "external":
        raise UsageError(f"--teacher is for methods with an external teacher; {options.method!r} "
                         f"has teacher {method_cls.teacher!r}")
    needs_path = protocol.get("teacher.train") is False
    if method_cls.teacher == "external" and needs_path and options.teacher is None:
        raise UsageError(
            f"protocol {protocol.name!r} uses a given teacher: pass --teacher PATH (a "
            f"{protocol.get('teacher.arch')} checkpoint trained on {protocol.get('data.dataset')})")
    return RunSpec(options, adapter_cls, method_cls, protocol, config)


def card_section(protocol: Protocol, method: str) -> str:
    """The key of a registered method's section in a card's `methods:`: its name, or the earlier
    name (alias) a card written before its rename keeps (changing the key would change the card's
    sha256 and split its records from the new ones)."""
    sections = protocol.card.get("methods") or {}
    return next((n for n in (method, *METHODS.aliases_of(method)) if n in sections), method)


def refuse_existing(path: Path, overwrite: bool) -> None:
    """A record is evidence: an existing one is replaced only when asked (`--overwrite`)."""
    if path.exists() and not overwrite and os.environ.get("RANK", "0") == "0":
        raise UsageError(f"a record already exists at {path}; pass --overwrite to replace it, "
                         "or --results DIR to write elsewhere")
