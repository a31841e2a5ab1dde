"""The runner's `generations` service (kdbench.methods.base.RUNNER_NEEDS, train.fit_generations): G + 1
trainings of the student, each from a fresh initialisation under a seed derived from the run's seed and
the generation, each distilled from the previous generation's final model (its EMA weights under the
card's train.ema), every generation's val metrics in the record, and a run killed inside a generation
resuming there to the very record an uninterrupted run writes. GTSD (Borup & Andersen) is its user."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kdbench.adapters import TASKS, get_adapter
from kdbench.adapters.base import why_not_served
from kdbench.cli import main
from kdbench.errors import KDBenchError
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, trainings
from kdbench.protocol import load_protocol
from kdbench.records import validation_errors
from kdbench.runner import checkpoint, train
from kdbench.runner.train import Job, fit_generations, fit_stages, generation_seed, probe_outputs
from tests.recordkit import valid_record

GTSD = get_method("gtsd")
SERVED = [task for task in sorted(TASKS) if why_not_served(get_adapter(task), GTSD) is None]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gtsd_declares_the_service_and_serves_the_tasks_with_label_heads() -> None:
    assert GTSD.runtime_needs == {"generations"} and GTSD.teacher == "self"
    assert SERVED == ["classification", "ood", "pose", "translation"]  # detection has no label_heads
    assert "label_heads" in why_not_served(get_adapter("detection"), GTSD)  # type: ignore[operator]
    assert trainings(GTSD, GTSD.Config()) == 5 and trainings(GTSD, GTSD.Config(generations=1)) == 2
    assert trainings(get_method("kd"), get_method("kd").Config()) == 1


def test_generation_seeds_are_the_runs_then_derived_and_distinct() -> None:
    seeds = {(s, g): generation_seed(s, g) for s in range(4) for g in range(6)}
    assert all(seeds[s, 0] == s for s in range(4))
    later = [v for (s, g), v in seeds.items() if g > 0]
    assert len(set(later)) == len(later) and not set(later) & set(range(4))
    assert all(0 <= v < 2**63 - 1 for v in later) and generation_seed(3, 2) == seeds[3, 2]


def test_each_generation_is_fresh_and_learns_from_the_last_ones_ema(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generation g > 0: a new student built under generation_seed(seed, g), trained with its own
    seed, with generation g − 1's final model (the card's EMA of it) frozen in eval mode as teacher."""
    adapter = get_adapter("classification")(load_protocol("classification", "smoke"), None, torch.device("cpu"))
    torch.manual_seed(0)
    student = adapter.build_model("student", GTSD.needs)
    method = GTSD(GTSD.Config(generations=2), MethodContext(probe_outputs(adapter, student, GTSD), None,
                                                            adapter.train_size, 1))
    card = {**adapter.protocol.card["train"], "epochs": 1, "eval_every": 0, "ema": {"decay": 0.9, "warmup_steps": 2}}
    job = Job(adapter, student, method, None, card, 0, None)
    calls: list[dict[str, Any]] = []
    emas: list[Any] = []
    original_fit, original_ema = train.fit, train.EMA

    class RecordingEMA(original_ema):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            emas.append(self)

    def spy_fit(j: Job) -> train.FitResult:
        teacher = None if j.teacher is None else (_state(j.teacher), j.teacher.training,
                                                  any(p.requires_grad for p in j.teacher.parameters()))
        call = {"generation": j.method.generation, "seed": j.seed, "start": _state(j.student), "teacher": teacher,
                "model": j.student}
        result = original_fit(j)
        call.update(end=_state(j.student), ema=_state(emas[-1].model))
        calls.append(call)
        return result

    monkeypatch.setattr(train, "fit", spy_fit)
    monkeypatch.setattr(train, "EMA", RecordingEMA)
    result = fit_generations(job)
    assert [c["generation"] for c in calls] == [0, 1, 2]
    assert [c["seed"] for c in calls] == [0, generation_seed(0, 1), generation_seed(0, 2)]
    assert calls[0]["model"] is student and calls[0]["teacher"] is None
    for g in (1, 2):
        torch.manual_seed(generation_seed(0, g))
        assert _equal(calls[g]["start"], _state(adapter.build_model("student", GTSD.needs)))  # a fresh init
        assert not _equal(calls[g]["start"], calls[g - 1]["start"]) and calls[g]["model"] is not student
        state, training, grads = calls[g]["teacher"]
        assert _equal(state, calls[g - 1]["end"]) and not training and not grads  # the last one's final model,
        assert _equal(calls[g - 1]["end"], calls[g - 1]["ema"])  # which is its EMA, frozen, in eval mode
    assert _equal(_state(student), calls[2]["end"])  # the run's model: the last generation
    assert [(h["generation"], h["epoch"]) for h in result.history] == [(0, 0), (1, 0), (2, 0)]
    assert ["metrics" in h for h in result.history] == [True, True, False]  # the last one's: the run's val
    assert set(result.history[0]["metrics"]) >= {"top1"}
    assert set(result.history[0]["terms"]) == {"gtsd/labels/cls"}  # generation 0: the labels alone
    assert set(result.history[1]["terms"]) == {"gtsd/labels/cls", "gtsd/teacher/cls"}  # no task/cls: ce_weight 0


