"""What each page shows: rows and cells arranged from the comparison tables, formatting, the
command that reproduces a run. Pure functions of the loaded records and the catalog."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import yaml

from kdbench import __version__
from kdbench.compare import BASELINE, TEACHER
from kdbench.compare.render import hardware_line, markdown_text, mdd_line, teacher_line, title, verdict_text
from kdbench.errors import UsageError
from kdbench.formatting import decimals, finite, num, pct, pval, sortval
from kdbench.metrics import METRICS
from kdbench.site import data, provenance
from kdbench.site.catalog import load_catalog
from kdbench.site.data import Loaded, Setting, Submission
from kdbench.stats import WinsTiesLosses

#: A file in every built site; `site build` replaces an existing folder only when it has one.
MARKER = ".kdbench-site"

CITE = "\n".join([
    "@misc{kdbench,",
    "  title  = {kdbench: a benchmark suite and leaderboard for knowledge distillation},",
    "  author = {{The kdbench authors}},",
    "  year   = {2026},",
    f"  note   = {{Version {__version__}}}",
    "}",
])


# -------------------------------------------------------------------------------- formatting


def jsontext(v: Any) -> str:
    """A value as compact JSON text, for display (the template escapes it)."""
    return json.dumps(v, ensure_ascii=False, sort_keys=True)


# ------------------------------------------------------------------------------------ context


@dataclass(frozen=True)
class Footer:
    """What the base template's footer reads from `site` on pages rendered without a SiteContext."""

    version: str = __version__


@dataclass
class SiteContext:
    """What every page may show: the loaded data, the settings, the catalog, the overview's
    wins/ties/losses against baseline."""

    loaded: Loaded
    sets: list[Setting]
    alpha: float
    means: pd.DataFrame
    record: dict[str, WinsTiesLosses]
    method_names: list[str]
    tasks: list[str]
    runs_by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)
    hparams_by_key: dict[tuple[str, str, str], list[str]] = field(default_factory=dict)
    cite: str = CITE
    version: str = __version__

    @classmethod
    def make(cls, loaded: Loaded, sets: list[Setting], alpha: float) -> SiteContext:
        means, record = data.overview(sets)
        cat = load_catalog()
        seen = {r["method"]["name"] for r in loaded.records}
        names = sorted(set(cat["methods"]) | seen, key=lambda n: (n != BASELINE, n == TEACHER, n))
        tasks = list(dict.fromkeys([*cat["tasks"], *sorted({r["task"] for r in loaded.records})]))
        runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        hparams: dict[tuple[str, str, str], set[str]] = {}
        for r in loaded.records:
            key = (r["task"], r["protocol"]["key"], r["method"]["name"])
            runs.setdefault(key, []).append({"seed": int(r["seed"]), "id": data.run_id(r), "status": r["status"]})
            hparams.setdefault(key, set()).add(json.dumps(r["method"]["hparams"], sort_keys=True, ensure_ascii=False))
        for v in runs.values():
            v.sort(key=lambda x: x["seed"])
        return cls(loaded, sets, alpha, means, record, names, tasks, runs,
                   {k: sorted(v) for k, v in hparams.items()})

    def submission(self, task: str, protocol: str, method: str) -> Submission | None:
        return self.loaded.submissions.get((task, protocol, method))

    def provenance(self, task: str, protocol: str, method: str) -> str:
        """A row's provenance (kdbench.site.provenance): submitted, reproduced here or local."""
        files = [self.loaded.files[r["id"]] for r in self.runs_by_key.get((task, protocol, method), [])
                 if r["id"] in self.loaded.files]
        if not files:  # a teacher row taken from the students' records: theirs
            files = [self.loaded.files[r["id"]] for (t, p, _), runs in self.runs_by_key.items()
                     if (t, p) == (task, protocol) for r in runs if r["id"] in self.loaded.files]
        return provenance.of_row(files, self.submission(task, protocol, method) is not None, self.loaded.committed)

    def task_rel(self, s: Setting) -> str:
        return f"task/{data.slug(s.task)}/{data.slug(s.protocol)}"

    def tier_rel(self, s: Setting) -> str:
        """The `/task/<task>/<tier>/` page listing a tier's cards, where the tier is not a card's name."""
        if s.tier == s.protocol or any(o.task == s.task and o.protocol == s.tier for o in self.sets):
            return ""
        return f"task/{data.slug(s.task)}/{data.slug(s.tier)}"

    @property
    def leaderboard(self) -> list[Setting]:
        """The overview's settings: shipped cards on leaderboard tiers."""
        return [s for s in self.sets if data.on_leaderboard(s)]

    @property
    def newest(self) -> str:
        return max((r["created"] for r in self.loaded.records), default="—")

    @property
    def failed(self) -> int:
        return len(self.loaded.frame.attrs["failed"])


