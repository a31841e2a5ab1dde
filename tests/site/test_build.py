"""`kdbench site build` without a browser: pages, numbers, escaping, provenance, errors, no torch."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kdbench.cli import main
from kdbench.compare import compare_table, load_frame
from kdbench.errors import UsageError
from kdbench.records import read_record, validation_errors, write_record
from kdbench.runner.protocol import parse_sets
from kdbench.site import data, pages
from kdbench.site.build import build_site
from kdbench.site.catalog import load_catalog

from .conftest import EVIL_BY, EVIL_METHOD, EVIL_NOTE, RESULTS, TEMPLATE


def _html(site: Path, rel: str) -> str:
    return (site / rel / "index.html").read_text(encoding="utf-8")


def test_every_page_is_written(built_site: Path, site_results: Path) -> None:
    loaded = data.load(site_results)  # every valid record, less smoke runs and other card versions
    runs = sorted(p.name for p in (built_site / "run").iterdir() if (p / "index.html").is_file())
    assert runs == sorted(data.run_id(r) for r in loaded.records)
    assert len(runs) >= 60  # the 57 committed records and the 3 hostile ones
    for task in ("classification", "detection"):
        assert (built_site / "task" / task / "small" / "index.html").is_file()
        assert json.loads((built_site / "task" / task / "small" / "table.json").read_text())["task"] == task
    for name in load_catalog()["methods"]:
        assert (built_site / "method" / name / "index.html").is_file()
    assert (built_site / "methodology" / "index.html").is_file()
    assert "@misc{kdbench" in _html(built_site, "methodology")


def test_overview_numbers_are_kdbench_compare_numbers(built_site: Path) -> None:
    """The overview shows compare_table's Δ, verdict and baseline mean (one implementation)."""
    table = compare_table(load_frame(RESULTS), "detection", "small")
    overview = json.loads((built_site / "overview.json").read_text())
    rows = {r["method"]: r for r in overview["rows"]}
    for t in table.to_dict(orient="records"):
        got = rows[t["method"]]
        assert got["detection/small:mean"] == pytest.approx(t["ap_mean"], abs=0)
        if math.isfinite(t["delta"]):
            assert got["detection/small:delta"] == pytest.approx(t["delta"], abs=0)
            assert got["detection/small:verdict"] == t["verdict"]
    base = table.set_index("method").loc["baseline", "ap_mean"]
    assert f"{base:.4f}" in _html(built_site, "")  # the real number, as the page shows it


def test_average_rank_over_the_largest_complete_block() -> None:
    """Ranks cover only methods × settings where every method has every setting (kdbench.stats ranks)."""
    sets = data.settings(data.load(RESULTS))
    means, ranks, used = data.overview(sets)
    block = means.drop(index="teacher").dropna(subset=used)
    assert used and block[used].notna().all().all()
    assert math.isnan(ranks["teacher"])
    table = compare_table(load_frame(RESULTS), "classification", "small").set_index("method")
    if used == ["classification/small"]:
        best = table.drop(index="teacher")["top1_mean"].idxmax()
        assert ranks[best] == pytest.approx(table.drop(index="teacher")["top1_mean"].rank(ascending=False)[best])
    present = pd.DataFrame({"a": [1, 1, 1, 1, 0], "b": [1, 1, 0, 0, 1], "c": [1, 0, 0, 0, 1]},
                           index=list("vwxyz")).astype(bool)
    # {a, b} × {v, w}, {b, c} × {v, z} and {a} × {v, w, x, y} all hold 4 results; more settings win the
    # tie, and between the first two the greedy search drops c, the setting fewer methods have
    assert data.complete_block(present) == (["v", "w"], ["a", "b"])
    # one well-covered setting beats a block of many settings and two methods
    wide = pd.DataFrame({"s1": [1] * 7, "s2": [1, 1, 0, 0, 0, 0, 0], "s3": [1, 1, 0, 0, 0, 0, 0]},
                        index=list("abcdefg")).astype(bool)
    assert data.complete_block(wide) == (list("abcdefg"), ["s1"])  # 7 results beat 2 × 3
    assert data.complete_block(present[["a"]].iloc[:1]) == ([], [])


def test_hostile_names_and_notes_are_escaped(built_site: Path) -> None:
    slug = data.slug(EVIL_METHOD)
    assert re.fullmatch(r"[a-z0-9_-]+", slug)
    texts = [_html(built_site, ""), _html(built_site, "task/classification/small"),
             _html(built_site, f"method/{slug}")]
    texts += [(p / "index.html").read_text() for p in (built_site / "run").glob(f"classification.small.{slug}.seed*")]
    assert len(texts) == 6
    for text in texts:
        for payload in (EVIL_METHOD, EVIL_NOTE, EVIL_BY):
            assert payload not in text
        assert "&lt;script&gt;window.__xss" in text or "&lt;img src=x onerror" in text
        assert re.search(r"<script>(?!</script>)", text) is None  # only <script src=...> tags


def test_submitted_rows_are_marked(built_site: Path) -> None:
    slug = data.slug(EVIL_METHOD)
    task = _html(built_site, "task/classification/small")
    row = re.search(r'<tr data-name="[^"]*evil" [^>]*data-provenance="([^"]+)"', task)
    assert row is not None and row.group(1) == "submitted"
    table = json.loads((built_site / "task" / "classification" / "small" / "table.json").read_text())
    assert task.count('data-provenance="reproduced here"') == len(table["rows"]) - 1
    assert "not in this kdbench's method registry" in _html(built_site, f"method/{slug}")


