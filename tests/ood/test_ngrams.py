"""CLINC150's fastText-style n-gram bag: the n-grams, their vocabulary, batching and NgramBag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdbench.adapters.ood import data as D
from kdbench.adapters.ood.adapter import OODAdapter
from kdbench.adapters.ood.model import NgramBag, TextEncoder
from kdbench.errors import UsageError
from kdbench.protocol import apply_overrides, load_protocol
from tests.datafiles import data_root


def test_word_and_character_ngrams_by_hand() -> None:
    spec = D.NgramSpec(words=2, chars=(2, 3), min_count=1)
    assert spec.grams(["pay", "it"]) == [
        "w pay", "w it", "w pay it",
        "c <p", "c pa", "c ay", "c y>", "c <pa", "c pay", "c ay>",
        "c <i", "c it", "c t>", "c <it", "c it>"]
    assert D.NgramSpec(words=1).grams(["a", "a"]) == ["w a", "w a"]  # a bag: repeats kept


def test_bad_ngram_specs_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"\[min, max\] with 1 ≤ min ≤ max, got \[4, 2\]"):
        D.NgramSpec(chars=(4, 2))
    with pytest.raises(ValueError, match="must be ≥ 1"):
        D.NgramSpec(words=0)


def test_vocabulary_keeps_training_ngrams_seen_min_count_times() -> None:
    vocab = D.NgramVocab(D.NgramSpec(words=2, chars=None, min_count=2), ["pay the bill", "pay the rent", "rent"], 8)
    assert sorted(vocab.index) == ["w pay", "w pay the", "w rent", "w the"]  # ids from 1, sorted
    assert vocab.index == {"w pay": 1, "w pay the": 2, "w rent": 3, "w the": 4} and len(vocab) == 5
    assert vocab.encode("Pay the fee").tolist() == [1, 4, 2]  # unknown n-grams dropped, order kept
    assert vocab.encode("nothing known").tolist() == [D.PAD]  # never empty: the padding id
    cut = D.NgramVocab(D.NgramSpec(words=1, min_count=1), ["a b c"], max_words=2)
    assert sorted(cut.index) == ["w a", "w b"]  # the same word cut as the tokens


def test_bag_batches_flat_ids_and_offsets() -> None:
    flat, offsets = D.bag([torch.tensor([3, 4]), torch.tensor([0]), torch.tensor([5, 6, 7])])
    assert flat.tolist() == [3, 4, 0, 5, 6, 7] and offsets.tolist() == [0, 2, 3]


def test_ngram_bag_is_the_mean_embedding_without_padding_then_linear() -> None:
    torch.manual_seed(0)
    model = NgramBag(6, 3, dim=4).eval()
    out = model((torch.zeros(3, 1, dtype=torch.long),
                 [torch.tensor([1, 2, 2]), torch.tensor([D.PAD]), torch.tensor([5, D.PAD])]))
    e = model.bag.weight.detach().double()
    expected = torch.stack([(e[1] + 2 * e[2]) / 3, torch.zeros(4, dtype=torch.float64), e[5]])
    torch.testing.assert_close(out.features["embedding"].double(), expected)
    w, b = model.fc.weight.detach().double(), model.fc.bias.detach().double()
    torch.testing.assert_close(out.logits.double(), expected @ w.T + b)
    assert out.attentions == {} and out.aux_logits == []
    with pytest.raises(ValueError, match="reads n-grams"):
        model(torch.zeros(3, 1, dtype=torch.long))


def test_transformer_reads_only_the_ids_of_an_input_with_ngrams() -> None:
    torch.manual_seed(0)
    model = TextEncoder(10, 3, dim=8, depth=1, heads=2, max_chars=8).eval()
    ids = torch.tensor([[2, 3, 4]])
    torch.testing.assert_close(model((ids, [torch.tensor([1, 2])])).logits, model(ids).logits)


def test_ngram_bag_needs_data_ngrams_and_langid_has_none() -> None:
    with pytest.raises(UsageError, match=r"data\.tokens words, data\.ngrams and data\.val_oos_train are for clinc150"):
        OODAdapter(apply_overrides(load_protocol("ood", "smoke"), {"data.ngrams.words": 1}), None,
                   torch.device("cpu"))
    adapter = OODAdapter(apply_overrides(load_protocol("ood", "smoke"), {"teacher.arch": "ngram_bag"}), None,
                         torch.device("cpu"))
    with pytest.raises(UsageError, match=r"arch ngram_bag reads the data's n-grams; give data\.ngrams"):
        adapter.build_model("teacher", frozenset())


CARD = """
name: clinc150-bag-test
task: ood
tier: medium
description: CLINC150 with a fastText teacher (test card)
data: {dataset: clinc150, tokens: words, min_count: 2, max_tokens: 32, ngrams: {words: 2, chars: [2, 5], min_count: 2}}
student: {arch: STUDENT, dim: 16, depth: 1, heads: 2}
teacher: {arch: ngram_bag, dim: 16, train: {epochs: 1}}
train: {epochs: 1, batch_size: 64, optimizer: {name: adamw, lr: 2.0e-3}}
seeds: [0]
metrics: {primary: auroc_msp}
"""


def _clinc_bag(tmp_path: Path, student: str = "word_transformer") -> OODAdapter:
    card = tmp_path / "card.yaml"
    card.write_text(CARD.replace("STUDENT", student).replace(
        "depth: 1, heads: 2", "depth: 1, heads: 2" if student != "ngram_bag" else "dropout: 0.1"))
    return OODAdapter(load_protocol("ood", str(card)), data_root("clinc150"), torch.device("cpu"))


def test_clinc150_bag_teacher_builds_runs_and_refuses_attention_methods(tmp_path: Path) -> None:
    adapter = _clinc_bag(tmp_path)
    assert adapter.data.ngram_vocab is not None and len(adapter.data.ngram_vocab) > 10_000
    assert adapter.data.train.ngrams is not None and len(adapter.data.train.ngrams) == 15_000
    teacher = adapter.build_model("teacher", frozenset())
    assert isinstance(teacher, NgramBag)
    batch = next(adapter.train_batches(4, torch.Generator().manual_seed(0)))
    out = adapter.forward(teacher, batch)
    assert out.heads["cls"].logits.shape == (4, 150) and set(out.features) == {"embedding"}
    adapter.configure(frozenset({"features"}))  # feature methods read its embedding
    with pytest.raises(UsageError, match=r"reads attentions .* teacher \(arch ngram_bag\) has none"):
        adapter.configure(frozenset({"attentions"}))
    with pytest.raises(UsageError, match="has one layer"):
        _clinc_bag(tmp_path, "ngram_bag").build_model("student", frozenset({"layers"}))
