"""COCO's summary statistics as named metrics: box AP for detection (`COCOeval`, iouType "bbox")
and OKS AP / AR for pose (iouType "keypoints"), both through pycocotools.

`COCOeval.summarize()` leaves twelve (box) or ten (keypoints) numbers in `stats`, each a fraction
in [0, 1], or -1 where it is undefined (no ground truth of that area range). The two evaluation
modules name the ones they report with `named_stats`; the names are registered here, once for
both tasks (kdbench.metrics). Imports no torch and no pycocotools.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kdbench.metrics import register_metric

register_metric("ap", "higher", "COCO AP @[.50:.95]", range=(0.0, 1.0))
register_metric("ap50", "higher", "COCO AP @.50", range=(0.0, 1.0))
register_metric("ap75", "higher", "COCO AP @.75", range=(0.0, 1.0))
register_metric("ap_small", "higher", "COCO AP, small objects", range=(0.0, 1.0))
register_metric("ap_medium", "higher", "COCO AP, medium objects", range=(0.0, 1.0))
register_metric("ap_large", "higher", "COCO AP, large objects", range=(0.0, 1.0))
register_metric("ar", "higher", "COCO AR @[.50:.95] (pose: OKS)", range=(0.0, 1.0))


def named_stats(stats: Sequence[float], index: Mapping[str, int]) -> dict[str, float | None]:
    """{name: stats[index[name]]} for every name, None where COCOeval gives -1 (undefined)."""
    return {name: (None if stats[i] < 0 else float(stats[i])) for name, i in index.items()}
