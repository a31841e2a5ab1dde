"""Vocabularies: a joint sentencepiece model trained on the training split (cached under the
kdbench cache, keyed by the training text and the settings), or, for already BPE-segmented
corpora (IWSLT'14 from prepare-iwslt14.sh), a whitespace dictionary as fairseq-preprocess
builds one. Ids 0-3 are pad, unk, bos, eos in both."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from kdbench.adapters.translation.data import remove_bpe
from kdbench.records import atomic_write_bytes

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")


class Tokenizer:
    """Text ↔ ids. `encode` gives ids without bos/eos; `decode` gives detokenized text."""

    pad, unk, bos, eos = PAD, UNK, BOS, EOS

    @property
    def size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model: bytes) -> None:
        import sentencepiece as spm

        self.proto = model
        self.sp = spm.SentencePieceProcessor(model_proto=model)

    @property
    def size(self) -> int:
        return int(self.sp.get_piece_size())

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.sp.decode([i for i in ids if i > EOS]))


def train_sentencepiece(texts: Iterable[str], vocab_size: int, cache: Path,
                        model_type: str = "unigram") -> SentencePieceTokenizer:
    """A joint sentencepiece model of the given training texts, trained once and cached."""
    import sentencepiece as spm

    lines = [t for t in texts if t.strip()]
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode() + b"\n")
    digest.update(f"{vocab_size}|{model_type}|v1".encode())
    path = cache / f"spm-{digest.hexdigest()[:24]}.model"
    if path.is_file():
        return SentencePieceTokenizer(path.read_bytes())
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=writer, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, num_threads=1,
        input_sentence_size=len(lines), shuffle_input_sentence=False, minloglevel=2)
    atomic_write_bytes(path, writer.getvalue())
    return SentencePieceTokenizer(writer.getvalue())


class WordTokenizer(Tokenizer):
    """Whitespace tokens of a pre-segmented corpus, `min_count` as fairseq-preprocess's
    threshold; decoding joins tokens with spaces and removes `@@ ` BPE joiners."""

    def __init__(self, texts: Iterable[str], min_count: int = 1) -> None:
        counts = Counter(tok for text in texts for tok in text.split())
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        self.words = [*SPECIALS, *words]
        self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(tok, UNK) for tok in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return remove_bpe(" ".join(self.words[i] for i in ids if i > EOS))
