"""`kdbench sweep`: tasks × methods × seeds × protocols, each run in isolation on an executor.

The plan is resolved before anything trains (every name and override checked, as `kdbench run`
does); runs with an `ok` record of the same protocol hash and overrides are skipped; the
external teachers the remaining runs need are trained first, once each, and shared; then the
runs go to the executor. A run that fails leaves a `failed` record with the error and the tail
of its traceback, and the rest go on.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kdbench.errors import UsageError, unknown
from kdbench.record_checks import SEED_LIMIT, cut
from kdbench.records import read_record


@dataclass(frozen=True)
class Item:
    """One unit of sweep work: a run (`method` set) or a teacher to train (`method` = None)."""

    task: str
    protocol: str  # what the user named: a tier, a card name or a path
    seed: int
    method: str | None
    sets: tuple[tuple[str, Any], ...] = ()
    card: str = ""  # the resolved card name (for display and the results path)

    @property
    def label(self) -> str:
        what = self.method or "teacher"
        return f"{self.task}/{self.card or self.protocol}/{what}/seed{self.seed}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Item:
        data = json.loads(text)
        data["sets"] = tuple(tuple(kv) for kv in data["sets"])
        return cls(**data)


@dataclass
class Plan:
    teachers: list[Item] = field(default_factory=list)
    runs: list[Item] = field(default_factory=list)
    skipped: list[Item] = field(default_factory=list)
    not_served: list[tuple[str, str, str]] = field(default_factory=list)  # (task, method, why)
    estimates: dict[str, float | None] = field(default_factory=dict)  # item label → training seconds


def estimate_seconds(results: Path, task: str, key: str, method: str, trainings: int = 1) -> float | None:
    """Mean measured training time of the ok records of (task, card key, method) under `results`,
    else that of any method of that card per training of the card's epochs, times `trainings` (a
    method's cost is close to the baseline's per training; a record trains once per generation in
    its history, `kdbench.methods.base.trainings`), else None."""
    for pattern, own in ((f"{method}/seed*.json", True), ("*/seed*.json", False)):
        seconds = []
        for file in sorted((Path(results) / task / key).glob(pattern)):
            try:
                record = read_record(file)
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("status") == "ok":
                value = (record.get("cost") or {}).get("train_seconds")
                if isinstance(value, (int, float)):
                    seconds.append(float(value) if own else float(value) / _trainings(record) * trainings)
        if seconds:
            return sum(seconds) / len(seconds)
    return None


def _trainings(record: dict[str, Any]) -> int:
    """How many trainings of the card's epochs a record's run made: its generations (1 + the
    largest `generation` in its history), 1 for a run without them."""
    history = record.get("history")
    entries = history if isinstance(history, list) else []
    found = [h["generation"] for h in entries if isinstance(h, dict) and isinstance(h.get("generation"), int)]
    return 1 + max(found, default=0)


@dataclass
class Outcome:
    item: Item
    status: str  # ok | failed | crashed
    seconds: float
    message: str = ""
    pid: int | None = None  # the worker process that ran it (local pool), when it answered
    gpus: str | None = None  # its process's CUDA_VISIBLE_DEVICES (None: unset), when it answered


#: A sweep's seed list is at most this long.
MAX_SEEDS = 10_000


def parse_seeds(text: str) -> list[int]:
    """`0-2` → [0, 1, 2]; `0,3,5`; `1`; mixtures `0-2,7`."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo or hi - lo >= MAX_SEEDS:
                    raise ValueError
                seeds += range(lo, hi + 1)
            else:
                seeds.append(int(part))
        except ValueError:
            raise UsageError(f"--seeds {cut(repr(text))}: expected integers and ranges such as 0-2 or 0,3,5 "
                             f"(at most {MAX_SEEDS} seeds)") from None
    if any(not 0 <= s < SEED_LIMIT for s in seeds):
        raise UsageError(f"--seeds {cut(repr(text))}: seeds must lie in [0, 2**32)")
    return sorted(set(seeds))


def _names(text: str, universe: Iterable[str], kind: str) -> list[str]:
    universe = list(universe)
    if text.strip() == "all":
        return universe
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in universe:
            raise unknown(kind, n, universe)
    return names


def _method_names(text: str) -> list[str]:
    """`--methods`: `all`, or registered names, an earlier name (alias) of a renamed method
    standing for its registered name."""
    from kdbench.methods import METHODS

    if text.strip() == "all":
        return METHODS.names()
    return list(dict.fromkeys(METHODS.canonical(n.strip()) for n in text.split(",") if n.strip()))


