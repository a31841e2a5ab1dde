"""Translation data: generated phrases, the real Multi30k files, the IWSLT'14 layout, vocabularies."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from kdbench.adapters.translation import data as D
from kdbench.adapters.translation.tokenizer import EOS, WordTokenizer, train_sentencepiece
from kdbench.errors import KDBenchError
from tests.datafiles import data_root


def test_phrases_are_deterministic_and_sources_never_cross_splits() -> None:
    sizes = {"train": 300, "val": 50, "test": 50}
    a, b = D.phrase_splits(sizes, seed=3), D.phrase_splits(sizes, seed=3)
    assert a == b and D.phrase_splits(sizes, seed=4)["train"] != a["train"]
    assert {k: len(v) for k, v in a.items()} == sizes
    seen = [set(split.source) for split in a.values()]
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == 400


def test_phrases_are_english_to_german() -> None:
    pairs = D.phrase_pairs(300, seed=0, max_items=2)
    assert all(en != de for en, de in pairs)
    assert not any(" und " in en or " and " in de for en, de in pairs)
    assert any(" und " in de for _, de in pairs)
    months = ("January", "February", "March", "April", "June", "July", "August", "September",
              "October", "November", "December")
    assert not any(m in de for _, de in pairs for m in months if m not in ("April", "August", "September", "November"))
    assert any(m in en for en, _ in pairs for m in months)


def test_remove_bpe_matches_fairseq() -> None:
    assert D.remove_bpe("das is@@ t ein te@@ st@@") == "das ist ein test"
    tok = WordTokenizer(["a@@ b c"])
    assert tok.decode([*tok.encode("a@@ b c"), EOS]) == "ab c"
    assert tok.encode("zzz") == [tok.unk]


def test_iwslt14_layout(tmp_path: Path) -> None:
    folder = tmp_path / D.IWSLT14_DIR
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.de").write_text("ein te@@ st\nhallo\n")
        (folder / f"{split}.en").write_text("a te@@ st\nhello\n")
    splits = D.load_iwslt14(tmp_path, "de", "en")
    assert splits["test"].target == ["a te@@ st", "hello"]
    (folder / "valid.en").write_text("only one line\n")
    with pytest.raises(KDBenchError, match="valid: 2 de lines but 1 en lines"):
        D.load_iwslt14(tmp_path, "de", "en")
    with pytest.raises(KDBenchError, match=r"prepare-iwslt14\.sh"):
        D.load_iwslt14(tmp_path / "nowhere", "de", "en")


def test_multi30k_missing_and_miscounted_files(tmp_path: Path) -> None:
    with pytest.raises(KDBenchError, match="is missing"):
        D.load_multi30k(tmp_path, "de", "en")
    folder = tmp_path / D.MULTI30K_DIR
    folder.mkdir()
    for lang in ("de", "en"):
        with gzip.open(folder / f"train.{lang}.gz", "wt") as f:
            f.write("x\n" * 10)
    with pytest.raises(KDBenchError, match="has 10 lines; Multi30k train has 29000"):
        D.load_multi30k(tmp_path, "de", "en")


def test_real_multi30k_counts_and_alignment() -> None:
    root = data_root("multi30k")
    splits = D.load_multi30k(root, "de", "en")
    assert {k: len(v) for k, v in splits.items()} == {"train": 29000, "val": 1014, "test": 1000}
    # line alignment: first pairs of Multi30k task 1 are translations of each other
    assert splits["train"].source[0].startswith("Zwei junge weiße Männer")
    assert splits["train"].target[0].startswith("Two young, White males")
    assert splits["test"].source[0].startswith("Ein Mann mit einem orangefarbenen Hut")
    assert splits["test"].target[0].startswith("A man in an orange hat")
    assert all(s.strip() and t.strip() for s, t in zip(splits["val"].source, splits["val"].target, strict=True))


def test_sentencepiece_is_trained_once_and_cached(tmp_path: Path) -> None:
    texts = [en + " " + de for en, de in D.phrase_pairs(200, seed=0)]
    tok = train_sentencepiece(texts, 100, tmp_path)
    assert len(list(tmp_path.glob("spm-*.model"))) == 1
    again = train_sentencepiece(texts, 100, tmp_path)
    assert again.proto == tok.proto
    assert tok.decode(tok.encode("fünf und 12.03.1999")) == "fünf und 12.03.1999"
    assert (tok.pad, tok.unk, tok.bos, tok.eos) == (0, 1, 2, 3)


def test_iwslt14_card_scores_de_bped_text(tmp_path: Path) -> None:
    import torch

    from kdbench.adapters.translation.adapter import TranslationAdapter
    from kdbench.protocol import load_protocol

    folder = tmp_path / D.IWSLT14_DIR
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.de").write_text("das ist ein te@@ st .\nhallo welt\n")
        (folder / f"{split}.en").write_text("this is a te@@ st .\nhello world\n")
    adapter = TranslationAdapter(load_protocol("translation", "standard"), tmp_path, torch.device("cpu"))
    assert adapter.tokenizer.decode(adapter.encoded["test"][1][0]) == "this is a test ."
    assert adapter.evaluation_info("test")["decoding"]["beam"] == 5
