"""What a newcomer reads on the site: rows in rank order with their rank, intervals inside the
metric's range, and no empty fields (a run without FLOPs shows none)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from kdbench.compare import compare_table, load_frame
from kdbench.site.build import build_site

from .fixtures import make_record, write


def test_overview_rows_are_in_rank_order(built_site: Path) -> None:
    rows = json.loads((built_site / "overview.json").read_text())["rows"]
    ranked = [(r["method"], r["rank"]) for r in rows if r["rank"] is not None]
    # kd 1/2/0 and gold 1/1/0 share rank 1 (wins − losses 1); pskd 0/0/1 is last of the ranked
    assert ranked[:2] == [("gold", 1), ("kd", 1)] and ranked[2][1] == 3
    assert ranked[-1] == ("pskd", len(ranked))
    assert [r["rank"] for r in rows[len(ranked):]] == [None] * (len(rows) - len(ranked))
    assert [r["method"] for r in rows][-2:] == ["baseline", "teacher"]
    nets = [r["wins"] - r["losses"] for r in rows if r["rank"] is not None]
    assert nets == sorted(nets, reverse=True)
    md = (built_site / "overview.md").read_text()
    assert md.splitlines()[0].startswith("| rank | method |") and "| 1 | gold |" in md
    html = (built_site / "index.html").read_text()
    assert '<td class="num rank" data-value="1">1</td>' in html and ">ref</td>" in html


def test_intervals_are_clipped_to_the_metrics_range(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for seed, value in enumerate([99.0, 99.9, 100.0]):  # mean 99.63, t-interval to ~100.9 unclipped
        write(results, make_record("classification", "baseline", seed, value))
    table = compare_table(load_frame(results), "classification", "small")
    row = table.set_index("method").loc["baseline"]
    assert row["top1_ci_high"] == 100.0 and 98.0 < row["top1_ci_low"] < row["top1_mean"]
    assert math.isclose(row["top1_mean"], (99.0 + 99.9 + 100.0) / 3)


def test_no_empty_flops_or_params(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for seed in range(2):
        r = make_record("classification", "baseline", seed, 90.0 + seed)
        r["student"]["flops"] = None
        r["student"]["params"] = None
        write(results, r)
    build_site(results, tmp_path / "site", jobs=1)
    run = (tmp_path / "site" / "run" / "classification.small.baseline.seed0" / "index.html").read_text()
    assert "FLOPs" not in run and "params" not in run.split("<th>student</th>")[1].split("</tr>")[0]
    task = (tmp_path / "site" / "task" / "classification" / "small" / "index.html").read_text()
    assert ">FLOPs</th>" not in task
