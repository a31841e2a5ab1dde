"""The Outputs contract, the record schema and atomic writes, protocol cards and overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdbench.errors import UsageError
from kdbench.outputs import Head, Outputs, masked_mean
from kdbench.protocol import apply_overrides, cards_dir, load_protocol, parse_sets
from kdbench.records import atomic_write_bytes, schema, validation_errors, write_record
from tests.recordkit import valid_record


def test_head_checks_shapes_and_hard_target() -> None:
    logits = torch.randn(2, 3, 5)
    Head(logits, torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool), kind="categorical")
    soft = torch.softmax(torch.randn(2, 3, 5), -1)
    assert torch.equal(Head(logits, soft, kind="categorical").hard_target, soft.argmax(-1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target"):
        Head(logits, torch.zeros(2, dtype=torch.long), kind="categorical")
    with pytest.raises(ValueError, match="mask"):
        Head(logits, mask=torch.ones(3, dtype=torch.bool), kind="categorical")


def test_outputs_layers_end_with_the_final_heads_and_detach() -> None:
    final = {"cls": Head(torch.randn(4, 3, requires_grad=True), kind="categorical")}
    out = Outputs(heads=final, layers=[{"cls": Head(torch.randn(4, 3), kind="categorical")}, final],
                  features={"f": torch.randn(4, 2, requires_grad=True)}, ids=torch.arange(4))
    assert out.provides == {"heads", "layers", "features", "ids"}
    detached = out.detach()
    assert not detached.heads["cls"].logits.requires_grad
    assert not detached.features["f"].requires_grad
    with pytest.raises(ValueError, match="final heads"):
        Outputs(heads=final, layers=[{"box": Head(torch.randn(4, 3), kind="categorical")}])


def test_masked_mean_ignores_masked_positions() -> None:
    values = torch.tensor([1.0, 2.0, 1e9])
    assert masked_mean(values, torch.tensor([True, True, False])) == 1.5


def _valid_record() -> dict:
    return valid_record()


def test_schema_accepts_a_complete_record_and_names_what_is_wrong() -> None:
    assert schema()["title"] == "kdbench result record"
    record = _valid_record()
    assert validation_errors(record) == []
    for dotted in ("metrics.val", "evaluation", "evaluation.version", "environment.cpu", "environment.threads",
                   "spec.card", "spec.threads", "spec.teacher", "protocol.key"):
        broken = json.loads(json.dumps(record))
        *parents, leaf = dotted.split(".")
        node = broken
        for part in parents:
            node = node[part]
        del node[leaf]
        assert validation_errors(broken), f"a record without {dotted} must be invalid"
    assert validation_errors(_valid_record() | {"schema_version": 1})
    assert validation_errors(_valid_record() | {"task": "../../etc"})
    record["metrics"]["values"] = {}
    assert any("metrics.values" in e for e in validation_errors(record))
    failed = _valid_record() | {"status": "failed", "error": None}
    assert validation_errors(failed)
    assert validation_errors(_valid_record() | {"extra": 1})


def test_invalid_record_never_replaces_a_good_one(tmp_path: Path) -> None:
    path = tmp_path / "r" / "seed0.json"
    write_record(path, _valid_record())
    good = path.read_text()
    with pytest.raises(ValueError, match="invalid record"):
        write_record(path, _valid_record() | {"seed": -1})
    assert path.read_text() == good
    assert [p.name for p in path.parent.iterdir()] == ["seed0.json"]  # no temp files left
    assert json.loads(good)["seed"] == 0


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.json"
    atomic_write_bytes(path, b"old")

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_cards_ship_inside_the_package_and_resolve_by_tier() -> None:
    assert (cards_dir() / "classification" / "small.yaml").is_file()
    standard = load_protocol("classification", "standard")
    assert standard.name == "cifar100" and standard.tier == "standard"
    small = load_protocol("classification", "small")
    assert len(small.sha256) == 64 and small.get("data.dataset") == "mnist1d"
    again = load_protocol("classification", str(small.path))
    assert again.sha256 == small.sha256


def test_overrides_only_existing_keys() -> None:
    small = load_protocol("classification", "small")
    sets = parse_sets(["train.epochs=3", "train.optimizer.lr=0.1"])
    changed = apply_overrides(small, sets)
    assert changed.get("train.epochs") == 3 and changed.get("train.optimizer.lr") == 0.1
    assert small.get("train.epochs") != 3  # the original card is untouched
    with pytest.raises(UsageError, match=r"unknown --set key 'train\.epoch'; valid: .*train\.epochs"):
        apply_overrides(small, {"train.epoch": 3})
    with pytest.raises(UsageError, match="key=value"):
        parse_sets(["epochs"])


def test_malformed_card_is_one_clear_error(tmp_path: Path) -> None:
    card = tmp_path / "bad.yaml"
    card.write_text("task: classification\ntier: small\n")
    with pytest.raises(UsageError, match=r"bad\.yaml: name: missing \(a required key\)"):
        load_protocol("classification", str(card))
    card.write_text("task: [unclosed\n")
    with pytest.raises(UsageError, match="malformed protocol card"):
        load_protocol("classification", str(card))
