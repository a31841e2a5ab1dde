"""The runner's `ema_model` service (kdbench.methods.base.NEEDS): an exponential moving average of the
student, a copy of it at the start, updated after every optimiser step with the method's momentum,
handed to the method as its frozen eval-mode teacher, and saved in the checkpoint so that a resumed
run ends where an uninterrupted one does. Also the card's `train.ema`, the same class with a warm-up."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kdbench.adapters import get_adapter
from kdbench.cli import main
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext
from kdbench.protocol import load_protocol
from kdbench.runner import checkpoint, train
from kdbench.runner.ema import EMA
from kdbench.runner.train import Job, fit, probe_outputs

M = 0.9


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()


def _step(model: nn.Module, seed: int) -> None:
    """What an optimiser step and a training forward do to the weights and the BN statistics."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, generator=g, dtype=torch.float64))
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64))


def _arrays(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("buffers", ["copy", "average"])
def test_constant_momentum_update_by_hand(buffers: str) -> None:
    """ema_model's update ("copy": BN statistics taken from the student) and the same with averaged
    buffers (the card's EMA's convention) at a constant momentum."""
    model = _net()
    theta0 = _arrays(model)
    ema = EMA(model, M, None, buffers)  # type: ignore[arg-type]
    assert not ema.model.training and all(not p.requires_grad for p in ema.model.parameters())
    assert all(np.array_equal(v, theta0[k]) for k, v in _arrays(ema.model).items())  # a copy at the start
    expected = theta0
    for seed in (1, 2):  # m·ema + (1 − m)·θ at every update, no warm-up
        _step(model, seed)
        theta = _arrays(model)
        ema.update(model)
        got = _arrays(ema.model)
        for name, value in got.items():
            if name.endswith("num_batches_tracked") or (buffers == "copy" and "running" in name):
                assert np.array_equal(value, theta[name]), name  # integer buffers are always copied
                continue
            hand = [M * a + (1 - M) * b for a, b in zip(expected[name].reshape(-1).tolist(),
                                                        theta[name].reshape(-1).tolist(), strict=True)]
            assert np.allclose(value.reshape(-1), hand, rtol=0, atol=1e-15), name
        expected = got
    assert "1.running_mean" in got and not np.allclose(got["1.running_mean"], theta0["1.running_mean"])
    assert ema.updates == 2 and ema.current_decay() == M
    with pytest.raises(ValueError, match="buffers must be 'average' or 'copy'"):
        EMA(model, M, None, "sum")  # type: ignore[arg-type]


def test_the_cards_ema_keeps_its_warm_up() -> None:
    model = _net()
    ema = EMA(model, M, 10)
    before = _arrays(ema.model)["0.weight"]
    _step(model, 1)
    ema.update(model)
    d1 = M * (1 - math.exp(-1 / 10))
    assert np.allclose(_arrays(ema.model)["0.weight"], d1 * before + (1 - d1) * _arrays(model)["0.weight"],
                       rtol=0, atol=1e-15)
    assert math.isclose(ema.current_decay(), M * (1 - math.exp(-2 / 10)), rel_tol=0, abs_tol=1e-15)


def test_fit_hands_the_method_the_ema_of_the_students_steps() -> None:
    """Each step's teacher is the EMA, at the method's momentum, of the student after the steps
    before it (starting from the student's initial weights; BN statistics copied), frozen and in
    eval mode."""
    adapter = get_adapter("classification")(load_protocol("classification", "smoke"), None, torch.device("cpu"))
    cls = get_method("emasd")
    torch.manual_seed(0)
    student = adapter.build_model("student", cls.needs)
    method = cls(cls.Config(ema_momentum=M), MethodContext(probe_outputs(adapter, student), None,
                                                          adapter.train_size, 1))
    assert method.runtime_needs == {"ema_model"} and method.ema_momentum() == M
    job = Job(adapter, student, method, None, {**adapter.protocol.card["train"], "epochs": 1}, 0, None)
    thetas = [{k: v.double().clone() for k, v in student.state_dict().items()}]
    teachers: list[dict[str, torch.Tensor]] = []
    loss, after_step = method.loss, method.after_step

    def spy_loss(s, t, progress, state):  # type: ignore[no-untyped-def]
        assert t is not None and job.teacher is not None and job.teacher is not student
        assert not job.teacher.training and all(not p.requires_grad for p in job.teacher.parameters())
        teachers.append({k: v.double().clone() for k, v in job.teacher.state_dict().items()})
        return loss(s, t, progress, state)

    def spy_after_step(s, losses, state):  # type: ignore[no-untyped-def]
        thetas.append({k: v.double().clone() for k, v in student.state_dict().items()})
        after_step(s, losses, state)

    method.loss, method.after_step = spy_loss, spy_after_step  # type: ignore[method-assign]
    fit(job)
    steps = adapter.steps_per_epoch(int(job.train["batch_size"]))
    assert len(teachers) == steps == len(thetas) - 1 and steps > 1
    buffers = {name for name, _ in student.named_buffers()}
    assert any("running_var" in name for name in buffers)
    hand = {n: v for n, v in thetas[0].items() if n not in buffers}
    for k, teacher in enumerate(teachers):  # teacher of step k: the EMA after k updates
        for name, value in teacher.items():
            want = thetas[k][name] if name in buffers else hand[name]
            assert torch.allclose(value, want, rtol=1e-6, atol=1e-7), (k, name)
        hand = {n: M * v + (1 - M) * thetas[k + 1][n] for n, v in hand.items()}
    last = len(teachers) - 1  # by then the average lags the student it follows
    assert any(not torch.allclose(teachers[last][n], thetas[last][n]) for n in hand)


ARGV = ["run", "--task", "classification", "--protocol", "smoke", "--device", "cpu", "--method", "emasd",
        "--set", "train.epochs=3", "--set", "train.eval_every=0", "--set", "method.ema_momentum=0.8"]


def _sha(results: Path) -> tuple[str, Any]:
    [path] = results.glob("classification/smoke*/emasd/seed0.json")
    record = json.loads(path.read_text())
    return record["student"]["checkpoint_sha256"], record["metrics"]


def _crash_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[dict[str, Any], int]:
    """Crash in the second epoch (after the first epoch's checkpoint), then rerun the same command;
    returns the checkpoint the crash left and the epochs the rerun trained."""
    original = train._train_epoch
    calls = {"n": 0}

    def crash_in_second_epoch(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)

    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / f"{name}-cache"))
    monkeypatch.setattr(train, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*ARGV, "--results", str(tmp_path / name)])
    [last] = (tmp_path / f"{name}-cache" / "runs").rglob("last.pt")
    saved = checkpoint.load(last)
    calls["n"] = 10
    assert main([*ARGV, "--results", str(tmp_path / name)]) == 0
    monkeypatch.setattr(train, "_train_epoch", original)
    assert not list((tmp_path / f"{name}-cache" / "runs").rglob("*.corrupt"))  # resumed, not restarted
    return saved, calls["n"] - 10


def test_a_resumed_run_restores_the_ema_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert main([*ARGV, "--results", str(tmp_path / "whole")]) == 0
    whole = _sha(tmp_path / "whole")
    saved, trained = _crash_then_resume(tmp_path, monkeypatch, "resumed")
    assert trained == 2  # the rerun trains the two epochs left
    ema, student = saved["ema_model"]["model"], saved["student"]
    assert saved["epoch"] == 1 and saved["ema_model"]["updates"] == 5  # 160 images / 32 a step
    assert any(not torch.equal(ema[k], student[k]) for k in student if student[k].dtype.is_floating_point)
    assert _sha(tmp_path / "resumed") == whole  # the same final student and metrics
    # the EMA's weights are what makes it so: a resume that keeps the teacher's fresh copy differs
    monkeypatch.setattr(EMA, "load_state_dict", lambda self, state: setattr(self, "updates", state["updates"]))
    _crash_then_resume(tmp_path, monkeypatch, "unrestored")
    assert _sha(tmp_path / "unrestored")[0] != whole[0]
