"""`kdbench site build`: result records → a static leaderboard that works offline.

Layout of the output (every page is `<path>/index.html`, linked with relative URLs so that the
site also works opened from disk):

    index.html  overview.csv  overview.json  runs.csv       the overview and every run as a row
    methodology/                                           statistics, ties, missing data, tiers
    task/<task>/<key>/  table.csv table.json                one page per task and protocol key (ablations too)
    task/<task>/<tier>/                                     the tier's cards, where a card is named otherwise
    method/<name>/  method.json                             one page per method
    run/<task>.<key>.<method>.seed<N>/  record.json         one page per run
    static/                                                 CSS and JS, no CDN
"""

from __future__ import annotations

import gc
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import jinja2
import pandas as pd

from kdbench import formatting
from kdbench.compare import BASELINE
from kdbench.compare.render import csv_text, render
from kdbench.errors import UsageError
from kdbench.metrics import METRICS
from kdbench.protocol import task_cards
from kdbench.records import printable
from kdbench.site import data, pages, plots, provenance
from kdbench.site.data import Setting
from kdbench.site.provenance import committed_records


@dataclass
class BuildSummary:
    out: Path
    records: int
    settings: int
    methods: int
    pages: int
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): entries that are not records


def _env() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(str(resources.files("kdbench.site").joinpath("templates")))
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=formatting.num, pct=formatting.pct, pval=formatting.pval, intcomma=formatting.intcomma,
                       sortval=formatting.sortval, slug=data.slug, jsontext=pages.jsontext)
    return env


class _Writer:
    """Writes pages and downloads under `out`, counting pages."""

    def __init__(self, out: Path, env: jinja2.Environment) -> None:
        self.out, self.env, self.pages = out, env, 0
        self._templates: dict[str, jinja2.Template] = {}

    def page(self, rel: str, template: str, **ctx: Any) -> None:
        depth = rel.count("/") + 1 if rel else 0
        tpl = self._templates.get(template) or self._templates.setdefault(template, self.env.get_template(template))
        self.text(f"{rel}/index.html" if rel else "index.html", tpl.render(root="../" * depth, here=rel, **ctx))
        self.pages += 1

    def text(self, rel: str, content: str) -> None:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")

    def json(self, rel: str, obj: Any) -> None:
        self.text(rel, json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False, default=str) + "\n")


def build_site(results: Path, out: Path, alpha: float = 0.05, warn: TextIO | None = None,
               jobs: int | None = None) -> BuildSummary:
    """Render the leaderboard of every record under `results` into `out` (replaced if it exists).

    Args:
        results: the results folder (`<task>/<key>/<method>/seed<N>.json`).
        out: the site folder; an existing folder is replaced only if it is a previous site.
        alpha: significance level of the verdicts (as `kdbench compare --alpha`).
        warn: where warnings go; stderr by default.
        jobs: processes that read the records and draw their run pages (default: the CPUs this
            process may use, at most 4; 1 does everything in this process).

    Returns:
        Counts and the wall time.

    Raises:
        UsageError: unreadable or invalid records, a malformed submission file, or an `out` that
            exists and is not a kdbench site.
    """
    if not 0 < alpha < 1:
        raise UsageError(f"alpha must lie in (0, 1), got {alpha}")
    # The build allocates millions of small, acyclic containers (parsed records, table cells,
    # template output) and keeps them to the end: the cyclic collector would rescan them again and
    # again (a third of a 10,000-record build), and would find nothing to free.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _build(results, out, alpha, warn, jobs)
    finally:
        if enabled:
            gc.enable()


