"""kdbench methods inside mmdetection: a tiny RetinaNet on the synthetic shapes scenes, on the CPU.

Runs in the [mm] environment (scripts/install_mm.sh); skipped with the reason elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integrations.mmrun import load, record_hook, require, train

require("mmdet.models")

from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from kdbench.adapters.detection.data import make_shapes_dataset  # noqa: E402
from kdbench.cache import cache_dir, sha256_file, sha256_json  # noqa: E402
from kdbench.errors import UsageError  # noqa: E402
from kdbench.integrations.records import config_hash  # noqa: E402
from kdbench.methods import get_method  # noqa: E402
from kdbench.protocol import load_protocol  # noqa: E402
from kdbench.records import read_record, validation_errors  # noqa: E402


@pytest.fixture(scope="module")
def mm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The detection smoke tier's scenes (in kdbench's cache, as the adapter makes them) and a
    results folder, exported for the configs' placeholders."""
    spec = load_protocol("detection", "smoke").card["data"]
    params = {k: spec[k] for k in ("n_train", "n_val", "n_test", "size", "max_objects", "seed")}
    root = make_shapes_dataset(cache_dir() / "data" / f"shapes-{sha256_json(params)[:16]}", **params)
    work = tmp_path_factory.mktemp("mmdet")
    mp = pytest.MonkeyPatch()
    mp.setenv("KDBENCH_MM_SHAPES", str(root))
    mp.setenv("KDBENCH_MM_RESULTS", str(work / "results"))
    yield {"root": root, "work": work, "results": work / "results"}
    mp.undo()


@pytest.fixture(scope="module")
def teacher_ckpt(mm_env: dict[str, Path]) -> Path:
    runner = train("retinanet_tiny_teacher_shapes.py", mm_env["work"] / "teacher")
    record = read_record(record_hook(runner).path)
    assert record["method"]["name"] == "baseline" and record["tier"] == "external"
    return Path(runner.work_dir) / "iter_8.pth"


