"""The contract between task adapters and distillation methods (docs/architecture.md, Outputs).

Every distillation loss acts on a prediction over positions (a `Head`) whose `kind` says which
distribution its logits carry, stacks of them (`Outputs.layers`), or intermediate features and
attention inputs. Adapters expose their models' outputs in this form; methods never see
task-specific structure, and distil only the kinds of head they declare (`Method.accepts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

HeadKind = Literal["categorical", "binary", "binned"]

#: What the logits of each kind of head carry (docs/architecture.md, Outputs).
HEAD_KINDS: dict[str, str] = {
    "categorical": "one softmax over the last dim, a class per position: classifier, token and OOD heads",
    "binary": "an independent sigmoid per class, C yes/no decisions per position and not one distribution: "
              "detection's VFL class head",
    "binned": "one softmax over the bins of a discretised coordinate: detection's box edges, pose's SimCC",
}
assert set(HEAD_KINDS) == set(get_args(HeadKind))


@dataclass(frozen=True)
class Rebin:
    """A distribution over one model's bins re-expressed on another model's bins, per position.

    Bin n of the source is a coordinate value (for a detector: an edge position); that value falls
    between two neighbouring target bins l and l + 1 and is split between them linearly, as FGL's
    two-bin targets are built (`bbox2distance`):

        q_m = Σ_n p_n·(ω←_n·[m = l_n] + ω→_n·[m = l_n + 1]),

    so q keeps p's mass (Σ q = Σ p) and, inside the target's range, its expected coordinate.

    Attributes:
        left: (..., K_from) long, l_n in [0, bins − 2] for every source bin n.
        weight_left: (..., K_from) ω←_n.
        weight_right: (..., K_from) ω→_n = 1 − ω←_n.
        bins: K_to, the number of target bins.
    """

    left: Tensor
    weight_left: Tensor
    weight_right: Tensor
    bins: int

    def __call__(self, probs: Tensor) -> Tensor:
        """(..., K_from) probabilities on the source bins → (..., K_to) on the target bins."""
        out = probs.new_zeros(*probs.shape[:-1], self.bins)
        out = out.scatter_add(-1, self.left, probs * self.weight_left.to(probs.dtype))
        return out.scatter_add(-1, self.left + 1, probs * self.weight_right.to(probs.dtype))


@dataclass
class Head:
    """One prediction over positions, of a declared kind.

    Attributes:
        logits: (..., K) unnormalised scores: one distribution on the last dimension
            ("categorical", "binned"), or K independent sigmoid logits ("binary").
        target: class indices (...) , a soft target (..., K), or None.
        mask: (...) bool, True at valid positions; None means every position is valid.
        weight: (...) per-position weight, or None (e.g. a detector's distillation weight).
        matched: (...) bool, True at positions matched to a ground-truth object, or None; losses
            that normalise matched and unmatched positions separately (DDF) use it.
        kind: which distribution the logits carry (HEAD_KINDS); every adapter sets it.
        rebin: on a teacher's head aligned to a student's, the map of its distribution onto the
            student's bins where the two models' bins are relative to references of their own
            (detection's box edges); None where the bins are shared. See `in_frame`.
    """

    logits: Tensor
    target: Tensor | None = None
    mask: Tensor | None = None
    weight: Tensor | None = None
    matched: Tensor | None = None
    kind: HeadKind = field(kw_only=True)
    rebin: Rebin | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"Head.kind {self.kind!r} is not one of {', '.join(HEAD_KINDS)}")
        if self.rebin is not None and (self.kind != "binned" or self.rebin.left.shape != self.logits.shape):
            raise ValueError(f"Head.rebin is for binned heads with a left bin per logit; got a {self.kind} head "
                             f"of shape {tuple(self.logits.shape)}, left bins {tuple(self.rebin.left.shape)}")
        positions = self.logits.shape[:-1]
        if self.target is not None and self.target.shape not in (positions, self.logits.shape):
            raise ValueError(
                f"Head.target has shape {tuple(self.target.shape)}; expected {tuple(positions)} "
                f"(class indices) or {tuple(self.logits.shape)} (soft target)"
            )
        for name in ("mask", "weight", "matched"):
            value = getattr(self, name)
            if value is not None and value.shape != positions:
                raise ValueError(
                    f"Head.{name} has shape {tuple(value.shape)}; expected {tuple(positions)}"
                )

    @property
    def hard_target(self) -> Tensor | None:
        """Class indices: the target itself, or the argmax of a soft target."""
        if self.target is None or self.target.shape != self.logits.shape:
            return self.target
        return self.target.argmax(dim=-1)

    def detach(self) -> Head:
        return replace(self, logits=self.logits.detach())

    def in_frame(self, temperature: float = 1.0) -> Tensor:
        """Logits z' with softmax(z'/T) = this head's distribution at T on the bins it is compared on.

        Without `rebin`: the logits themselves (the same tensor). With it: the distribution is
        tempered on the head's own bins, then moved onto the other model's (`Rebin`),
        z' = T·log Rebin(softmax(sg(z)/T)): −∞ on bins that receive no mass, which every
        distillation loss reads as probability 0. Teacher side only (detached).
        """
        if self.rebin is None:
            return self.logits
        logits = self.logits.detach()
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits  # float32 at least
        probs = F.softmax(logits / temperature, dim=-1)
        return temperature * torch.log(self.rebin(probs))


#: The first kind of a method's needs (kdbench.methods.base.NEEDS): the parts of Outputs beyond the
#: final heads that it reads. An adapter that lists one in `provides` fills it in its `forward`;
#: `Outputs.provides` reports the ones an instance holds, and the student's probe checks a method's
#: against them before training (kdbench.runner.train.probe_outputs).
OUTPUT_NEEDS: dict[str, str] = {
    "layers": "per-layer predictions (auxiliary heads, decoder layers)",
    "features": "named intermediate features",
    "attentions": "per-layer attention q/k/v",
    "ids": "dataset indices of samples (for per-sample memories such as past predictions)",
}

#: What `Outputs.provides` may report: the final heads, always there, and the OUTPUT_NEEDS.
PARTS: frozenset[str] = frozenset({"heads", *OUTPUT_NEEDS})


@dataclass
class Outputs:
    """What an adapter's `forward` returns for one batch.

    Attributes:
        heads: final predictions by name, e.g. {"cls"} or {"simcc_x", "simcc_y"}.
        layers: per-layer predictions, earliest first; the last entry is `heads`. Empty when
            the model has no per-layer heads.
        features: named intermediate features, e.g. {"stage3": (B, C, H, W), "embedding": (B, D)}.
        attentions: per-layer attention inputs (q, k, v), each (B, heads, T, d).
        ids: (B,) dataset indices of the batch's samples.
        auxiliary: per-layer heads at training-only positions that are not predictions, by name,
            each earliest layer first like `layers` (detection's "denoising": a DETR's denoising
            queries; classification's "joint": one layer, the joint (class × transformation)
            head over each sample's M transformed copies, (B, M, K·M), under the
            `label_augmentation` need). Only the methods that asked for them read them (GO-LSD,
            SLA-SD); adapters never align them to a teacher, and nothing evaluates them as the
            task's predictions.
    """

    heads: dict[str, Head]
    layers: list[dict[str, Head]] = field(default_factory=list)
    features: dict[str, Tensor] = field(default_factory=dict)
    attentions: dict[str, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)
    ids: Tensor | None = None
    auxiliary: dict[str, list[dict[str, Head]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layers and self.layers[-1].keys() != self.heads.keys():
            raise ValueError(
                "Outputs.layers[-1] must hold the final heads "
                f"({sorted(self.heads)}), got {sorted(self.layers[-1])}"
            )

    @property
    def provides(self) -> frozenset[str]:
        """The parts of the contract this instance fills (PARTS): "heads", and the OUTPUT_NEEDS it holds."""
        parts = {"heads"}
        if len(self.layers) > 1:
            parts.add("layers")
        if self.features:
            parts.add("features")
        if self.attentions:
            parts.add("attentions")
        if self.ids is not None:
            parts.add("ids")
        return frozenset(parts)

    def detach(self) -> Outputs:
        """A copy with every tensor cut from the graph (for teachers and past predictions)."""
        return Outputs(
            heads={k: h.detach() for k, h in self.heads.items()},
            layers=[{k: h.detach() for k, h in layer.items()} for layer in self.layers],
            features={k: v.detach() for k, v in self.features.items()},
            attentions={k: tuple(t.detach() for t in qkv) for k, qkv in self.attentions.items()},  # type: ignore[misc]
            ids=self.ids,
            auxiliary={k: [{n: h.detach() for n, h in layer.items()} for layer in stack]
                       for k, stack in self.auxiliary.items()},
        )


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of `values` over positions where `mask` is True (all positions when None)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


__all__ = ["HEAD_KINDS", "OUTPUT_NEEDS", "PARTS", "Head", "HeadKind", "Outputs", "Rebin", "masked_mean"]
