"""`kdbench site build` without a browser: pages, numbers, escaping, provenance, errors, no torch."""

from __future__ import annotations

import copy
import html
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from markupsafe import escape

from kdbench.cli import main
from kdbench.compare import compare_table, load_frame
from kdbench.compare.render import mdd_line
from kdbench.errors import UsageError
from kdbench.protocol import parse_sets
from kdbench.records import validation_errors, write_record
from kdbench.site import data, pages
from kdbench.site.build import build_site
from kdbench.site.catalog import load_catalog

from .conftest import EVIL_BY, EVIL_METHOD, EVIL_NAME, EVIL_NOTE
from .fixtures import ABLATION_KEY, EPYC, XEON, make_record, site_records


def _html(site: Path, rel: str) -> str:
    return (site / rel / "index.html").read_text(encoding="utf-8")


def test_every_page_is_written(built_site: Path, site_results: Path) -> None:
    loaded = data.load(site_results)  # every valid record, less smoke runs and other card versions
    runs = sorted(p.name for p in (built_site / "run").iterdir() if (p / "index.html").is_file())
    assert runs == sorted(data.run_id(r) for r in loaded.records)
    assert len(runs) == len(site_records()) + 3  # and the 3 hostile ones
    # an ablation's runs have their own ids and pages (the key, not the card's name, is in the id)
    assert "classification.small.kd.seed0" in runs and f"classification.{data.slug(ABLATION_KEY)}.kd.seed0" in runs
    for task in ("classification", "detection", "translation"):
        assert (built_site / "task" / task / "small" / "index.html").is_file()
        assert json.loads((built_site / "task" / task / "small" / "table.json").read_text())["task"] == task
    ablation = json.loads((built_site / "task" / "classification" / data.slug(ABLATION_KEY) / "table.json").read_text())
    assert (ablation["protocol"], ablation["ablation_of"]) == (ABLATION_KEY, "small")
    for name in load_catalog()["methods"]:
        assert (built_site / "method" / name / "index.html").is_file()
    assert (built_site / "methodology" / "index.html").is_file()
    assert "@misc{kdbench" in _html(built_site, "methodology")


def test_overview_numbers_are_kdbench_compare_numbers(built_site: Path, site_results: Path) -> None:
    """The overview shows compare_table's Δ, verdict and baseline mean (one implementation)."""
    table = compare_table(load_frame(site_results), "detection", "small")
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


def test_overview_counts_wins_ties_losses(built_site: Path, site_results: Path) -> None:
    """Only significant differences after Holm count; shipped cards only (kd's ablation win is not counted)."""
    sets = data.settings(data.load(site_results))
    assert [s.key for s in sets if not data.on_leaderboard(s)] == [f"classification/{ABLATION_KEY}"]
    means, record = data.overview(sets)
    assert f"classification/{ABLATION_KEY}" not in means.columns
    # kd: better on classification, ≈ on detection and translation; gold: better on detection; pskd: worse
    assert {m: str(record[m]) for m in ("kd", "gold", "pskd", "dkd")} == \
        {"kd": "1/2/0", "gold": "1/1/0", "pskd": "0/0/1", "dkd": "0/1/0"}
    assert "baseline" not in record and "teacher" not in record
    overview = {r["method"]: r for r in json.loads((built_site / "overview.json").read_text())["rows"]}
    assert (overview["kd"]["wins"], overview["kd"]["ties"], overview["kd"]["losses"]) == (1, 2, 0)
    assert overview["baseline"]["wins"] is None and "avg_rank" not in overview["kd"]
    html = _html(built_site, "")
    row = re.search(r'<tr data-name="kd" .*?</tr>', html, re.S)
    assert row is not None and ">1/2/0</td>" in row.group(0) and 'data-value="1.0"' in row.group(0)
    assert "avg rank" not in html and "W/T/L" in html
    assert "| kd | **+2.00** | ≈ +0.0030 | ≈ +1.25 | 1/2/0 |" in (built_site / "overview.md").read_text()


