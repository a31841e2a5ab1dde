"""Result records → one pandas frame (a row per record), the input of every `kdbench compare` table.

Reads every record under a results folder (a bad one is skipped with a warning), keeps one card per
protocol key, and flattens each record's identity, metrics, cost and run facts into columns. Never
imports torch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from kdbench.errors import UsageError
from kdbench.metrics import METRICS
from kdbench.records import printable, read_record, record_files, validation_errors
from kdbench.site.catalog import method_aliases

BASELINE = "baseline"
TEACHER = "teacher"
BASE_COLUMNS = ["task", "tier", "protocol", "card", "shipped", "protocol_sha", "eval_version", "method", "seed",
                "primary", "direction"]
COST_COLUMNS = ["train_seconds", "params", "flops"]
#: Where a run ran and which checkpoints it made and used (the teacher row, the hardware mix).
RUN_COLUMNS = ["device", "cpu_model", "threads", "checkpoint", "teacher_sha", "teacher_test"]


def direction_of(metric: str, fallback: str = "higher") -> str:
    """A metric's direction from the registry (kdbench.metrics); `fallback` for unregistered ones."""
    info = METRICS.get(metric)
    return info.direction if info else fallback


# ----------------------------------------------------------------------------------- loading


def _read_all(results: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every record under `results` (the files `iter_records` reads); a bad one is a usage error."""
    for file, problem in record_files(Path(results)):
        if problem is not None:
            print(f"kdbench: warning: skipped {printable(file)}: {problem}", file=sys.stderr)
            continue
        try:
            record = read_record(file)
        except (OSError, ValueError) as e:
            raise UsageError(f"{file}: not a readable JSON record: {e}") from None
        errors = validation_errors(record)
        if errors:
            raise UsageError(f"{file}: invalid record: {errors[0]} (check with `kdbench validate`)")
        yield file, record


def _version(r: dict[str, Any]) -> tuple[str, int]:
    return r["protocol"]["sha256"], int(r["evaluation"]["version"])


def _keep_one_card(records: list[dict[str, Any]], warn: TextIO) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Per (task, protocol key) keep the records of one (card sha256, evaluation version) only.

    Rule: the pair with the most `ok` records wins; a tie goes to the pair with the newest record.
    Every other record of that (task, key) is set aside, with one warning line per table.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["protocol"]["key"]), []).append(r)
    kept: list[dict[str, Any]] = []
    set_aside: dict[str, int] = {}
    for (task, key), group in groups.items():
        by_version: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in group:
            by_version.setdefault(_version(r), []).append(r)
        best = max(by_version, key=lambda v: (sum(r["status"] == "ok" for r in by_version[v]),
                                              max(r["created"] for r in by_version[v])))
        kept.extend(by_version[best])
        aside = len(group) - len(by_version[best])
        if aside:
            set_aside[f"{task}/{key}"] = aside
            others = ", ".join(f"{sha[:12]} eval v{ev}" for sha, ev in sorted(by_version) if (sha, ev) != best)
            print(f"kdbench: warning: {task}/{key}: set aside {aside} record(s) of other card or evaluation "
                  f"version(s) ({others}); kept {best[0][:12]} eval v{best[1]} ({len(by_version[best])} records)",
                  file=warn)
    return kept, set_aside


def _teacher_sha(record: dict[str, Any]) -> str | None:
    """The checkpoint sha256 of the teacher a student learnt from (None: no external teacher). An
    online teacher (teacher kind "online") trained beside this one student and is no table's
    teacher: None, so a table's teacher row is the card's external teacher even where a method's
    students outnumber the external teacher's."""
    if record["method"].get("teacher") == "online":
        return None
    if record["teacher"] and record["teacher"].get("checkpoint_sha256"):
        return str(record["teacher"]["checkpoint_sha256"])
    ref = record["spec"].get("teacher")
    return str(ref["sha256"]) if ref else None


def _teacher_test(record: dict[str, Any]) -> float:
    """The teacher's test value of the primary metric, as the student's spec names it (NaN: none, or
    an online teacher's, which is no table's teacher)."""
    if record["method"].get("teacher") == "online":
        return math.nan
    ref = record["spec"].get("teacher") or {}
    metric = ref.get("metric") or {}
    value = metric.get("test")
    if metric.get("name") != record["metrics"]["primary"] or value is None:
        return math.nan
    return float(value)


def _ident(r: dict[str, Any]) -> dict[str, Any]:
    """The columns that place a record in its table."""
    p = r["protocol"]
    return {"task": r["task"], "tier": r["tier"], "protocol": p["key"], "card": p["name"],
            "shipped": bool(p["shipped"]), "protocol_sha": p["sha256"],
            "eval_version": int(r["evaluation"]["version"]), "method": r["method"]["name"], "seed": int(r["seed"]),
            "primary": r["metrics"]["primary"]}


def _run(r: dict[str, Any]) -> dict[str, Any]:
    env = r["environment"]
    return {"device": r["cost"]["device"], "cpu_model": env["cpu"]["model"], "threads": int(env["threads"]),
            "checkpoint": r["student"]["checkpoint_sha256"], "teacher_sha": _teacher_sha(r),
            "teacher_test": _teacher_test(r)}


def _row(record: dict[str, Any]) -> dict[str, Any]:
    m = record["metrics"]
    row: dict[str, Any] = {**_ident(record), "direction": direction_of(m["primary"], m["direction"])}
    for name, value in m["values"].items():  # the test split: what tables report
        row[f"m:{name}"] = math.nan if value is None else float(value)
    row["train_seconds"] = float(record["cost"]["train_seconds"])
    row["params"] = record["student"]["params"]
    row["flops"] = record["student"]["flops"]
    return {**row, **_run(record)}


def load_frame(results: Path, warn: TextIO | None = None) -> pd.DataFrame:
    """Read every record under `results` into one row per `ok` record.

    Columns: task, tier, protocol (the protocol *key*, the results folder: the card's name for a
    shipped card, `<name>+<sha8>` for an ablation), card (the card's name), shipped, protocol_sha,
    eval_version, method (its name now: a record of a renamed method's earlier name is read as
    the method's, `canonical_method`), seed, primary (metric name), direction (from the metric registry),
    `m:<name>` for every metric value of the test split, train_seconds, params, flops (the
    student's), device, cpu_model, threads, checkpoint (the run's own checkpoint sha256),
    teacher_sha (the checkpoint of the teacher it learnt from) and teacher_test (that teacher's
    test value of the primary metric, as the run's spec names it). Failed records are not rows:
    they are listed in `frame.attrs["failed"]` (the placing columns plus error). Records of one
    (task, key) under different card sha256 or evaluation versions are never mixed: the (sha256,
    evaluation version) pair with the most `ok` records is kept (a tie goes to the newest), the
    others are set aside with one warning line on `warn` each and counted in
    `frame.attrs["set_aside"]` ("task/key" → count).

    Args:
        results: the results folder (`<task>/<key>/<method>/seed<N>.json` below it).
        warn: where warnings go; stderr by default.

    Returns:
        The frame (empty, with the base columns, when there is no ok record).

    Raises:
        UsageError: a file is not JSON or not a valid record.
    """
    return frame_from_records([r for _, r in _read_all(results)], warn)


def canonical_method(record: dict[str, Any], aliases: Mapping[str, str]) -> dict[str, Any]:
    """The record as read under its method's name now: one written under a renamed method's
    earlier name (`aliases`, old → new) has its `method.name` replaced in the returned copy (the
    file is evidence and stays as it is); any other record is returned unchanged."""
    name = record["method"]["name"]
    if name not in aliases:
        return record
    return {**record, "method": {**record["method"], "name": aliases[name]}}


def frame_from_records(records: list[dict[str, Any]], warn: TextIO | None = None,
                       aliases: Mapping[str, str] | None = None) -> pd.DataFrame:
    """`load_frame` on records already read and validated (the leaderboard reads its own).

    Args:
        records: valid result records.
        warn: where warnings go; stderr by default.
        aliases: earlier method name → its name now; default the method registry's, as the
            committed catalog records them (kdbench.site.catalog.method_aliases).

    Returns:
        The frame, as `load_frame` describes it.
    """
    aliases = method_aliases() if aliases is None else aliases
    records = [canonical_method(r, aliases) for r in records]
    records, set_aside = _keep_one_card(records, warn or sys.stderr)
    rows = [_row(r) for r in records if r["status"] == "ok"]
    failed = [{**_ident(r), "error": r["error"]} for r in records if r["status"] != "ok"]
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=BASE_COLUMNS + COST_COLUMNS + RUN_COLUMNS)
    metric_cols = [c for c in frame.columns if str(c).startswith("m:")]
    frame = frame[BASE_COLUMNS + metric_cols + COST_COLUMNS + RUN_COLUMNS]
    frame.attrs["failed"] = failed
    frame.attrs["set_aside"] = set_aside
    return frame


