"""`kdbench list`, `--help` and `validate` answer without importing torch, in aligned columns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kdbench import listing
from tests.recordkit import valid_record

ROOT = Path(__file__).resolve().parents[2]


def _imported(argv: list[str]) -> tuple[set[str], str]:
    """The top-level modules `python -X importtime -m kdbench ARGV` imports, and its stdout."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "kdbench", *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, check=False)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    modules = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()
               if line.startswith("import time:")}
    return modules, done.stdout


@pytest.mark.parametrize("argv", [["list", "tasks"], ["list", "methods"], ["list", "protocols"], ["--help"],
                                  ["run", "--help"], ["validate", "RECORD"]])
def test_light_commands_import_no_torch(argv: list[str], tmp_path: Path) -> None:
    record = tmp_path / "classification" / "small" / "kd" / "seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(valid_record()))
    modules, out = _imported([str(record) if a == "RECORD" else a for a in argv])
    assert "torch" not in modules, f"kdbench {' '.join(argv)} imported torch"
    assert out.strip()


@pytest.mark.parametrize("task", ["classification", "ood", "translation"])
def test_a_run_of_a_task_without_boxes_imports_no_torchvision(task: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision (about 2 s and 170 MiB) is detection's and pose's: a kd run elsewhere, which
    imports every method and so all of kdbench.losses, must not load it."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    modules, out = _imported(["run", "--task", task, "--method", "kd", "--protocol", "smoke",
                              "--results", str(tmp_path / "results")])
    assert "record:" in out, out[-2000:]
    assert "torchvision" not in modules, f"a {task} run imported torchvision"


def _columns_align(text: str) -> None:
    """Every row's cells start where the header's do (the last column may be any width)."""
    lines = text.splitlines()
    header = lines[0]
    starts = [i for i in range(len(header)) if header[i] != " " and (i == 0 or header[i - 1] == " ")]
    for line in lines[1:]:
        for s in starts[1:]:
            assert line[s - 2:s] == "  " and line[s] != " ", (line, s)


def test_lists_are_aligned_and_complete() -> None:
    from kdbench.adapters import TASKS

    tasks = listing.list_tasks()
    methods = listing.list_methods()
    protocols = listing.list_protocols()
    for text in (tasks, methods, protocols):
        _columns_align(text)
    assert [line.split()[0] for line in tasks.splitlines()[1:]] == list(TASKS)
    rows = {line.split()[0]: line for line in methods.splitlines()[1:]}
    assert set(rows) == {Path(f).stem for f in listing.method_files()}
    assert " all " in rows["kd"] and "detection" not in rows["pskd"]
    assert any(" medium " in line for line in protocols.splitlines())


def test_a_method_file_missing_from_the_catalog_reads_the_registries(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A method just written (not yet in catalog.json) is listed anyway, with a note naming the refresh."""
    import kdbench.site.catalog as catalog

    real = json.loads(json.dumps(catalog.load_catalog()))
    live: dict[str, Any] = json.loads(json.dumps(real))
    live["methods"]["mine"] = {**live["methods"]["kd"], "source": "kdbench/methods/mine.py", "paper": "Me, 2026"}
    monkeypatch.setattr(listing, "method_files", lambda: {m["source"] for m in live["methods"].values()})
    monkeypatch.setattr(catalog, "generate", lambda: live)
    out = listing.list_methods()
    assert "mine" in out and "Me, 2026" in out
    err = capsys.readouterr().err
    assert "mine.py" in err and listing.REFRESH in err
    assert listing.stale(real) is not None  # the committed one is stale against those files
