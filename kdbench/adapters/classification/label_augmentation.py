"""Self-supervised label augmentation (Lee, Hwang & Shin, "Self-supervised Label Augmentation via
Input Transformations", ICML 2020): every training sample seen under M input transformations,
each copy labelled with the joint (class, transformation) label.

Served to a method that needs `label_augmentation` (SLA-SD, kdbench/methods/slasd.py): the
student gets a joint head of K·M logits beside its K-way head, and every training batch is run as
the B·M stack `transform` builds. What the official code does (hankook/SLA at bc5d9cd,
`augmentations.py` `rotation`, `trainers.py` `create_sla_sd_trainer`) and what is kept:

- Row order: sample-major, row b·M + m is t_m(x_b) (SLA's `torch.stack([...], 1).view(-1, ...)`),
  with t_0 the identity, so rows ::M are the untransformed batch.
- Joint label of (y, m): y·M + m (SLA's `torch.stack([labels*n+i for i in range(n)], 1)`).
- Images (B, C, H, W), H = W: the rotations by 0°, 90°, 180°, 270°, t_m = `torch.rot90(x, m, (2, 3))`
  (SLA's default `--aug rotation`, the transformation of its main results). Non-square images are
  refused: a 90° turn would change their shape.
- Signals (B, C, L) (MNIST-1D): SLA defines no transformation of 1-D inputs. kdbench uses the
  group {identity, time reversal, sign flip, both}, ≅ Z₂ × Z₂ as the rotations are Z₄, with the
  two properties SLA asks of its transformations: each is exactly invertible on the sampling grid
  (no interpolation, nothing of the signal is lost, so the class is kept and the joint label is
  well defined), and none occurs in the data, so the transformation is identifiable from the input
  as a rotation is from an upright photograph: MNIST-1D's generator pads, scales, shears,
  translates and adds noise to fixed digit templates, never reverses or negates them. (A
  translation or a rescaling would not do: the generator already applies them, so the copy would
  look like another natural sample and its transformation label would be noise.)

  t_0 = x,  t_1 = x reversed along L,  t_2 = −x,  t_3 = −(x reversed along L).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: How many transformations each kind of input gets.
VIEWS = 4


def views(sample_shape: tuple[int, ...]) -> int:
    """M, the number of transformations for one sample of this shape ((C, H, W) or (C, L)).

    Raises:
        ValueError: a shape none of the transformation groups applies to (non-square images).
    """
    if len(sample_shape) == 2:
        return VIEWS
    if len(sample_shape) == 3 and sample_shape[1] == sample_shape[2]:
        return VIEWS
    if len(sample_shape) == 3:
        raise ValueError(f"SLA's rotations by 90° need square images, got {sample_shape[1]}×{sample_shape[2]}")
    raise ValueError(f"no SLA transformation for inputs of shape {tuple(sample_shape)}; "
                     "expected (C, H, W) images or (C, L) signals")


def transform(x: Tensor) -> Tensor:
    """(B, C, H, W) images or (B, C, L) signals → (B·M, ...): row b·M + m is t_m(x_b).

    Images: t_m rotates by m·90° (`torch.rot90(x, m, (2, 3))`, as SLA's `rotation`); signals:
    identity, time reversal, sign flip, both (module docstring).
    """
    views(tuple(x.shape[1:]))  # raises on shapes no group applies to
    if x.dim() == 4:
        copies = [torch.rot90(x, m, (2, 3)) for m in range(VIEWS)]
    else:
        reversed_ = x.flip(-1)
        copies = [x, reversed_, -x, -reversed_]
    return torch.stack(copies, dim=1).reshape(-1, *x.shape[1:])  # (B, M, ...) → (B·M, ...)


def joint_labels(labels: Tensor, m: int) -> Tensor:
    """(B,) class indices → (B, M) joint labels y·M + m of each sample's M copies."""
    return labels[:, None] * m + torch.arange(m, device=labels.device)
