"""OOD splits: ID train / val / test and OOD val / test sentences disjoint and fixed by the card;
evaluate per split (langid generated; CLINC150's official val list against oos_val, and oos_train where set)."""

from __future__ import annotations

import copy

import pytest
import torch

from kdbench.adapters.ood import data as D
from kdbench.adapters.ood.adapter import OODAdapter
from kdbench.errors import UsageError
from kdbench.protocol import load_protocol
from tests.datafiles import data_root


def _by_lang(texts: D.TextSet, classes: int) -> list[set[str]]:
    return [{t for t, y in zip(texts.texts, texts.labels.tolist(), strict=True) if y == c} for c in range(classes)]


@pytest.fixture(scope="module")
def adapter() -> OODAdapter:
    return OODAdapter(load_protocol("ood", "smoke"), None, torch.device("cpu"))


def test_langid_splits_are_disjoint_and_fixed_by_the_card(adapter: OODAdapter) -> None:
    data = adapter.data
    assert (len(data.train), len(data.val), len(data.test)) == (120, 60, 60)  # 3 languages × 40, 20, 20
    assert {k: len(v) for k, v in data.ood_val.items()} == {k: len(v) for k, v in data.ood.items()} == {
        "near": 20, "far": 20}
    k = data.num_classes
    for train, val, test in zip(*(_by_lang(s, k) for s in (data.train, data.val, data.test)), strict=True):
        assert not train & val and not train & test and not val & test
    for name in ("near", "far"):
        assert not set(data.ood_val[name].texts) & set(data.ood[name].texts)
    spec = load_protocol("ood", "smoke").card["data"]
    again = D.load_langid(spec)
    assert (again.val.texts, again.ood_val["far"].texts, again.test.texts) == (
        data.val.texts, data.ood_val["far"].texts, data.test.texts)
    assert D.load_langid({**spec, "seed": 1}).val.texts != data.val.texts


def test_langid_refuses_splits_the_word_list_cannot_fill() -> None:
    spec = {"id": ["en"], "vocab_words": 2, "words": [1, 1], "train_per_lang": 5, "val_per_lang": 1,
            "test_per_lang": 1, "ood_val_per_lang": 1, "ood_per_lang": 1}
    with pytest.raises(ValueError, match="could not draw 1 en sentences for 'val'"):
        D.load_langid(spec)


def test_evaluate_scores_val_and_test_separately(adapter: OODAdapter) -> None:
    torch.manual_seed(0)
    model = adapter.build_model("student", frozenset())
    val, test = adapter.evaluate(model, "val"), adapter.evaluate(model, "test")
    assert set(val) == set(test) and val != test
    assert {"auroc_msp_near", "auroc_msp_far", "id_acc"} <= set(val)
    adapter.attach_teacher(adapter.build_model("teacher", frozenset()))
    try:
        with_teacher = adapter.evaluate(model, "val"), adapter.evaluate(model, "test")
        assert with_teacher[0]["auroc_discrepancy"] != with_teacher[1]["auroc_discrepancy"]
        assert set(adapter._teacher_logits) == {(s, n) for s in ("val", "test") for n in ("id", "near", "far")}
    finally:
        adapter.teacher, adapter._teacher_logits = None, {}
    assert adapter.evaluation_version == 2


def test_unknown_split_names_the_valid_ones(adapter: OODAdapter) -> None:
    model = adapter.build_model("student", frozenset())
    with pytest.raises(UsageError, match="unknown split 'train' for ood; valid: val, test"):
        adapter.evaluate(model, "train")


def test_clinc150_card_validates_on_the_official_val_list_against_oos_val_and_oos_train() -> None:
    import json

    root = data_root("clinc150")
    raw = json.loads((root / "clinc150" / "data_full.json").read_text())
    protocol = copy.deepcopy(load_protocol("ood", "clinc150"))
    assert protocol.get("data.val_oos_train") is True
    data = OODAdapter(protocol, root, torch.device("cpu")).data
    assert data.val.texts == [t for t, _ in raw["val"]]
    assert data.ood_val["oos"].texts == [t for t, _ in raw["oos_val"]] + [t for t, _ in raw["oos_train"]]
    assert data.test.texts == [t for t, _ in raw["test"]] and data.ood["oos"].texts == [t for t, _ in raw["oos_test"]]
    assert [data.classes[y] for y in data.val.labels.tolist()] == [i for _, i in raw["val"]]


def test_clinc150_val_oos_train_joins_the_val_ood_set_and_test_is_unchanged() -> None:
    import json

    from kdbench.adapters.ood import data as D

    root = data_root("clinc150")
    raw = json.loads((root / "clinc150" / "data_full.json").read_text())
    data = D.load_clinc150(root, tokens="words", min_count=2, val_oos_train=True)
    assert data.ood_val["oos"].texts == [t for t, _ in raw["oos_val"]] + [t for t, _ in raw["oos_train"]]
    assert len(data.ood_val["oos"]) == 200 and (data.ood_val["oos"].labels == -1).all()
    assert data.ood["oos"].texts == [t for t, _ in raw["oos_test"]]
    assert set(data.train.texts).isdisjoint(t for t, _ in raw["oos_train"])  # never trained on
