"""A sixth task is a dropped-in package and its card, touching no file of kdbench: the toy task
of tests/toy_task/, installed as another distribution would be (a `kdbench.tasks` entry point),
is listed, runs end to end and writes a valid record (docs/extending.md, Adding a task)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY = Path(__file__).with_name("toy_task") / "toy_task"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A folder on PYTHONPATH holding the toy package and the .dist-info that declares its entry point."""
    shutil.copytree(TOY, tmp_path / "toy_task")
    info = tmp_path / "toy_task-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-task\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdbench.tasks]\ntoy = toy_task\n")
    return tmp_path


def _kdbench(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "KDBENCH_CACHE": str(site / "cache"),
           "KDBENCH_RESULTS": str(site / "results"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kdbench", *argv], capture_output=True, text=True, cwd=site,
                          env=env, timeout=300, check=False)


def test_nothing_in_kdbench_names_the_toy_task() -> None:
    for path in (ROOT / "kdbench").rglob("*"):
        if path.is_file() and path.suffix in (".py", ".json", ".yaml", ".j2"):
            assert "toy_task" not in path.read_text(encoding="utf-8"), path


@pytest.mark.slow
def test_the_toy_task_is_listed_and_runs_end_to_end(site: Path) -> None:
    listed = _kdbench(site, "list", "tasks")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "toy" in rows and "cls (categorical)" in rows["toy"] and "ids" in rows["toy"]
    assert "classification" in rows  # the shipped tasks stay
    cards = _kdbench(site, "list", "protocols")
    assert any(line.split()[:3] == ["toy", "toy", "smoke"] for line in cards.stdout.splitlines()), cards.stdout

    done = _kdbench(site, "run", "--task", "toy", "--protocol", "toy", "--method", "baseline")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "toy_acc" in done.stdout and "Toy accuracy (%)" in done.stdout
    path = site / "results" / "toy" / "toy" / "baseline" / "seed0.json"
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["task"] == "toy" and record["protocol"]["shipped"] is True
    assert record["metrics"]["primary"] == "toy_acc" and 0.0 <= record["metrics"]["values"]["toy_acc"] <= 100.0
    valid = _kdbench(site, "validate", str(path))
    assert valid.returncode == 0, valid.stdout + valid.stderr


def test_an_entry_point_that_declares_no_task_is_an_error(site: Path) -> None:
    (site / "toy_task-0.1.dist-info" / "entry_points.txt").write_text("[kdbench.tasks]\nother = toy_task\n")
    done = _kdbench(site, "run", "--task", "toy", "--method", "baseline")
    assert done.returncode != 0
    assert "entry point other = toy_task (group kdbench.tasks) registered no task 'other'" in done.stderr