def test_kd_distils_a_retinanet_and_writes_a_valid_record(mm_env: dict[str, Path], teacher_ckpt: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_MM_TEACHER", str(teacher_ckpt))
    runner = train("retinanet_tiny_kd_shapes.py", mm_env["work"] / "kd")
    model = runner.model
    assert isinstance(model.distill_loss.method, get_method("kd"))  # kdbench's own method object
    teacher_state = torch.load(teacher_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for name, value in model.teacher.state_dict().items():  # loaded and frozen
        assert torch.equal(value, teacher_state[name]), name
    assert not model.teacher.training and all(not p.requires_grad for p in model.teacher.parameters())

    path = record_hook(runner).path
    key = f"mm-retinanet_tiny_kd_shapes+{config_hash(runner.cfg)[:8]}"
    assert path == mm_env["results"] / "detection" / key / "kd" / "seed0.json"
    record = read_record(path)
    assert validation_errors(record) == []
    assert record["tier"] == "external" and record["task"] == "detection" and record["status"] == "ok"
    assert record["protocol"]["sha256"] == config_hash(runner.cfg)
    assert record["method"] == {"name": "kd", "teacher": "external",
                                "hparams": {"temperature": 4.0, "ce_weight": 1.0, "kd_weight": 1.0}}
    assert record["teacher"]["checkpoint_sha256"] == sha256_file(teacher_ckpt)
    assert record["environment"]["openmmlab"]["mmdet"] == "3.3.0"
    assert record["environment"]["openmmlab"]["mmcv"] == "2.1.0"
    assert set(record["metrics"]["values"]) >= {"ap", "ap50", "ap75"}
    terms = record["history"][-1]["terms"]
    assert terms["loss_kd_cls"] > 0 and math.isfinite(terms["loss_kd_cls"])
    assert {"loss_cls", "loss_bbox"} <= set(terms)


def _bckd_rows(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Σ_c BCE(z_S; σ(z_T))·|σ(z_T) − σ(z_S)| per row, float64 (BCKD's novel_kd_loss, β 1)."""
    p_s, p_t = student.double().sigmoid(), teacher.double().sigmoid()
    bce = -(p_t * p_s.log() + (1 - p_t) * (1 - p_s).log())
    return (bce * (p_t - p_s).abs()).sum(-1)


def test_kd_term_on_retinanets_sigmoid_head_is_bckds_binary_distillation(
        mm_env: dict[str, Path], teacher_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RetinaNet scores each class with its own sigmoid (focal loss): the head is binary, and KD is the
    per-class binary distillation of BCKD (kdbench.losses.binary_kd), never a softmax over classes."""
    monkeypatch.setenv("KDBENCH_MM_TEACHER", str(teacher_ckpt))
    cfg = load("retinanet_tiny_kd_shapes.py", mm_env["work"] / "kd-unit",
               **{"model.distill_loss.temperature": 2.0, "model.distill_loss.kd_weight": 0.5})
    runner = Runner.from_cfg(cfg)
    model = runner.model
    model.init_weights()
    data = model.data_preprocessor(next(iter(runner.train_dataloader)), True)
    inputs, samples = data["inputs"], data["data_samples"]
    with torch.no_grad():
        losses = model.loss(inputs, samples)
        s, _ = model.outputs(model.student, inputs, samples)
        t, _ = model.outputs(model.teacher, inputs, samples)
    assert s.heads["cls"].kind == "binary"
    mask = s.heads["cls"].mask
    assert mask.any() and mask.float().mean() < 0.5  # some anchors, not all
    # w_kd·Σ_c BCE·|Δp|, mean over the anchors assigned an object; the temperature does not enter
    expected = 0.5 * _bckd_rows(s.heads["cls"].logits[mask], t.heads["cls"].logits[mask]).mean()
    assert losses["loss_kd_cls"].item() == pytest.approx(expected.item(), rel=1e-4)  # float32 vs float64


def test_a_method_the_detector_cannot_serve_is_refused(mm_env: dict[str, Path]) -> None:
    cfg = load("retinanet_tiny_kd_shapes.py", mm_env["work"] / "gold")
    model: dict[str, Any] = dict(cfg.model)
    model.update(teacher=None, teacher_ckpt=None, distill_loss=dict(type="kdbench.GOLDLoss"))
    from mmengine.registry import MODELS

    with DefaultScope.overwrite_default_scope("mmdet"), pytest.raises(UsageError, match="needs layers"):
        MODELS.build(model)
    model.update(distill_loss=dict(type="KDLoss"))
    with DefaultScope.overwrite_default_scope("mmdet"), pytest.raises(UsageError, match=r"kdbench\.KDLoss"):
        MODELS.build(model)
    # emasd's EMA teacher is a runner service (ema_model): refused, never run without its teacher
    model.update(distill_loss=dict(type="kdbench.EMASDLoss"))
    refused = pytest.raises(UsageError, match="needs ema_model from kdbench's runner")
    with DefaultScope.overwrite_default_scope("mmdet"), refused:
        MODELS.build(model)
    # gtsd's generations are a runner service as well; the detector refuses it before that, for its needs
    model.update(distill_loss=dict(type="kdbench.GTSDLoss"))
    with DefaultScope.overwrite_default_scope("mmdet"), pytest.raises(UsageError, match="needs label_heads"):
        MODELS.build(model)


def test_config_hash_ignores_run_local_keys_only(mm_env: dict[str, Path]) -> None:
    a = load("retinanet_tiny_kd_shapes.py", mm_env["work"] / "a")
    b = load("retinanet_tiny_kd_shapes.py", mm_env["work"] / "b", **{"randomness.seed": 3})
    c = load("retinanet_tiny_kd_shapes.py", mm_env["work"] / "a", **{"optim_wrapper.optimizer.lr": 1e-2})
    assert config_hash(a) == config_hash(b) != config_hash(c)
