"""Machine translation: generated EN→DE number and date phrases (smoke, small), Multi30k
(medium), IWSLT'14 De-En (standard), with a native Transformer, fairseq's label-smoothed CE and
sacrebleu BLEU / chrF on detokenized beam-search output."""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from filelock import FileLock
from torch import Tensor, nn

from kdbench.adapters.base import Adapter, Role
from kdbench.adapters.splits import check_split
from kdbench.adapters.translation import data as D
from kdbench.adapters.translation.decode import beam_search, greedy, max_length
from kdbench.adapters.translation.metrics import corpus_metrics, signatures
from kdbench.adapters.translation.model import Transformer
from kdbench.adapters.translation.tokenizer import Tokenizer, WordTokenizer, train_sentencepiece
from kdbench.cache import cache_dir, sha256_json
from kdbench.errors import KDBenchError, UsageError
from kdbench.losses.sequence import label_smoothed_nll
from kdbench.outputs import Head, HeadKind, Outputs
from kdbench.protocol import Protocol
from kdbench.records import atomic_write_bytes

DATASETS = ("phrases", "multi30k", "iwslt14")
_MODEL_KEYS = ("arch", "seed", "train")
HEAD = "token"  # the one head: next-token logits under teacher forcing


@dataclass
class Batch:
    src: Tensor  # (B, S) source ids + eos, padded
    tgt_in: Tensor  # (B, T) bos + target ids, padded
    tgt_out: Tensor  # (B, T) target ids + eos, padded
    ids: Tensor  # (B,) indices into the training split


