"""DWPose with kdbench's `dwpose` inside mmpose: a tiny RTMPose on the synthetic figures, on the CPU,
stage 1 (feature + logit KD from a frozen teacher) then stage 2 (a fresh head on the frozen stage-1
backbone, taught by the stage-1 model).

Runs in the [mm] environment (scripts/install_mm.sh); skipped with the reason elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.integrations.mmrun import record_hook, require, train

require("mmdet.models", "mmpose.models")

from kdbench.adapters.pose.synthetic import make_figures_dataset  # noqa: E402
from kdbench.cache import cache_dir, sha256_json  # noqa: E402
from kdbench.methods import get_method  # noqa: E402
from kdbench.protocol import load_protocol  # noqa: E402
from kdbench.records import read_record, validation_errors  # noqa: E402


@pytest.fixture(scope="module")
def mm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The pose smoke tier's figures (COCO keypoint json + images) and a results folder."""
    spec = load_protocol("pose", "smoke").card["data"]
    params = {k: spec[k] for k in ("n_train", "n_val", "n_test", "size", "seed")}
    root = make_figures_dataset(cache_dir() / "data" / f"figures-{sha256_json(params)[:16]}", **params)
    work = tmp_path_factory.mktemp("mmpose")
    mp = pytest.MonkeyPatch()
    mp.setenv("KDBENCH_MM_FIGURES", str(root))
    mp.setenv("KDBENCH_MM_RESULTS", str(work / "results"))
    yield {"root": root, "work": work, "results": work / "results"}
    mp.undo()


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]  # type: ignore[no-any-return]


def test_dwpose_two_stages_on_rtmpose_write_valid_records(mm_env: dict[str, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = train("rtmpose_tiny_teacher_figures.py", mm_env["work"] / "teacher")
    teacher_ckpt = Path(teacher.work_dir) / "epoch_1.pth"
    assert read_record(record_hook(teacher).path)["method"]["name"] == "baseline"

    # stage 1: L_gt + r(e)·(L_fea + L_logit) from the frozen RTMPose teacher
    monkeypatch.setenv("KDBENCH_MM_TEACHER", str(teacher_ckpt))
    s1 = train("rtmpose_tiny_dwpose_s1_figures.py", mm_env["work"] / "s1")
    assert isinstance(s1.model.distill_loss.method, get_method("dwpose"))
    assert s1.model.distill_loss.method.stage == 0
    record1 = read_record(record_hook(s1).path)
    assert validation_errors(record1) == []
    assert (record1["task"], record1["tier"], record1["method"]["name"]) == ("pose", "external", "dwpose")
    assert record1["method"]["hparams"]["stage"] == 1
    assert record1["environment"]["openmmlab"]["mmpose"] == "1.3.2"
    terms = record1["history"][-1]["terms"]
    assert {"loss_kpt", "loss_dwpose_logit", "loss_dwpose_feature"} <= set(terms)
    assert terms["loss_dwpose_logit"] > 0 and terms["loss_dwpose_feature"] > 0
    s1_ckpt = Path(s1.work_dir) / "epoch_2.pth"

    # stage 2: a fresh head on the frozen stage-1 backbone, taught by the stage-1 model
    monkeypatch.setenv("KDBENCH_MM_TEACHER", str(s1_ckpt))
    s2 = train("rtmpose_tiny_dwpose_s2_figures.py", mm_env["work"] / "s2")
    assert s2.model.distill_loss.method.stage == 1
    record2 = read_record(record_hook(s2).path)
    assert validation_errors(record2) == []
    assert record2["method"]["hparams"]["stage"] == 2
    terms = record2["history"][-1]["terms"]
    assert "loss_dwpose_feature" not in terms and terms["loss_dwpose_logit"] > 0
    assert terms["loss_kpt"] == 0.0  # no ground-truth loss in stage 2
    stage1 = _state(s1_ckpt)
    exported = s2.model.export().state_dict()
    backbone = [k for k in exported if k.startswith("backbone.")]
    assert backbone and all(torch.equal(exported[k], stage1[f"student.{k}"]) for k in backbone)
    head = [k for k in exported if k.startswith("head.") and exported[k].is_floating_point()]
    assert any(not torch.equal(exported[k], stage1[f"student.{k}"]) for k in head)
    assert torch.load(Path(s2.work_dir) / "kdbench_student.pth", weights_only=False)["state_dict"].keys() \
        == exported.keys()
