"""The pose pipeline end to end on the smoke card: DWPose's two stages in one run, resuming
inside stage 2 after a crash, and the methods pose cannot serve refused before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdbench.cli import main
from kdbench.errors import UsageError
from kdbench.records import validation_errors
from kdbench.runner import checkpoint
from kdbench.runner.spec import RunOptions, resolve

ARGV = ["run", "--task", "pose", "--protocol", "smoke", "--device", "cpu", "--method", "dwpose",
        "--set", "method.stage2_fraction=1.0", "--set", "train.eval_every=0"]


def _record(results: Path) -> dict:
    pose = results / "pose"
    [path] = [*pose.glob("smoke/dwpose/seed0.json"), *pose.glob("smoke+*/dwpose/seed0.json")]
    return json.loads(path.read_text())


def test_dwpose_runs_both_stages_and_resumes_in_stage_two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdbench.runner import train

    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "whole-cache"))
    assert main([*ARGV, "--results", str(tmp_path / "whole")]) == 0
    whole = _record(tmp_path / "whole")
    assert validation_errors(whole) == []
    assert [(h["stage"], h["epoch"]) for h in whole["history"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert "dwpose/feature" in whole["history"][0]["terms"] and "task/simcc_x" in whole["history"][0]["terms"]
    assert set(whole["history"][2]["terms"]) == {"dwpose/logit"}  # stage 2: logit KD only, no GT loss
    assert [h["lr"] for h in whole["history"][2:]] == [2e-3, 2e-3]  # stage 2: constant learning rate
    assert list((tmp_path / "whole" / "pose").glob("smoke*/teacher/seed0.json"))

    original, calls, seen = train._train_epoch, {"n": 0}, {}
    stage_teachers = []
    head_stage = __import__("kdbench.adapters.pose.adapter", fromlist=["PoseAdapter"]).PoseAdapter.head_stage

    def crash_in_stage_two(job, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        calls["stage2"] = calls.get("stage2", 0) + (job.method.stage == 1)
        if calls["stage2"] == 2:  # the second epoch of stage 2
            folder = job.checkpoint.parent
            seen["files"] = sorted(p.name for p in folder.iterdir())
            seen["stage"] = checkpoint.load(folder / "last-stage1.pt")["stage"]
            raise RuntimeError("simulated crash")
        return original(job, *args, **kwargs)

    def recording_head_stage(self, model):  # type: ignore[no-untyped-def]
        stage_teachers.append({k: v.clone() for k, v in model.backbone.state_dict().items()})
        return head_stage(self, model)

    monkeypatch.setattr(train, "_train_epoch", crash_in_stage_two)
    monkeypatch.setattr("kdbench.adapters.pose.adapter.PoseAdapter.head_stage", recording_head_stage)
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        main([*ARGV, "--results", str(tmp_path / "resumed")])
    assert {"stage0.pt", "last-stage1.pt"} <= set(seen["files"]) and seen["stage"] == 1
    calls.update(n=0, stage2=-10)
    assert main([*ARGV, "--results", str(tmp_path / "resumed")]) == 0
    assert calls["n"] == 1, "the rerun should train only the last epoch of stage 2"
    resumed = _record(tmp_path / "resumed")
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["student"]["checkpoint_sha256"] == whole["student"]["checkpoint_sha256"]
    assert [(h["stage"], h["epoch"]) for h in resumed["history"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # the exported model is the stage-1 backbone with the stage-2 head
    runs = list((tmp_path / "cache" / "runs").rglob("student.pt"))
    exported = checkpoint.load(runs[0])["state_dict"]
    for key, value in stage_teachers[-1].items():
        assert torch.equal(exported[f"backbone.{key}"], value), key


@pytest.mark.parametrize(("method", "need"), [("ls", "ce_heads"), ("gold", "layers"), ("uskd", "sample_heads")])
def test_pose_refuses_methods_it_cannot_serve(method: str, need: str) -> None:
    with pytest.raises(UsageError, match=f"cannot serve method '{method}': it needs {need}"):
        resolve(RunOptions(task="pose", method=method, protocol="smoke"))
