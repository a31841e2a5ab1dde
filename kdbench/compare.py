"""`kdbench compare`: result records → one table per (task, protocol) with honest statistics.

Per method: mean ± std over seeds, a 95% t-interval, Δ vs `baseline` from a paired t-test over
the shared seeds, Holm-adjusted p-values, a verdict and the fraction of the teacher gap closed.
Reused by the leaderboard, so this module never imports torch.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from kdbench.errors import UsageError, unknown
from kdbench.metrics import METRICS
from kdbench.records import read_record, validation_errors
from kdbench.stats import holm, paired_test, summarize, teacher_gap_closed

FORMATS = ("terminal", "csv", "json", "markdown")
BASELINE = "baseline"
TEACHER = "teacher"
BASE_COLUMNS = ["task", "tier", "protocol", "protocol_sha", "method", "seed", "primary", "direction"]
COST_COLUMNS = ["train_seconds", "params", "flops"]


def direction_of(metric: str, fallback: str = "higher") -> str:
    """A metric's direction from the registry (kdbench.metrics); `fallback` for unregistered ones."""
    info = METRICS.get(metric)
    return info.direction if info else fallback


# ----------------------------------------------------------------------------------- loading


def _read_all(results: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every record under `results` (the files `iter_records` reads); a bad one is a usage error."""
    for file in sorted(Path(results).rglob("seed*.json")):
        try:
            record = read_record(file)
        except (OSError, ValueError) as e:
            raise UsageError(f"{file}: not a readable JSON record: {e}") from None
        errors = validation_errors(record)
        if errors:
            raise UsageError(f"{file}: invalid record: {errors[0]} (check with `kdbench validate`)")
        yield file, record


def _keep_one_card(records: list[dict[str, Any]], warn: TextIO) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Per (task, protocol name) keep the records of one protocol sha256 only.

    Rule: the sha with the most `ok` records wins; a tie goes to the sha with the newest record.
    Every other record of that (task, protocol) is set aside, with one warning line per group.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["protocol"]["name"]), []).append(r)
    kept: list[dict[str, Any]] = []
    set_aside: dict[str, int] = {}
    for (task, proto), group in groups.items():
        by_sha: dict[str, list[dict[str, Any]]] = {}
        for r in group:
            by_sha.setdefault(r["protocol"]["sha256"], []).append(r)
        best = max(by_sha, key=lambda s: (sum(r["status"] == "ok" for r in by_sha[s]),
                                          max(r["created"] for r in by_sha[s])))
        kept.extend(by_sha[best])
        aside = len(group) - len(by_sha[best])
        if aside:
            set_aside[f"{task}/{proto}"] = aside
            others = ", ".join(s[:12] for s in sorted(by_sha) if s != best)
            print(f"kdbench: warning: {task}/{proto}: set aside {aside} record(s) of other protocol "
                  f"version(s) ({others}); kept {best[:12]} ({len(by_sha[best])} records)", file=warn)
    return kept, set_aside


def _row(record: dict[str, Any]) -> dict[str, Any]:
    m = record["metrics"]
    row: dict[str, Any] = {
        "task": record["task"], "tier": record["tier"], "protocol": record["protocol"]["name"],
        "protocol_sha": record["protocol"]["sha256"], "method": record["method"]["name"],
        "seed": int(record["seed"]), "primary": m["primary"],
        "direction": direction_of(m["primary"], m["direction"]),
    }
    for name, value in m["values"].items():
        row[f"m:{name}"] = math.nan if value is None else float(value)
    row["train_seconds"] = float(record["cost"]["train_seconds"])
    row["params"] = record["student"]["params"]
    row["flops"] = record["student"]["flops"]
    return row


def load_frame(results: Path, warn: TextIO | None = None) -> pd.DataFrame:
    """Read every record under `results` into one row per `ok` record.

    Columns: task, tier, protocol (the card's name), protocol_sha, method, seed, primary (metric
    name), direction (from the metric registry), `m:<name>` for every metric value, train_seconds,
    params, flops (the student's). Failed records are not rows: they are listed in
    `frame.attrs["failed"]` (task, tier, protocol, protocol_sha, method, seed, primary, error). Records of
    one (task, protocol) under different card sha256 are never mixed: the sha with the most `ok`
    records is kept (a tie goes to the newest), the others are set aside with one warning line on
    `warn` each and counted in `frame.attrs["set_aside"]` ("task/protocol" → count).

    Args:
        results: the results folder (`<task>/<protocol>/<method>/seed<N>.json` below it).
        warn: where warnings go; stderr by default.

    Returns:
        The frame (empty, with the base columns, when there is no ok record).

    Raises:
        UsageError: a file is not JSON or not a valid record.
    """
    return frame_from_records([r for _, r in _read_all(results)], warn)


def frame_from_records(records: list[dict[str, Any]], warn: TextIO | None = None) -> pd.DataFrame:
    """`load_frame` on records already read and validated (the leaderboard reads its own).

    Args:
        records: valid result records.
        warn: where warnings go; stderr by default.

    Returns:
        The frame, as `load_frame` describes it.
    """
    records, set_aside = _keep_one_card(records, warn or sys.stderr)
    rows = [_row(r) for r in records if r["status"] == "ok"]
    failed = [{"task": r["task"], "tier": r["tier"], "protocol": r["protocol"]["name"],
               "protocol_sha": r["protocol"]["sha256"], "method": r["method"]["name"],
               "seed": int(r["seed"]), "primary": r["metrics"]["primary"], "error": r["error"]}
              for r in records if r["status"] != "ok"]
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=BASE_COLUMNS + COST_COLUMNS)
    metric_cols = [c for c in frame.columns if str(c).startswith("m:")]
    frame = frame[BASE_COLUMNS + metric_cols + COST_COLUMNS]
    frame.attrs["failed"] = failed
    frame.attrs["set_aside"] = set_aside
    return frame


# ------------------------------------------------------------------------------------ tables


def _groups(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(task, protocol, tier) of every table that ok or failed records make."""
    found = set(zip(frame["task"], frame["protocol"], frame["tier"], strict=True))
    found |= {(f["task"], f["protocol"], f["tier"]) for f in frame.attrs.get("failed", [])}
    return sorted(found)


def _resolve(frame: pd.DataFrame, task: str, protocol: str) -> str:
    """The protocol name meant by `protocol` (a card name, or a tier with a single card)."""
    groups = _groups(frame)
    if not groups:
        raise UsageError("no result records to compare")
    tasks = {g[0] for g in groups}
    if task not in tasks:
        raise UsageError(f"no records for task {task!r}; valid: {', '.join(sorted(tasks))}")
    names = {g[1] for g in groups if g[0] == task}
    if protocol in names:
        return protocol
    by_tier = {g[1] for g in groups if g[0] == task and g[2] == protocol}
    if len(by_tier) == 1:
        return by_tier.pop()
    raise UsageError(f"no records for {task} protocol {protocol!r}; valid: {', '.join(sorted(names))}")


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


def compare_table(frame: pd.DataFrame, task: str, protocol: str, alpha: float = 0.05) -> pd.DataFrame:
    """The comparison table of one (task, protocol).

    Per method (one row each; the `teacher` row is shown but never tested): n ok seeds, failed
    runs, mean ± std and 95% t-interval of the primary metric; Δ = mean of the per-seed
    differences to `baseline` over the shared seeds (`n_paired`), the paired t-test's p and its
    Holm adjustment over every method of the table except baseline and teacher; the verdict
    ("better"/"worse" when p_holm < alpha, in the metric's direction; "≈" otherwise, including
    when no test is possible; "—" for baseline, teacher and methods without an ok run); the
    teacher gap closed, (mean − baseline mean) / (teacher mean − baseline mean) on the primary
    metric's means over seeds; mean ± std of every secondary metric; student params and mean
    train seconds. Sorted by the primary metric's mean in its direction (best first).

    Args:
        frame: from `load_frame`.
        task: a task with records.
        protocol: a protocol (card) name, or a tier that has a single card for the task.
        alpha: significance level for the verdict.

    Returns:
        The table, with `method` a column and the context (task, protocol, tier, protocol_sha,
        primary, direction, alpha, metrics, tests) in `table.attrs`.

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
    metrics = [primary] + [c[2:] for c in sub.columns
                           if str(c).startswith("m:") and c != f"m:{primary}" and sub[c].notna().any()]
    methods = sorted(set(sub["method"]) | {f["method"] for f in failed})
    rows = _primary_rows(sub, methods, primary, direction, alpha)
    for row in rows:
        g = sub[sub["method"] == row["method"]]
        row["failed"] = sum(f["method"] == row["method"] for f in failed)
        for name in metrics[1:]:
            s = summarize(g[f"m:{name}"])
            row[f"{name}_mean"], row[f"{name}_std"] = s.mean, s.std
        row["params"] = int(g["params"].max()) if g["params"].notna().any() else None  # null: not counted
        row["train_seconds"] = float(g["train_seconds"].mean()) if len(g) else math.nan
    stat_cols = [f"{primary}_{k}" for k in ("mean", "std", "ci_low", "ci_high")]
    stat_cols += ["delta", "n_paired", "p", "p_holm", "verdict", "gap_closed"]
    stat_cols += [f"{m}_{k}" for m in metrics[1:] for k in ("mean", "std")]
    table = pd.DataFrame(rows)[["method", "n", "failed", *stat_cols, "params", "train_seconds"]]
    table = table.sort_values("method").sort_values(
        f"{primary}_mean", ascending=direction == "lower", na_position="last", kind="stable")
    table = table.reset_index(drop=True)
    shas = sorted(set(sub["protocol_sha"]) | {f["protocol_sha"] for f in failed})
    tiers = sorted(set(sub["tier"]) | {f["tier"] for f in failed})
    table.attrs.update(task=task, protocol=protocol, tier=tiers[0] if tiers else "",
                       protocol_sha=shas[0] if shas else "", primary=primary, direction=direction,
                       alpha=alpha, metrics=metrics,
                       tests=int(table["p"].notna().sum()), failed=failed,
                       set_aside=frame.attrs.get("set_aside", {}).get(f"{task}/{protocol}", 0))
    return table


def _primary_rows(sub: pd.DataFrame, methods: list[str], primary: str, direction: str,
                  alpha: float) -> list[dict[str, Any]]:
    """Summary, paired test vs baseline, Holm, verdict and gap closed on the primary metric."""
    by_seed = _per_method(sub, f"m:{primary}")
    base = by_seed.get(BASELINE)
    base_mean = summarize(base.values()).mean if base else math.nan
    teacher_mean = summarize(by_seed[TEACHER].values()).mean if TEACHER in by_seed else math.nan
    rows: list[dict[str, Any]] = []
    for method in methods:
        s = summarize(by_seed.get(method, {}).values())
        row: dict[str, Any] = {"method": method, "n": s.n, f"{primary}_mean": s.mean, f"{primary}_std": s.std,
                               f"{primary}_ci_low": s.ci_low, f"{primary}_ci_high": s.ci_high,
                               "delta": math.nan, "n_paired": 0, "p": math.nan}
        if base is not None and method not in (BASELINE, TEACHER) and method in by_seed:
            t = paired_test(by_seed[method], base)
            row.update(delta=t.delta_mean, n_paired=t.n, p=t.p_value)
        row["gap_closed"] = teacher_gap_closed(s.mean, base_mean, teacher_mean)
        rows.append(row)
    adjusted = holm({r["method"]: r["p"] for r in rows if r["method"] not in (BASELINE, TEACHER)})
    for row in rows:
        row["p_holm"] = adjusted.get(row["method"], math.nan)
        row["verdict"] = _verdict(row["method"], row["n"], row["p_holm"], row["delta"], direction, alpha)
    return rows


# ---------------------------------------------------------------------------------- rendering


def _decimals(values: Iterable[float]) -> int:
    """Decimals that show about four significant digits of the column's typical magnitude."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not finite:
        return 2
    return int(min(6, max(1, 3 - math.floor(math.log10(float(np.median(finite)))))))


def _num(v: Any, d: int, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:+.{d}f}" if sign else f"{v:.{d}f}"


def _p(v: float) -> str:
    return "—" if not math.isfinite(v) else "<0.001" if v < 0.001 else f"{v:.3f}"


def _cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, formatted rows and right-alignment flags for the text formats."""
    a = table.attrs
    primary, metrics = a["primary"], a["metrics"]
    show_failed = bool((table["failed"] > 0).any())
    show_paired = bool(((table["n_paired"] != table["n"]) & table["p"].notna()).any())
    header = ["method", "n"] + (["failed"] if show_failed else []) + [primary, "95% CI", "Δ"]
    header += (["n_paired"] if show_paired else []) + ["p", "p_holm", "verdict", "gap closed"]
    header += [*metrics[1:], "params", "train s"]
    dec = {m: _decimals(table[f"{m}_mean"]) for m in metrics}
    rows = []
    for r in table.to_dict(orient="records"):
        d = dec[primary]
        ci = "—" if not math.isfinite(r[f"{primary}_ci_low"]) else \
            f"[{r[f'{primary}_ci_low']:.{d}f}, {r[f'{primary}_ci_high']:.{d}f}]"
        gap = "—" if not math.isfinite(r["gap_closed"]) else f"{100 * r['gap_closed']:.0f}%"
        cells = [str(r["method"]), str(r["n"])] + ([str(r["failed"])] if show_failed else [])
        cells += [_pm(r, primary, d), ci, _num(r["delta"], d, sign=True)]
        cells += ([str(r["n_paired"]) if math.isfinite(r["p"]) else "—"] if show_paired else [])
        cells += [_p(r["p"]), _p(r["p_holm"]), r["verdict"], gap]
        cells += [_pm(r, m, dec[m]) for m in metrics[1:]]
        cells += ["—" if r["params"] is None or pd.isna(r["params"]) else f"{int(r['params']):,}",
                  _num(r["train_seconds"], 1)]
        rows.append(cells)
    right = [h not in ("method", "verdict") for h in header]
    return header, rows, right


def _pm(row: dict[str, Any], metric: str, d: int) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{d}f}" if not math.isfinite(std) else f"{mean:.{d}f} ± {std:.{d}f}"


def _caption(table: pd.DataFrame) -> list[str]:
    a = table.attrs
    label = METRICS[a["primary"]].label if a["primary"] in METRICS else a["primary"]
    lines = [f"{a['task']} / {a['protocol']} (tier {a['tier']}, card {a['protocol_sha'][:12]})",
             f"primary: {a['primary']} — {label}, {a['direction']} is better; mean ± std over seeds, 95% t-interval",
             f"Δ: mean paired difference to {BASELINE} over shared seeds; p: paired t-test; "
             f"p_holm: Holm over {a['tests']} test(s); verdict at α = {a['alpha']:g}",
             f"gap closed: (m − {BASELINE}) / ({TEACHER} − {BASELINE}) on means; {TEACHER} shown, not tested"]
    if a["failed"]:
        runs = ", ".join(f"{f['method']} seed {f['seed']}" for f in a["failed"][:6])
        more = f" (+{len(a['failed']) - 6} more)" if len(a["failed"]) > 6 else ""
        lines.append(f"failed runs, not in the statistics: {runs}{more}")
    if a["set_aside"]:
        lines.append(f"set aside: {a['set_aside']} record(s) of other versions of this protocol card")
    return lines


def _terminal(table: pd.DataFrame) -> str:
    header, rows, right = _cells(table)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    body = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join([*_caption(table), "", *body]) + "\n"


def _markdown(table: pd.DataFrame) -> str:
    header, rows, right = _cells(table)

    def esc(c: str) -> str:
        return c.replace("\\", "\\\\").replace("|", "\\|")

    lines = [f"### {esc(table.attrs['task'])} / {esc(table.attrs['protocol'])}", ""]
    lines += [esc(x) + "  " for x in _caption(table)[1:]] + [""]
    lines.append("| " + " | ".join(map(esc, header)) + " |")
    lines.append("|" + "|".join("---:" if r else ":---" for r in right) + "|")
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plain(v: Any) -> Any:
    """A JSON-ready scalar: NaN → None, numpy scalars → Python."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _json_obj(table: pd.DataFrame) -> dict[str, Any]:
    a = table.attrs
    meta = {k: a[k] for k in ("task", "protocol", "tier", "protocol_sha", "primary", "direction", "alpha")}
    rows = [{k: _plain(v) for k, v in r.items()} for r in table.to_dict(orient="records")]
    return {**meta, "baseline": BASELINE, "teacher": TEACHER, "test": "paired t-test, Holm-adjusted",
            "failed": a["failed"], "set_aside": a["set_aside"], "rows": rows}


def _csv(table: pd.DataFrame) -> str:
    out = table.copy()
    out.insert(0, "protocol", table.attrs["protocol"])
    out.insert(0, "task", table.attrs["task"])
    return str(out.to_csv(index=False))


def render(table: pd.DataFrame, fmt: str = "terminal") -> str:
    """One comparison table as text.

    Args:
        table: from `compare_table`.
        fmt: "terminal" (aligned text with a caption), "csv" (raw numbers, with task and protocol
            columns), "json" (an object with the context and one row per method; NaN as null) or
            "markdown" (a GitHub table).

    Returns:
        The text, ending in a newline.

    Raises:
        UsageError: unknown format.
    """
    return render_many([table], fmt, single=True)


def render_many(tables: list[pd.DataFrame], fmt: str = "terminal", single: bool = False) -> str:
    """Several tables as one text: JSON a list of objects (one object when `single`), CSV one file.

    Args:
        tables: from `compare_table`.
        fmt: as in `render`.
        single: render exactly one table, a JSON object rather than a list.

    Returns:
        The text, ending in a newline.

    Raises:
        UsageError: unknown format.
    """
    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)
    if fmt == "json":
        objs = [_json_obj(t) for t in tables]
        return json.dumps(objs[0] if single else objs, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        parts = [_csv(t) for t in tables]
        return parts[0] + "".join(p.split("\n", 1)[1] for p in parts[1:]) if parts else ""
    draw = _terminal if fmt == "terminal" else _markdown
    return "\n".join(draw(t) for t in tables)


# --------------------------------------------------------------------------------------- CLI


def compare_results(results: Path, task: str | None = None, protocol: str | None = None,
                    fmt: str = "terminal", alpha: float = 0.05) -> str:
    """What `kdbench compare` prints.

    Args:
        results: the results folder.
        task: one task's table; every (task, protocol) with records when None.
        protocol: a card name or tier; "small" when a task is given, every protocol when not.
        fmt: one of FORMATS.
        alpha: significance level for the verdict.

    Returns:
        The rendered table(s).

    Raises:
        UsageError: unknown format, task or protocol, or no records under `results`.
    """
    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)
    frame = load_frame(results)
    groups = _groups(frame)
    if not groups:
        raise UsageError(f"no result records under {results} (expected <task>/<protocol>/<method>/seed<N>.json)")
    if task is not None:
        return render(compare_table(frame, task, protocol or "small", alpha), fmt)
    pairs = sorted({(t, p) for t, p, tier in groups if protocol is None or protocol in (p, tier)})
    if not pairs:
        raise unknown("protocol", str(protocol), {g[1] for g in groups} | {g[2] for g in groups})
    return render_many([compare_table(frame, t, p, alpha) for t, p in pairs], fmt)
