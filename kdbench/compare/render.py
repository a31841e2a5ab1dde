"""Rendering of `kdbench compare` tables: terminal, markdown, csv and json.

The numbers are kdbench.compare.table's; this module only words and formats them (the captions say
what a table can resolve, which teacher it compares with, and the hardware it ran on).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from kdbench.compare.frame import BASELINE, TEACHER
from kdbench.errors import unknown
from kdbench.formatting import decimals, intcomma, num, pval
from kdbench.metrics import METRICS

FORMATS = ("terminal", "csv", "json", "markdown")


def _interval(low: float, high: float, d: int, sign: bool = False) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "—"
    return f"[{num(low, d, sign)}, {num(high, d, sign)}]"


def unit_of(metric: str) -> str:
    """The unit of a difference in `metric`, with a leading space: " pp" for a percentage."""
    info = METRICS.get(metric)
    if info is None or not info.unit:
        return ""
    return " pp" if info.unit == "%" else f" {info.unit}"


def verdict_text(row: dict[str, Any]) -> str:
    """The verdict as shown: "≈" with the cell's resolution ("≈ below MDD", "≈ resolvable")."""
    return f"{row['verdict']} {row['resolution']}" if row.get("resolution") else str(row["verdict"])


def _cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, formatted rows and right-alignment flags for the text formats."""
    a = table.attrs
    primary, metrics = a["primary"], a["metrics"]
    show_failed = bool((table["failed"] > 0).any())
    show_paired = bool(((table["n_paired"] != table["n"]) & table["p"].notna()).any())
    header = ["method", "n"] + (["failed"] if show_failed else []) + [primary, "95% CI", "Δ", "Δ 95% CI"]
    header += (["n_paired"] if show_paired else []) + ["p", "p_holm", "verdict", "gap closed"]
    header += [*metrics[1:], "params", "train s"]
    dec = {m: decimals(table[f"{m}_mean"]) for m in metrics}
    rows = []
    for r in table.to_dict(orient="records"):
        d = dec[primary]
        gap = "—" if not math.isfinite(r["gap_closed"]) else f"{100 * r['gap_closed']:.0f}%"
        name = str(r["method"]) + ("*" if r["source"] == "spec.teacher" else "")
        cells = [name, str(r["n"])] + ([str(r["failed"])] if show_failed else [])
        cells += [_pm(r, primary, d), _interval(r[f"{primary}_ci_low"], r[f"{primary}_ci_high"], d),
                  num(r["delta"], d, sign=True), _interval(r["delta_ci_low"], r["delta_ci_high"], d, sign=True)]
        cells += ([str(r["n_paired"]) if math.isfinite(r["p"]) else "—"] if show_paired else [])
        cells += [pval(r["p"]), pval(r["p_holm"]), verdict_text(r), gap]
        cells += [_pm(r, m, dec[m]) for m in metrics[1:]]
        cells += [intcomma(r["params"]), num(r["train_seconds"], 1)]
        rows.append(cells)
    right = [h not in ("method", "verdict") for h in header]
    return header, rows, right


def _pm(row: dict[str, Any], metric: str, d: int) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{d}f}" if not math.isfinite(std) else f"{mean:.{d}f} ± {std:.{d}f}"


def title(table: pd.DataFrame) -> str:
    """`task / key`, and for a table that is not a shipped card's, what it is an ablation of."""
    a = table.attrs
    return f"{a['task']} / {a['protocol']}" + ("" if a["shipped"] else f" (ablation of {a['card']})")


def mdd_line(table: pd.DataFrame) -> str:
    """n, the minimal detectable difference and the teacher–baseline gap, in one sentence."""
    a = table.attrs
    mdd, unit = a["mdd"], unit_of(a["primary"])
    d = decimals(table[f"{a['primary']}_mean"])
    if not mdd["m"]:
        return "MDD: no paired test in this table (a method needs 2 or more seeds shared with baseline)"
    n = f"n = {mdd['n']} seeds" + ("" if mdd["n_min"] == mdd["n_max"] else
                                   f" (the most common; {mdd['n_min']}–{mdd['n_max']})")
    alpha = f"α = {mdd['alpha_family']:g}/{mdd['m']} Holm" if mdd["m"] > 1 else f"α = {mdd['alpha_family']:g}"
    value = f"{mdd['value']:.{d}f}{unit}" if math.isfinite(mdd["value"]) else "∞"
    line = f"{n}; MDD ({100 * mdd['power']:.0f}% power, {alpha}) = {value}"
    gap = _teacher_gap(table)
    if math.isfinite(gap):
        line += f"; teacher–baseline gap {abs(gap):.{d}f}{unit}"
    return line + f": this table cannot resolve differences below {value}"


