"""One `kdbench compare` table: a (task, protocol key) of the frame → per-method statistics.

Per method: mean ± std over seeds, a 95% t-interval, Δ vs `baseline` from a paired t-test over the
shared seeds with its 95% interval, Holm-adjusted p-values, a verdict and the fraction of the
teacher gap closed (against the teacher the students learnt from). Per table: the minimal
detectable difference of its design and its hardware mix. Never imports torch.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, NamedTuple

import pandas as pd

from kdbench.compare.frame import BASELINE, TEACHER, direction_of
from kdbench.errors import UsageError
from kdbench.metrics import METRICS, bounds
from kdbench.stats import (
    holm,
    minimal_detectable_difference,
    paired_test,
    pooled_sd,
    summarize,
    teacher_gap_closed,
)

#: The power at which a table's minimal detectable difference is stated.
MDD_POWER = 0.8



class TableId(NamedTuple):
    """One table: a task under one protocol key."""

    task: str
    protocol: str  # the key
    tier: str
    card: str
    shipped: bool


def tables_of(frame: pd.DataFrame) -> list[TableId]:
    """Every table that the frame's ok or failed records make, sorted."""
    cols = ["task", "protocol", "tier", "card", "shipped"]
    rows = [*frame[cols].drop_duplicates().to_dict(orient="records"), *frame.attrs.get("failed", [])]
    found = {TableId(str(r["task"]), str(r["protocol"]), str(r["tier"]), str(r["card"]), bool(r["shipped"]))
             for r in rows}
    return sorted(found)


def _resolve(frame: pd.DataFrame, task: str, protocol: str) -> str:
    """The key meant by `protocol`: a key; else a card name or tier with a single shipped table (or,
    without one, a single table)."""
    groups = tables_of(frame)
    if not groups:
        raise UsageError("no result records to compare")
    tasks = {g.task for g in groups}
    if task not in tasks:
        raise UsageError(f"no records for task {task!r}; valid: {', '.join(sorted(tasks))}")
    mine = [g for g in groups if g.task == task]
    if protocol in {g.protocol for g in mine}:
        return protocol
    for field in ("card", "tier"):
        named = [g for g in mine if getattr(g, field) == protocol]
        for candidates in ([g for g in named if g.shipped], named):
            if len({g.protocol for g in candidates}) == 1:
                return candidates[0].protocol
    raise UsageError(f"no records for {task} protocol {protocol!r}; valid: "
                     f"{', '.join(sorted({g.protocol for g in mine}))}")


def _per_method(sub: pd.DataFrame, col: str) -> dict[str, dict[int, float]]:
    return {str(method): dict(zip(g["seed"].astype(int), g[col].astype(float), strict=True))
            for method, g in sub.groupby("method", sort=True)}


def _verdict(method: str, n: int, p_holm: float, delta: float, direction: str, alpha: float) -> str:
    if method in (BASELINE, TEACHER) or n == 0:
        return "—"
    if math.isnan(p_holm) or p_holm >= alpha:
        return "≈"
    good = delta > 0 if direction == "higher" else delta < 0
    return "better" if good else "worse"