def _build(results: Path, out: Path, alpha: float, warn: TextIO | None, jobs: int | None) -> BuildSummary:
    start = time.perf_counter()
    out = Path(out)
    pages.check_out(out)
    # Built beside `out` and swapped in at the end: a failed build leaves the previous site whole.
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        w = _Writer(tmp, _env())
        shutil.copytree(str(resources.files("kdbench.site").joinpath("static")), tmp / "static")
        (tmp / pages.MARKER).write_text("kdbench site\n")
        (tmp / "run").mkdir()
        # Run pages, the bulk of a large build, are drawn by the processes that read the records,
        # while each record is at hand (no second pass over 10,000 records in other processes).
        workers = _workers(jobs)
        committed = committed_records(results)  # one git scan: the run pages' and the tables' provenance
        loaded = data.load(results, warn or sys.stderr, workers, hook=_RunPages(w, results, committed),
                           committed=committed)
        for path, why in loaded.skipped:
            print(f"kdbench: warning: skipped {printable(path)}: {why}", file=warn or sys.stderr)
        for rid in loaded.set_aside_ids:
            shutil.rmtree(tmp / "run" / rid)
        w.pages += len(loaded.records)
        sets = data.settings(loaded, alpha)
        site = pages.SiteContext.make(loaded, sets, alpha)
        _overview(w, site)
        _tier_pages(w, site)
        for name in site.method_names:
            _method_page(w, site, name)
        for s in site.sets:
            _task_page(w, site, s)
        w.page("methodology", "methodology.html.j2", site=site, title="Methodology")
        pages.replace_site(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildSummary(out, len(loaded.records), len(sets), len(site.method_names), w.pages,
                        time.perf_counter() - start, loaded.skipped)


# ------------------------------------------------------------------------------------- pages


def _overview(w: _Writer, site: pages.SiteContext) -> None:
    rows, columns = pages.overview_rows(site)
    w.page("", "index.html.j2", site=site, rows=rows, columns=columns, title="Overview")
    flat = [{"rank": r["rank"], "method": r["name"], "family": r["family"], "teacher": r["teacher"],
             "provenance": r["provenance"],
             **{k: getattr(r["wtl"], k) if r["wtl"] else None for k in ("wins", "ties", "losses")},
             **{f"{c['key']}:{k}": formatting.plain(v) for c, cell in zip(columns, r["cells"], strict=True)
                for k, v in cell.numbers().items()}}
            for r in rows]
    w.json("overview.json", {"alpha": site.alpha, "baseline": BASELINE,
                             "settings": [{k: c[k] for k in ("key", "task", "protocol", "tier", "primary",
                                                            "direction")} for c in columns],
                             "rows": flat})
    w.text("overview.csv", csv_text(pd.DataFrame(flat)))
    w.text("overview.md", pages.overview_markdown(rows, columns, site))
    w.text("runs.csv", csv_text(site.loaded.frame))


def _task_page(w: _Writer, site: pages.SiteContext, s: Setting) -> None:
    rel = f"task/{data.slug(s.task)}/{data.slug(s.protocol)}"
    card = pages.card_info(s, task_cards(s.task))
    rows = pages.task_rows(site, s)
    show_flops = any(isinstance(r["flops"], (int, float)) and math.isfinite(r["flops"]) for r in rows)
    w.page(rel, "task.html.j2", site=site, s=s, rows=rows, show_flops=show_flops, card=card, facts=pages.table_facts(s),
           metrics=s.table.attrs["metrics"], metric_info=METRICS,
           decs={m: formatting.decimals(s.table[f"{m}_mean"]) for m in s.table.attrs["metrics"]},
           dec=formatting.decimals(s.table[f"{s.primary}_mean"]),
           strip_svg=plots.strip_plot(s.table, s.runs), bar_svg=plots.bar_chart(s.table),
           references=pages.references(card, s), title=pages.table_facts(s)["title"])
    w.text(f"{rel}/table.csv", render(s.table, "csv"))
    w.text(f"{rel}/table.json", render(s.table, "json"))


def _tier_pages(w: _Writer, site: pages.SiteContext) -> None:
    """`/task/<task>/<tier>/` for tiers whose cards are named otherwise (e.g. standard → cifar100)."""
    by_tier: dict[str, list[Setting]] = {}
    for s in site.sets:
        if site.tier_rel(s):
            by_tier.setdefault(site.tier_rel(s), []).append(s)
    for rel, group in by_tier.items():
        w.page(rel, "tier.html.j2", task=group[0].task, tier=group[0].tier, settings=group,
               title=f"{group[0].task} / {group[0].tier}")


def _method_page(w: _Writer, site: pages.SiteContext, name: str) -> None:
    info, rows = pages.method_rows(site, name)
    rel = f"method/{data.slug(name)}"
    w.page(rel, "method.html.j2", site=site, name=name, info=info, rows=rows, title=name)
    w.json(f"{rel}/method.json", {"name": name, **{k: v for k, v in info.items() if k != "known"},
                                  "results": [{k: formatting.plain(v) for k, v in r.items() if k != "runs"}
                                              for r in rows]})


# ------------------------------------------------------------------------------ run pages


def _workers(jobs: int | None) -> int:
    if jobs is not None:
        return max(1, jobs)
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


class _RunPages:
    """`data.load`'s hook: one page per run at `run/<id>/`, with the record file beside it (plain
    os calls: at 10,000 pages pathlib's overhead shows)."""

    def __init__(self, w: _Writer, results: Path, committed: frozenset[str]) -> None:
        self.tpl = w.env.get_template("run.html.j2")
        self.runs = os.path.join(w.out, "run")
        self.results = str(results)
        self.footer = pages.Footer()
        self.committed = committed

    def __call__(self, record: dict[str, Any], text: str, rel: str, submission: data.Submission | None) -> None:
        rid = data.run_id(record)
        folder = os.path.join(self.runs, rid)
        try:
            os.mkdir(folder)
        except FileExistsError:  # two files hold the same run: `data.load` says which, and the build stops
            return
        task, proto, method = record["task"], record["protocol"]["key"], record["method"]["name"]
        html = self.tpl.render(root="../../", here=f"run/{rid}", site=self.footer, r=record, rid=rid, pretty=text,
                               command=pages.reproduce_command(record), file=rel, submission=submission,
                               provenance=provenance.of_record(rel, submission is not None, self.committed),
                               setting_rel=f"task/{data.slug(task)}/{data.slug(proto)}",
                               method_rel=f"method/{data.slug(method)}", title=f"run {rid}")
        with open(os.path.join(folder, "index.html"), "w", encoding="utf-8") as f:
            f.write(html)
        try:  # the record itself, as a hard link where the file system allows
            os.link(os.path.join(self.results, rel), os.path.join(folder, "record.json"))
        except OSError:
            with open(os.path.join(folder, "record.json"), "w", encoding="utf-8") as f:
                f.write(text)