def _argv(generations: int, epochs: int) -> list[str]:
    return ["run", "--task", "classification", "--protocol", "smoke", "--device", "cpu", "--method", "gtsd",
            "--set", f"method.generations={generations}", "--set", f"train.epochs={epochs}",
            "--set", "train.eval_every=0"]


ARGV = _argv(2, 3)


def _record(results: Path, task: str = "classification") -> dict[str, Any]:
    [path] = (results / task).glob("smoke*/gtsd/seed0.json")
    return json.loads(path.read_text())


def _trace(record: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The history without its wall-clock seconds."""
    return [(h["generation"], h["epoch"], h["loss"], h["terms"], h["lr"], h.get("metrics")) for h in record["history"]]


def test_a_run_killed_in_generation_two_resumes_there_and_ends_bit_identical(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "whole-cache"))
    assert main([*ARGV, "--results", str(tmp_path / "whole")]) == 0
    whole = _record(tmp_path / "whole")
    assert validation_errors(whole) == []
    assert [(h["generation"], h["epoch"]) for h in whole["history"]] == [(g, e) for g in range(3) for e in range(3)]
    assert [i for i, h in enumerate(whole["history"]) if "metrics" in h] == [2, 5, 8]  # each generation's val
    assert whole["history"][8]["metrics"] == whole["metrics"]["val"]  # the last generation's: the run's
    assert whole["history"][2]["metrics"] != whole["history"][5]["metrics"]

    original, calls = train._train_epoch, {"n": 0, "armed": 1}
    seen: dict[str, Any] = {}

    def crash_in_generation_two(job, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["armed"] and job.method.generation == 2 and args[2] == 2:  # generation 2, third epoch (index 2)
            folder = job.checkpoint.parent
            seen["files"] = sorted(p.name for p in folder.iterdir())
            last = checkpoint.load(folder / "last-generation2.pt")
            seen["last"] = (last["generation"], last["epoch"])
            seen["teacher"] = checkpoint.load(folder / "generation1.pt")
            raise RuntimeError("simulated crash")
        return original(job, *args, **kwargs)

    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(train, "_train_epoch", crash_in_generation_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*ARGV, "--results", str(tmp_path / "resumed")])
    assert calls["n"] == 9  # 3 + 3 + the third epoch of generation 2
    assert {"generation0.pt", "generation1.pt", "last-generation2.pt"} <= set(seen["files"])
    assert seen["last"] == (2, 2)  # generation 2, two epochs done
    assert seen["teacher"]["generation"] == 1 and seen["teacher"]["history"][-1]["metrics"] == \
        whole["history"][5]["metrics"]
    calls.update(n=0, armed=0)
    assert main([*ARGV, "--results", str(tmp_path / "resumed")]) == 0
    assert calls["n"] == 1, "the rerun should train only the last epoch of generation 2"
    resumed = _record(tmp_path / "resumed")
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["student"]["checkpoint_sha256"] == whole["student"]["checkpoint_sha256"]
    assert _trace(resumed) == _trace(whole)
    [run_dir] = (tmp_path / "cache" / "runs").rglob("student.pt")
    assert sorted(p.name for p in run_dir.parent.glob("*.pt")) == ["student.pt"]  # resume files removed


def test_a_damaged_generation_file_trains_that_generation_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Its per-epoch checkpoint still holds the finished generation, so the run ends the same."""
    argv = _argv(1, 1)
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "whole-cache"))
    assert main([*argv, "--results", str(tmp_path / "whole")]) == 0
    original = train._train_epoch

    def crash_in_generation_one(job, *args, **kwargs):  # type: ignore[no-untyped-def]
        if job.method.generation == 1:
            (job.checkpoint.parent / "generation0.pt").write_bytes(b"not a checkpoint")
            raise RuntimeError("simulated crash")
        return original(job, *args, **kwargs)

    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(train, "_train_epoch", crash_in_generation_one)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*argv, "--results", str(tmp_path / "resumed")])
    monkeypatch.setattr(train, "_train_epoch", original)
    assert main([*argv, "--results", str(tmp_path / "resumed")]) == 0
    assert "training the generation again" in capsys.readouterr().err
    whole, resumed = _record(tmp_path / "whole"), _record(tmp_path / "resumed")
    assert resumed["student"]["checkpoint_sha256"] == whole["student"]["checkpoint_sha256"]
    assert _trace(resumed) == _trace(whole)


