"""The one metric registry, `METRICS`: every reported metric, its direction, range, label and unit.

Each metric is registered where it is computed (`register_metric` in the module that computes
it: kdbench/adapters/classification/metrics.py, adapters/coco.py, adapters/ood/scores.py,
adapters/translation/metrics.py), and each task names those modules in its declaration
(kdbench.tasks.Task.metrics); the first lookup imports them. They import no torch, so the runner,
`kdbench compare`, record validation and the leaderboard all read this registry without it.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Literal

from kdbench.registry import Registry, definition
from kdbench.tasks import TASKS

Direction = Literal["higher", "lower"]


@dataclass(frozen=True)
class Metric:
    """A reported metric.

    Attributes:
        name: its key in a record's `metrics.values`.
        direction: "higher" or "lower" is better.
        label: what a table's reader is told it is.
        unit: "%", "nats", "×1000" or "" (a fraction, a score).
        range: the interval its values lie in (a record outside it is refused).
    """

    name: str
    direction: Direction
    label: str
    unit: str = ""
    range: tuple[float, float] = (0.0, math.inf)


def _discover() -> None:
    """Import every task's metric modules (kdbench.tasks.Task.metrics), each of which registers."""
    for task in TASKS:
        for module in TASKS[task].metrics:
            importlib.import_module(module)


METRICS: Registry[Metric] = Registry("metric", base=Metric, discover=_discover)


def register_metric(name: str, direction: Direction, label: str, unit: str = "",
                    range: tuple[float, float] = (0.0, math.inf)) -> Metric:
    """Register a metric where it is computed; a name registered twice raises naming both places."""
    low, high = range
    if direction not in ("higher", "lower") or not low < high:
        raise ValueError(f"metric {name!r}: direction {direction!r}, range {range!r}")
    m = Metric(name, direction, label, unit, (float(low), float(high)))
    return METRICS.register(name, m, where=definition(None, 2))  # type: ignore[no-any-return]


def metric(name: str) -> Metric:
    """Look up a metric; an unknown name raises and lists the registered ones."""
    return METRICS[name]


def ceiling(name: str) -> float | None:
    """The best value a metric can take (its headroom is measured to it): the top of its range
    when higher is better, the bottom when lower is; None if that end is unbounded."""
    m = metric(name)
    best = m.range[1] if m.direction == "higher" else m.range[0]
    return None if math.isinf(best) else best


def better(name: str, a: float, b: float) -> bool:
    """True when value `a` is strictly better than `b` for metric `name`."""
    return a > b if metric(name).direction == "higher" else a < b


def bounds(name: str) -> tuple[float, float]:
    """The range a metric's values lie in (a record outside it is refused)."""
    return metric(name).range
