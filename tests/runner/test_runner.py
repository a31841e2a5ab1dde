"""The runner's promises: deterministic CPU runs, resume after a kill, NaN → failed record,
cached teachers with their sha256 in every record, the standard card on CIFAR-100 files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdbench.adapters.classification.data import write_cifar100_fixture
from kdbench.adapters.classification.models import build_model
from kdbench.cli import main
from kdbench.records import validation_errors
from kdbench.runner.spec import RunOptions

SMOKE = ["run", "--task", "classification", "--protocol", "smoke", "--device", "cpu"]


def _record(results: Path, method: str, protocol: str = "smoke", seed: int = 0) -> dict:
    """The one record of `method` under the card or one ablation of it (`<card>+<sha8>`)."""
    paths = [*results.glob(f"classification/{protocol}/{method}/seed{seed}.json"),
             *results.glob(f"classification/{protocol}+*/{method}/seed{seed}.json")]
    assert len(paths) == 1, paths
    return json.loads(paths[0].read_text())


def test_same_seed_same_metrics_other_seed_differs(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert main([*SMOKE, "--method", "kd", "--results", str(tmp_path / name)]) == 0
    assert main([*SMOKE, "--method", "kd", "--seed", "1", "--results", str(tmp_path / "c")]) == 0
    a, b, c = (_record(tmp_path / n, "kd", seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    assert a["metrics"] == b["metrics"]
    assert a["student"]["checkpoint_sha256"] == b["student"]["checkpoint_sha256"]
    assert a["metrics"] != c["metrics"]
    teacher = a["teacher"]
    assert len(teacher["checkpoint_sha256"]) == 64 and teacher == c["teacher"]  # one shared teacher
    teacher_record = _record(tmp_path / "a", "teacher")
    assert not validation_errors(teacher_record)
    assert teacher_record["metrics"]["values"] == teacher["metrics"]["test"]
    assert teacher_record["metrics"]["val"] == teacher["metrics"]["val"]


def test_killed_run_resumes_to_identical_metrics(tmp_path: Path) -> None:
    argv = [*SMOKE, "--method", "pskd", "--set", "train.epochs=40", "--set", "train.eval_every=0"]
    assert main([*argv, "--results", str(tmp_path / "whole")]) == 0
    whole = _record(tmp_path / "whole", "pskd")
    env = {**os.environ, "KDBENCH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "kdbench.cli", *argv, "--results", str(tmp_path / "killed")]
    runs = tmp_path / "cache" / "runs"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(runs.rglob("last.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.2))  # somewhere after the first checkpoint
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(runs.rglob("last.pt")), "the run should have left a checkpoint to resume from"
    assert not (tmp_path / "killed" / "classification").exists()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    record = _record(tmp_path / "killed", "pskd")
    assert record["metrics"] == whole["metrics"]
    assert [h["loss"] for h in record["history"]] == [h["loss"] for h in whole["history"]]


def test_nan_loss_fails_the_run_naming_the_step(
    results: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kdbench.adapters.classification.adapter import ClassificationAdapter

    original = ClassificationAdapter.task_loss
    calls = {"n": 0}

    def poisoned(self, outputs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        terms = original(self, outputs)
        return {k: v * float("nan") for k, v in terms.items()} if calls["n"] == 4 else terms

    monkeypatch.setattr(ClassificationAdapter, "task_loss", poisoned)
    assert main([*SMOKE, "--method", "baseline", "--results", str(results)]) == 1
    record = _record(results, "baseline")
    assert record["status"] == "failed"
    assert "non-finite loss at epoch 0, step 3" in record["error"]
    assert not validation_errors(record)
    assert "failed" in capsys.readouterr().out


def test_cifar100_standard_card_on_a_fixture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    write_cifar100_fixture(root, n_train=24, n_test=12)
    teacher = tmp_path / "resnet32x4.pth"
    torch.manual_seed(0)
    torch.save({"model": build_model("resnet32x4", 100, 3).state_dict()}, teacher)  # mdistiller layout
    common = ["run", "--task", "classification", "--protocol", "standard", "--device", "cpu",
              "--data-root", str(root), "--results", str(tmp_path / "res"),
              "--set", "train.epochs=1", "--set", "train.batch_size=12", "--set", "data.val_size=6"]
    assert main([*common, "--method", "kd", "--teacher", str(teacher)]) == 0
    record = _record(tmp_path / "res", "kd", protocol="cifar100")
    assert record["tier"] == "standard" and record["student"]["arch"] == "resnet8x4"
    assert record["teacher"]["arch"] == "resnet32x4" and record["teacher"]["source"] == "given"
    assert record["spec"]["overrides"] == {"train.epochs": 1, "train.batch_size": 12, "data.val_size": 6}
    assert set(record["metrics"]["values"]) == {"top1", "top5", "nll", "ece", "aurc"}
    capsys.readouterr()
    assert main([*common, "--method", "pskd", "--teacher", str(teacher)]) == 2
    assert "--teacher is for methods with an external teacher" in capsys.readouterr().err
    assert main([*common[:-6], "--method", "baseline", "--data-root", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cifar-100-python" in err[0] and "cifar-100-python.tar.gz" in err[0]


def test_a_task_that_cannot_serve_a_method_says_so_before_training() -> None:
    from kdbench.adapters.classification.adapter import ClassificationAdapter
    from kdbench.errors import UsageError
    from kdbench.runner.spec import resolve

    provided = ClassificationAdapter.provides
    try:
        ClassificationAdapter.provides = frozenset({"ids"})  # type: ignore[misc]
        with pytest.raises(UsageError, match="cannot serve method 'gold': it needs layers"):
            resolve(RunOptions(task="classification", method="gold", protocol="smoke"))
    finally:
        ClassificationAdapter.provides = provided  # type: ignore[misc]


def test_outputs_short_of_a_methods_needs_fail_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stale `provides` (here: a student built without the auxiliary heads `layers` asks for)
    is one error line from the student's probe, and no record."""
    from kdbench.adapters.classification.adapter import ClassificationAdapter

    build = ClassificationAdapter.build_model
    monkeypatch.setattr(ClassificationAdapter, "build_model", lambda self, role, needs: build(self, role, frozenset()))
    assert main([*SMOKE, "--method", "gold", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "method 'gold' needs layers from the student's Outputs" in err[-1]
    assert "provide only features, heads, ids" in err[-1]
    assert not list(tmp_path.rglob("*.json"))


def test_resume_restores_ema_and_method_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after an epoch's checkpoint, then the same command: same metrics as uninterrupted
    (the detection smoke card trains with EMA weights; GO-LSD's union matching is on)."""
    from kdbench.runner import train

    argv = ["run", "--task", "detection", "--protocol", "smoke", "--device", "cpu", "--method", "gold",
            "--set", "train.epochs=3", "--set", "train.eval_every=0"]
    assert main([*argv, "--results", str(tmp_path / "whole")]) == 0
    original = train._train_epoch
    calls = {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "_train_epoch", crash_in_second_epoch)
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*argv, "--results", str(tmp_path / "resumed")])
    monkeypatch.setattr(train, "_train_epoch", original)
    assert main([*argv, "--results", str(tmp_path / "resumed")]) == 0
    [whole_path] = (tmp_path / "whole" / "detection").glob("smoke*/gold/seed0.json")
    whole = json.loads(whole_path.read_text())
    [resumed_path] = (tmp_path / "resumed" / "detection").glob("smoke*/gold/seed0.json")
    resumed = json.loads(resumed_path.read_text())
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["student"]["checkpoint_sha256"] == whole["student"]["checkpoint_sha256"]