def test_method_page_says_why_na(built_site: Path) -> None:
    cat = load_catalog()
    pairs = [(m, t, sorted(set(info["needs"]) - set(cat["tasks"][t]["provides"])))
             for m, info in cat["methods"].items() for t in cat["tasks"]]
    unserved = [(m, t, missing) for m, t, missing in pairs if missing]
    assert unserved, "every task serves every method: nothing to show as n/a"
    for method, task, missing in unserved:
        text = _html(built_site, f"method/{method}")
        assert f"{task} does not provide what {method} needs: " in text
        assert all(need in text for need in missing)


def test_failed_run_is_listed_not_counted(built_site: Path) -> None:
    table = json.loads((built_site / "task" / "classification" / "small" / "table.json").read_text())
    evil = next(r for r in table["rows"] if r["method"] == EVIL_METHOD)
    assert (evil["n"], evil["failed"]) == (2, 1)


def test_reproduce_command_round_trips() -> None:
    record = read_record(TEMPLATE)
    record["spec"]["overrides"] = {"train.epochs": 5, "method.temperature": 2.5, "data.dataset": "on"}
    cmd = pages.reproduce_command(record)
    assert cmd.startswith("kdbench run --task classification --method kd --protocol small --seed 0")
    sets = re.findall(r"--set (\S+)", cmd)
    assert parse_sets([s.strip("'") for s in sets]) == record["spec"]["overrides"]
    teacher = read_record(RESULTS / "detection" / "small" / "teacher" / "seed0.json")
    assert pages.reproduce_command(teacher) == "kdbench teacher --task detection --protocol small --seed 0"


def test_fast_validation_agrees_with_the_schema() -> None:
    good = read_record(RESULTS / "detection" / "small" / "gold" / "seed0.json")
    mutations = [
        lambda r: r.update(extra=1), lambda r: r["protocol"].update(sha256="abc"),
        lambda r: r.update(error="x"), lambda r: r.update(status="failed"),
        lambda r: r.update(teacher={"arch": "a"}), lambda r: r.update(tier="huge"),
        lambda r: r["metrics"].update(values={}), lambda r: r.update(seed=-1),
        lambda r: r["metrics"]["values"].update(ap="x"), lambda r: r.update(created="yesterday"),
        lambda r: r["history"][0].update(epoch=-1), lambda r: r.pop("spec"),
    ]
    assert data.is_valid(good)
    for mutate in mutations:
        bad = copy.deepcopy(good)
        mutate(bad)
        assert data.is_valid(bad) == (not validation_errors(bad))


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    results = tmp_path / "results"
    record = read_record(TEMPLATE)
    write_record(results / "classification" / "small" / "kd" / "seed0.json", record)
    (results / "classification" / "small" / "kd" / "submission.yaml").write_text("who: me\n")
    with pytest.raises(UsageError, match="unknown key 'who'; valid: by, contact, url, paper, note"):
        build_site(results, tmp_path / "site")
    (results / "classification" / "small" / "kd" / "submission.yaml").unlink()
    (results / "classification" / "small" / "kd" / "seed1.json").write_text('{"task": 1}')
    with pytest.raises(UsageError, match=r"seed1.json: invalid record"):
        build_site(results, tmp_path / "site")
    (results / "classification" / "small" / "kd" / "seed1.json").unlink()
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("do not delete")
    with pytest.raises(UsageError, match="is not a kdbench site"):
        build_site(results, keep)
    assert (keep / "notes.txt").exists()
    with pytest.raises(UsageError, match="no results folder"):
        build_site(tmp_path / "nothing", tmp_path / "site")


def test_smoke_records_are_not_on_the_leaderboard(tmp_path: Path) -> None:
    results = tmp_path / "results"
    record = read_record(TEMPLATE)
    write_record(results / "classification" / "small" / "kd" / "seed0.json", record)
    smoke = {**record, "tier": "smoke", "protocol": {**record["protocol"], "name": "smoke"}}
    write_record(results / "classification" / "smoke" / "kd" / "seed0.json", smoke)
    done = build_site(results, tmp_path / "site", jobs=1)
    assert done.records == 1
    assert not (tmp_path / "site" / "task" / "classification" / "smoke").exists()


def test_parallel_build_is_identical(site_results: Path, built_site: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendering on forked workers writes the same bytes as rendering in one process."""
    monkeypatch.setattr(data, "PARALLEL_READ_MIN", 1)  # read (and draw run pages) in 2 workers
    done = build_site(site_results, tmp_path / "site", jobs=2)
    files = sorted(p.relative_to(built_site) for p in built_site.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "site") for p in (tmp_path / "site").rglob("*") if p.is_file())
    assert done.pages == sum(1 for f in files if f.name == "index.html")
    for f in files:
        assert (built_site / f).read_bytes() == (tmp_path / "site" / f).read_bytes(), f


def test_build_and_serve_never_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from kdbench.cli import main\n"
        f"rc = main(['site', 'build', '--results', {str(RESULTS)!r}, '--out', {str(tmp_path / 'site')!r}])\n"
        "from kdbench.site.serve import make_server\n"
        f"make_server({str(tmp_path / 'site')!r}, 0).server_close()\n"
        "assert rc == 0, rc\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "site: 57 records" in run.stdout or "site:" in run.stdout


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "serve", "--out", str(tmp_path / "none")]) == 2
    assert "no built site" in capsys.readouterr().err
    assert main(["site", "build", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "s")]) == 2


def test_catalog_matches_the_registries() -> None:
    """The committed catalog.json is what the live registries say (regenerate when it is not)."""
    from kdbench.site.catalog import dumps, generate

    assert dumps(generate()) == dumps(load_catalog()), \
        "kdbench/site/catalog.json is out of date: run `python -m kdbench.site.catalog`"
