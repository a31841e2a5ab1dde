"""The task loss of adapters whose heads are labelled classifiers (classification, OOD).

Cross-entropy on every head of the final layer and, with deep supervision, on every earlier
layer's heads. Numbers are those of `F.cross_entropy` (mean over the batch).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdbench.outputs import Head, Outputs


def head_ce(head: Head, task: str) -> Tensor:
    """Cross-entropy of a head's logits with its labels (`task` names the adapter in the assertion)."""
    assert head.target is not None, f"{task} heads carry their labels"
    return F.cross_entropy(head.logits, head.target)


def deep_supervision_ce(outputs: Outputs, task: str) -> dict[str, Tensor]:
    """CE on each final head (keyed by its name) and on every earlier layer's heads (deep
    supervision), keyed `layer{i}/{name}`; `outputs.layers[-1]` is the final layer, not repeated."""
    terms = {name: head_ce(h, task) for name, h in outputs.heads.items()}
    for i, layer in enumerate(outputs.layers[:-1]):
        for name, h in layer.items():
            terms[f"layer{i}/{name}"] = head_ce(h, task)
    return terms