def _label(metric: str) -> str:
    info = METRICS.get(metric)
    return f"{info.label}" + (f" ({info.unit})" if info and info.unit else "") if info else metric


def _row_of(s: Setting, method: str) -> dict[str, Any] | None:
    return s.by_method.get(method)


# ----------------------------------------------------------------------------------- overview


@dataclass(frozen=True)
class OverviewCell:
    """One (method, setting) cell of the overview matrix: the numbers it shows (from the setting's
    compare table, `None` where there is no row) and how it is shown.

    `text` is the cell's text, `cls` its CSS classes (better / worse / ns / abs / nodelta / na /
    missing / failed), `title` its tooltip, `sort` its `data-value` and `gap` the "gap closed" note.
    """

    text: str
    cls: str
    title: str
    sort: str = ""
    gap: str = ""
    mean: Any = None
    delta: Any = None
    p_holm: Any = None
    verdict: Any = None
    gap_closed: Any = None

    #: The numeric fields the overview's csv and json export, in order.
    NUMBERS: ClassVar[tuple[str, ...]] = ("mean", "delta", "p_holm", "verdict", "gap_closed")

    def numbers(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.NUMBERS}


def _cell(site: SiteContext, s: Setting, method: str, d: int) -> OverviewCell:
    row = _row_of(s, method)
    if row is None:
        ok, why = data.serves(method, s.task)
        if ok is False:
            return OverviewCell("n/a", "na", why)
        return OverviewCell("—", "missing", "not run on this setting")
    mean = row[f"{s.primary}_mean"]
    numbers = {"mean": mean, "delta": row["delta"], "p_holm": row["p_holm"], "verdict": row["verdict"],
               "gap_closed": row["gap_closed"]}
    if row["source"] == "spec.teacher":
        return OverviewCell(num(mean, d), "abs nodelta", f"the students' teacher: no record of it here; {s.primary} "
                            "as the students' records name it", **numbers)
    if row["n"] == 0:
        return OverviewCell("failed", "failed", "every run failed", **numbers)
    if method in (BASELINE, TEACHER):
        return OverviewCell(num(mean, d), "abs", f"{method} mean {s.primary} over {row['n']} seed(s)",
                            sortval(0.0 if method == BASELINE else None), **numbers)
    if not finite(row["delta"]):
        return OverviewCell(num(mean, d), "abs nodelta", f"mean {s.primary} over {row['n']} seed(s); no Δ: baseline "
                            "has no run on the same seeds", **numbers)
    verdict = row["verdict"]
    text = num(row["delta"], d, sign=True)
    title = (f"Δ {s.primary} vs baseline {text} (mean {num(mean, d)}, n {row['n']}); "
             f"Holm p {pval(row['p_holm'])}: " + {"better": "significantly better", "worse": "significantly worse"}
             .get(verdict, "not significant"))
    cls = {"better": "better", "worse": "worse"}.get(verdict, "ns")
    if row["resolution"]:
        title += f" ({row['resolution']}: the setting's MDD is {num(s.table.attrs['mdd']['value'], d)})"
    gap = f"gap {pct(row['gap_closed'])}" if finite(row["gap_closed"]) else ""
    return OverviewCell(("≈ " if cls == "ns" else "") + text, cls, title, sortval(row["delta"]), gap, **numbers)


