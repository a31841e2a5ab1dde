"""The runner's `online_teacher` service (kdbench.methods.base.RUNNER_NEEDS, kdbench.runner.online): the
card's teacher architecture built fresh under a seed derived from the run's seed, trained in the student's
steps on the same batches with the student's optimiser recipe, checkpointed with the student (weights,
optimiser, schedule) so that a run killed in the middle of the teacher's step sequence resumes to the very
record an uninterrupted run writes, and named in the record as trained online. BD-KD's online variant
(`bdkd_online`) is its user."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kdbench.adapters import TASKS, get_adapter
from kdbench.adapters.base import why_not_served
from kdbench.cli import main
from kdbench.compare import frame
from kdbench.errors import KDBenchError
from kdbench.methods import get_method, register
from kdbench.methods.base import RUNNER_NEEDS, MethodContext, trainings
from kdbench.protocol import load_protocol
from kdbench.records import validation_errors
from kdbench.runner import checkpoint, online, train
from kdbench.runner.online import ONLINE_FILE, OnlineTeacher, build_online_teacher, online_teacher_seed
from kdbench.runner.optim import build_optimizer
from kdbench.runner.train import Job, fit, fit_stages, probe_outputs
from tests.recordkit import valid_record

BDKDO = get_method("bdkd_online")
SERVED = [task for task in sorted(TASKS) if why_not_served(get_adapter(task), BDKDO) is None]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Nested state dicts (model weights, optimiser state) equal bit for bit."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not isinstance(y, dict) or not _equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not isinstance(y, torch.Tensor) or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _adapter(task: str = "classification") -> Any:
    return get_adapter(task)(load_protocol(task, "smoke"), None, torch.device("cpu"))


def test_bdkd_online_declares_the_service_and_the_tasks_that_serve_it() -> None:
    assert BDKDO.teacher == "online" and BDKDO.runtime_needs == {"online_teacher"} and "online_teacher" in RUNNER_NEEDS
    assert SERVED == ["classification", "ood", "pose", "translation"]  # as the offline bdkd: softmax heads
    assert "binary" in why_not_served(get_adapter("detection"), BDKDO)  # type: ignore[operator]
    offline = get_method("bdkd")
    assert offline.teacher == "external" and "offline" in offline.summary() and "online" in BDKDO.summary()
    assert trainings(BDKDO, BDKDO.Config()) == 1  # one training: the teacher trains inside it


def test_the_teacher_kind_and_the_service_are_declared_together() -> None:
    with pytest.raises(ValueError, match="go together"):
        register(type("NoService", (BDKDO,), {"name": "no-service", "runtime_needs": frozenset()}))
    with pytest.raises(ValueError, match="go together"):
        register(type("NotOnline", (get_method("kd"),), {"name": "not-online",
                                                        "runtime_needs": frozenset({"online_teacher"})}))


def test_the_online_teachers_seed_is_derived_from_the_runs_alone() -> None:
    seeds = [online_teacher_seed(s) for s in range(200)]
    assert len(set(seeds)) == 200 and all(0 <= v < 2**32 for v in seeds)
    assert all(v != s for s, v in enumerate(seeds)) and online_teacher_seed(7) == seeds[7]


def test_the_online_teacher_is_fresh_and_trains_in_the_students_steps_with_its_recipe(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Built under online_teacher_seed(seed) by the adapter (no cache), trained in training mode in every
    step, with the card's optimiser, schedule and clipping, and its terms logged beside the student's."""
    adapter = _adapter()
    model, info = build_online_teacher(adapter, 3)
    torch.manual_seed(online_teacher_seed(3))
    start = _state(adapter.build_model("teacher", frozenset()))
    assert _equal(_state(model), start)
    assert info["source"] == "trained online" and info["seed"] == online_teacher_seed(3)
    assert info["checkpoint_sha256"] is None and info["arch"] == adapter.arch_name("teacher")
    torch.manual_seed(3)
    student = adapter.build_model("student", BDKDO.needs)
    ctx = MethodContext(probe_outputs(adapter, student, BDKDO), probe_outputs(adapter, model), adapter.train_size, 2)
    method = BDKDO(BDKDO.Config(), ctx)
    card = {**adapter.protocol.card["train"], "epochs": 2, "eval_every": 0, "grad_clip": 1.0}
    made: list[OnlineTeacher] = []
    modes: list[bool] = []
    clipped: list[int] = []

    class Spy(OnlineTeacher):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

        def step(self, loss: torch.Tensor, world: Any) -> None:
            modes.append(self.model.training)
            super().step(loss, world)

    original_clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(params: Any, limit: float, *args: Any, **kwargs: Any) -> Any:
        params = list(params)
        if any(p is q for p in params for q in model.parameters()):
            clipped.append(len(params))
        return original_clip(params, limit, *args, **kwargs)

    monkeypatch.setattr(train, "OnlineTeacher", Spy)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    result = fit(Job(adapter, student, method, model, card, 3, None))
    [teacher] = made
    steps = 2 * adapter.steps_per_epoch(int(card["batch_size"]))
    assert teacher.model is model and modes == [True] * steps and not model.training  # eval once trained
    assert len(clipped) == steps  # the card's grad_clip, on the teacher's own parameters
    assert not _equal(_state(model), start)  # it trained
    expected = build_optimizer(card["optimizer"], [torch.nn.Parameter(torch.zeros(1))])
    assert type(teacher.optimizer) is type(expected) and teacher.optimizer.defaults == expected.defaults
    assert teacher.schedule.last_epoch == steps  # stepped once per step
    assert teacher.optimizer.state and all(p.requires_grad for p in model.parameters())
    for entry in result.history:
        assert set(entry["terms"]) == {"task/cls", "bdkd_online/cls", "teacher/task/cls", "teacher/bdkd_online/cls"}
        student_terms = [v for k, v in entry["terms"].items() if not k.startswith("teacher/")]
        assert entry["loss"] == pytest.approx(sum(student_terms), rel=1e-6)  # the student's loss alone


