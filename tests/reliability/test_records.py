"""Untrusted records: a fuzzed corpus of malformed records (made here from `valid_record()`) is
rejected by `kdbench validate` one line per file, never a traceback, and by the site's reader;
traversal in a record or a card never leaves its root; record files are written 0644, and a
stale temp file of an interrupted write goes with the next write."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdbench.cli import main
from kdbench.errors import UsageError
from kdbench.records import STALE_TMP_SECONDS, atomic_write_bytes, record_path, validation_errors, write_record
from kdbench.site import data
from kdbench.site.build import build_site
from tests.recordkit import valid_record

from .conftest import SMOKE, one_line

Mutation = Callable[[dict[str, Any]], None]


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list) and node:
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def mutate(r: dict[str, Any]) -> None:
        node = r
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = copy.deepcopy(value)
    return mutate


def _nested(depth: int) -> Any:
    node: Any = 1
    for _ in range(depth):
        node = {"x": node}
    return node


#: Values that are wrong anywhere in a record, whatever the field.
ANYWHERE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge-int": 2**70,
            "deep": _nested(80), "surrogate": "\ud800", "long": "x" * 30_000}
#: Wrong-typed or out-of-range values of typed fields.
TYPED = {
    ("seed",): [-1, 2**32, 1.5, "0", None], ("task",): ["../../etc", "/etc", "x" * 300, 3, "Classification"],
    ("tier",): ["huge", None], ("status",): ["done", True], ("schema_version",): [1, "2"],
    ("created",): ["yesterday", "2026-13-01T00:00:00+00:00", "2026-01-01", 0],
    ("protocol", "name"): ["../x", "", "A", "<b>"], ("protocol", "key"): ["small/../../x", "small+XYZ", 1],
    ("protocol", "sha256"): ["0" * 63, "g" * 64], ("method", "name"): ["<script>", "../kd", "", "K D", 5],
    ("method", "teacher"): ["mine"], ("metrics", "primary"): ["nope", "top-1", 1],
    ("metrics", "direction"): ["lower", "up"], ("metrics", "values", "top1"): [1e9, -5.0, "90"],
    ("metrics", "values"): [{}, {"top5": 90.0}, [], {"top1": 90.0, "made_up": 1.0}],
    ("metrics", "val"): [{"made_up": 1.0}, {"top1": 200.0}], ("history",): [{}, [{"epoch": -1}]],
    ("cost", "train_seconds"): [-1.0, "1"], ("environment", "threads"): [0, "1"],
    ("student", "checkpoint_sha256"): ["abc"], ("spec", "precision"): ["fp8"], ("spec", "world_size"): [0],
    ("spec", "teacher", "record"): ["../../../etc/passwd.json", "/abs/seed0.json"],
    ("spec", "teacher", "seed"): [2**40], ("evaluation", "split"): ["val"], ("error",): ["boom"],
}
REQUIRED = ["schema_version", "task", "tier", "protocol", "method", "seed", "student", "teacher", "metrics",
            "history", "cost", "environment", "status", "error", "created", "spec", "evaluation"]


def corpus() -> dict[str, Mutation]:
    """≥ 200 mutations of `valid_record()`, each one making it invalid."""
    out: dict[str, Mutation] = {}
    for path in _leaves(valid_record()):
        for name, value in ANYWHERE.items():
            out[f"{'.'.join(map(str, path))}={name}"] = _set(path, value)
    for path, values in TYPED.items():
        for i, value in enumerate(values):
            out[f"{'.'.join(map(str, path))}#{i}"] = _set(path, value)
    for key in REQUIRED:
        out[f"-{key}"] = lambda r, key=key: r.pop(key)
    out["+extra"] = lambda r: r.update(extra=1)
    out["-primary"] = lambda r: r["metrics"]["values"].pop("top1")
    return out


#: Files that are no JSON record at all.
RAW = {"not-utf8": b"\xff\xfe{}", "truncated": b'{"schema_version": 2, "task": ', "empty": b"",
       "array": b"[1, 2]", "deep": b"[" * 100_000 + b"]" * 100_000, "big-number": b'{"seed": 1e400}',
       "many-digits": b'{"seed": 1' + b"0" * 5000 + b"}", "nan-literal": b'{"seed": NaN}'}


def _write_corpus(root: Path) -> list[Path]:
    folder = root / "classification" / "small" / "kd"
    folder.mkdir(parents=True)
    files = []
    for i, (name, mutate) in enumerate(corpus().items()):
        record = valid_record()
        mutate(record)
        assert validation_errors(record), f"mutation {name} left the record valid"
        path = folder / f"seed{i}.json"
        path.write_bytes(json.dumps(record, allow_nan=True).encode("utf-8", "surrogatepass"))
        files.append(path)
    for j, raw in enumerate(RAW.values(), start=len(files)):
        (folder / f"seed{j}.json").write_bytes(raw)
        files.append(folder / f"seed{j}.json")
    (folder / f"seed{len(files)}.json").mkdir()  # a folder named like a record
    os.symlink(f"seed{len(files) + 1}.json", folder / f"seed{len(files) + 1}.json")  # a link to itself
    os.symlink("/etc/hostname", folder / f"seed{len(files) + 2}.json")  # a link out of the folder
    os.symlink("..", folder / "up")  # a folder loop
    return files


def test_a_fuzzed_corpus_is_rejected_one_line_each_without_traceback(tmp_path: Path) -> None:
    assert len(corpus()) >= 200
    root = tmp_path / "results"
    files = _write_corpus(root)
    proc = subprocess.run([sys.executable, "-P", "-m", "kdbench.cli", "validate", str(root)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[-1] == f"0 valid, {len(files) + 3} invalid"
    assert len(lines) == len(files) + 4  # one line per file, and the summary
    for line in lines[:-1]:
        assert ": invalid: " in line and len(line) < 700, line


def test_the_sites_reader_refuses_each_one_in_one_line(tmp_path: Path) -> None:
    for file in _write_corpus(tmp_path / "results"):
        with pytest.raises(UsageError) as e:
            data._read(str(file))
        assert "\n" not in str(e.value) and len(str(e.value)) < 700 and file.name in str(e.value)


def test_the_site_build_lists_what_it_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.site.fixtures import make_record, write

    results = tmp_path / "results"
    write(results, make_record("classification", "kd", 0))
    folder = results / "classification" / "small" / "kd"
    (folder / "seed7.json").mkdir()
    os.symlink("seed8.json", folder / "seed8.json")
    os.symlink("/etc/hostname", folder / "seed9.json")
    os.symlink("..", folder / "loop")
    build_site(results, tmp_path / "site", jobs=1)
    err = capsys.readouterr().err
    for name, why in (("seed7.json", "a directory"), ("seed8.json", "looping symbolic link"),
                      ("seed9.json", "symbolic link to outside")):
        assert any(f"skipped {folder / name}: " in line and why in line for line in err.splitlines()), name
    (folder / "seed10.json").write_text(json.dumps(valid_record(task="../../etc")))
    with pytest.raises(UsageError, match=r"seed10.json: invalid record: task: "):
        build_site(results, tmp_path / "site", jobs=1)


def test_traversal_in_a_record_path_or_a_card_name_is_refused(tmp_path: Path, cache: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    for task, key, method in (("../../etc", "small", "kd"), ("classification", "../../x", "kd"),
                              ("classification", "small", "../../kd"), ("/abs", "small", "kd")):
        with pytest.raises(UsageError, match="not a safe name"):
            record_path(tmp_path / "results", task, key, method, 0)
    from kdbench.protocol import task_cards

    card = yaml.safe_load(task_cards("classification")["smoke"].read_text())
    card["name"] = "../../../../escaped"
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(card))
    results = tmp_path / "deep" / "er" / "results"
    assert main(["run", "--task", "classification", "--protocol", str(path), "--method", "baseline",
                 "--results", str(results)]) == 2
    assert "name" in one_line(capsys.readouterr().err)
    assert not list(tmp_path.rglob("seed*.json")) and not (cache / "runs").exists()


@pytest.mark.parametrize("seed", [2**32, 2**40, 2**64])
def test_seeds_beyond_32_bits_are_refused(seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *SMOKE, "--method", "baseline", "--seed", str(seed), "--results", str(tmp_path)]) == 2
    assert "--seed must be an integer in [0, 2**32)" in one_line(capsys.readouterr().err)
    assert main(["sweep", "--tasks", "classification", "--methods", "baseline", "--seeds", f"0,{seed}",
                 "--protocol", "smoke", "--results", str(tmp_path), "--dry-run"]) == 2
    assert "[0, 2**32)" in one_line(capsys.readouterr().err)


def test_records_are_0644_and_a_stale_temp_file_goes_with_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "r" / "seed0.json"
    path.parent.mkdir()
    stale, fresh = path.parent / ".seed0.json.abc123.tmp", path.parent / ".seed0.json.def456.tmp"
    stale.write_text("half a rec")
    fresh.write_text("being written")
    old = stale.stat().st_mtime - STALE_TMP_SECONDS - 10
    os.utime(stale, (old, old))
    write_record(path, valid_record())
    assert (path.stat().st_mode & 0o777) == 0o644
    assert not stale.exists() and fresh.exists()  # a live writer's file stays
    atomic_write_bytes(tmp_path / "x.bin", b"x")
    assert ((tmp_path / "x.bin").stat().st_mode & 0o777) == 0o644


def test_csv_and_markdown_downloads_neutralise_formulas_and_markup(tmp_path: Path) -> None:
    import pandas as pd

    from kdbench.compare import compare_table, load_frame
    from kdbench.compare.render import csv_text, markdown_text, render
    from tests.site.fixtures import make_record, write

    frame = pd.DataFrame({"name": ["=HYPERLINK(\"x\")", "+1", "-2", "@SUM(A1)", "ok"], "v": [-1.0, 1, 2, 3, 4]})
    rows = csv_text(frame).splitlines()
    assert rows[2:] == ["'+1,1.0", "'-2,2.0", "'@SUM(A1),3.0", "ok,4.0"]
    assert rows[1].startswith('"\'=HYPERLINK') and rows[1].endswith(",-1.0")  # numbers stay numbers
    assert markdown_text("<img src=x onerror=alert(1)> | **b** [l](u)") == \
        "&lt;img src=x onerror=alert(1)&gt; \\| \\*\\*b\\*\\* \\[l\\](u)"
    results = tmp_path / "results"
    for seed in range(2):
        for method in ("baseline", "kd"):
            record = make_record("classification", method, seed, 90.0 + seed, cpu="=cmd|' /C calc'!A0 <b>x</b>")
            write(results, record)
    table = compare_table(load_frame(results), "classification", "small")
    md = render(table, "markdown")
    assert "<b>" not in md and "&lt;b&gt;x&lt;/b&gt;" in md
    build_site(results, tmp_path / "site", jobs=1)
    runs = (tmp_path / "site" / "runs.csv").read_text()
    assert "'=cmd|' /C calc'!A0 <b>x</b>" in runs
    for download in ("runs.csv", "overview.csv", "task/classification/small/table.csv"):
        cells = [c for line in (tmp_path / "site" / download).read_text().splitlines() for c in line.split(",")]
        assert not any(c.lstrip('"').startswith(("=", "+", "@")) for c in cells), download