def overview_rows(site: SiteContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (methods with a record on a leaderboard setting) and columns of the overview matrix."""
    shown = site.leaderboard
    columns: list[dict[str, Any]] = [
        {"key": s.key, "task": s.task, "protocol": s.protocol, "tier": s.tier, "primary": s.primary,
         "direction": s.direction, "label": _label(s.primary), "rel": site.task_rel(s),
         "d": decimals(s.table[f"{s.primary}_mean"])} for s in shown]
    rows = []
    present = {m for s in shown for m in s.table["method"]}
    for name in site.method_names:
        if name not in present:
            continue
        info = data.method_info(name, site.loaded.records)
        marks = {site.provenance(s.task, s.protocol, name) for s in shown if _row_of(s, name) is not None}
        rows.append({"name": name, "slug": data.slug(name), "family": info["family"], "teacher": info["teacher"],
                     "provenance": next((p for p in ("submitted", "local") if p in marks), "reproduced here"),
                     "wtl": site.record.get(name),
                     "cells": [_cell(site, s, name, int(c["d"])) for s, c in zip(shown, columns, strict=True)]})
    return ranked(rows), columns


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The overview's rows in rank order, each with its `rank`.

    The rank is by wins − losses against baseline (methodology, "Wins, ties and losses": only
    significant differences count), equal for equal wins − losses (1, 2, 2, 4); rows of one rank are
    ordered by wins, then name. Methods with no setting shared with baseline follow, unranked, and
    the two reference rows, baseline and teacher, come last (rank None).
    """
    def net(r: dict[str, Any]) -> int:
        return int(r["wtl"].wins - r["wtl"].losses)

    refs = [r for r in rows if r["name"] in (BASELINE, TEACHER)]
    scored = sorted((r for r in rows if r["wtl"] is not None and r not in refs),
                    key=lambda r: (-net(r), -r["wtl"].wins, r["name"]))
    rest = [r for r in rows if r["wtl"] is None and r not in refs]
    out: list[dict[str, Any]] = []
    for i, r in enumerate(scored):
        rank = out[-1]["rank"] if i and net(scored[i - 1]) == net(r) else i + 1
        out.append({**r, "rank": rank})
    return out + [{**r, "rank": None} for r in rest + refs]


def overview_markdown(rows: list[dict[str, Any]], columns: list[dict[str, Any]], site: SiteContext) -> str:
    """The overview matrix as a GitHub table (for the README): bold where significant."""
    esc = markdown_text
    head = ["rank", "method", *(esc(f"{c['task']}/{c['protocol']} ({c['primary']})") for c in columns), "W/T/L"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"**{esc(c.text)}**" if c.cls in ("better", "worse") else esc(c.text) for c in r["cells"]]
        rank = "—" if r["rank"] is None else str(r["rank"])
        lines.append("| " + " | ".join([rank, esc(r["name"]), *cells, esc(str(r["wtl"] or "—"))]) + " |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- task pages


def task_rows(site: SiteContext, s: Setting) -> list[dict[str, Any]]:
    """The task page's rows: compare_table's row of every method plus provenance, cost and runs."""
    flops = s.runs.groupby("method")["flops"].mean() if len(s.runs) else pd.Series(dtype=float)
    rows = []
    for row in s.table.to_dict(orient="records"):
        method = str(row["method"])
        info = data.method_info(method, site.loaded.records)
        sub = site.submission(s.task, s.protocol, method)
        rows.append({**row, "slug": data.slug(method), "family": info["family"], "teacher": info["teacher"],
                     "verdict_text": verdict_text(row),
                     "provenance": site.provenance(s.task, s.protocol, method), "submission": sub,
                     "flops": flops.get(method, math.nan),
                     "runs": site.runs_by_key.get((s.task, s.protocol, method), [])})
    return rows


def table_facts(s: Setting) -> dict[str, str]:
    """The sentences under a table, worded as `kdbench compare` words them: its title, n and MDD,
    the teacher it compares with, the hardware it ran on."""
    return {"title": title(s.table), "mdd": mdd_line(s.table), "teacher": teacher_line(s.table),
            "hardware": hardware_line(s.table)}


def effective_sha(task: str, raw: Any) -> str | None:
    """The sha256 that identifies a card file's effective content (kdbench.protocol's
    identity: the typed card, defaults filled, unset fields left out, prose fields not hashed), or
    None when the file does not parse. Computed without loading the method registry, which would
    import torch: a card whose method hyperparameters are wrong still gets its sha."""
    from kdbench.cards.typed import parse, to_plain
    from kdbench.protocol import card_sha256, drop_none
    from kdbench.tasks import TASKS

    if not isinstance(raw, dict) or task not in TASKS:
        return None
    try:
        return card_sha256(drop_none(to_plain(parse(TASKS[task].card, raw, ""))))
    except (UsageError, TypeError, ValueError):
        return None


def card_info(s: Setting, cards: dict[str, Path]) -> dict[str, Any]:
    """The protocol card of a setting: its text, whether the shipped card's sha256 is the records' one."""
    path = cards.get(s.card or s.protocol)
    sha = str(s.table.attrs["protocol_sha"])
    if path is None:
        return {"found": False, "sha": sha, "text": "", "matches": False, "card": {}, "name": s.card or s.protocol}
    raw = path.read_bytes()
    try:
        card = yaml.safe_load(raw) or {}
    except yaml.YAMLError:
        card = {}
    return {"found": True, "sha": sha, "text": raw.decode("utf-8", "replace"), "name": path.name,
            "matches": effective_sha(s.task, card) == sha, "card": card if isinstance(card, dict) else {}}


def references(card: dict[str, Any], s: Setting) -> dict[str, Any] | None:
    """The card's published reference numbers beside ours (same metric, same name)."""
    ref = card["card"].get("reference")
    if not isinstance(ref, dict) or not ref:
        return None
    rows = []
    for metric, values in ref.items():
        if not isinstance(values, dict):
            continue
        for name, published in values.items():
            ours = _row_of(s, str(name))
            mean = ours.get(f"{metric}_mean") if ours else None
            rows.append({"metric": str(metric), "name": str(name), "published": published,
                         "ours": mean, "n": ours["n"] if ours else 0})
    return {"source": str(ref.get("source", "")), "note": str(ref.get("note", "")).strip(), "rows": rows}


# ------------------------------------------------------------------------------ method pages


def method_rows(site: SiteContext, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A method's catalog entry and one row per setting (or per task where it has none)."""
    info = data.method_info(name, site.loaded.records)
    rows: list[dict[str, Any]] = []
    for task in site.tasks:
        mine = [s for s in site.sets if s.task == task and _row_of(s, name) is not None]
        for s in mine:
            row = _row_of(s, name) or {}
            d = decimals(s.table[f"{s.primary}_mean"])
            rows.append({"task": task, "protocol": s.protocol, "tier": s.tier, "rel": site.task_rel(s),
                         "primary": s.primary, "n": row["n"], "mean": row[f"{s.primary}_mean"],
                         "std": row[f"{s.primary}_std"], "delta": row["delta"], "p_holm": row["p_holm"],
                         "verdict": row["verdict"], "verdict_text": verdict_text(row), "shipped": s.shipped,
                         "card": s.card, "gap_closed": row["gap_closed"], "d": d,
                         "hparams": site.hparams_by_key.get((s.task, s.protocol, name), []),
                         "provenance": site.provenance(s.task, s.protocol, name),
                         "status": "ok", "why": "", "runs": site.runs_by_key.get((s.task, s.protocol, name), [])})
        if not mine:
            ok, why = data.serves(name, task)
            status = "n/a" if ok is False else "not run"
            rows.append({"task": task, "protocol": "", "tier": "", "rel": "", "primary": "", "n": 0, "mean": None,
                         "std": None, "delta": None, "p_holm": None, "verdict": "", "verdict_text": "",
                         "shipped": True, "card": "", "gap_closed": None, "d": 2,
                         "hparams": [], "provenance": "", "status": status,
                         "why": why if ok is False else "no records yet", "runs": []})
    return info, rows


# ------------------------------------------------------------------------------------ runs


def _set_value(v: Any) -> str:
    if isinstance(v, str):
        try:
            same = yaml.safe_load(v) == v
        except yaml.YAMLError:
            same = False
        return v if same else json.dumps(v)
    return json.dumps(v)


def reproduce_command(record: dict[str, Any]) -> str:
    """The command line that reproduces a run (a teacher record: `kdbench teacher`)."""
    task, proto, method = record["task"], record["protocol"]["name"], record["method"]["name"]
    if method == TEACHER:
        args = ["kdbench", "teacher", "--task", task, "--protocol", proto, "--seed", str(record["seed"])]
        skip = {"teacher.seed"}
    else:
        args = ["kdbench", "run", "--task", task, "--method", method, "--protocol", proto,
                "--seed", str(record["seed"])]
        skip = set()
    for key, value in record["spec"].get("overrides", {}).items():
        if key not in skip:
            args += ["--set", f"{key}={_set_value(value)}"]
    if record["tier"] in ("medium", "standard"):
        args += ["--data-root", "DATA"]
    return shlex.join(args)


def check_out(out: Path) -> None:
    """Refuse an `out` that is not a folder, or a non-empty folder that is not a previous site."""
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise UsageError(f"--out {out} exists and is not a kdbench site (no {MARKER}); "
                             "choose another folder or remove it")


def replace_site(new: Path, out: Path) -> None:
    """Put the finished site `new` at `out` by renames; the previous site (checked by `check_out`)
    is removed only once the new one is in place."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)
