"""OOD data: generated language identification (deterministic, offline) and CLINC150's real file."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from kdbench.adapters.ood import data as D
from kdbench.adapters.ood.adapter import OODAdapter
from kdbench.errors import KDBenchError, UsageError
from kdbench.protocol import apply_overrides, load_protocol
from tests.datafiles import data_root

SPEC = {"dataset": "langid", "id": ["en", "de"], "near": ["nl"], "far": ["fi"], "vocab_words": 200,
        "words": [2, 4], "train_per_lang": 10, "val_per_lang": 3, "test_per_lang": 5, "ood_val_per_lang": 2,
        "ood_per_lang": 4, "seed": 0, "max_chars": 30}


def test_langid_sizes_labels_and_sets() -> None:
    data = D.load_langid(SPEC)
    assert (len(data.train), len(data.val), len(data.test)) == (20, 6, 10)
    assert {k: len(v) for k, v in data.ood.items()} == {"near": 4, "far": 4}
    assert {k: len(v) for k, v in data.ood_val.items()} == {"near": 2, "far": 2}
    assert data.classes == ["en", "de"] and data.train.labels.tolist() == [0] * 10 + [1] * 10
    assert all(len(t.split()) in (2, 3, 4) for t in data.train.texts)
    assert all((data.ood[s].labels == -1).all() and (data.ood_val[s].labels == -1).all() for s in ("near", "far"))
    assert max(len(t) for t in data.test.tokens) <= 30


def test_langid_is_deterministic_from_the_seed() -> None:
    a, b, c = D.load_langid(SPEC), D.load_langid(SPEC), D.load_langid({**SPEC, "seed": 1})
    assert a.train.texts == b.train.texts and a.ood["far"].texts == b.ood["far"].texts
    assert a.train.texts != c.train.texts
    assert a.train.texts != a.test.texts  # train and test are drawn separately


def test_wordfreq_lists_are_read_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    words, p = D.word_distribution("pt", 50)
    assert len(words) == 50 and all(w.isalpha() for w in words) and p.sum() == pytest.approx(1.0)


def test_langid_rejects_bad_languages() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        D.load_langid({**SPEC, "near": ["en"]})
    with pytest.raises(ValueError, match="no 'small' word list for 'xx'"):
        D.word_distribution("xx", 10)


def test_characters_unseen_in_training_are_unknown() -> None:
    vocab = D.CharVocab(["ab", "ba"])
    assert vocab.encode("abz", 10).tolist() == [2, 3, D.UNK] and len(vocab) == 4
    assert vocab.encode("abab", 2).tolist() == [2, 3]


def test_words_are_lower_cased_tokens_and_rare_or_unseen_ones_unknown() -> None:
    assert D.words_of("What's my balance? Pay $20") == ["what", "'", "s", "my", "balance", "?", "pay", "$", "20"]
    vocab = D.WordVocab(["pay the bill", "Pay rent", "the rent"], min_count=2)
    assert sorted(vocab.index) == ["pay", "rent", "the"] and len(vocab) == 5  # "bill" seen once
    assert vocab.encode("PAY the bill now", 10).tolist() == [vocab.index["pay"], vocab.index["the"], D.UNK, D.UNK]
    assert vocab.encode("pay the rent", 2).tolist() == [vocab.index["pay"], vocab.index["the"]]
    assert vocab.encode("", 5).tolist() == [D.UNK]  # never an empty sequence


def test_tokens_and_arch_must_agree() -> None:
    with pytest.raises(UsageError, match="langid is read as characters"):
        OODAdapter(apply_overrides(load_protocol("ood", "smoke"), {"data.tokens": "words"}), None,
                   torch.device("cpu"))
    adapter = OODAdapter(apply_overrides(load_protocol("ood", "smoke"), {"student.arch": "word_transformer"}),
                         None, torch.device("cpu"))
    with pytest.raises(UsageError, match=r"does not read data\.tokens chars; valid: char_transformer"):
        adapter.build_model("student", frozenset())


def test_clinc150_missing_file_and_root_say_what_is_needed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data_full\.json"):
        D.load_clinc150(tmp_path)
    protocol = load_protocol("ood", "clinc150")
    with pytest.raises(UsageError, match="needs --data-root"):
        OODAdapter(protocol, None, torch.device("cpu"))
    with pytest.raises(KDBenchError, match="CLINC150 not found"):
        OODAdapter(protocol, tmp_path, torch.device("cpu"))


def test_unknown_dataset_names_the_valid_ones() -> None:
    with pytest.raises(UsageError, match=r"--set data\.dataset: 'imdb' is not valid; valid: langid, clinc150"):
        apply_overrides(load_protocol("ood", "smoke"), {"data.dataset": "imdb"})


def test_clinc150_real_file_split_sizes() -> None:
    data = D.load_clinc150(data_root("clinc150"))
    assert (len(data.train), len(data.val), len(data.test)) == (15_000, 3_000, 4_500)
    assert (len(data.ood_val["oos"]), len(data.ood["oos"])) == (100, 1_000)
    assert data.num_classes == 150 and "oos" not in data.classes
    assert torch.bincount(data.train.labels).tolist() == [100] * 150
    assert torch.bincount(data.test.labels).tolist() == [30] * 150
    assert torch.bincount(data.val.labels).tolist() == [20] * 150
    assert (data.ood["oos"].labels == -1).all() and (data.ood_val["oos"].labels == -1).all()


def test_primary_metric_comes_from_the_card_and_must_be_an_ood_metric() -> None:
    adapter = OODAdapter(apply_overrides(load_protocol("ood", "smoke"), {"metrics.primary": "fpr95_energy_far"}),
                         None, torch.device("cpu"))
    assert adapter.protocol.typed.metrics.primary == "fpr95_energy_far"
    with pytest.raises(UsageError, match="not an OOD metric"):
        OODAdapter(apply_overrides(load_protocol("ood", "smoke"), {"metrics.primary": "top1"}),
                   None, torch.device("cpu"))
