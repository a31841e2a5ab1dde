"""Smoke runs of the data-fraction service (card `train.data_fraction`, kdbench.runner.data_fraction):
at keep 0.5 the student trains on half of each task's training split while the teacher is the very
checkpoint a full-data run uses; the record says which samples the student saw; keep 1 trains
exactly as no fraction; EL2N's scoring models are trained once per card and prune every seed alike;
`Job.stop_epoch` trains the first epochs of the card's schedule."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kdbench.adapters import TASKS, get_adapter
from kdbench.cli import main
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext
from kdbench.protocol import load_protocol
from kdbench.records import validation_errors
from kdbench.runner import data_fraction as DF
from kdbench.runner.train import Job, fit, probe_outputs


def _run(task: str, method: str, results: Path, *sets: str, seed: int = 0) -> dict[str, Any]:
    argv = ["run", "--task", task, "--protocol", "smoke", "--device", "cpu", "--method", method,
            "--seed", str(seed), "--results", str(results)]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    [path] = (results / task).glob(f"smoke*/{method}/seed{seed}.json")
    record: dict[str, Any] = json.loads(path.read_text())
    assert validation_errors(record) == [] and record["status"] == "ok"
    return record


def _trace(record: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(h["epoch"], h["loss"], h["terms"], h["lr"], h.get("metrics")) for h in record["history"]]


def _smoke_adapter(task: str) -> Any:
    return get_adapter(task)(load_protocol(task, "smoke"), None, torch.device("cpu"))


HALF = ("train.data_fraction.keep=0.5",)


def test_kd_on_half_the_data_learns_from_the_full_data_teacher_and_records_the_subset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    full = _run("classification", "kd", tmp_path / "full")
    capsys.readouterr()
    half = _run("classification", "kd", tmp_path / "half", *HALF)
    err = capsys.readouterr().err
    assert "teacher once" not in err  # the full-data run's cached teacher, not a new one
    assert half["teacher"]["checkpoint_sha256"] == full["teacher"]["checkpoint_sha256"]
    assert half["spec"]["teacher"]["sha256"] == full["spec"]["teacher"]["sha256"]
    assert full["spec"]["train_subset"] is None
    assert half["protocol"]["key"] == f"smoke+{half['protocol']['sha256'][:8]}" and not half["protocol"]["shipped"]
    adapter = _smoke_adapter("classification")
    classes = adapter.train_classes()
    expected = DF.choose(adapter.train_size, 0.5, classes, None, torch.Generator().manual_seed(DF.subset_seed(0)))
    counts = [int((classes == c).sum()) for c in torch.unique(classes)]
    assert half["spec"]["train_subset"] == {
        "rule": "random", "keep": 0.5, "kept": sum(round(0.5 * n) for n in counts), "total": adapter.train_size,
        "stratified": True, "seed": DF.subset_seed(0), "indices_sha256": DF.indices_sha256(expected), "scores": None}
    assert f"indices sha256 {DF.indices_sha256(expected)[:12]}" in err
    [teacher_record] = (tmp_path / "half" / "classification").glob("smoke+*/teacher/seed0.json")
    assert json.loads(teacher_record.read_text())["spec"]["train_subset"] is None  # the teacher saw all
    assert half["metrics"]["values"] != full["metrics"]["values"] or _trace(half) != _trace(full)
    other = _run("classification", "baseline", tmp_path / "half", *HALF, seed=1)
    assert other["spec"]["train_subset"]["indices_sha256"] != half["spec"]["train_subset"]["indices_sha256"]
    assert other["spec"]["train_subset"]["kept"] == half["spec"]["train_subset"]["kept"]
    again = _run("classification", "baseline", tmp_path / "again", *HALF)  # another method, the same seed
    assert again["spec"]["train_subset"] == half["spec"]["train_subset"]


def test_keep_one_trains_exactly_as_the_card_without_a_fraction(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    full = _run("classification", "baseline", tmp_path / "full")
    whole = _run("classification", "baseline", tmp_path / "whole", "train.data_fraction.keep=1.0")
    assert whole["spec"]["train_subset"]["kept"] == whole["spec"]["train_subset"]["total"] == 160
    assert _trace(whole) == _trace(full) and whole["metrics"] == full["metrics"]
    assert whole["student"]["checkpoint_sha256"] == full["student"]["checkpoint_sha256"]


EL2N = ("train.data_fraction.keep=0.5", "train.data_fraction.rule=el2n", "train.data_fraction.score_runs=2",
        "train.data_fraction.score_epochs=1")


@pytest.mark.parametrize("task", ["classification", "ood"])
def test_el2n_keeps_the_hardest_half_by_class_from_scoring_models_trained_once(
        task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    first = _run(task, "kd", tmp_path / "results", *EL2N)
    assert capsys.readouterr().err.count("el2n: training scoring model") == 2
    second = _run(task, "baseline", tmp_path / "results", *EL2N, seed=1)
    assert "el2n: training scoring model" not in capsys.readouterr().err  # read back from the cache
    subset = first["spec"]["train_subset"]
    assert second["spec"]["train_subset"] == subset  # the scores are the card's: every seed keeps the same samples
    [folder] = (tmp_path / "cache" / "data-scores" / task).iterdir()
    mean = np.mean([np.load(folder / f"run{r}.npy") for r in range(2)], axis=0)
    adapter = _smoke_adapter(task)
    expected = DF.choose(adapter.train_size, 0.5, adapter.train_classes(), mean, None)
    assert subset["indices_sha256"] == DF.indices_sha256(expected) and subset["kept"] == len(expected)
    assert subset["rule"] == "el2n" and subset["seed"] is None and subset["stratified"] is True
    card = load_protocol(task, "smoke")
    assert subset["scores"] == {"kind": "el2n", "model": str(card.card["student"]["arch"]), "runs": 2, "epochs": 1,
                                "of_epochs": int(card.typed.train.epochs),
                                "sha256": hashlib.sha256(mean.astype("<f8").tobytes()).hexdigest()}
    assert mean.min() >= 0.0 and mean.max() <= np.sqrt(2) + 1e-12  # an EL2N score lies in [0, √2]
    kept = torch.zeros(adapter.train_size, dtype=torch.bool)
    kept[expected] = True
    classes = adapter.train_classes()
    for c in torch.unique(classes):  # within each class, every kept sample scores at least every dropped one
        mine = classes == c
        if (mine & ~kept).any():
            assert mean[(mine & kept).numpy()].min() >= mean[(mine & ~kept).numpy()].max()


SERVED = [t for t in sorted(TASKS) if DF.served(get_adapter(t), "random") and t != "classification"]


@pytest.mark.parametrize("task", SERVED)
def test_kd_on_half_the_data_runs_on_every_task_that_serves_it(task: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    record = _run(task, "kd", tmp_path / "results", *HALF)
    subset = record["spec"]["train_subset"]
    adapter = _smoke_adapter(task)
    classes = adapter.train_classes()
    if classes is None:
        assert subset["kept"] == round(0.5 * adapter.train_size) and subset["stratified"] is False
    else:
        assert subset["kept"] == sum(round(0.5 * int((classes == c).sum())) for c in torch.unique(classes))
    assert subset["total"] == adapter.train_size and record["teacher"]["checkpoint_sha256"]


def test_seqkd_decodes_the_whole_split_and_trains_on_the_kept_pairs(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SeqKD's teacher targets are decoded (attach_teacher) before the split is cut, so they stay
    aligned with their sources."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    record = _run("translation", "seqkd", tmp_path / "results", *HALF)
    assert record["spec"]["train_subset"]["kept"] == 150 and record["spec"]["train_subset"]["total"] == 300


def test_stop_epoch_trains_the_first_epochs_of_the_cards_schedule() -> None:
    adapter = _smoke_adapter("classification")
    baseline = get_method("baseline")
    train = {**adapter.protocol.card["train"], "epochs": 4, "eval_every": 0}

    def job(stop: int | None) -> tuple[Job, torch.nn.Module]:
        torch.manual_seed(0)
        model = adapter.build_model("student", frozenset())
        ctx = MethodContext(probe_outputs(adapter, model), None, adapter.train_size, 4)
        return Job(adapter, model, baseline(baseline.Config(), ctx), None, train, 0, None, stop_epoch=stop), model

    short, _ = job(2)
    whole, _ = job(None)
    cut, full = fit(short).history, fit(whole).history
    assert [h["epoch"] for h in cut] == [0, 1] and len(full) == 4
    assert [(h["loss"], h["lr"]) for h in cut] == [(h["loss"], h["lr"]) for h in full[:2]]
    assert cut[-1]["lr"] > full[-1]["lr"]  # the cosine still spans all 4 epochs
