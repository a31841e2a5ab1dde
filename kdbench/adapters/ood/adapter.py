"""OOD detection: train a text classifier on the ID classes with any method, then score ID and
OOD sentences of the val or test split with every OOD score (kdbench.adapters.ood.scores)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.special import softmax
from torch import Tensor, nn

from kdbench.adapters.base import Adapter, Role
from kdbench.adapters.ood import data as D
from kdbench.adapters.ood import scores as S
from kdbench.adapters.ood.model import EncoderOutput, NgramBag, TextEncoder, TextInput
from kdbench.adapters.splits import EVAL_SPLITS, check_split
from kdbench.adapters.supervision import deep_supervision_ce
from kdbench.errors import KDBenchError, UsageError
from kdbench.metrics import METRICS
from kdbench.outputs import Head, HeadKind, Outputs
from kdbench.protocol import Protocol

DATASETS = ("langid", "clinc150")
_MODEL_KEYS = ("arch", "seed", "train")  # card keys that are not model arguments
_EVAL_BATCH = 256


@dataclass
class Batch:
    tokens: Tensor  # (B, T) character ids, PAD-padded, on the device
    labels: Tensor  # (B,)
    ids: Tensor  # (B,) indices into the training set
    ngrams: list[Tensor]  # (G_i,) n-gram ids per sample (data.ngrams); [PAD] each without them

    @property
    def input(self) -> TextInput:
        """What the models read: the ids and the n-grams (a Transformer reads only the ids)."""
        return self.tokens, self.ngrams


class OODAdapter(Adapter[Batch, Outputs]):
    """ID text classification with a CE task loss; per-layer heads when `layers` is needed.

    `evaluate(model, split)` reports ID accuracy ("id_acc") and ECE on the split's ID set, and for
    every OOD score its AUROC, AUPR-In, AUPR-Out and FPR@95%TPR pooled over the split's OOD sets
    and per set (langid: "near", "far"); "val" scores the ID and OOD val sets, "test" the test
    sets. The Mahalanobis score's Gaussians are fit on the training set. The primary metric is
    the card's `metrics.primary`.
    """

    task = "ood"
    provides = frozenset({"layers", "features", "attentions", "ids", "teacher_pass",
                          "sample_heads", "ce_heads", "label_heads"})
    head_kinds: ClassVar[dict[str, HeadKind]] = {"cls": "categorical"}
    evaluation_version = 2  # 2: ID and OOD val splits (langid: generated, disjoint; CLINC150: val, oos_val)
    train_subsets = True

    def __init__(self, protocol: Protocol, data_root: Path | None, device: torch.device) -> None:
        super().__init__(protocol, data_root, device)
        self.data = self._load(protocol.card["data"])
        data = protocol.card["data"]
        self.words = data.get("tokens") == "words"
        self.max_chars = int(data.get("max_tokens", 32)) if self.words else int(
            data.get("max_chars", 64 if self._langid else 96))  # positions of the encoder
        primary = protocol.typed.metrics.primary  # the card is the one place that defines it
        if primary not in METRICS or not (primary == "id_acc" or primary.startswith(
                tuple(f"{m}_" for m in S.OOD_DETECTION_METRICS))):
            raise UsageError(f"protocol {protocol.name!r}: metrics.primary {primary!r} is not an OOD "
                             "metric; valid: id_acc or {auroc,aupr_in,aupr_out,fpr95}_<score>[_<set>]")
        self.teacher: nn.Module | None = None
        self._teacher_logits: dict[tuple[str, str], np.ndarray] = {}

    @property
    def _langid(self) -> bool:
        return self.protocol.card["data"].get("dataset") == "langid"

    def _load(self, spec: dict[str, Any]) -> D.OODData:
        name = spec.get("dataset")
        if name == "langid":
            if spec.get("tokens", "chars") != "chars" or spec.get("ngrams") is not None or \
                    spec.get("val_oos_train") is not None:
                raise UsageError(f"protocol {self.protocol.name!r} data: langid is read as characters; "
                                 "data.tokens words, data.ngrams and data.val_oos_train are for clinc150")
            try:
                return D.load_langid(spec)
            except (KeyError, ValueError) as e:
                raise UsageError(f"protocol {self.protocol.name!r} data: {e}") from None
        if name == "clinc150":
            if self.data_root is None:
                raise UsageError("CLINC150 needs --data-root (or KDBENCH_DATA_ROOT): the folder that "
                                 f"holds {D.CLINC_DIR}/{D.CLINC_FILE} (download {D.CLINC_URL})")
            grams = spec.get("ngrams")
            try:
                ngrams = None if grams is None else D.NgramSpec(
                    int(grams.get("words", 2)), None if grams.get("chars") is None else
                    (int(grams["chars"][0]), int(grams["chars"][-1])), int(grams.get("min_count", 2)))
            except (ValueError, IndexError) as e:
                raise UsageError(f"protocol {self.protocol.name!r} data: {e}") from None
            try:
                return D.load_clinc150(self.data_root, int(spec.get("max_chars", 96)),
                                       str(spec.get("tokens", "chars")), int(spec.get("min_count", 1)),
                                       int(spec.get("max_tokens", 32)), ngrams,
                                       bool(spec.get("val_oos_train", False)))
            except (FileNotFoundError, ValueError) as e:
                raise KDBenchError(str(e)) from None
        raise UsageError(f"unknown ood dataset {name!r}; valid: {', '.join(DATASETS)}")

    @property
    def train_size(self) -> int:
        return len(self.data.train)

    def keep_train(self, indices: Tensor) -> None:
        """The ID training sentences at `indices` (Adapter.keep_train); the vocabularies stay those
        of the whole training set, and the Mahalanobis score's Gaussians are fit on the kept ones,
        the student's training data."""
        data, rows = self.data.train, indices.tolist()
        kept = D.TextSet([data.tokens[i] for i in rows], data.labels[indices.cpu()],
                         [data.texts[i] for i in rows] if data.texts else [],
                         None if data.ngrams is None else [data.ngrams[i] for i in rows])
        self.data = replace(self.data, train=kept)

    def train_classes(self) -> Tensor:
        return self.data.train.labels

    def _batch(self, data: D.TextSet, idx: Tensor) -> Batch:
        rows = idx.tolist()
        tokens = D.pad([data.tokens[i] for i in rows])
        ngrams = [data.ngrams[i].to(self.device) for i in rows] if data.ngrams is not None else \
            [torch.tensor([D.PAD], device=self.device)] * len(rows)  # one shared placeholder
        return Batch(tokens.to(self.device), data.labels[idx].to(self.device), idx.to(self.device), ngrams)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        for idx in D.index_batches(len(self.data.train), batch_size, generator):
            yield self._batch(self.data.train, idx)

    def build_model(self, role: Role, needs: frozenset[str]) -> nn.Module:
        spec = dict(self.protocol.card[role])
        kwargs = {k: v for k, v in spec.items() if k not in _MODEL_KEYS}
        arch = "word_transformer" if self.words else "char_transformer"
        where = f"protocol {self.protocol.name!r} {role}"
        if spec.get("arch") == "ngram_bag":
            if self.data.ngram_vocab is None:
                raise UsageError(f"{where}: arch ngram_bag reads the data's n-grams; give data.ngrams "
                                 "({words, chars, min_count}, clinc150) or use arch " + arch)
            if role == "student" and "layers" in needs:
                raise UsageError(f"{where}: arch ngram_bag has one layer, and this method needs per-layer "
                                 f"heads; valid student arch: {arch}")
        elif spec.get("arch") != arch:
            raise UsageError(f"{where}: arch {spec.get('arch')!r} does not read data.tokens "
                             f"{'words' if self.words else 'chars'}; valid: {arch}"
                             + (", ngram_bag" if self.data.ngram_vocab is not None else ""))
        try:
            if spec["arch"] == "ngram_bag":
                assert self.data.ngram_vocab is not None
                return NgramBag(len(self.data.ngram_vocab), self.data.num_classes, **kwargs)
            return TextEncoder(len(self.data.vocab), self.data.num_classes, max_chars=self.max_chars,
                               aux_heads=role == "student" and "layers" in needs, **kwargs)
        except (TypeError, ValueError) as e:
            raise UsageError(f"{where}: {e}") from None

    def configure(self, needs: frozenset[str]) -> None:
        """Refuse, before any model is built, a method that reads attentions when a model of the
        card has none (an `ngram_bag`): minilm distils the teacher's q, k, v."""
        bags = [r for r in ("student", "teacher") if self.arch_name(r) == "ngram_bag"]
        if "attentions" in needs and bags:
            raise UsageError(f"protocol {self.protocol.name!r}: this method reads attentions (q, k, v), and the "
                             f"{' and '.join(bags)} (arch ngram_bag) has none; valid: a transformer arch")

    def forward(self, model: nn.Module, batch: Batch) -> Outputs:
        out: EncoderOutput = model(batch.input)
        heads = {"cls": Head(out.logits, batch.labels, kind="categorical")}
        layers = [{"cls": Head(aux, batch.labels, kind="categorical")} for aux in out.aux_logits]
        return Outputs(heads=heads, layers=[*layers, heads] if layers else [],
                       features=dict(out.features), attentions=dict(out.attentions), ids=batch.ids)

    def task_loss(self, outputs: Outputs) -> dict[str, Tensor]:
        """CE on the final head ("cls") and on every per-layer head (deep supervision)."""
        return deep_supervision_ce(outputs, "ood")

    def attach_teacher(self, teacher: nn.Module) -> None:
        self.teacher = teacher
        self._teacher_logits = {}

    @torch.no_grad()
    def _run(self, model: nn.Module, data: D.TextSet) -> Iterator[tuple[Tensor, EncoderOutput]]:
        for idx in D.index_batches(len(data), _EVAL_BATCH, None):
            yield idx, model(self._batch(data, idx).input)

    def _predict(self, model: nn.Module, data: D.TextSet) -> tuple[np.ndarray, np.ndarray]:
        """(N, K) float64 logits and (N, D) embeddings in eval mode."""
        logits, feats = [], []
        for _, out in self._run(model, data):
            logits.append(out.logits.double().cpu())
            feats.append(out.features["embedding"].double().cpu())
        return torch.cat(logits).numpy(), torch.cat(feats).numpy()

    def _teacher_logits_of(self, split: str, name: str, data: D.TextSet) -> np.ndarray:
        assert self.teacher is not None
        if (split, name) not in self._teacher_logits:  # the teacher is frozen: compute once
            self._teacher_logits[split, name] = self._predict(self.teacher, data)[0]
        return self._teacher_logits[split, name]

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        id_set, ood_sets = self.data.eval_sets(check_split(split, EVAL_SPLITS, self.task))
        was_training = model.training
        model.eval()
        _, train_feats = self._predict(model, self.data.train)
        gaussian = S.Gaussian(train_feats, self.data.train.labels.numpy(), self.data.num_classes)
        with_teacher = self.teacher is not None and model is not self.teacher
        sets = {"id": id_set, **ood_sets}
        scores: dict[str, dict[str, np.ndarray]] = {}
        id_logits = np.empty(0)
        for name, data in sets.items():
            logits, feats = self._predict(model, data)
            scores[name] = {"msp": S.msp(logits), "maxlogit": S.max_logit(logits),
                            "energy": S.energy(logits), "mahalanobis": gaussian.score(feats)}
            if with_teacher:
                scores[name]["discrepancy"] = S.discrepancy(logits, self._teacher_logits_of(split, name, data))
            if name == "id":
                id_logits = logits
        model.train(was_training)
        probs = softmax(id_logits, axis=1)
        labels = id_set.labels.numpy()
        metrics = S.id_metrics(probs, labels)
        ood = {k: v for k, v in scores.items() if k != "id"}
        return metrics | S.score_metrics(scores["id"], ood)

    def teacher_pass(self, model: nn.Module) -> Iterator[Outputs]:
        model.eval()
        for idx, out in self._run(model, self.data.train):
            batch = self._batch(self.data.train, idx)
            yield Outputs(heads={"cls": Head(out.logits, batch.labels, kind="categorical")},
                          features=dict(out.features), ids=batch.ids)

    def example_input(self) -> TextInput:
        return self._batch(self.data.test, torch.tensor([0])).input
