"""The one metric registry: every reported metric, its direction and its unit.

Imported by the runner, `kdbench compare` and the leaderboard; it never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Direction = Literal["higher", "lower"]


@dataclass(frozen=True)
class Metric:
    name: str
    direction: Direction
    label: str
    unit: str = ""


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("top1", "higher", "Top-1 accuracy", "%"),
        Metric("top5", "higher", "Top-5 accuracy", "%"),
        Metric("nll", "lower", "Negative log-likelihood", "nats"),
        Metric("ece", "lower", "Expected calibration error (15 bins)", "%"),
        Metric("aurc", "lower", "Area under the risk-coverage curve", "×1000"),
        Metric("ap", "higher", "COCO AP @[.50:.95]"),
        Metric("ap50", "higher", "COCO AP @.50"),
        Metric("ap75", "higher", "COCO AP @.75"),
        Metric("ap_small", "higher", "COCO AP, small objects"),
        Metric("ap_medium", "higher", "COCO AP, medium objects"),
        Metric("ap_large", "higher", "COCO AP, large objects"),
        Metric("ar", "higher", "COCO AR @[.50:.95] (pose: OKS)"),
        Metric("bleu", "higher", "BLEU (sacrebleu, detokenized)"),
        Metric("chrf", "higher", "chrF (sacrebleu)"),
        Metric("id_acc", "higher", "In-distribution accuracy", "%"),
    ]
}

#: OOD detection (kdbench.adapters.ood.scores): every score's detection metrics, registered as
#: `{metric}_{score}` (pooled over the OOD test sets) and `{metric}_{score}_{set}` (per set).
OOD_DETECTION_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
OOD_SCORES = ("msp", "maxlogit", "energy", "mahalanobis", "discrepancy")
OOD_SETS = ("near", "far")
_OOD_LABELS = {"auroc": ("higher", "AUROC"), "aupr_in": ("higher", "AUPR-In (ID positive)"),
               "aupr_out": ("higher", "AUPR-Out (OOD positive)"), "fpr95": ("lower", "FPR at 95% TPR")}
METRICS |= {
    f"{m}_{score}{suffix}": Metric(f"{m}_{score}{suffix}", _OOD_LABELS[m][0],  # type: ignore[arg-type]
                                   f"{_OOD_LABELS[m][1]}, {score}{f' ({suffix[1:]}-OOD)' if suffix else ''}", "%")
    for m in OOD_DETECTION_METRICS for score in OOD_SCORES for suffix in ("", *(f"_{s}" for s in OOD_SETS))
}


def metric(name: str) -> Metric:
    """Look up a metric; an unknown name raises and lists the registered ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; registered: {', '.join(sorted(METRICS))}") from None


def ceiling(name: str) -> float | None:
    """The best value a metric can take (its headroom is measured to it): 100 % or 0 % for
    percentages, 1 for COCO AP/AR, 100 for BLEU and chrF, 0 for a loss; None if unbounded."""
    m = metric(name)
    if m.unit == "%" or name in ("bleu", "chrf"):
        return 100.0 if m.direction == "higher" else 0.0
    if name.startswith(("ap", "ar")):
        return 1.0
    if m.direction == "lower":
        return 0.0
    return None


def better(name: str, a: float, b: float) -> bool:
    """True when value `a` is strictly better than `b` for metric `name`."""
    return a > b if metric(name).direction == "higher" else a < b


def bounds(name: str) -> tuple[float, float]:
    """The range a metric's values lie in (a record outside it is refused): [0, 100] for
    percentages, BLEU and chrF, [0, 1] for COCO AP/AR, [0, 1000] for AURC (×1000), [0, ∞) for a
    loss."""
    m = metric(name)
    if m.unit == "%" or name in ("bleu", "chrf"):
        return 0.0, 100.0
    if name.startswith(("ap", "ar")):
        return 0.0, 1.0
    if m.unit == "×1000":
        return 0.0, 1000.0
    return 0.0, math.inf
