"""Translation splits: train / val / test disjoint and fixed by the card (phrases), Multi30k's
official val files as "val"; evaluate and evaluation_info per split."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kdbench.adapters.translation import data as D
from kdbench.adapters.translation.adapter import TranslationAdapter
from kdbench.errors import UsageError
from kdbench.protocol import load_protocol
from tests.datafiles import data_root


@pytest.fixture(scope="module")
def adapter() -> TranslationAdapter:
    return TranslationAdapter(load_protocol("translation", "smoke"), None, torch.device("cpu"))


def test_phrase_splits_are_disjoint_and_fixed_by_the_card(adapter: TranslationAdapter) -> None:
    splits = adapter.splits
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "val": 40, "test": 40}
    sources = [set(s.source) for s in splits.values()]
    assert sum(len(s) for s in sources) == len(set().union(*sources)) == 380
    again = TranslationAdapter(load_protocol("translation", "smoke"), None, torch.device("cpu"))
    assert again.splits == splits


def test_phrases_card_needs_all_three_sizes() -> None:
    protocol = copy.deepcopy(load_protocol("translation", "smoke"))
    protocol.card["data"]["valid"] = protocol.card["data"].pop("val")
    with pytest.raises(UsageError, match="phrases need sizes train, val and test; missing val"):
        TranslationAdapter(protocol, None, torch.device("cpu"))


def test_evaluate_and_evaluation_info_per_split(adapter: TranslationAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    src, tgt = adapter.encoded["val"]
    known = {tuple(s): t for s, t in zip(src, tgt, strict=True)}

    def oracle(model: object, sources: list[list[int]], beam: int | None = None) -> list[list[int]]:
        return [known.get(tuple(s), []) for s in sources]  # the val references, nothing elsewhere

    monkeypatch.setattr(adapter, "translate", oracle)
    model = torch.nn.Identity()
    val, test = adapter.evaluate(model, "val"), adapter.evaluate(model, "test")
    assert set(val) == set(test) == {"bleu", "chrf"}
    assert val["bleu"] == pytest.approx(100.0) and test["bleu"] == pytest.approx(0.0)
    assert adapter.evaluation_info("val")["split"] == "val" and adapter.evaluation_info("test")["split"] == "test"
    assert adapter.evaluation_version == 2


def test_unknown_split_names_the_valid_ones(adapter: TranslationAdapter) -> None:
    model = adapter.build_model("student", frozenset())
    with pytest.raises(UsageError, match="unknown split 'valid' for translation; valid: train, val, test"):
        adapter.evaluate(model, "valid")
    with pytest.raises(UsageError, match="unknown split 'dev'"):
        adapter.evaluation_info("dev")


def test_iwslt14_valid_files_are_the_val_split(tmp_path: Path) -> None:
    folder = tmp_path / D.IWSLT14_DIR
    folder.mkdir()
    for stem in ("train", "valid", "test"):
        (folder / f"{stem}.de").write_text(f"{stem} satz\n")
        (folder / f"{stem}.en").write_text(f"{stem} sentence\n")
    splits = D.load_iwslt14(tmp_path, "de", "en")
    assert {k: v.target for k, v in splits.items()} == {
        "train": ["train sentence"], "val": ["valid sentence"], "test": ["test sentence"]}
    adapter = TranslationAdapter(load_protocol("translation", "iwslt14"), tmp_path, torch.device("cpu"))
    assert adapter.evaluation_info("val")["dataset_split"] == "valid"


def test_multi30k_val_is_the_official_val_files() -> None:
    import gzip

    root = data_root("multi30k")
    splits = D.load_multi30k(root, "de", "en")
    with gzip.open(root / D.MULTI30K_DIR / "val.en.gz", "rt", encoding="utf-8") as f:
        assert splits["val"].target == [line.rstrip("\n") for line in f]
    assert not set(splits["val"].source) & set(splits["test"].source)
    # just what evaluation_info reads, so the real files need no tokenizer training here
    fake = SimpleNamespace(task="translation", splits=splits, decoding={"beam": 5},
                           protocol=load_protocol("translation", "multi30k"))
    info = {s: TranslationAdapter.evaluation_info(fake, s)["dataset_split"] for s in ("val", "test")}  # type: ignore[arg-type]
    assert info == {"val": "val", "test": "test_2016_flickr"}
