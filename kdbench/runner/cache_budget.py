"""How big one epoch of the teacher-output cache would be, and which mode fits the budget.

The estimate is taken before the first write, from the teacher's heads on a probe batch (each
head's number of classes K and kind) and the number of positions an epoch holds per head: the
adapter's `epoch_positions` where it counts them (translation: every batch's padded target
tokens), otherwise every sample once times the probe's positions per sample. Per epoch and rank
(each rank caches its own shard):

    full  = Σ_heads rows · K · 4 bytes           (float32 logits)
    top-k = Σ_heads rows · min(k, K) · (4 + 4)   (float32 log-probabilities and int32 indices)

The budget (card `train.teacher_cache_budget_mib`, default `DEFAULT_BUDGET_MIB`) bounds one
epoch's files. Within it the cache stores what the card says: full float32 (exact, so a cached
run is bit-identical to an online one) or the card's `train.teacher_cache_topk`. A full cache
over it switches to top-`DEFAULT_TOPK` when every head is a softmax head (categorical or binned:
top-k log-probabilities describe a softmax, not a binary head's independent sigmoids) of more
than `TOPK_MIN_CLASSES` classes and the top-k files fit; otherwise, and for a card's top-k over
the budget, the teacher runs on every batch (online; the exact teacher, as whenever the cache
does not apply). Top-k changes what the student learns from (a biased estimate of the teacher's
distribution: Anshumann et al., "Sparse Logit Sampling: Accelerating Knowledge Distillation in
LLMs", ACL 2025), so it is chosen automatically only where the exact cache does not fit, and
the record's `spec.teacher_outputs` says which mode ran, with the estimate and the budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from kdbench.outputs import Outputs

#: The budget of one epoch's cache files per rank when the card sets none.
DEFAULT_BUDGET_MIB = 1024
#: k of the automatic top-k cache; 2.0% of the full size on translation/small (issue #21: 2.47 vs
#: 123.5 MiB per epoch), and below 0.1% for vocabularies of 10k tokens.
DEFAULT_TOPK = 8
#: Heads of at most this many classes are never switched to top-k automatically: k of a few
#: hundred classes drops much of the distribution and saves little.
TOPK_MIN_CLASSES = 1000
#: Softmax head kinds, whose top-k log-probabilities are a truncation of their distribution.
_SOFTMAX = frozenset({"categorical", "binned"})
_FLOAT, _INDEX = 4, 4  # bytes: float32 logits and values, int32 indices

Mode = Literal["full", "topk", "online"]


@dataclass(frozen=True)
class HeadSize:
    """One head's share of an epoch: `rows` positions of `classes` logits."""

    name: str
    rows: int
    classes: int
    kind: str


@dataclass(frozen=True)
class Estimate:
    """One epoch of one rank's cache, per head."""

    heads: tuple[HeadSize, ...]

    def full_bytes(self) -> int:
        return sum(h.rows * h.classes * _FLOAT for h in self.heads)

    def topk_bytes(self, k: int) -> int:
        return sum(h.rows * min(k, h.classes) * (_FLOAT + _INDEX) for h in self.heads)