def test_task_page_states_mdd_teacher_and_hardware(built_site: Path, site_results: Path) -> None:
    table = compare_table(load_frame(site_results), "classification", "small")
    page = _html(built_site, "task/classification/small")
    assert html.escape(mdd_line(table), quote=False) in page
    assert "MDD (80% power, α = 0.05/12 Holm)" in page  # the hostile method: identical differences, no test
    # baseline and 12 methods × 3 seeds, the teacher shown, 2 ok hostile runs: 42, baseline seed 2 on the EPYC
    assert f"hardware: 41 × {XEON}, 1 thread; 1 × {EPYC}, 2 threads" in page
    assert "the record of the teacher the students learnt from (checkpoint 626262626262, seed 0)" in page
    assert "1 other teacher record(s) not shown" in page
    assert "≈ below MDD" in page and "Δ 95% CI" in page
    kd = table.set_index("method").loc["kd"]
    assert f"[{kd['delta_ci_low']:+.2f}, {kd['delta_ci_high']:+.2f}]" in page
    translation = _html(built_site, "task/translation/small")
    assert "the students used 2 different teachers" in translation
    assert "(value from the students' records)" in translation
    ablation = _html(built_site, f"task/classification/{data.slug(ABLATION_KEY)}")
    assert "An ablation of card <code>small</code>" in ablation and "ablation of small" in _html(built_site, "")


def test_methodology_states_what_is_scored_and_repeatable(built_site: Path) -> None:
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", _html(built_site, "methodology")))
    assert ("A CPU run is bit-identical to another run of the same spec only on the same CPU model, ISA flags and "
            "thread count") in text
    assert "varies like another seed" in text
    assert "of the final model of a run (its EMA model, where the card has one), never of a best epoch" in text
    assert "Anything chosen — hyperparameters, a checkpoint, an early stop — is chosen on the val split" in text
    assert "minimal detectable difference" in text and "wins/ties/losses" in text
    for page in built_site.rglob("index.html"):
        assert "deterministic for a seed" not in page.read_text(encoding="utf-8"), page


def test_hostile_names_and_notes_are_escaped(built_site: Path) -> None:
    slug = data.slug(EVIL_METHOD)
    assert re.fullmatch(r"[a-z0-9_-]+", slug)
    texts = [_html(built_site, ""), _html(built_site, "task/classification/small"),
             _html(built_site, f"method/{slug}")]
    texts += [(p / "index.html").read_text() for p in (built_site / "run").glob(f"classification.small.{slug}.seed*")]
    assert len(texts) == 6
    for text in texts:
        for payload in (EVIL_NOTE, EVIL_BY):
            assert payload not in text
        # the overview shows no free text of a record (method names cannot hold markup); the rest do
        assert text is texts[0] or "&lt;script&gt;window.__xss" in text or "&lt;img src=x onerror" in text
        assert re.search(r"<script>(?!</script>)", text) is None  # only <script src=...> tags


def test_markup_cannot_be_a_method_name() -> None:
    record = make_record("classification", "kd", 0)
    record["method"]["name"] = record["spec"]["method"]["name"] = EVIL_NAME
    assert any(e.startswith("method.name: ") for e in validation_errors(record))
    assert not data.is_valid(record)


def test_submitted_rows_are_marked(built_site: Path) -> None:
    slug = data.slug(EVIL_METHOD)
    task = _html(built_site, "task/classification/small")
    row = re.search(r'<tr data-name="[^"]*evil" [^>]*data-provenance="([^"]+)"', task)
    assert row is not None and row.group(1) == "submitted"
    table = json.loads((built_site / "task" / "classification" / "small" / "table.json").read_text())
    # the site tests' records lie in a temporary folder, not committed to a repository's results/: local
    assert task.count('data-provenance="local"') == len(table["rows"]) - 1
    assert 'data-provenance="reproduced here"' not in task
    assert "not in this kdbench's method registry" in _html(built_site, f"method/{slug}")


def test_method_page_says_why_na(built_site: Path) -> None:
    cat = load_catalog()
    unserved = [(m, t, why) for m, info in cat["methods"].items() for t, why in info["refused"].items()]
    assert unserved, "every task serves every method: nothing to show as n/a"
    assert ("detection", "bdkd") in {(t, m) for m, t, _ in unserved}  # refused by its heads' kinds
    for method, task, why in unserved:
        text = _html(built_site, f"method/{method}")
        assert str(escape(why)) in text, (method, task)
        needs = set(cat["methods"][method]["needs"]) - set(cat["tasks"][task]["provides"])
        assert all(need in text for need in needs)


