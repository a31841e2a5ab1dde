"""OOD detection data: generated language identification (smoke, small) and CLINC150 (medium).

Language identification: each sample is a "sentence" of words drawn independently, with
probability proportional to their frequency, from the `vocab_words` most frequent alphabetic
words of one language in wordfreq's bundled "small" lists (no network). The in-distribution
(ID) classes are the card's `id` languages; the out-of-distribution (OOD) sets hold sentences
of unseen languages, split into near-OOD (close relatives of an ID language) and far-OOD
(unrelated languages). ID sentences come in train / val / test splits and OOD sentences in
val / test splits; no sentence of a language is in two of its splits. Everything is a
deterministic function of the card's data seed.

CLINC150 (Larson et al., "An Evaluation Dataset for Intent Classification and Out-of-Scope
Prediction", EMNLP 2019): `<data-root>/clinc150/data_full.json`; ID = the 150 in-scope intents
(train 15,000, val 3,000, test 4,500), OOD = `oos_val` (100) and `oos_test` (1,000), the
file's official lists. `oos_train` is not used for training (no outlier exposure), as in
MLKD's setting.

Text is encoded as characters (`data.tokens: chars`, the default): ids 0 = padding, 1 = unknown
(a character absent from the ID training set), then the training set's characters in sorted
order; or as words (`tokens: words`, CLINC150): lower-cased runs of letters and digits and
single punctuation marks, ids 0 = padding, 1 = unknown (a word seen fewer than `min_count`
times in the ID training set, or never), then the kept words in sorted order.

CLINC150 can also carry each utterance's bag of n-grams (`data.ngrams`, read by models with
`ngrams: true`), as fastText's supervised classifier reads them (Joulin et al., "Bag of Tricks
for Efficient Text Classification", EACL 2017; character n-grams of "<word>" as Bojanowski et
al., TACL 2017): the word n-grams of orders 1..`words` and the character n-grams of lengths
`chars[0]`..`chars[1]` of every word wrapped in "<" and ">", over the same (cut) word tokens.
An n-gram gets an id when it occurs at least `min_count` times in the ID training set (ids from
1 in sorted order, no hashing); others are dropped, and an utterance with none is the single
id 0 (padding: the bag is then the zero vector).
"""

from __future__ import annotations

import json
import re
import zlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

PAD, UNK = 0, 1
CLINC_DIR = "clinc150"
CLINC_FILE = "data_full.json"
CLINC_URL = "https://github.com/clinc/oos-eval (data/data_full.json)"
CLINC_SIZES = {"train": 15_000, "val": 3_000, "test": 4_500, "oos_train": 100, "oos_val": 100, "oos_test": 1_000}


@dataclass
class TextSet:
    """Encoded sentences of one split.

    Attributes:
        tokens: N int64 tensors (L_i,) of character ids, unpadded.
        labels: (N,) class indices (−1 for OOD samples).
        texts: the raw sentences (for inspection).
        ngrams: N int64 tensors of n-gram ids (`NgramVocab`), or None without `data.ngrams`.
    """

    tokens: list[Tensor]
    labels: Tensor
    texts: list[str] = field(default_factory=list)
    ngrams: list[Tensor] | None = None

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class OODData:
    """ID train/val/test sets, OOD val and test sets by name, the class names and the character
    vocabulary."""

    train: TextSet
    val: TextSet
    test: TextSet
    ood_val: dict[str, TextSet]
    ood: dict[str, TextSet]
    classes: list[str]
    vocab: Vocab
    ngram_vocab: NgramVocab | None = None

    def eval_sets(self, split: str) -> tuple[TextSet, dict[str, TextSet]]:
        """The ID set and the OOD sets scored on `split` ("val" or "test")."""
        return (self.val, self.ood_val) if split == "val" else (self.test, self.ood)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Vocab(ABC):
    """Ids of a text's units (characters or words): 0 = padding, 1 = unknown, then `units` sorted."""

    def __init__(self, units: Collection[str]) -> None:
        self.index = {u: i + 2 for i, u in enumerate(sorted(units))}

    def __len__(self) -> int:
        return len(self.index) + 2

    @abstractmethod
    def units(self, text: str) -> Sequence[str]:
        """The units of `text` that the vocabulary indexes (characters or words)."""

    def encode(self, text: str, max_units: int) -> Tensor:
        """The first `max_units` units' ids (UNK for one not in the vocabulary); never empty."""
        ids = [self.index.get(u, UNK) for u in self.units(text)[:max_units]] or [UNK]
        return torch.tensor(ids, dtype=torch.long)

    def encode_all(self, texts: Sequence[str], labels: Sequence[int], max_units: int) -> TextSet:
        return TextSet([self.encode(t, max_units) for t in texts],
                       torch.tensor(list(labels), dtype=torch.long), list(texts))


class CharVocab(Vocab):
    """Character ids from the ID training texts; unseen characters map to UNK."""

    def __init__(self, texts: Sequence[str]) -> None:
        super().__init__({c for t in texts for c in t})

    def units(self, text: str) -> str:
        return text


