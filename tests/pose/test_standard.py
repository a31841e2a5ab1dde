"""The standard cards read the real COCO layouts: mmpose's COCO and COCO-WholeBody test files
(KDBENCH_DATA_ROOT/coco-fixtures) linked into COCO's folder layout, one tiny epoch each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdbench.cli import main
from tests.datafiles import data_root


def _layout(tmp_path: Path, source: str, pattern: str) -> Path:
    fixtures = data_root("coco-fixtures") / "coco-fixtures"  # resolved: links in tmp_path need an absolute target
    (tmp_path / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (tmp_path / "annotations" / pattern.format(split=split)).symlink_to(fixtures / source)
        (tmp_path / f"{split}2017").symlink_to(fixtures, target_is_directory=True)
    return tmp_path


@pytest.mark.parametrize(("card", "source", "pattern", "backbone"), [
    ("coco", "test_coco.json", "person_keypoints_{split}2017.json", "small"),
    ("coco_wholebody", "test_coco_wholebody.json", "coco_wholebody_{split}_v1.0.json", "cspdarknet53"),
])
def test_standard_card_runs_on_the_real_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, card: str,
                                              source: str, pattern: str, backbone: str) -> None:
    root = _layout(tmp_path / "data", source, pattern)
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    argv = ["run", "--task", "pose", "--protocol", card, "--method", "baseline", "--device", "cpu",
            "--data-root", str(root), "--results", str(tmp_path / "results"),
            "--set", "data.input_size=[48, 64]", "--set", "simcc.sigma=[1.225, 1.415]",
            "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.eval_every=0",
            "--set", f"student.backbone={backbone}", "--set", "data.val_images=1"]
    assert main(argv) == 0
    [path] = (tmp_path / "results" / "pose").glob(f"{card}+*/baseline/seed0.json")  # --set: an ablation key
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["student"]["arch"].startswith(f"simcc/{backbone}")
    assert set(record["metrics"]["values"]) == {"ap", "ap50", "ap75", "ar"}


def test_standard_card_without_data_root_says_what_is_missing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KDBENCH_DATA_ROOT", raising=False)
    assert main(["run", "--task", "pose", "--protocol", "coco_wholebody", "--method", "baseline"]) != 0
    err = capsys.readouterr().err
    assert "coco-wholebody needs --data-root" in err and "coco_wholebody_{train,val}_v1.0.json" in err
