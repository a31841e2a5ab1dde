"""Checkpoints are data, never code: hostile or damaged files as `--teacher`, as a run's resume
checkpoint and as a cached teacher are refused (one line) or moved aside, and nothing in them
runs. The teacher cache keys on what trains the teacher, and its file hashes the weights alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdbench.cli import main
from kdbench.records import read_record, validation_errors

from .conftest import SMOKE, damaged, malicious, one_line


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_a_malicious_teacher_never_runs(kind: str, tmp_path: Path, cache: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    teacher = malicious(tmp_path / f"teacher-{kind}.pt", marker, kind)
    results = tmp_path / "results"
    assert main(["run", *SMOKE, "--method", "kd", "--results", str(results), "--teacher", str(teacher)]) == 2
    line = one_line(capsys.readouterr().err)
    assert teacher.name in line and "refused, not run" in line
    assert not marker.exists()
    assert not list(results.rglob("seed*.json"))


@pytest.mark.parametrize("kind", ["empty", "random", "truncated", "text"])
def test_a_foreign_teacher_file_is_one_line(kind: str, tmp_path: Path, cache: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    teacher = damaged(tmp_path / f"{kind}.pt", kind)
    assert main(["run", *SMOKE, "--method", "kd", "--results", str(tmp_path / "r"), "--teacher", str(teacher)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{teacher.name}: not a kdbench checkpoint or state dict: " in line


def test_a_teacher_of_another_architecture_is_one_line_before_training(
        tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher = tmp_path / "other.pt"
    torch.save({"model": {"stages.0.0.0.weight": torch.zeros(8, 1, 3, 3), "head.weight": torch.zeros(3, 3)}}, teacher)
    assert main(["run", *SMOKE, "--method", "kd", "--results", str(tmp_path / "r"), "--teacher", str(teacher)]) == 2
    err = capsys.readouterr().err
    line = one_line(err)
    assert "not a checkpoint of this card's teacher convnet" in line
    assert "missing " in line and "unexpected head.weight" in line and "stages.0.0.0.weight [8, 1, 3, 3]" in line
    assert "epoch" not in err  # refused before any training


def _run_dir(cache: Path) -> Path:
    [student] = (cache / "runs").rglob("student.pt")
    return student.parent


@pytest.mark.parametrize("kind", ["malicious", "empty", "random", "truncated"])
def test_a_bad_resume_checkpoint_is_moved_aside_and_the_run_restarts(
        kind: str, tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    results = tmp_path / "results"
    argv = ["run", *SMOKE, "--method", "baseline", "--results", str(results)]
    assert main(argv) == 0
    clean = read_record(results / "classification" / "smoke" / "baseline" / "seed0.json")
    last = _run_dir(cache) / "last.pt"
    if kind == "malicious":
        malicious(last, marker)
    else:
        damaged(last, kind)
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "resume checkpoint" in line]
    assert len(warning) == 1 and str(last) in warning[0]
    assert "moved to last.pt.corrupt; training from scratch" in warning[0]
    assert not marker.exists()
    assert (last.parent / "last.pt.corrupt").is_file() and not last.exists()
    again = read_record(results / "classification" / "smoke" / "baseline" / "seed0.json")
    assert again["metrics"] == clean["metrics"] and not validation_errors(again)


def _teacher(results: Path, key: str = "smoke") -> dict:
    return read_record(results / "classification" / key / "teacher" / "seed0.json")


def test_the_poisoned_teacher_sequence_and_deterministic_teacher_bytes(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A teacher trained under `--set train.optimizer.lr=...` is not the card's teacher; the same
    weights hash the same in another cache; a hostile cached teacher is retrained, never run."""
    marker = tmp_path / "PWNED"
    results = tmp_path / "results"
    assert main(["teacher", *SMOKE, "--results", str(results), "--set", "train.optimizer.lr=0.00001"]) == 0
    [poisoned_file] = (results / "classification").glob("smoke+*/teacher/seed0.json")
    poisoned = read_record(poisoned_file)
    capsys.readouterr()
    assert main(["teacher", *SMOKE, "--results", str(results)]) == 0
    assert "training the convnet teacher once" in capsys.readouterr().err  # not the poisoned one, cached
    plain = _teacher(results)
    assert plain["student"]["checkpoint_sha256"] != poisoned["student"]["checkpoint_sha256"]

    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "other-cache"))  # another machine's cache
    assert main(["teacher", *SMOKE, "--results", str(tmp_path / "other")]) == 0
    other = _teacher(tmp_path / "other")
    assert other["student"]["checkpoint_sha256"] == plain["student"]["checkpoint_sha256"]
    assert other["metrics"] == plain["metrics"]

    [cached] = (tmp_path / "other-cache" / "teachers" / "classification").glob("*.pt")
    assert set(torch.load(cached, weights_only=True)) == {"arch", "state_dict"}  # no wall-clock inside
    assert {"history", "train_seconds", "metrics"} <= set(json.loads(cached.with_suffix(".json").read_text()))
    malicious(cached, marker)
    capsys.readouterr()
    assert main(["teacher", *SMOKE, "--results", str(tmp_path / "other"), "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "cached teacher unreadable" in err and "refused, not run" in err and "trained again" in err
    assert not marker.exists()
    assert _teacher(tmp_path / "other")["student"]["checkpoint_sha256"] == plain["student"]["checkpoint_sha256"]