class TranslationAdapter(Adapter[Batch, Outputs]):
    """Teacher-forced next-token heads (padding masked), decoder-layer heads, encoder q/k/v."""

    task = "translation"
    provides = frozenset({"layers", "attentions", "ids", "ce_heads", "label_heads", "sequence_targets",
                          "token_heads"})
    head_kinds: ClassVar[dict[str, HeadKind]] = {HEAD: "categorical"}
    teacher_inputs_fixed = True  # batches derive from (seed, epoch) alone; SeqKD's targets go online
    evaluation_version = 2  # 2: the datasets' valid splits are scored as "val", test only at the end
    train_subsets = True

    def __init__(self, protocol: Protocol, data_root: Path | None, device: torch.device) -> None:
        super().__init__(protocol, data_root, device)
        spec = protocol.card["data"]
        self.splits = self._load(spec)
        self.tokenizer = self._tokenizer(spec)
        self.label_smoothing = float(protocol.get("task_loss.label_smoothing", 0.0))
        self.decoding = {"beam": 5, "lenpen": 1.0, "max_len_a": 1.5, "max_len_b": 10, "batch_size": 250,
                         **(protocol.card.get("decode") or {})}
        self.max_tokens = int(spec.get("max_tokens", 128))
        self.encoded = {name: self._encode(split) for name, split in self.splits.items()}
        self.attentions = False
        self.sequence_targets = False

    # --- data ------------------------------------------------------------------------------

    def _load(self, spec: dict[str, Any]) -> dict[str, D.Parallel]:
        name = spec.get("dataset")
        if name == "phrases":
            missing = [s for s in ("train", "val", "test") if s not in spec]
            if missing:
                raise UsageError(f"protocol {self.protocol.name!r} data: phrases need sizes train, val and test; "
                                 f"missing {', '.join(missing)}")
            sizes = {s: int(spec[s]) for s in ("train", "val", "test")}
            return D.phrase_splits(sizes, int(spec.get("seed", 0)), int(spec.get("max_items", 2)))
        if name in ("multi30k", "iwslt14"):
            if self.data_root is None:
                where = D.MULTI30K_DIR if name == "multi30k" else D.IWSLT14_DIR
                raise UsageError(f"{name} needs --data-root (or KDBENCH_DATA_ROOT): the folder that holds {where}/")
            loader = D.load_multi30k if name == "multi30k" else D.load_iwslt14
            return loader(self.data_root, str(spec["source"]), str(spec["target"]))
        raise UsageError(f"unknown translation dataset {name!r}; valid: {', '.join(DATASETS)}")

    def _tokenizer(self, spec: dict[str, Any]) -> Tokenizer:
        train = self.splits["train"]
        kind = spec.get("vocab", "sentencepiece")
        if kind == "words":
            return WordTokenizer([*train.source, *train.target], int(spec.get("min_count", 1)))
        if kind == "sentencepiece":
            return train_sentencepiece([*train.source, *train.target], int(spec.get("vocab_size", 1000)),
                                       cache_dir() / "translation")
        raise UsageError(f"unknown vocab {kind!r}; valid: sentencepiece, words")

    def _encode(self, split: D.Parallel) -> tuple[list[list[int]], list[list[int]]]:
        cut = self.max_tokens - 1  # room for eos
        enc = self.tokenizer.encode
        return [enc(s)[:cut] for s in split.source], [enc(t)[:cut] for t in split.target]

    def configure(self, needs: frozenset[str]) -> None:
        self.attentions = "attentions" in needs
        self.sequence_targets = "sequence_targets" in needs

    @property
    def train_size(self) -> int:
        return len(self.splits["train"])

    def keep_train(self, indices: Tensor) -> None:
        """The training pairs at `indices`, raw and encoded (SeqKD's teacher-decoded targets, which
        `attach_teacher` put there before, included; Adapter.keep_train); the vocabulary stays the
        one trained on every training pair."""
        rows = indices.tolist()
        train, (src, tgt) = self.splits["train"], self.encoded["train"]
        self.splits["train"] = D.Parallel([train.source[i] for i in rows], [train.target[i] for i in rows])
        self.encoded["train"] = ([src[i] for i in rows], [tgt[i] for i in rows])

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        """Shuffled batches of similar source lengths: shuffle, sort chunks of 50 batches by
        length, batch, shuffle the batches (all from `generator`)."""
        src, tgt = self.encoded["train"]
        for group in self._groups(batch_size, generator):
            yield self._batch(src, tgt, group)

    def _groups(self, batch_size: int, generator: torch.Generator) -> list[list[int]]:
        """The epoch's batches as lists of training indices, in order (what `train_batches` batches)."""
        src, tgt = self.encoded["train"]
        order = torch.randperm(len(src), generator=generator).tolist()
        chunk = 50 * batch_size
        groups = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: (len(src[i]), len(tgt[i])))
            groups += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
        return [groups[g] for g in torch.randperm(len(groups), generator=generator).tolist()]

    def epoch_positions(self, batch_size: int, generator: torch.Generator) -> dict[str, int]:
        """The token head's padded positions: per batch, its size × (longest target + eos)."""
        tgt = self.encoded["train"][1]
        return {HEAD: sum(len(g) * (max(len(tgt[i]) for i in g) + 1) for g in self._groups(batch_size, generator))}

    def _batch(self, src: list[list[int]], tgt: list[list[int]], idx: list[int]) -> Batch:
        tok = self.tokenizer
        source = _pad([src[i] + [tok.eos] for i in idx], tok.pad)
        tgt_in = _pad([[tok.bos, *tgt[i]] for i in idx], tok.pad)
        tgt_out = _pad([[*tgt[i], tok.eos] for i in idx], tok.pad)
        return Batch(source.to(self.device), tgt_in.to(self.device), tgt_out.to(self.device),
                     torch.tensor(idx).to(self.device))

    # --- model -----------------------------------------------------------------------------

    def build_model(self, role: Role, needs: frozenset[str]) -> nn.Module:
        spec = {k: v for k, v in dict(self.protocol.card[role]).items() if k not in _MODEL_KEYS}
        if self.protocol.card[role].get("arch") != "transformer":
            raise UsageError(f"protocol {self.protocol.name!r} {role}: unknown architecture "
                             f"{self.protocol.card[role].get('arch')!r}; valid: transformer")
        try:
            model = Transformer(self.tokenizer.size, pad=self.tokenizer.pad, **spec)
        except (TypeError, ValueError) as e:
            raise UsageError(f"protocol {self.protocol.name!r} {role}: {e}") from None
        model.expose_layers = "layers" in needs  # type: ignore[assignment]
        return model

    def forward(self, model: nn.Module, batch: Batch) -> Outputs:
        out = model(batch.src, batch.tgt_in, layers=bool(getattr(model, "expose_layers", False)),
                    attentions=self.attentions)
        mask = batch.tgt_out != self.tokenizer.pad
        heads = {HEAD: Head(out.logits, batch.tgt_out, mask, kind="categorical")}
        layers = [{HEAD: Head(z, batch.tgt_out, mask, kind="categorical")} for z in out.layer_logits[:-1]]
        return Outputs(heads=heads, layers=[*layers, heads] if layers else [],
                       attentions=dict(out.attentions), ids=batch.ids)

    def task_loss(self, outputs: Outputs) -> dict[str, Tensor]:
        """Label-smoothed CE (fairseq's convention, card `task_loss.label_smoothing`) on the final
        head ("token") and on every earlier decoder layer's head (deep supervision)."""
        eps = self.label_smoothing
        terms = {n: label_smoothed_nll(h.logits, h.target, eps, h.mask)  # type: ignore[arg-type]
                 for n, h in outputs.heads.items()}
        for i, layer in enumerate(outputs.layers[:-1]):
            for n, h in layer.items():
                terms[f"layer{i}/{n}"] = label_smoothed_nll(h.logits, h.target, eps, h.mask)  # type: ignore[arg-type]
        return terms

    # --- decoding and evaluation -----------------------------------------------------------

    def translate(self, model: nn.Module, sources: list[list[int]], beam: int | None = None) -> list[list[int]]:
        """Decode token-id sources with the card's settings (beam 1 is greedy)."""
        d = self.decoding
        beam = int(d["beam"]) if beam is None else beam
        tok = self.tokenizer
        was_training = model.training
        model.eval()
        out: list[list[int]] = [[] for _ in sources]
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        size = int(d["batch_size"])
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            src = _pad([sources[i] + [tok.eos] for i in idx], tok.pad).to(self.device)
            limit = max_length(src, tok.pad, float(d["max_len_a"]), int(d["max_len_b"]))
            if beam == 1:
                hyps, _ = greedy(model, src, tok.bos, tok.eos, limit)  # type: ignore[arg-type]
            else:
                hyps, _ = beam_search(model, src, tok.bos, tok.eos, limit, beam, float(d["lenpen"]))  # type: ignore[arg-type]
            for i, h in zip(idx, hyps, strict=True):
                out[i] = h
        model.train(was_training)
        return out

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        check_split(split, tuple(self.splits), self.task)
        hyps = [self.tokenizer.decode(h) for h in self.translate(model, self.encoded[split][0])]
        refs = self.splits[split].target
        if isinstance(self.tokenizer, WordTokenizer):
            refs = [D.remove_bpe(r) for r in refs]
        return corpus_metrics(hyps, refs)

    def evaluation_info(self, split: str) -> dict[str, Any]:
        """How `split` ("val" or "test") was scored, for the record's `evaluation` field: the split,
        the dataset's own name for it (Multi30k: val, test_2016_flickr; IWSLT'14: valid, test),
        decoding settings and sacrebleu signatures."""
        check_split(split, tuple(self.splits), self.task)
        files = {"multi30k": {s: stem for s, (stem, _) in D.MULTI30K_SPLITS.items()},
                 "iwslt14": D.IWSLT14_SPLITS}.get(str(self.protocol.card["data"].get("dataset")), {})
        return {"split": split, "dataset_split": files.get(split, split),
                "decoding": {k: v for k, v in self.decoding.items() if k != "batch_size"},
                "detokenized": True, "signatures": signatures()}

    def attach_teacher(self, teacher: nn.Module) -> None:
        """SeqKD (`sequence_targets`): replace the training targets by the teacher's beam outputs,
        decoded once per teacher and decode settings and cached on disk."""
        if not self.sequence_targets:
            return
        digest = hashlib.sha256()
        for name, value in teacher.state_dict().items():
            digest.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())
        key = sha256_json({"teacher": digest.hexdigest(), "decoding": self.decoding,
                           "data": self.protocol.card["data"], "protocol": self.protocol.sha256})
        path = cache_dir() / "translation" / "seqkd" / f"{key[:32]}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):  # concurrent runs decode once
            if not path.is_file():
                print(f"seqkd: decoding the training sources with the teacher (beam "
                      f"{self.decoding['beam']}); cached at {path}", file=sys.stderr)
                buffer = io.BytesIO()
                torch.save(self.translate(teacher, self.encoded["train"][0]), buffer)
                atomic_write_bytes(path, buffer.getvalue())
            targets = torch.load(path, weights_only=True)
        if len(targets) != self.train_size:
            raise KDBenchError(f"cached SeqKD targets {path} hold {len(targets)} sentences, expected {self.train_size}")
        cut = self.max_tokens - 1
        self.encoded["train"] = (self.encoded["train"][0], [t[:cut] for t in targets])

    def example_input(self) -> tuple[Tensor, Tensor]:
        """One test pair (source, teacher-forced target input) for counting FLOPs."""
        b = self._batch(*self.encoded["test"], [0])
        return b.src, b.tgt_in


def _pad(rows: list[list[int]], pad: int) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