def test_method_page_says_which_heads_each_task_distils(built_site: Path) -> None:
    """The per-task table: distilled heads, and each head left to its task loss with the reason
    (kdbench.methods.base.head_refusals, recorded by the catalog)."""
    import re

    def row(method: str, task: str) -> str:
        text = _html(built_site, f"method/{method}")
        table = text[text.index('id="method-tasks"'):]
        found = re.search(rf"<tr><td>{task}</td>(.*?)</tr>", table[:table.index("</table>")], re.S)
        assert found, (method, task)
        return found.group(1)

    dkd = row("dkd", "detection")
    distils, left = dkd.split("</td>")[1], dkd.split("</td>")[2]
    assert "<code>box</code>" in distils and "<code>cls</code>" not in distils
    assert "<code>cls</code>: cls is binary" in left
    assert "<code>cls</code>" in row("kd", "detection").split("</td>")[1]  # BCKD distils the binary head
    assert "reads no heads" in row("baseline", "pose")
    assert row("bdkd", "detection").startswith("<td>no</td>")
    cat = load_catalog()
    for method, info in cat["methods"].items():  # served and refused partition the tasks
        assert set(info["heads"]) | set(info["refused"]) == set(cat["tasks"]), method
        assert not set(info["heads"]) & set(info["refused"]), method


def test_failed_run_is_listed_not_counted(built_site: Path) -> None:
    table = json.loads((built_site / "task" / "classification" / "small" / "table.json").read_text())
    evil = next(r for r in table["rows"] if r["method"] == EVIL_METHOD)
    assert (evil["n"], evil["failed"]) == (2, 1)


def test_reproduce_command_round_trips() -> None:
    record = make_record("classification", "kd", 0)
    record["spec"]["overrides"] = {"train.epochs": 5, "method.temperature": 2.5, "data.dataset": "on"}
    cmd = pages.reproduce_command(record)
    assert cmd.startswith("kdbench run --task classification --method kd --protocol small --seed 0")
    sets = re.findall(r"--set (\S+)", cmd)
    assert parse_sets([s.strip("'") for s in sets]) == record["spec"]["overrides"]
    teacher = make_record("detection", "teacher", 0, 0.4)
    assert pages.reproduce_command(teacher) == "kdbench teacher --task detection --protocol small --seed 0"


def test_fast_validation_agrees_with_the_schema() -> None:
    good = make_record("detection", "gold", 0, 0.3)
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
    record = make_record()
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
    record = make_record()
    write_record(results / "classification" / "small" / "kd" / "seed0.json", record)
    smoke = make_record(name="smoke", tier="smoke")
    assert validation_errors(smoke) == []
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


def test_build_and_serve_never_import_torch(site_results: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from kdbench.cli import main\n"
        f"rc = main(['site', 'build', '--results', {str(site_results)!r}, '--out', {str(tmp_path / 'site')!r}])\n"
        "from kdbench.site.serve import make_server\n"
        f"make_server({str(tmp_path / 'site')!r}, 0).server_close()\n"
        "assert rc == 0, rc\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"site: {len(site_records()) + 3} records, 4 settings" in run.stdout


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["site", "serve", "--out", str(tmp_path / "none")]) == 2
    assert "no built site" in capsys.readouterr().err
    assert main(["site", "build", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "s")]) == 2


def test_catalog_matches_the_registries() -> None:
    """The committed catalog.json is what the live registries say (regenerate when it is not)."""
    from kdbench.site.catalog import dumps, generate

    live, committed = json.loads(dumps(generate())), json.loads(dumps(load_catalog()))
    if live == committed:
        return
    what = []
    for part in ("methods", "tasks"):
        new, old = live[part], committed.get(part, {})
        what += [f"new {part[:-1]} {k}" for k in sorted(set(new) - set(old))]
        what += [f"{part[:-1]} {k} gone" for k in sorted(set(old) - set(new))]
        what += [f"{part[:-1]} {k} changed" for k in sorted(set(new) & set(old)) if new[k] != old[k]]
    what += [k for k in ("needs", "generated_by") if live.get(k) != committed.get(k)]
    pytest.fail(f"kdbench/site/catalog.json is out of date ({'; '.join(what)}): run "
                "`python -m kdbench.site.catalog` and commit the file", pytrace=False)


def test_card_match_uses_the_effective_card_sha(tmp_path: Path) -> None:
    """"matches" when the records carry the shipped card's identity (kdbench.protocol's), else "changed"."""
    from kdbench.protocol import load_protocol

    for task in ("classification", "detection"):
        card = load_protocol(task, "small")
        assert pages.effective_sha(task, yaml.safe_load(card.path.read_text())) == card.sha256
    sha = load_protocol("classification", "small").sha256
    write_record(tmp_path / "r" / "classification" / "small" / "kd" / "seed0.json", make_record(sha=sha))
    write_record(tmp_path / "r" / "detection" / "small" / "kd" / "seed0.json", make_record("detection", value=0.3))
    build_site(tmp_path / "r", tmp_path / "site", jobs=1)
    assert '<span class="badge rep">matches</span>' in _html(tmp_path / "site", "task/classification/small")
    assert '<span class="badge warnb">changed</span>' in _html(tmp_path / "site", "task/detection/small")