def make_plan(tasks: str, methods: str, seeds: str, protocols: str, sets: dict[str, Any],
              results: Path, data_root: Path | None) -> Plan:
    """Expand and resolve the sweep; raise UsageError on any bad name before anything runs."""
    from kdbench.adapters import TASKS, get_adapter
    from kdbench.adapters.base import why_not_served
    from kdbench.methods import get_method
    from kdbench.methods.base import trainings
    from kdbench.protocol import TIERS, load_protocol, task_cards
    from kdbench.runner.data_fraction import SubsetRefused
    from kdbench.runner.spec import RunOptions, resolve
    from kdbench.runner.teachers import teacher_path

    plan = Plan()
    by_card = seeds.strip() == "card"  # each card's own `seeds:`
    seed_list = [] if by_card else parse_seeds(seeds)
    frozen_sets = tuple(sorted(sets.items()))
    teachers: dict[str, Item] = {}
    for task in _names(tasks, TASKS, "task"):
        adapter_cls = get_adapter(task)
        explicit_methods = methods.strip() != "all"
        for method in _method_names(methods):
            refused = why_not_served(adapter_cls, get_method(method))
            if refused:
                if explicit_methods and tasks.strip() != "all" and "," not in tasks:
                    raise UsageError(refused)
                plan.not_served.append((task, method, refused.split(": ", 1)[1]))
                continue
            for choice in _protocol_names(task, protocols, task_cards, TIERS):
                loaded = load_protocol(task, choice)
                card = loaded.name
                for seed in (loaded.typed.seeds if by_card else seed_list):
                    item = Item(task, choice, seed, method, frozen_sets, card)
                    try:
                        spec = resolve(RunOptions(task=task, method=method, protocol=choice, seed=seed,
                                                  data_root=data_root, results=results, sets=dict(sets)))
                    except SubsetRefused as e:  # the card's data fraction, for every method of the task
                        if tasks.strip() != "all" and "," not in tasks:
                            raise
                        plan.not_served.append((task, method, str(e)))
                        break
                    if _done(spec, results):
                        plan.skipped.append(item)
                        continue
                    plan.runs.append(item)
                    plan.estimates[item.label] = estimate_seconds(results, task, spec.protocol.key, method,
                                                                  trainings(spec.method_cls, spec.config))
                    if spec.method_cls.teacher == "external" and spec.protocol.get("teacher.train") is not False:
                        key = str(teacher_path(spec.protocol, task, spec.teacher_seed))
                        teacher_sets = tuple((k, v) for k, v in frozen_sets if not k.startswith("method."))
                        if key not in teachers and not Path(key).is_file():
                            teachers[key] = Item(task, choice, spec.teacher_seed, None, teacher_sets, card)
                            plan.estimates[teachers[key].label] = estimate_seconds(
                                results, task, spec.protocol.key, "teacher")
    plan.teachers = list(teachers.values())
    return plan


def _protocol_names(task: str, protocols: str, task_cards: Callable[[str], dict[str, Path]],
                    tiers: tuple[str, ...]) -> list[str]:
    cards = task_cards(task)
    if protocols.strip() == "all":
        return sorted(cards)
    out = []
    for name in (p.strip() for p in protocols.split(",") if p.strip()):
        if name in cards or name in tiers or Path(name).suffix in (".yaml", ".yml"):
            out.append(name)
        else:
            raise unknown(f"protocol for task {task!r}", name, [*cards, *tiers])
    return out


def _done(spec: Any, results: Path) -> bool:
    """An `ok` record of the same effective card, hyperparameters and evaluation version exists."""
    path = spec.record_path
    if not path.is_file():
        return False
    try:
        record = read_record(path)
    except (OSError, ValueError):
        return False
    return bool(record.get("status") == "ok"
                and record["protocol"]["sha256"] == spec.protocol.sha256
                and record.get("evaluation", {}).get("version") == spec.adapter_cls.evaluation_version
                and record["method"].get("hparams") == spec.hparams)


def describe(plan: Plan, out: TextIO | None = None) -> None:
    """The `--dry-run` listing."""
    out = out or sys.stdout
    def cost(item: Item) -> str:
        seconds = plan.estimates.get(item.label)
        return f"  ~{seconds:.0f} s" if seconds is not None else "  (no measured cost yet)"

    for item in plan.teachers:
        print(f"teacher  {item.label}{cost(item)}", file=out)
    for item in plan.runs:
        print(f"run      {item.label}{cost(item)}", file=out)
    for item in plan.skipped:
        print(f"skip     {item.label} (ok record with the same protocol hash)", file=out)
    for task, method, why in plan.not_served:
        print(f"n/a      {task}/{method} ({why})", file=out)
    print(f"{len(plan.teachers)} teachers to train, {len(plan.runs)} runs, {len(plan.skipped)} "
          f"already done, {len(plan.not_served)} pairs not served", file=out)
    todo = [plan.estimates.get(i.label) for i in (*plan.teachers, *plan.runs)]
    known = [s for s in todo if s is not None]
    if todo:
        print(f"estimated training time: {sum(known) / 60:.1f} min of one worker for {len(known)} of {len(todo)} "
              "items, from the measured cost of records under the results folder"
              + (f" ({len(todo) - len(known)} items have no measured cost yet)" if len(known) < len(todo) else ""),
              file=out)
