"""Resolving a command line into a frozen, validated run spec before anything trains."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.adapters import Adapter, get_adapter
from kdbench.errors import UsageError
from kdbench.methods import get_method
from kdbench.methods.base import NEEDS, Method, make_config
from kdbench.runner.protocol import Protocol, apply_overrides, load_protocol


@dataclass
class RunOptions:
    """What `kdbench run` was asked for."""

    task: str
    method: str
    protocol: str = "small"
    seed: int = 0
    device: str = "auto"
    data_root: Path | None = None
    results: Path = Path("results")
    teacher: Path | None = None
    sets: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunSpec:
    """A resolved run: everything that determines its result."""

    options: RunOptions
    adapter_cls: type[Adapter]
    method_cls: type[Method]
    protocol: Protocol
    config: Any  # the method's Config dataclass instance

    @property
    def hparams(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @property
    def teacher_seed(self) -> int:
        return int(self.protocol.get("teacher.seed", 0) or 0)


def resolve(options: RunOptions) -> RunSpec:
    """Check every name and override; raise UsageError with the valid choices on bad input."""
    adapter_cls = get_adapter(options.task)
    method_cls = get_method(options.method)
    method_sets = {k[len("method."):]: v for k, v in options.sets.items() if k.startswith("method.")}
    card_sets = {k: v for k, v in options.sets.items() if not k.startswith("method.")}
    protocol = apply_overrides(load_protocol(options.task, options.protocol), card_sets)
    hparams = {**protocol.method_hparams(options.method), **method_sets}
    config = make_config(method_cls.Config, hparams)
    missing = method_cls.needs - adapter_cls.provides
    if missing:
        what = "; ".join(f"{n} ({NEEDS.get(n, n)})" for n in sorted(missing))
        raise UsageError(f"task {options.task!r} cannot serve method {options.method!r}: it needs "
                         f"{what}, which this task does not provide")
    if options.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {options.seed}")
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
