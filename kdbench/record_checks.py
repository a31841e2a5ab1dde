"""What the record schema cannot say, checked in Python (kdbench.records.validation_errors runs
both): every number finite and every integer within int64, strings valid Unicode and of bounded
length, nesting bounded, `created` a real date, the task registered in kdbench.tasks (the schema
only constrains its spelling, so a sixth task edits no schema), the metric names registered in
kdbench.metrics and their values within the metric's range, the primary metric present in an `ok` record's
test values, and the direction the registry gives it.

Messages are one line each, values in them cut to `MESSAGE_CHARS`.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from kdbench.metrics import METRICS, bounds
from kdbench.tasks import TASKS

#: A record nested deeper than this is refused before the schema is consulted (no recursion limit).
MAX_DEPTH = 48
#: The longest string a record may hold (a traceback tail, an error message, a card's description).
MAX_STRING = 20_000
#: The longest a dictionary key may be.
MAX_KEY = 200
#: Messages show at most this many characters of an offending value.
MESSAGE_CHARS = 200
#: Integers beyond int64 cannot be stored in a table column; seeds have their own, tighter bound.
INT_LIMIT = 2**63
#: Seeds are 0 ≤ s < 2**32: torch keeps 32 bits of a seed, so larger ones would alias smaller ones.
SEED_LIMIT = 2**32
#: Float rounding allowed beyond a metric's range.
SLACK = 1e-6

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def cut(text: str, limit: int = MESSAGE_CHARS) -> str:
    """`text` as at most `limit` characters (an ellipsis and the count of what was left out)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def shown(value: Any) -> str:
    """A value for a message: its repr, safe to print (surrogates escaped) and cut."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<a deeply nested {type(value).__name__}>"
    return cut(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _where(path: list[Any]) -> str:
    return cut(".".join(map(str, path)) or "(record)", 120)


def structural_errors(record: Any) -> list[str]:
    """Depth, numbers, strings and keys anywhere in the record (iterative: no recursion limit).

    Returns at most one error per problem kind so that a hostile record cannot make the list huge;
    the first entry names the first offending field found.
    """
    errors: dict[str, str] = {}
    stack: list[tuple[list[Any], Any, int]] = [([], record, 0)]
    while stack:
        path, value, depth = stack.pop()
        if depth > MAX_DEPTH:
            errors.setdefault("depth", f"{_where(path[:8])}…: nested deeper than {MAX_DEPTH} levels")
            continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                errors.setdefault("finite", f"{_where(path)}: {value} is not a finite number")
        elif isinstance(value, int):
            if not -INT_LIMIT <= value < INT_LIMIT:
                errors.setdefault("int", f"{_where(path)}: an integer of {len(str(abs(value)))} digits "
                                         f"is out of range (|n| < 2**63)")
        elif isinstance(value, str):
            problem = _string_problem(value, MAX_STRING)
            if problem:
                errors.setdefault("string", f"{_where(path)}: {problem}")
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    errors.setdefault("key", f"{_where(path)}: key {shown(key)} is not a string")
                    continue
                problem = _string_problem(key, MAX_KEY)
                if problem:
                    errors.setdefault("key", f"{_where(path)}: a key that is {problem}")
                    continue
                stack.append(([*path, key], item, depth + 1))
        elif isinstance(value, (list, tuple)):
            stack.extend(([*path, i], item, depth + 1) for i, item in enumerate(value))
        else:
            errors.setdefault("type", f"{_where(path)}: {type(value).__name__} is not a JSON value")
    return list(errors.values())


def _string_problem(text: str, limit: int) -> str | None:
    if len(text) > limit:
        return f"a string of {len(text)} characters (at most {limit})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"not valid Unicode (a lone surrogate): {shown(text)}"
    return None


def semantic_errors(record: dict[str, Any]) -> list[str]:
    """The checks on a schema-valid record that refer to the task and metric registries and to dates."""
    errors = []
    if record["task"] not in TASKS:
        errors.append(f"task: {shown(record['task'])} is not a registered task (kdbench.tasks); "
                      f"valid: {', '.join(TASKS)}")
    created = str(record["created"])
    if not _DATE.match(created) or _date(created) is None:
        errors.append(f"created: {shown(created)} is not an RFC 3339 date-time (2026-01-31T12:00:00+00:00)")
    metrics = record["metrics"]
    primary = metrics["primary"]
    if primary not in METRICS:
        errors.append(f"metrics.primary: {shown(primary)} is not a registered metric (kdbench.metrics)")
    elif metrics["direction"] != METRICS[primary].direction:
        errors.append(f"metrics.direction: {primary} is {METRICS[primary].direction}-is-better, "
                      f"not {shown(metrics['direction'])}")
    if record["status"] == "ok" and not isinstance(metrics["values"].get(primary), (int, float)):
        errors.append(f"metrics.values: the primary metric {shown(primary)} is missing (an ok record reports it)")
    for split in ("values", "val"):
        for name, value in metrics[split].items():
            if name not in METRICS:
                errors.append(f"metrics.{split}: {shown(name)} is not a registered metric (kdbench.metrics)")
                continue
            low, high = bounds(name)
            if isinstance(value, (int, float)) and not low - SLACK <= value <= high + SLACK:
                errors.append(f"metrics.{split}.{name}: {shown(value)} is outside [{low:g}, {high:g}]")
    return errors


def _date(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(re.sub(r"[Zz]$", "+00:00", text).replace("t", "T"))
    except ValueError:
        return None