def _teacher_gap(table: pd.DataFrame) -> float:
    a = table.attrs
    base = table.loc[table["method"] == BASELINE, f"{a['primary']}_mean"]
    return float(a["teacher"]["value"] - base.iloc[0]) if len(base) else math.nan


def teacher_line(table: pd.DataFrame) -> str:
    """Which teacher the table compares with, and whether the students used more than one."""
    t = table.attrs["teacher"]
    sha = (t["sha256"] or "")[:12]
    if t["source"] == "record":
        seeds = ", ".join(map(str, t["seeds"]))
        line = f"{TEACHER}: the record of the teacher the students learnt from (checkpoint {sha}, seed {seeds})"
    elif t["source"] == "spec":
        line = (f"{TEACHER}*: no record of the students' teacher (checkpoint {sha}); shown is the value the "
                f"students' records name (spec.teacher.metric.test)")
    elif t["source"] == "teacher records":
        seeds = ", ".join(map(str, t["seeds"]))
        line = f"{TEACHER}: mean of the teacher records (seed {seeds}); no student names its teacher"
    elif t["sha256"]:
        line = f"{TEACHER}: no record of the students' teacher (checkpoint {sha}) and no value for it in their records"
    else:
        line = f"{TEACHER}: none in this table"
    if len(t["teachers"]) > 1:
        used = ", ".join(f"{x['sha256'][:12]} ({x['records']} record(s))" for x in t["teachers"])
        line += f"; the students used {len(t['teachers'])} different teachers: {used}; the first is shown"
    if t["other_records"]:
        line += f"; {t['other_records']} other teacher record(s) not shown"
    return line


def hardware_line(table: pd.DataFrame) -> str:
    """"hardware: 15 × Intel Xeon @ 2.60GHz, 1 thread; …" over the table's ok records."""
    parts = []
    for h in table.attrs["hardware"]:
        where = f"{h['cpu']}, {h['threads']} thread{'s' if h['threads'] != 1 else ''}"
        parts.append(f"{h['records']} × " + (where if h["device"] == "cpu" else f"{h['device']} ({where})"))
    return "hardware: " + ("; ".join(parts) if parts else "no ok record")


def caption(table: pd.DataFrame) -> list[str]:
    """The lines printed above a terminal or markdown table."""
    a = table.attrs
    label = METRICS[a["primary"]].label if a["primary"] in METRICS else a["primary"]
    what = ("" if a["shipped"] else f"ablation of {a['card']}; ") + \
        f"tier {a['tier']}, card {a['protocol_sha'][:12]}, evaluation v{a['eval_version']}"
    lines = [f"{a['task']} / {a['protocol']} ({what})",
             f"primary: {a['primary']} — {label} on the test split, {a['direction']} is better; mean ± std over "
             f"seeds, 95% t-interval (clipped to the metric's range)",
             f"Δ: mean paired difference to {BASELINE} over shared seeds, with its 95% t-interval (not Holm-adjusted); "
             f"p: paired t-test; "
             f"p_holm: Holm over {a['tests']} test(s); verdict at α = {a['alpha']:g} (≈ resolvable: |Δ| ≥ MDD, "
             f"≈ below MDD: |Δ| < MDD)",
             mdd_line(table),
             f"gap closed: (m − {BASELINE}) / ({TEACHER} − {BASELINE}) on means; {TEACHER} shown, not tested",
             teacher_line(table),
             hardware_line(table)]
    if a["failed"]:
        runs = ", ".join(f"{f['method']} seed {f['seed']}" for f in a["failed"][:6])
        more = f" (+{len(a['failed']) - 6} more)" if len(a["failed"]) > 6 else ""
        lines.append(f"failed runs, not in the statistics: {runs}{more}")
    if a["set_aside"]:
        lines.append(f"set aside: {a['set_aside']} record(s) of other versions of this card or its evaluation")
    return lines