WORD = re.compile(r"\w+|[^\w\s]")


def words_of(text: str) -> list[str]:
    """Lower-cased word tokens: runs of letters/digits, and every other non-space character."""
    return WORD.findall(text.lower())


class WordVocab(Vocab):
    """Word ids from the ID training texts; rarer (< `min_count`) and unseen words map to UNK."""

    def __init__(self, texts: Sequence[str], min_count: int = 1) -> None:
        counts = Counter(w for t in texts for w in words_of(t))
        super().__init__({w for w, c in counts.items() if c >= min_count})

    def units(self, text: str) -> list[str]:
        return words_of(text)


@dataclass(frozen=True)
class NgramSpec:
    """Which n-grams enter the bag: word orders 1..words, character lengths chars (or none)."""

    words: int = 2
    chars: tuple[int, int] | None = None
    min_count: int = 2

    def __post_init__(self) -> None:
        if self.words < 1 or self.min_count < 1:
            raise ValueError(f"ngrams: words and min_count must be ≥ 1, got {self.words}, {self.min_count}")
        if self.chars is not None and not 1 <= self.chars[0] <= self.chars[1]:
            raise ValueError(f"ngrams.chars must be [min, max] with 1 ≤ min ≤ max, got {list(self.chars)}")

    def grams(self, words: Sequence[str]) -> list[str]:
        """The n-grams of one utterance's word tokens, with repeats (a bag); word and character
        n-grams are kept apart by a prefix ("w " and "c ")."""
        out = [f"w {' '.join(words[i:i + n])}" for n in range(1, self.words + 1)
               for i in range(len(words) - n + 1)]
        if self.chars is not None:
            for word in words:
                wrapped = f"<{word}>"
                out.extend(f"c {wrapped[i:i + n]}" for n in range(self.chars[0], self.chars[1] + 1)
                           for i in range(len(wrapped) - n + 1))
        return out


class NgramVocab:
    """Ids of the training set's n-grams seen at least `spec.min_count` times (0 = padding)."""

    def __init__(self, spec: NgramSpec, texts: Sequence[str], max_words: int) -> None:
        self.spec, self.max_words = spec, max_words
        counts = Counter(g for t in texts for g in spec.grams(words_of(t)[:max_words]))
        self.index = {g: i + 1 for i, g in enumerate(sorted(g for g, c in counts.items() if c >= spec.min_count))}

    def __len__(self) -> int:
        return len(self.index) + 1

    def encode(self, text: str) -> Tensor:
        """The ids of `text`'s known n-grams, in order, with repeats; [0] when it has none."""
        grams = self.spec.grams(words_of(text)[:self.max_words])
        return torch.tensor([self.index[g] for g in grams if g in self.index] or [PAD], dtype=torch.long)


# ---------------------------------------------------------------- language identification

def word_distribution(lang: str, vocab_words: int) -> tuple[list[str], np.ndarray]:
    """The `vocab_words` most frequent alphabetic words of `lang` and their normalised frequencies."""
    from wordfreq import available_languages, get_frequency_dict

    if lang not in available_languages(wordlist="small"):
        raise ValueError(f"wordfreq has no 'small' word list for {lang!r}; valid: "
                         f"{', '.join(sorted(available_languages(wordlist='small')))}")
    freqs = get_frequency_dict(lang, wordlist="small")  # most frequent first
    words = [w for w in freqs if w.isalpha()][:vocab_words]
    p = np.array([freqs[w] for w in words], dtype=np.float64)
    return words, p / p.sum()


def _rng(seed: int, lang: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(lang.encode()), zlib.crc32(split.encode())])


def sentences(lang: str, n: int, words: tuple[int, int], vocab_words: int, seed: int,
              split: str, exclude: Collection[str] = ()) -> list[str]:
    """`n` sentences of `lang`, each of a uniform number of words in [words[0], words[1]], none of
    them in `exclude` (a sentence drawn there is drawn again from the same generator).

    Raises:
        ValueError: the word list is too small to draw `n` sentences outside `exclude`.
    """
    vocab, p = word_distribution(lang, vocab_words)
    rng = _rng(seed, lang, split)
    out: list[str] = []
    for _ in range(100 * n + 100):
        if len(out) == n:
            return out
        k = int(rng.integers(words[0], words[1] + 1))
        text = " ".join(vocab[i] for i in rng.choice(len(vocab), size=k, p=p))
        if text not in exclude:
            out.append(text)
    if len(out) == n:
        return out
    raise ValueError(f"could not draw {n} {lang} sentences for {split!r} outside the other splits "
                     f"(got {len(out)}): raise vocab_words or words")