@pytest.mark.parametrize("task", SERVED)
def test_gtsd_runs_on_every_served_tasks_smoke_card(task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    argv = ["run", "--task", task, "--protocol", "smoke", "--device", "cpu", "--method", "gtsd",
            "--set", "method.generations=1", "--results", str(tmp_path / "results")]
    assert main(argv) == 0
    record = _record(tmp_path / "results", task)
    assert validation_errors(record) == [] and record["status"] == "ok"
    epochs = int(load_protocol(task, "smoke").typed.train.epochs)
    assert [h["generation"] for h in record["history"]] == [0] * epochs + [1] * epochs
    primary = record["metrics"]["primary"]
    assert primary in record["history"][epochs - 1]["metrics"]  # generation 0's val
    assert record["history"][-1]["metrics"] == record["metrics"]["val"]
    assert any(k.startswith("gtsd/teacher/") for k in record["history"][-1]["terms"])
    assert not any(k.startswith("gtsd/teacher/") for k in record["history"][0]["terms"])


def test_the_record_schema_types_the_generation_of_a_history_entry() -> None:
    entry = {"epoch": 0, "loss": 1.0, "seconds": 0.5}
    ok = valid_record(history=[{**entry, "generation": 0, "metrics": {"top1": 50.0}}, {**entry, "generation": 1}])
    assert validation_errors(ok) == []
    for bad in ("one", -1, 1.5):
        errors = validation_errors(valid_record(history=[{**entry, "generation": bad}]))
        assert errors and "generation" in errors[0], (bad, errors)


def test_generations_and_later_stages_are_refused_together() -> None:
    adapter = get_adapter("classification")(load_protocol("classification", "smoke"), None, torch.device("cpu"))
    student = adapter.build_model("student", GTSD.needs)
    method = GTSD(GTSD.Config(), MethodContext(probe_outputs(adapter, student), None, adapter.train_size, 1))
    method.later_stages = lambda: (object(),)  # type: ignore[method-assign, assignment, return-value]
    with pytest.raises(KDBenchError, match="needs generations and has later stages"):
        fit_stages(Job(adapter, student, method, None, {"epochs": 1}, 0, None))