def _terminal(table: pd.DataFrame) -> str:
    header, rows, right = _cells(table)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    body = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join([*caption(table), "", *body]) + "\n"


#: What a spreadsheet reads as the start of a formula in a CSV cell.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_MARKDOWN = {"\\": "\\\\", "|": "\\|", "*": "\\*", "`": "\\`", "[": "\\[", "]": "\\]",
             "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " ", "\r": " "}


def markdown_text(text: str) -> str:
    """`text` as literal Markdown table-cell text: no markup, links, HTML or cell breaks."""
    return "".join(_MARKDOWN.get(c, c) for c in str(text))


def csv_cell(value: Any) -> Any:
    """A string cell that a spreadsheet would run as a formula gets a leading `'`; others as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def csv_text(frame: pd.DataFrame) -> str:
    """`frame.to_csv(index=False)` with every string cell and column name formula-safe (csv_cell)."""
    out = frame.copy()
    out.columns = [csv_cell(str(c)) for c in out.columns]
    for i in range(out.shape[1]):
        if not pd.api.types.is_numeric_dtype(out.dtypes.iloc[i]):
            out.isetitem(i, out.iloc[:, i].map(csv_cell))
    return str(out.to_csv(index=False))


def _markdown(table: pd.DataFrame) -> str:
    header, rows, right = _cells(table)
    esc = markdown_text

    lines = [f"### {esc(title(table))}", ""]
    lines += [esc(x) + "  " for x in caption(table)[1:]] + [""]
    lines.append("| " + " | ".join(map(esc, header)) + " |")
    lines.append("|" + "|".join("---:" if r else ":---" for r in right) + "|")
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plain(v: Any) -> Any:
    """A JSON-ready value: NaN and ±inf → None, numpy scalars → Python, containers converted."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _json_obj(table: pd.DataFrame) -> dict[str, Any]:
    a = table.attrs
    meta = {k: a[k] for k in ("task", "protocol", "card", "shipped", "tier", "protocol_sha", "eval_version",
                              "primary", "direction", "alpha")}
    rows = [{k: plain(v) for k, v in r.items()} for r in table.to_dict(orient="records")]
    return {**meta, "ablation_of": None if a["shipped"] else a["card"], "baseline": BASELINE, "teacher": TEACHER,
            "test": "paired t-test, Holm-adjusted", "mdd": plain(a["mdd"]), "teacher_used": plain(a["teacher"]),
            "hardware": plain(a["hardware"]), "failed": a["failed"], "set_aside": a["set_aside"], "rows": rows}


def _csv(table: pd.DataFrame) -> str:
    a = table.attrs
    out = table.copy()
    for i, (name, value) in enumerate([("task", a["task"]), ("protocol", a["protocol"]), ("card", a["card"]),
                                       ("mdd", a["mdd"]["value"]), ("mdd_alpha", a["mdd"]["alpha"]),
                                       ("mdd_n", a["mdd"]["n"]), ("pooled_sd", a["mdd"]["pooled_sd"])]):
        out.insert(i, name, value)
    return csv_text(out)


def render(table: pd.DataFrame, fmt: str = "terminal") -> str:
    """One comparison table as text.

    Args:
        table: from `kdbench.compare.compare_table`.
        fmt: "terminal" (aligned text with a caption), "csv" (raw numbers, with task, protocol,
            card and the table's MDD columns), "json" (an object with the context, the MDD, the
            teacher used, the hardware mix and one row per method; NaN as null) or "markdown"
            (a GitHub table).

    Returns:
        The text, ending in a newline.

    Raises:
        UsageError: unknown format.
    """
    return render_many([table], fmt, single=True)


def render_many(tables: list[pd.DataFrame], fmt: str = "terminal", single: bool = False) -> str:
    """Several tables as one text: JSON a list of objects (one object when `single`), CSV one file.

    Args:
        tables: from `kdbench.compare.compare_table`.
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
