"""Protocol v2: typed cards, ablation keys, records never silently replaced, the spec as the
record, `kdbench reproduce` and `kdbench protocol check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kdbench.cli import main
from kdbench.errors import UsageError
from kdbench.protocol import apply_overrides, load_protocol, task_cards
from kdbench.records import validation_errors

SMOKE = ["--task", "classification", "--method", "kd", "--protocol", "smoke"]


def _card(tmp_path: Path, **changes: object) -> Path:
    card = yaml.safe_load(task_cards("classification")["smoke"].read_text())
    card.update(changes)
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


@pytest.mark.parametrize("argv, message", [
    (["--set", "train.optimizer.lr=fast"], "--set train.optimizer.lr: expected a number, got 'fast'"),
    (["--set", "train.epochs=0"], "--set train.epochs: must be ≥ 1, got 0"),
    (["--set", "train.epochs=abc"], "--set train.epochs: expected an integer, got 'abc'"),
    (["--set", "train.optimizer.momentm=0.5"], "unknown --set key 'train.optimizer.momentm'; valid: "),
    (["--set", "method.temprature=2"], "unknown hyperparameter 'temprature' for KD; valid: temperature"),
])
def test_bad_sets_are_one_line_before_any_work(argv: list[str], message: str, results: Path,
                                               capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    assert main(["run", *SMOKE, "--results", str(results), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not results.exists() and not (tmp_path / "cache").exists()  # nothing trained, nothing written


def test_typed_card_rejects_misspelt_keys_anywhere(tmp_path: Path) -> None:
    train = yaml.safe_load(task_cards("classification")["smoke"].read_text())["train"]
    with pytest.raises(UsageError, match=r"train: unknown key 'epochz'; valid: epochs, batch_size"):
        load_protocol("classification", str(_card(tmp_path, train={**train, "epochz": 3})))
    bad_opt = {**train, "optimizer": {**train["optimizer"], "momentm": 0.5}}
    with pytest.raises(UsageError, match=r"train\.optimizer: unknown key 'momentm'"):
        load_protocol("classification", str(_card(tmp_path, train=bad_opt)))
    with pytest.raises(UsageError, match=r"train\.batch_size: must be ≥ 1, got -3"):
        load_protocol("classification", str(_card(tmp_path, train={**train, "batch_size": -3})))
    with pytest.raises(UsageError, match=r"student: unknown key 'widht'"):
        load_protocol("classification", str(_card(tmp_path, student={"arch": "convnet", "widht": [8]})))
    with pytest.raises(UsageError, match=r"methods\.nosuch: unknown method"):
        load_protocol("classification", str(_card(tmp_path, methods={"nosuch": {}})))
    with pytest.raises(UsageError, match=r"name '\.\./\.\./x' must be lower-case"):
        load_protocol("classification", str(_card(tmp_path, name="../../x")))
    with pytest.raises(UsageError, match=r"--protocol nothere\.yaml: no such card file"):
        load_protocol("classification", "nothere.yaml")


def test_card_identity_is_its_content(tmp_path: Path) -> None:
    shipped = load_protocol("classification", "smoke")
    assert shipped.is_shipped and shipped.key == "smoke"
    text = task_cards("classification")["smoke"].read_text()
    copy = tmp_path / "copy.yaml"
    copy.write_text("# a comment changes nothing\n" + text.replace("description:", "description: edited"))
    same = load_protocol("classification", str(copy))
    assert same.sha256 == shipped.sha256 and same.key == "smoke"
    changed = apply_overrides(shipped, {"train.epochs": 1})
    assert changed.sha256 != shipped.sha256 and changed.key == f"smoke+{changed.sha256[:8]}"
    tuned = apply_overrides(shipped, {"method.temperature": 2.0}, method="kd")
    assert tuned.key.startswith("smoke+") and tuned.method_hparams("kd") == {"temperature": 2.0}
    own = load_protocol("classification", str(_card(tmp_path, name="mine")))
    assert own.key.startswith("mine+")  # a card that is not shipped is never a leaderboard card


@pytest.mark.slow
def test_ablation_never_replaces_the_card_record(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *SMOKE, "--results", str(results)]) == 0
    first = results / "classification" / "smoke" / "kd" / "seed0.json"
    before = first.read_bytes()
    assert main(["run", *SMOKE, "--results", str(results), "--set", "train.epochs=1"]) == 0
    assert first.read_bytes() == before
    ablations = sorted(results.glob("classification/smoke+*/kd/seed0.json"))
    assert len(ablations) == 1
    ablation = json.loads(ablations[0].read_text())
    assert ablation["protocol"]["shipped"] is False and ablation["spec"]["card"]["train"]["epochs"] == 1
    capsys.readouterr()
    assert main(["run", *SMOKE, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--results" in err and len(err.strip().splitlines()) == 1
    assert first.read_bytes() == before
    record = json.loads(before)
    assert validation_errors(record) == []
    assert set(record["metrics"]["val"]) == set(record["metrics"]["values"])
    assert record["spec"]["card"] == load_protocol("classification", "smoke").card
    assert record["spec"]["teacher"]["record"] == "classification/smoke/teacher/seed0.json"
    assert (results / record["spec"]["teacher"]["record"]).is_file()
    assert record["environment"]["threads"] == record["spec"]["threads"] == 1
    assert record["evaluation"]["version"] >= 2 and record["environment"]["cpu"]["model"]


@pytest.mark.slow
def test_reproduce_reruns_a_record_exactly(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--task", "classification", "--method", "baseline", "--protocol", "smoke",
                 "--results", str(results), "--seed", "1"]) == 0
    record = results / "classification" / "smoke" / "baseline" / "seed1.json"
    capsys.readouterr()
    assert main(["reproduce", str(record), "--scratch", str(tmp_path / "scratch")]) == 0
    out = capsys.readouterr().out
    assert "top1" in out and "differences should be 0" in out
    rerun = json.loads((tmp_path / "scratch" / "results" / "classification" / "smoke" / "baseline" /
                        "seed1.json").read_text())
    assert rerun["metrics"] == json.loads(record.read_text())["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "detection", "pose", "ood", "translation"])
def test_protocol_check_runs_on_every_smoke_card(task: str, results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["protocol", "check", "--task", task, "--protocol", "smoke", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "teacher–baseline gap" in out and "MDD at n" in out
    check = json.loads((results / task / "smoke" / "protocol-check.json").read_text())
    assert check["split"] == "val" and check["baseline"]["epochs_2x"] == 2 * check["baseline"]["epochs"]
    assert check["gap"] == pytest.approx(
        (1 if check["direction"] == "higher" else -1) * (check["teacher"]["val"] - check["baseline"]["mean"]))
    card_records = sorted(p.parent.parent.name for p in (results / task).glob("*/*/seed*.json"))
    assert "smoke" in card_records and any(k.startswith("smoke+") for k in card_records)


def test_every_tuning_grid_has_the_same_budget_and_holds_the_paper_default() -> None:
    import dataclasses

    from kdbench.methods import registry
    from kdbench.methods.base import TUNE_BUDGET
    from kdbench.runner.tune import grid_points

    for name, cls in registry().items():
        if not cls.tune_grid:
            continue
        assert len(grid_points(cls.tune_grid)) == TUNE_BUDGET, name
        assert 1 <= len(cls.tune_grid) <= 2, name
        defaults = {f.name: f.default for f in dataclasses.fields(cls.Config)}
        assert all(defaults[k] in values for k, values in cls.tune_grid.items()), name


def test_a_card_cites_its_tuning_file_and_must_agree_with_it(tmp_path: Path) -> None:
    tuning = tmp_path / "tuning"
    tuning.mkdir()
    (tuning / "mine-kd.json").write_text(json.dumps({"method": "kd", "choice": {"temperature": 2.0}}))
    good = _card(tmp_path, name="mine", methods={"kd": {"temperature": 2.0}}, tuning={"kd": "tuning/mine-kd.json"})
    assert load_protocol("classification", str(good)).method_hparams("kd") == {"temperature": 2.0}
    bad = _card(tmp_path, name="mine", methods={"kd": {"temperature": 4.0}}, tuning={"kd": "tuning/mine-kd.json"})
    with pytest.raises(UsageError, match=r"tuning\.kd: the card sets \{'temperature': 4\.0\}, the tune file chose"):
        load_protocol("classification", str(bad))
    outside = _card(tmp_path, name="mine", tuning={"kd": "../../etc/passwd"})
    with pytest.raises(UsageError, match="outside the card's folder"):
        load_protocol("classification", str(outside))


@pytest.mark.slow
def test_tune_chooses_on_val_and_writes_the_file(results: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tuning" / "smoke-kd.json"
    assert main(["tune", "--task", "classification", "--protocol", "smoke", "--method", "kd",
                 "--results", str(results), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["split"] == "val" and data["budget"] == 4 and len(data["runs"]) == 4
    best = max(data["runs"], key=lambda r: (r["val"], -data["runs"].index(r)))
    assert data["choice"] == best["hparams"]
    for row in data["runs"]:  # every grid point is an ablation record, never the card's own
        record = json.loads((results / row["record"]).read_text())
        assert record["protocol"]["shipped"] is False and record["metrics"]["val"]["top1"] == row["val"]
    assert not (results / "classification" / "smoke" / "kd").exists()
    assert main(["tune", "--task", "classification", "--protocol", "smoke", "--method", "baseline",
                 "--results", str(results)]) == 2