def test_an_online_teacher_with_generations_or_later_stages_is_refused() -> None:
    adapter = _adapter()
    student = adapter.build_model("student", frozenset())
    method = BDKDO(BDKDO.Config(), MethodContext(probe_outputs(adapter, student), None, adapter.train_size, 1))
    method.runtime_needs = frozenset({"online_teacher", "generations"})
    with pytest.raises(KDBenchError, match="needs an online teacher and later stages or generations"):
        fit_stages(Job(adapter, student, method, None, {"epochs": 1}, 0, None))


ARGV = ["run", "--task", "classification", "--protocol", "smoke", "--device", "cpu", "--method", "bdkd_online",
        "--set", "train.epochs=3", "--set", "train.eval_every=0"]


def _record(results: Path, task: str = "classification") -> dict[str, Any]:
    [path] = (results / task).glob("smoke*/bdkd_online/seed0.json")
    return json.loads(path.read_text())


def _trace(record: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The history without its wall-clock seconds."""
    return [(h["epoch"], h["loss"], h["terms"], h["lr"], h.get("metrics")) for h in record["history"]]


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One uninterrupted run, with the online teacher's entry of every per-epoch checkpoint it saved."""
    root = tmp_path_factory.mktemp("whole")
    saved: dict[int, dict[str, Any]] = {}
    original = checkpoint.save

    def keep(path: Path, payload: dict[str, Any]) -> str:
        if "online_teacher" in payload:
            saved[int(payload["epoch"])] = copy.deepcopy(payload["online_teacher"])
        return original(path, payload)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDBENCH_CACHE", str(root / "cache"))
        patch.setattr(checkpoint, "save", keep)
        assert main([*ARGV, "--results", str(root / "results")]) == 0
    yield {"record": _record(root / "results"), "cache": root / "cache", "saved": saved}


def test_the_record_says_the_teacher_was_trained_online(whole: dict[str, Any]) -> None:
    record, cache = whole["record"], whole["cache"]
    assert validation_errors(record) == [] and record["status"] == "ok"
    assert record["method"]["teacher"] == "online" and record["method"]["name"] == "bdkd_online"
    teacher = record["teacher"]
    assert teacher["source"] == "trained online" and teacher["seed"] == online_teacher_seed(0)
    assert teacher["arch"] == _adapter().arch_name("teacher") and teacher["params"] > record["student"]["params"]
    [run_dir] = {p.parent for p in (cache / "runs").rglob("student.pt")}
    assert sorted(p.name for p in run_dir.glob("*.pt")) == [ONLINE_FILE, "student.pt"]  # resume files removed
    saved = run_dir / ONLINE_FILE
    assert teacher["checkpoint_sha256"] == hashlib.sha256(saved.read_bytes()).hexdigest()
    final = checkpoint.load(saved)["state_dict"]
    assert _equal(final, whole["saved"][3]["model"])  # the weights it ended training with
    assert set(teacher["metrics"]) == {"val", "test"} and "top1" in teacher["metrics"]["test"]
    assert record["spec"]["teacher"] == {"seed": online_teacher_seed(0), "sha256": teacher["checkpoint_sha256"],
                                         "record": None, "metric": {"name": "top1",
                                                                    "val": teacher["metrics"]["val"]["top1"],
                                                                    "test": teacher["metrics"]["test"]["top1"]}}
    assert record["spec"]["teacher_outputs"] is None  # no teacher-output cache: it changes every step
    assert not (cache / "teachers").exists()  # no cached teacher was trained, looked up or loaded
    assert {"teacher/task/cls", "teacher/bdkd_online/cls"} <= set(record["history"][-1]["terms"])


def test_an_online_teacher_is_no_tables_teacher() -> None:
    """The compare frame reads the card's external teacher as a table's teacher; an online one is not."""
    external = valid_record()
    online_record = valid_record(method={"name": "bdkd_online", "teacher": "online", "hparams": {}})
    assert frame._teacher_sha(external) is not None and frame._teacher_sha(online_record) is None
    assert frame._teacher_test(external) == 94.0 and frame._teacher_test(online_record) != frame._teacher_test(
        online_record)  # NaN
    assert validation_errors(online_record) == []


def _crash_mid_epoch(monkeypatch: pytest.MonkeyPatch, at: int, seen: dict[str, Any]) -> None:
    """The online teacher's step number `at` (1-based, over the whole run) raises, after reading the
    resume checkpoint the run has written by then."""
    original = OnlineTeacher.step
    calls = {"n": 0}

    def step(self: OnlineTeacher, loss: torch.Tensor, world: Any) -> None:
        calls["n"] += 1
        if calls["n"] == at:
            [last] = (Path(seen["cache"]) / "runs").rglob("last.pt")
            seen["last"] = checkpoint.load(last)
            raise RuntimeError("simulated crash")
        original(self, loss, world)

    monkeypatch.setattr(online.OnlineTeacher, "step", step)


def test_a_run_killed_mid_epoch_resumes_with_the_teachers_weights_and_optimiser_bit_identical(
        whole: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    per_epoch = _adapter().steps_per_epoch(32)
    at = 2 * per_epoch + 3  # the third epoch's third teacher step: two of its steps taken
    seen: dict[str, Any] = {"cache": tmp_path / "cache"}
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    with monkeypatch.context() as patch:
        _crash_mid_epoch(patch, at, seen)
        with pytest.raises(RuntimeError, match="simulated crash"):
            main([*ARGV, "--results", str(tmp_path / "resumed")])
    last = seen["last"]
    assert last["epoch"] == 2 and set(last["online_teacher"]) == {"model", "optimizer", "schedule"}
    assert _equal(last["online_teacher"], whole["saved"][2])  # weights, momentum buffers, schedule
    assert last["online_teacher"]["optimizer"]["state"]  # SGD momentum: state a resume must restore

    loaded: list[dict[str, Any]] = []
    steps = {"n": 0}
    original_load, original_step = OnlineTeacher.load_state_dict, OnlineTeacher.step

    def spy_load(self: OnlineTeacher, state: dict[str, Any]) -> None:
        loaded.append(copy.deepcopy(state))
        original_load(self, state)

    def count(self: OnlineTeacher, loss: torch.Tensor, world: Any) -> None:
        steps["n"] += 1
        original_step(self, loss, world)

    monkeypatch.setattr(online.OnlineTeacher, "load_state_dict", spy_load)
    monkeypatch.setattr(online.OnlineTeacher, "step", count)
    assert main([*ARGV, "--results", str(tmp_path / "resumed")]) == 0
    assert steps["n"] == per_epoch, "the rerun should train the third epoch only"
    [restored] = loaded
    assert _equal(restored, whole["saved"][2])
    resumed, uninterrupted = _record(tmp_path / "resumed"), whole["record"]
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert resumed["student"]["checkpoint_sha256"] == uninterrupted["student"]["checkpoint_sha256"]
    assert resumed["teacher"] == uninterrupted["teacher"]  # the same final teacher weights and scores
    assert _trace(resumed) == _trace(uninterrupted)


def test_a_resume_that_dropped_the_teachers_optimiser_would_not_end_the_same(
        whole: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control of the test above: restoring the teacher's weights without its optimiser and schedule
    changes the run, so the bit-identical resume above depends on them being checkpointed."""
    per_epoch = _adapter().steps_per_epoch(32)
    seen: dict[str, Any] = {"cache": tmp_path / "cache"}
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    with monkeypatch.context() as patch:
        _crash_mid_epoch(patch, 2 * per_epoch + 3, seen)
        with pytest.raises(RuntimeError, match="simulated crash"):
            main([*ARGV, "--results", str(tmp_path / "resumed")])

    def weights_only(self: OnlineTeacher, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    monkeypatch.setattr(online.OnlineTeacher, "load_state_dict", weights_only)
    assert main([*ARGV, "--results", str(tmp_path / "resumed")]) == 0
    assert _record(tmp_path / "resumed")["teacher"]["checkpoint_sha256"] != \
        whole["record"]["teacher"]["checkpoint_sha256"]


@pytest.mark.parametrize("task", SERVED)
def test_bdkd_online_runs_on_every_served_tasks_smoke_card(task: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    argv = ["run", "--task", task, "--protocol", "smoke", "--device", "cpu", "--method", "bdkd_online",
            "--results", str(tmp_path / "results")]
    assert main(argv) == 0
    record = _record(tmp_path / "results", task)
    assert validation_errors(record) == [] and record["status"] == "ok"
    assert record["teacher"]["source"] == "trained online" and record["teacher"]["checkpoint_sha256"]
    terms = record["history"][-1]["terms"]
    assert any(k.startswith("teacher/task/") for k in terms)
    assert any(k.startswith("teacher/bdkd_online/") for k in terms)
    assert any(k.startswith("bdkd_online/") for k in terms)
    assert not (tmp_path / "cache" / "teachers").exists()