def load_langid(spec: dict[str, Any]) -> OODData:
    """Generated language identification from the card's `data` section (see module doc).

    ID sentences are drawn per language for train, then val (none in train), then test (none in
    train or val); OOD sentences per language for val, then test (none in val).
    """
    ids, near, far = list(spec["id"]), list(spec.get("near", [])), list(spec.get("far", []))
    overlap = (set(ids) & set(near + far)) | (set(near) & set(far))
    if overlap:
        raise ValueError(f"languages listed twice among id/near/far: {sorted(overlap)}")
    words = tuple(int(w) for w in spec.get("words", (3, 8)))
    vocab_words, seed = int(spec.get("vocab_words", 3000)), int(spec.get("seed", 0))
    max_chars = int(spec.get("max_chars", 64))

    def gen(langs: list[str], counts: dict[str, int]) -> dict[str, tuple[list[str], list[int]]]:
        """split → (texts, labels) over `langs`, each split disjoint from the earlier ones."""
        out: dict[str, tuple[list[str], list[int]]] = {split: ([], []) for split in counts}
        for c, lang in enumerate(langs):
            seen: set[str] = set()
            for split, n in counts.items():
                texts = sentences(lang, n, (words[0], words[1]), vocab_words, seed, split, frozenset(seen))
                seen.update(texts)
                out[split][0].extend(texts)
                out[split][1].extend([c] * n)
        return out

    id_sets = gen(ids, {"train": int(spec["train_per_lang"]), "val": int(spec["val_per_lang"]),
                        "test": int(spec["test_per_lang"])})
    vocab = CharVocab(id_sets["train"][0])
    encoded = {split: vocab.encode_all(texts, labels, max_chars) for split, (texts, labels) in id_sets.items()}
    ood: dict[str, dict[str, TextSet]] = {"val": {}, "test": {}}
    for name, langs in (("near", near), ("far", far)):
        if langs:
            # "ood" is the OOD test split's generator key (as before val existed)
            sets = gen(langs, {"ood_val": int(spec["ood_val_per_lang"]), "ood": int(spec["ood_per_lang"])})
            for split, key in (("val", "ood_val"), ("test", "ood")):
                texts = sets[key][0]
                ood[split][name] = vocab.encode_all(texts, [-1] * len(texts), max_chars)
    return OODData(encoded["train"], encoded["val"], encoded["test"], ood["val"], ood["test"], ids, vocab)


# ---------------------------------------------------------------- CLINC150

def load_clinc150(root: Path, max_chars: int = 96, tokens: str = "chars", min_count: int = 1,
                  max_tokens: int = 32, ngrams: NgramSpec | None = None,
                  val_oos_train: bool = False) -> OODData:
    """CLINC150's `data_full.json` under `root/clinc150/`, as characters (cut at `max_chars`) or
    words (cut at `max_tokens`), with each utterance's n-gram bag when `ngrams` is given (over
    its first `max_tokens` words); with `val_oos_train` the file's 100 `oos_train` utterances
    (never trained on) join the 100 `oos_val` ones as the val OOD set. Raises
    FileNotFoundError/ValueError naming what is missing or malformed."""
    path = root / CLINC_DIR / CLINC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"CLINC150 not found: expected {path} (download {CLINC_URL})")
    data = json.loads(path.read_text())
    for split, size in CLINC_SIZES.items():
        if len(data.get(split, [])) != size:
            raise ValueError(f"{path}: split {split!r} has {len(data.get(split, []))} items, "
                             f"expected {size} (is it data_full.json?)")
    classes = sorted({intent for _, intent in data["train"]})
    index = {c: i for i, c in enumerate(classes)}
    texts = [t for t, _ in data["train"]]
    vocab = WordVocab(texts, min_count) if tokens == "words" else CharVocab(texts)
    length = max_tokens if tokens == "words" else max_chars
    bag = NgramVocab(ngrams, texts, max_tokens) if ngrams is not None else None

    def encode(items: list[list[str]], in_scope: bool) -> TextSet:
        labels = [index[i] if in_scope else -1 for _, i in items]
        out = vocab.encode_all([t for t, _ in items], labels, length)
        if bag is not None:
            out.ngrams = [bag.encode(t) for t, _ in items]
        return out

    return OODData(encode(data["train"], True), encode(data["val"], True), encode(data["test"], True),
                   {"oos": encode(data["oos_val"] + (data["oos_train"] if val_oos_train else []), False)},
                   {"oos": encode(data["oos_test"], False)},
                   classes, vocab, bag)


# ---------------------------------------------------------------- batching

def pad(tokens: Sequence[Tensor]) -> Tensor:
    """(B, T) padded with PAD to the longest sequence of the batch."""
    return torch.nn.utils.rnn.pad_sequence(list(tokens), batch_first=True, padding_value=PAD)


def bag(ngrams: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """The flat n-gram ids of a batch and each sample's offset into them (nn.EmbeddingBag's input)."""
    lengths = torch.tensor([len(g) for g in ngrams], dtype=torch.long, device=ngrams[0].device)
    return torch.cat(list(ngrams)), torch.cumsum(lengths, 0) - lengths


def index_batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[Tensor]:
    """(B,) index tensors covering range(n) once, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)
