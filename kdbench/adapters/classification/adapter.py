"""Classification: digits (embedded), MNIST-1D signals (generated offline) and CIFAR-100 (the user's files)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kdbench.adapters.base import Adapter, Role
from kdbench.adapters.classification import data as D
from kdbench.adapters.classification import label_augmentation as LA
from kdbench.adapters.classification.metrics import aggregated_top1, classification_metrics
from kdbench.adapters.classification.models import build_model
from kdbench.adapters.splits import check_split, long_tail_indices
from kdbench.adapters.supervision import deep_supervision_ce
from kdbench.cache import cache_dir
from kdbench.errors import KDBenchError, UsageError
from kdbench.losses.sla import sla_aggregate
from kdbench.outputs import Head, HeadKind, Outputs
from kdbench.protocol import Protocol

DATASETS = ("digits", "mnist1d", "cifar100")
_MODEL_KEYS = ("arch", "seed", "train")  # card keys that are not model arguments
#: Experts of the student under the `experts` need: MDCS's (and RIDE's, SADE's) three.
EXPERTS = 3


@dataclass
class Batch:
    images: Tensor  # (B, C, H, W), or (B, C, L) signals, on the device
    labels: Tensor  # (B,)
    ids: Tensor  # (B,) indices into the training set
    strong: Tensor | None = None  # (B, ...) the strongly augmented view, under `weak_strong_views`


def _strong_seed(generator: torch.Generator) -> int:
    """Seed of an epoch's strong-view generator: derived from the epoch generator's own seed
    (itself derived from the run's seed and the epoch), never drawn from it."""
    return (generator.initial_seed() * 1_000_003 + 0x5EED) % (2**63)


class ClassificationAdapter(Adapter[Batch, Outputs]):
    """Classification with a CE task loss; auxiliary per-stage heads when `layers` is needed.

    Under `label_augmentation` (SLA-SD) the student gets a joint head of K·M logits (`add_joint_head`)
    and each training batch runs as its B·M transformed copies (`label_augmentation.transform`:
    rotations of square images, time reversal × sign flip of signals), in one pass as SLA does, so
    BatchNorm sees every copy; the final `cls` head is the K-way head on the untransformed rows,
    the joint head is `Outputs.auxiliary["joint"]`. Evaluation scores the K-way head on plain
    inputs (`top1` and the rest), and adds `agg_top1`, the aggregated classifier's top-1 over the
    M transformed passes, for a model with a joint head.

    Under `experts` (MDCS) the student is `EXPERTS` experts on a shared stem and stage1
    (`StagedClassifier.add_experts`); its `cls` head, the one evaluated, is the mean of the
    experts' logits, and each expert's head is in `Outputs.auxiliary["experts"]`, expert 0 first.
    Under `weak_strong_views` each training batch also carries a strong view of every sample, the
    card's augmentation drawn afresh followed by `data.cutout`; the weak view is the batch every
    other method trains on (the card's augmentation), and both views run in one pass (BatchNorm
    sees both, as MDCS concatenates them). Heads, layers and features are the weak view's; the
    strong view's final heads are `auxiliary["strong"]` and its experts `auxiliary["experts_strong"]`.

    The card's `data.imbalance` ρ makes the training split long-tailed right after loading
    (`splits.long_tail_indices`, drawn from `data.split_seed`): val and test stay as split, the
    normalisation stays that of the whole training split, and the teacher trains on the
    long-tailed split like the student.
    """

    task = "classification"
    provides = frozenset({"layers", "features", "ids", "teacher_pass", "sample_heads", "ce_heads", "label_heads",
                          "label_augmentation", "experts", "weak_strong_views"})
    head_kinds: ClassVar[dict[str, HeadKind]] = {"cls": "categorical"}
    evaluation_version = 2  # 2: train/val/test (val held out of the training data), test scored once
    teacher_inputs_fixed = True  # batches and augmentation derive from (seed, epoch) alone
    train_subsets = True

    def __init__(self, protocol: Protocol, data_root: Path | None, device: torch.device) -> None:
        super().__init__(protocol, data_root, device)
        self.train_set, self.val_set, self.test_set = self._load(protocol.card["data"])
        self.train_class_counts: list[int] | None = None  # per class, under data.imbalance
        if protocol.card["data"].get("imbalance") is not None:
            self._long_tail(float(protocol.card["data"]["imbalance"]), int(protocol.card["data"].get("split_seed", 0)))
        self.two_views = False
        self.augmentation = str(protocol.card.get("augmentation", "none"))
        if self.augmentation not in D.AUGMENT_KINDS:
            raise UsageError(f"unknown augmentation {self.augmentation!r}; "
                             f"valid: {', '.join(D.AUGMENT_KINDS)}")
        signals = self.train_set.images.dim() == 3
        if self.augmentation != "none" and signals != (self.augmentation in D.AUGMENT_1D):
            raise UsageError(f"protocol {self.protocol.name!r}: augmentation {self.augmentation!r} does not apply "
                             f"to inputs of shape {tuple(self.train_set.images.shape[1:])}")

    def configure(self, needs: frozenset[str]) -> None:
        """Check, before any model is built, that `label_augmentation` has a transformation group
        for this card's inputs."""
        if "label_augmentation" in needs:
            self._views()
            if needs & {"experts", "weak_strong_views"}:
                raise UsageError("label_augmentation cannot be combined with experts or weak_strong_views")
        self.two_views = "weak_strong_views" in needs

    def _long_tail(self, ratio: float, seed: int) -> None:
        """Keep the long-tailed subset of the training split (`long_tail_indices`)."""
        data = self.train_set
        try:
            indices, counts = long_tail_indices(data.labels, data.num_classes, ratio, seed)
        except ValueError as e:
            raise UsageError(f"protocol {self.protocol.name!r} data: {e}") from None
        self.keep_train(indices)
        self.train_class_counts = counts

    def _views(self) -> int:
        try:
            return LA.views(tuple(self.train_set.images.shape[1:]))
        except ValueError as e:
            raise UsageError(f"protocol {self.protocol.name!r}: label_augmentation: {e}") from None

    def _load(self, spec: dict[str, Any]) -> tuple[D.ArrayDataset, D.ArrayDataset, D.ArrayDataset]:
        name = spec.get("dataset")
        if name == "digits":
            try:
                return D.load_digits_split(
                    float(spec.get("val_fraction", 0.15)), float(spec.get("test_fraction", 0.25)),
                    int(spec.get("split_seed", 0)), spec.get("limit_train"), spec.get("limit_val"),
                    spec.get("limit_test"))
            except ValueError as e:
                raise UsageError(f"protocol {self.protocol.name!r} data: {e}") from None
        if name == "mnist1d":
            try:
                return D.load_mnist1d_split(
                    int(spec.get("num_samples", 10000)), float(spec.get("val_fraction", 0.2)),
                    float(spec.get("test_fraction", 0.3)), int(spec.get("split_seed", 0)),
                    int(spec.get("seed", 42)), spec.get("limit_train"), spec.get("limit_val"),
                    spec.get("limit_test"), cache=cache_dir() / "data")
            except ValueError as e:
                raise UsageError(f"protocol {self.protocol.name!r} data: {e}") from None
        if name == "cifar100":
            if self.data_root is None:
                raise UsageError("CIFAR-100 needs --data-root (or KDBENCH_DATA_ROOT): the folder "
                                 f"that holds {D.CIFAR100_DIR}/ (download {D.CIFAR100_URL})")
            try:
                return D.load_cifar100(self.data_root, int(spec.get("val_size", 5000)),
                                       int(spec.get("split_seed", 0)))
            except (FileNotFoundError, ValueError) as e:
                raise KDBenchError(str(e)) from None
        raise UsageError(f"unknown classification dataset {name!r}; valid: {', '.join(DATASETS)}")

    @property
    def train_size(self) -> int:
        return len(self.train_set)

    def keep_train(self, indices: Tensor) -> None:
        """The training set's images, labels and source ids at `indices` (Adapter.keep_train)."""
        data, idx = self.train_set, indices.cpu()
        self.train_set = D.ArrayDataset(data.images[idx], data.labels[idx], data.num_classes, data.class_names,
                                        None if data.source_ids is None else data.source_ids[idx.numpy()])

    def train_classes(self) -> Tensor:
        return self.train_set.labels

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        data = self.train_set
        # the strong views draw from a generator of their own, so the weak batches (order and
        # augmentation) are exactly those every other method trains on
        strong_gen = torch.Generator(generator.device).manual_seed(_strong_seed(generator)) if self.two_views else None
        for idx in D.batches(len(data), batch_size, generator, shuffle=True):
            images = D.augment(data.images[idx], self.augmentation, generator)
            strong = None
            if strong_gen is not None:
                strong = D.cutout(D.augment(data.images[idx], self.augmentation, strong_gen), strong_gen)
            yield self._batch(images, data.labels[idx], idx, strong)

    def _batch(self, images: Tensor, labels: Tensor, ids: Tensor, strong: Tensor | None = None) -> Batch:
        return Batch(images.to(self.device), labels.to(self.device), ids.to(self.device),
                     None if strong is None else strong.to(self.device))

    def build_model(self, role: Role, needs: frozenset[str]) -> nn.Module:
        spec = dict(self.protocol.card[role])
        kwargs = {k: v for k, v in spec.items() if k not in _MODEL_KEYS}
        if "widths" in kwargs:
            kwargs["widths"] = tuple(kwargs["widths"])
        try:
            model = build_model(spec["arch"], self.train_set.num_classes,
                                int(self.train_set.images.shape[1]),
                                aux_heads=role == "student" and "layers" in needs, **kwargs)
        except ValueError as e:
            raise UsageError(f"protocol {self.protocol.name!r} {role}: {e}") from None
        if role == "student" and "label_augmentation" in needs:
            model.add_joint_head(self._views())
        if role == "student" and "experts" in needs:
            model.add_experts(EXPERTS)
        return model

    def forward(self, model: nn.Module, batch: Batch) -> Outputs:
        if getattr(model, "joint_fc", None) is not None:  # a student built under label_augmentation
            return self._forward_joint(model, batch)
        b, y = len(batch.labels), batch.labels
        two = batch.strong is not None
        out = model(batch.images if batch.strong is None else torch.cat([batch.images, batch.strong]))

        def head(logits: Tensor, view: int = 0) -> dict[str, Head]:
            return {"cls": Head(logits[view * b:(view + 1) * b], y, kind="categorical")}

        heads = head(out.logits)
        layers = [head(aux) for aux in out.aux_logits]
        auxiliary: dict[str, list[dict[str, Head]]] = {}
        if out.expert_logits:
            auxiliary["experts"] = [head(e) for e in out.expert_logits]
        if two:
            auxiliary["strong"] = [head(out.logits, 1)]
            if out.expert_logits:
                auxiliary["experts_strong"] = [head(e, 1) for e in out.expert_logits]
        return Outputs(heads=heads, layers=[*layers, heads] if layers else [],
                       features={k: v[:b] for k, v in out.features.items()}, ids=batch.ids, auxiliary=auxiliary)

    def _forward_joint(self, model: nn.Module, batch: Batch) -> Outputs:
        """One pass over the B·M transformed copies (row b·M + m is t_m(x_b), t_0 the identity):
        heads, layers and features from the untransformed rows ::M, the joint head (B, M, K·M)
        with its joint labels y·M + m in `auxiliary["joint"]`."""
        m = self._views()
        out = model(LA.transform(batch.images), joint=True)
        b = len(batch.labels)
        heads = {"cls": Head(out.logits[::m], batch.labels, kind="categorical")}
        layers = [{"cls": Head(aux[::m], batch.labels, kind="categorical")} for aux in out.aux_logits]
        joint = Head(out.joint_logits.view(b, m, -1), LA.joint_labels(batch.labels, m), kind="categorical")
        return Outputs(heads=heads, layers=[*layers, heads] if layers else [],
                       features={k: v[::m] for k, v in out.features.items()}, ids=batch.ids,
                       auxiliary={"joint": [{"cls": joint}]})

    def task_loss(self, outputs: Outputs) -> dict[str, Tensor]:
        """CE on the final head ("cls") and on every auxiliary head (deep supervision)."""
        return deep_supervision_ce(outputs, "classification")

    @torch.no_grad()
    def _logits(self, model: nn.Module, images: Tensor) -> Iterator[tuple[slice, Any]]:
        for start in range(0, len(images), 500):
            part = slice(start, start + 500)
            yield part, model(images[part].to(self.device))

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        sets = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
        data = sets[check_split(split, tuple(sets), self.task)]
        was_training = model.training
        model.eval()
        logits = torch.cat([out.logits.float().cpu() for _, out in self._logits(model, data.images)])
        aggregated = self._aggregated(model, data.images) if getattr(model, "joint_fc", None) is not None else None
        model.train(was_training)
        metrics = classification_metrics(logits.double().numpy(), data.labels.numpy())
        if aggregated is not None:
            metrics["agg_top1"] = aggregated_top1(aggregated.double().numpy(), data.labels.numpy())
        return metrics

    @torch.no_grad()
    def _aggregated(self, model: nn.Module, images: Tensor) -> Tensor:
        """(N, K) logits of SLA's aggregated classifier: the joint head on the M transformed copies
        of each input, z_agg,k = (1/M) Σ_m z(t_m(x))[k·M + m] (`sla_aggregate`)."""
        m = self._views()
        parts = []
        for start in range(0, len(images), 500):
            x = images[start:start + 500].to(self.device)
            joint = model(LA.transform(x), joint=True).joint_logits.view(len(x), m, -1)
            parts.append(sla_aggregate(joint.float()).cpu())
        return torch.cat(parts)

    def teacher_pass(self, model: nn.Module) -> Iterator[Outputs]:
        model.eval()
        data = self.train_set
        for part, out in self._logits(model, data.images):
            ids = torch.arange(len(data))[part]
            batch = self._batch(data.images[part], data.labels[part], ids)
            yield Outputs(heads={"cls": Head(out.logits, batch.labels, kind="categorical")},
                          features=dict(out.features), ids=batch.ids)

    def example_input(self) -> Tensor:
        return self.test_set.images[:1].to(self.device)
