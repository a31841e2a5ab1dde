"""The `kdbench` scope in mmengine's registries.

mmengine resolves a scoped type such as `"kdbench.KDLoss"` from any OpenMMLab registry (mmdet's,
mmpose's) by walking to the root registry and into its child with scope `kdbench`; these are
those children.
"""

from __future__ import annotations

from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

SCOPE = "kdbench"

MODELS = MMENGINE_MODELS.children.get(SCOPE) or Registry(
    "model", parent=MMENGINE_MODELS, scope=SCOPE,
    locations=["kdbench.integrations.distill"])
HOOKS = MMENGINE_HOOKS.children.get(SCOPE) or Registry(
    "hook", parent=MMENGINE_HOOKS, scope=SCOPE, locations=["kdbench.integrations.records"])
