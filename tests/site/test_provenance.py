"""Reproduced here, submitted or local: a row is "reproduced here" only when its records are
committed, unmodified, in the `results/` folder at the top of a git work tree (the maintainers'
sweeps write there); a run of your own anywhere else is "local" (kdbench.site.provenance)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kdbench.records import write_record
from kdbench.site.build import build_site
from kdbench.site.provenance import committed_records, of_record, of_row

from .fixtures import make_record, write

if shutil.which("git") is None:
    pytest.skip("git is not installed", allow_module_level=True)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   check=True, capture_output=True)


def _repo(tmp_path: Path) -> Path:
    """A repository whose results/ holds committed baseline and kd records, an uncommitted dkd run,
    a kd record changed after its commit, and a submitted nkd."""
    repo = tmp_path / "repo"
    results = repo / "results"
    for seed in range(3):
        write(results, make_record("classification", "baseline", seed, 90.0 + seed))
        write(results, make_record("classification", "kd", seed, 92.0 + seed))
        write(results, make_record("classification", "nkd", seed, 91.0 + seed))
    (results / "classification" / "small" / "nkd" / "submission.yaml").write_text("by: Someone\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "results")
    _git(repo, "commit", "-q", "-m", "records")
    for seed in range(3):
        write(results, make_record("classification", "dkd", seed, 91.5 + seed))
    changed = results / "classification" / "small" / "kd" / "seed2.json"
    changed.unlink()
    write_record(changed, make_record("classification", "kd", 2, 95.0))
    return repo


def test_only_committed_records_of_the_leaderboard_folder_are_reproduced_here(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    committed = committed_records(repo / "results")
    assert "classification/small/baseline/seed0.json" in committed
    assert "classification/small/kd/seed2.json" not in committed  # changed after its commit
    assert not any("dkd" in f for f in committed)  # never committed
    assert committed_records(tmp_path) == frozenset()  # not a repository
    (repo / "other").mkdir()
    shutil.copytree(repo / "results", repo / "other" / "results")
    _git(repo, "add", "other")
    _git(repo, "commit", "-q", "-m", "elsewhere")
    assert committed_records(repo / "other" / "results") == frozenset()  # not the top's results/
    assert of_record("classification/small/baseline/seed0.json", False, committed) == "reproduced here"
    assert of_record("classification/small/baseline/seed0.json", True, committed) == "submitted"
    assert of_row(["classification/small/baseline/seed0.json", "classification/small/kd/seed2.json"], False,
                  committed) == "local"
    assert of_row([], False, committed) == "local"


def test_the_site_marks_rows_and_runs(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    out = tmp_path / "site"
    build_site(repo / "results", out, jobs=1)
    task = (out / "task" / "classification" / "small" / "index.html").read_text()
    marks = dict(re.findall(r'<tr data-name="([a-z0-9_-]+)" [^>]*data-provenance="([^"]+)"', task))
    # the teacher has no record here: its row goes with the students' records (some local)
    assert marks == {"baseline": "reproduced here", "kd": "local", "dkd": "local", "nkd": "submitted",
                     "teacher": "local"}
    runs = {p.name: (p / "index.html").read_text() for p in (out / "run").iterdir()}
    assert 'badge rep">reproduced here' in runs["classification.small.kd.seed0"]
    assert 'badge local"' in runs["classification.small.kd.seed2"]
    assert 'badge local"' in runs["classification.small.dkd.seed0"]
    assert 'badge sub">submitted' in runs["classification.small.nkd.seed1"]
    rows = {r["method"]: r for r in json.loads((out / "overview.json").read_text())["rows"]}
    assert {m: rows[m]["provenance"] for m in rows} == \
        {"baseline": "reproduced here", "kd": "local", "dkd": "local", "nkd": "submitted"}
    # the same records copied anywhere else are all local (or submitted)
    shutil.copytree(repo / "results", tmp_path / "mine")
    build_site(tmp_path / "mine", tmp_path / "site2", jobs=1)
    again = json.loads((tmp_path / "site2" / "overview.json").read_text())["rows"]
    assert {r["method"]: r["provenance"] for r in again} == \
        {"baseline": "local", "kd": "local", "dkd": "local", "nkd": "submitted"}