def epoch_rows(adapter: Any, probe: Outputs, batch_size: int, generator: torch.Generator,
               world_size: int = 1) -> dict[str, int]:
    """Each head's positions in one epoch of `adapter.train_batches(batch_size, generator)`, per rank.

    The adapter's `epoch_positions` where it gives them, else `train_size` times the probe head's
    positions per sample (the product of its dims between the batch and the classes); a rank
    holds ⌈rows / world_size⌉ (its files grow if a shard holds more).
    """
    counted = adapter.epoch_positions(batch_size, generator) or {}
    rows = {}
    for name, head in probe.heads.items():
        total = counted.get(name)
        if total is None:
            total = int(adapter.train_size) * math.prod(head.logits.shape[1:-1])
        rows[name] = -(-int(total) // world_size)
    return rows


def estimate(probe: Outputs, rows: Mapping[str, int]) -> Estimate:
    """The epoch's size from the probe's heads (classes, kind) and their rows."""
    return Estimate(tuple(HeadSize(name, int(rows[name]), int(head.logits.shape[-1]), head.kind)
                          for name, head in probe.heads.items()))


@dataclass(frozen=True)
class Choice:
    """What the cache does in a run, and the one line that says so."""

    mode: Mode
    topk: int | None
    reason: str | None
    line: str
    full_bytes: int
    topk_bytes: int | None
    budget_bytes: int

    def entry(self) -> dict[str, Any]:
        """The record's `spec.teacher_outputs` (kdbench/schema/record.schema.json)."""
        return {"mode": self.mode, "topk": self.topk, "reason": self.reason,
                "epoch_bytes": {"full": self.full_bytes, "topk": self.topk_bytes},
                "budget_bytes": self.budget_bytes}


def choose(est: Estimate, card_topk: int | None, budget_mib: int | None, epochs: int) -> Choice:
    """Full, top-k or online for an epoch of size `est` under the budget (docstring of this module)."""
    budget = (DEFAULT_BUDGET_MIB if budget_mib is None else int(budget_mib)) << 20
    full = est.full_bytes()
    k = card_topk if card_topk is not None else DEFAULT_TOPK
    topk = est.topk_bytes(k)
    head = f"teacher cache: {size(full)} per epoch as full float32"
    over = f"over the budget {size(budget)} per epoch (train.teacher_cache_budget_mib)"
    softmax = all(h.kind in _SOFTMAX for h in est.heads)
    if card_topk is not None:
        if not softmax:
            reason = f"top-k keeps a softmax's largest probabilities; {_kinds(est, _SOFTMAX)} is not one"
            return _online(reason, head, full, topk, budget)
        if topk <= budget:
            line = f"{head}, {size(topk)} as the card's top-{k}; budget {size(budget)}: top-{k}{_total(topk, epochs)}"
            return Choice("topk", k, None, line, full, topk, budget)
        return _online(f"the card's top-{k} cache would take {size(topk)} per epoch, {over}", head, full, topk, budget)
    if full <= budget:
        return Choice("full", None, None, f"{head}, budget {size(budget)}: full{_total(full, epochs)}",
                      full, None, budget)
    if not softmax:
        reason = f"the full cache is {over}, and top-k serves only softmax heads ({_kinds(est, _SOFTMAX)} is not one)"
        return _online(reason, head, full, None, budget)
    small = [h for h in est.heads if h.classes <= TOPK_MIN_CLASSES]
    if small:
        listed = ", ".join(f"{h.name} has {h.classes}" for h in small)
        reason = (f"the full cache is {over}, and top-k is used only for heads of over {TOPK_MIN_CLASSES} "
                  f"classes ({listed})")
        return _online(reason, head, full, None, budget)
    if topk <= budget:
        reason = f"the full cache would take {size(full)} per epoch, {over}"
        line = f"{head}, {over}: top-{k} log-probabilities instead, {size(topk)} per epoch{_total(topk, epochs)}"
        return Choice("topk", k, reason, line, full, topk, budget)
    return _online(f"even the top-{k} cache would take {size(topk)} per epoch, {over}", head, full, topk, budget)


def _online(reason: str, head: str, full: int, topk: int | None, budget: int) -> Choice:
    return Choice("online", None, reason, f"{head}: online, the teacher runs on every batch: {reason}",
                  full, topk, budget)


def _total(per_epoch: int, epochs: int) -> str:
    return f" ({size(per_epoch * epochs)} over {epochs} epochs)" if epochs > 1 else ""


def _kinds(est: Estimate, allowed: frozenset[str]) -> str:
    return ", ".join(f"{h.name} ({h.kind})" for h in est.heads if h.kind not in allowed)


def size(n: int) -> str:
    """Bytes in binary units, one decimal: '123.5 MiB', '1 GiB' for whole numbers."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{n} B"
    return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