def _teacher_used(sub: pd.DataFrame, primary: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The teacher the students learnt from: the teacher record whose checkpoint is the students'
    most common teacher checkpoint. Returns the table's rows without the other teacher records, and
    what the caption says: sha256, source ("record", "spec": the students' spec.teacher.metric.test
    as no record of it exists, "teacher records": no student names a teacher, so the mean over the
    teacher records, or None), value, seeds, the teachers the students used and the teacher records
    left out."""
    is_teacher = sub["method"] == TEACHER
    students = sub[~is_teacher & sub["teacher_sha"].notna()]
    used = Counter(students["teacher_sha"])
    teachers = [{"sha256": sha, "records": k} for sha, k in sorted(used.items(), key=lambda x: (-x[1], x[0]))]
    info: dict[str, Any] = {"sha256": None, "source": None, "value": math.nan, "seeds": [],
                            "teachers": teachers, "other_records": 0}
    col = f"m:{primary}"
    if not teachers:
        rows = sub[is_teacher]
        if len(rows):
            info.update(source="teacher records", value=summarize(rows[col]).mean,
                        seeds=sorted(int(s) for s in rows["seed"]))
        return sub, info
    sha = teachers[0]["sha256"]
    mine = is_teacher & (sub["checkpoint"] == sha)
    info.update(sha256=sha, other_records=int((is_teacher & ~mine).sum()))
    if mine.any():
        info.update(source="record", value=summarize(sub.loc[mine, col]).mean,
                    seeds=sorted(int(s) for s in sub.loc[mine, "seed"]))
    else:
        spec = students.loc[students["teacher_sha"] == sha, "teacher_test"].dropna()
        if len(spec):
            info.update(source="spec", value=float(Counter(spec).most_common(1)[0][0]))
    return sub[~is_teacher | mine], info


def _typical_n(ns: list[int]) -> int:
    """The most common n (the smaller on a tie); 0 for none."""
    counts = Counter(ns)
    return min(counts, key=lambda n: (-counts[n], n)) if counts else 0


def _mdd(rows: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """The table's minimal detectable difference: pooled SD of the paired differences of its tested
    methods, at the most stringent Holm level alpha/m and the typical n."""
    tested = [r for r in rows if math.isfinite(r["p"])]
    m = len(tested)
    ns = [int(r["n_paired"]) for r in tested]
    sd = pooled_sd((r["delta_sd"], int(r["n_paired"])) for r in tested)
    n = _typical_n(ns)
    level = alpha / m if m else math.nan
    value = minimal_detectable_difference(sd, n, level, MDD_POWER) if m else math.nan
    return {"value": value, "pooled_sd": sd, "alpha": level, "alpha_family": alpha, "m": m, "n": n,
            "n_min": min(ns) if ns else 0, "n_max": max(ns) if ns else 0, "power": MDD_POWER}


def _resolution(verdict: str, delta: float, mdd: float) -> str:
    """For an "≈" cell: could this table have resolved a true difference of |Δ|?"""
    if verdict != "≈" or not math.isfinite(delta) or math.isnan(mdd):
        return ""
    return "resolvable" if abs(delta) >= mdd else "below MDD"


def _hardware(sub: pd.DataFrame) -> list[dict[str, Any]]:
    """Counts of (device, CPU model, threads) among the table's ok records, most common first."""
    keys = zip(sub["device"], sub["cpu_model"], sub["threads"].astype(int), strict=True)
    counts = Counter((str(d), str(c), int(t)) for d, c, t in keys)
    return [{"device": d, "cpu": c, "threads": t, "records": k}
            for (d, c, t), k in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]


def compare_table(frame: pd.DataFrame, task: str, protocol: str, alpha: float = 0.05) -> pd.DataFrame:
    """The comparison table of one (task, protocol key).

    Per method (one row each; the `teacher` row is shown but never tested): n ok seeds, failed
    runs, mean ± std and 95% t-interval of the primary metric; Δ = mean of the per-seed
    differences to `baseline` over the shared seeds (`n_paired`), its 95% t-interval
    (delta_ci_low, delta_ci_high) and the differences' SD (delta_sd), the paired t-test's p and its
    Holm adjustment over every method of the table except baseline and teacher; the verdict
    ("better"/"worse" when p_holm < alpha, in the metric's direction; "≈" otherwise, including
    when no test is possible; "—" for baseline, teacher and methods without an ok run); for "≈"
    cells the resolution ("resolvable": |Δ| ≥ the table's MDD, else "below MDD"); the teacher gap
    closed, (mean − baseline mean) / (teacher − baseline mean), with the teacher the students
    learnt from; mean ± std of every secondary metric; student params and mean train seconds; the
    row's source ("records", or "spec.teacher" for a teacher row taken from the students' spec).
    Sorted by the primary metric's mean in its direction (best first).

    The teacher row is the teacher record whose checkpoint is the students' most common teacher
    checkpoint (other teacher records are left out and counted); with no record of it, a row
    with the students' spec.teacher.metric.test (n 0, source "spec.teacher").

    Args:
        frame: from `load_frame`.
        task: a task with records.
        protocol: a protocol key, or a card name or tier that names a single shipped table.
        alpha: significance level for the verdict.

    Returns:
        The table, with `method` a column and the context in `table.attrs`: task, protocol (the
        key), card, shipped, tier, protocol_sha, eval_version, primary, direction, alpha, metrics,
        tests, failed, set_aside, mdd (value, pooled_sd, alpha = alpha/m, alpha_family, m, n, n_min,
        n_max, power), teacher (`_teacher_used`), hardware (device, cpu, threads, records).

    Raises:
        UsageError: unknown task or protocol, or alpha outside (0, 1).
    """
    if not 0 < alpha < 1:
        raise UsageError(f"alpha must lie in (0, 1), got {alpha}")
    protocol = _resolve(frame, task, protocol)
    sub = frame[(frame["task"] == task) & (frame["protocol"] == protocol)]
    failed = [f for f in frame.attrs.get("failed", []) if f["task"] == task and f["protocol"] == protocol]
    primary = Counter([*sub["primary"], *(f["primary"] for f in failed)]).most_common(1)[0][0]
    direction = direction_of(primary)
    sub, teacher = _teacher_used(sub, primary)
    metrics = [primary] + [c[2:] for c in sub.columns
                           if str(c).startswith("m:") and c != f"m:{primary}" and sub[c].notna().any()]
    methods = sorted(set(sub["method"]) | {f["method"] for f in failed} | ({TEACHER} if teacher["source"] else set()))
    rows = _primary_rows(sub, methods, primary, teacher, alpha)
    mdd = _mdd(rows, alpha)
    for row in rows:
        g = sub[sub["method"] == row["method"]]
        row["verdict"] = _verdict(row["method"], row["n"], row["p_holm"], row["delta"], direction, alpha)
        row["resolution"] = _resolution(row["verdict"], row["delta"], mdd["value"])
        row["failed"] = sum(f["method"] == row["method"] for f in failed)
        for name in metrics[1:]:
            s = summarize(g[f"m:{name}"])
            row[f"{name}_mean"], row[f"{name}_std"] = s.mean, s.std
        row["params"] = int(g["params"].max()) if g["params"].notna().any() else None  # null: not counted
        row["train_seconds"] = float(g["train_seconds"].mean()) if len(g) else math.nan
    stat_cols = [f"{primary}_{k}" for k in ("mean", "std", "ci_low", "ci_high")]
    stat_cols += ["delta", "delta_ci_low", "delta_ci_high", "delta_sd", "n_paired", "p", "p_holm", "verdict",
                  "resolution", "gap_closed"]
    stat_cols += [f"{m}_{k}" for m in metrics[1:] for k in ("mean", "std")]
    table = pd.DataFrame(rows)[["method", "n", "failed", *stat_cols, "params", "train_seconds", "source"]]
    table = table.sort_values("method").sort_values(
        f"{primary}_mean", ascending=direction == "lower", na_position="last", kind="stable")
    table = table.reset_index(drop=True)
    first = sub.iloc[0].to_dict() if len(sub) else (failed[0] if failed else {})
    table.attrs.update(task=task, protocol=protocol, card=str(first.get("card", protocol)),
                       shipped=bool(first.get("shipped", True)), tier=str(first.get("tier", "")),
                       protocol_sha=str(first.get("protocol_sha", "")),
                       eval_version=int(first.get("eval_version", 0)), primary=primary, direction=direction,
                       alpha=alpha, metrics=metrics, tests=int(table["p"].notna().sum()), failed=failed,
                       set_aside=frame.attrs.get("set_aside", {}).get(f"{task}/{protocol}", 0),
                       mdd=mdd, teacher=teacher, hardware=_hardware(sub))
    return table


def _clip(value: float, metric: str) -> float:
    """A bound of a mean's t-interval clipped to the metric's range (an AP interval never runs past 1)."""
    if metric not in METRICS or math.isnan(value):
        return value
    low, high = bounds(metric)
    return min(max(value, low), high)


def _primary_rows(sub: pd.DataFrame, methods: list[str], primary: str, teacher: dict[str, Any],
                  alpha: float) -> list[dict[str, Any]]:
    """Summary, paired test vs baseline with its interval, Holm and gap closed on the primary metric."""
    by_seed = _per_method(sub, f"m:{primary}")
    base = by_seed.get(BASELINE)
    base_mean = summarize(base.values()).mean if base else math.nan
    rows: list[dict[str, Any]] = []
    for method in methods:
        s = summarize(by_seed.get(method, {}).values())
        row: dict[str, Any] = {"method": method, "n": s.n, f"{primary}_mean": s.mean, f"{primary}_std": s.std,
                               f"{primary}_ci_low": _clip(s.ci_low, primary),
                               f"{primary}_ci_high": _clip(s.ci_high, primary),
                               "delta": math.nan, "delta_ci_low": math.nan, "delta_ci_high": math.nan,
                               "delta_sd": math.nan, "n_paired": 0, "p": math.nan, "source": "records"}
        if method == TEACHER and teacher["source"] == "spec":
            row.update({f"{primary}_mean": teacher["value"], "source": "spec.teacher"})
        if base is not None and method not in (BASELINE, TEACHER) and method in by_seed:
            t = paired_test(by_seed[method], base)
            row.update(delta=t.delta_mean, delta_ci_low=t.ci_low, delta_ci_high=t.ci_high, delta_sd=t.sd,
                       n_paired=t.n, p=t.p_value)
        row["gap_closed"] = teacher_gap_closed(row[f"{primary}_mean"], base_mean, teacher["value"])
        rows.append(row)
    adjusted = holm({r["method"]: r["p"] for r in rows if r["method"] not in (BASELINE, TEACHER)})
    for row in rows:
        row["p_holm"] = adjusted.get(row["method"], math.nan)
    return rows


