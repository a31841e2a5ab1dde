"""kdbench's loss library: pure tensor functions, no task knowledge (docs/architecture.md, Layers).

Distributions are on the last dimension with any leading position dimensions; losses sum
over the last dimension and average over valid positions (`mask`, bool over the leading
shape) unless the original method defines otherwise, which each docstring then says.
Teacher inputs are detached inside every loss; the one loss that trains a teacher (`bdkd_teacher`,
BD-KD's online teacher) detaches the student's instead.
"""

from kdbench.losses.divergence import bdkd, bdkd_teacher, binary_kl_norm
from kdbench.losses.feature import feature_mse, minilm_relations, nd, similarity
from kdbench.losses.fusion import fused_kd, trilateral_relations
from kdbench.losses.gold import ddf, layer_self_distillation
from kdbench.losses.localization import box_giou, box_l1, fgl, varifocal
from kdbench.losses.logit import binary_kd, dkd, kd, nkd, taid
from kdbench.losses.mdcs import consistency_sd, diversity_ce, prior_shift
from kdbench.losses.ofa import ofa
from kdbench.losses.self_distill import (
    emasd,
    gtsd,
    label_smoothing,
    probability_squared_error,
    pskd_targets,
    soft_cross_entropy,
    uskd,
    uskd_terms,
)
from kdbench.losses.sequence import first_topk_kl
from kdbench.losses.sla import sla_aggregate, sla_joint_ce, sla_sd

__all__ = [
    "bdkd",
    "bdkd_teacher",
    "binary_kd",
    "binary_kl_norm",
    "box_giou",
    "box_l1",
    "consistency_sd",
    "ddf",
    "diversity_ce",
    "dkd",
    "emasd",
    "feature_mse",
    "fgl",
    "first_topk_kl",
    "fused_kd",
    "gtsd",
    "kd",
    "label_smoothing",
    "layer_self_distillation",
    "minilm_relations",
    "nd",
    "nkd",
    "ofa",
    "prior_shift",
    "probability_squared_error",
    "pskd_targets",
    "similarity",
    "sla_aggregate",
    "sla_joint_ce",
    "sla_sd",
    "soft_cross_entropy",
    "taid",
    "trilateral_relations",
    "uskd",
    "uskd_terms",
    "varifocal",
]
