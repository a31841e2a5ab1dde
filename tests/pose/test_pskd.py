"""PS-KD on SimCC heads: the Gaussian label distribution takes the one-hot's place in the
progressive target, trained with RTMPose's KL and its reduction; hand-computed in float64."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState
from kdbench.outputs import Head, Outputs

B, K, W = 3, 4, 16


def _outputs(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> Outputs:
    return Outputs(heads={"simcc_x": Head(logits, target, mask=weight > 0, weight=weight, kind="binned")})


def _case(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, W, generator=g, dtype=torch.float64)
    target = F.softmax(3 * torch.randn(B, K, W, generator=g, dtype=torch.float64), -1)
    past = torch.randn(B, K, W, generator=g, dtype=torch.float64)
    weight = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    return logits, target, past, weight


def _method() -> torch.nn.Module:
    logits, target, _, weight = _case()
    cls = get_method("pskd")
    student = _outputs(logits, target, weight)
    method = cls(cls.Config(), MethodContext(student, None, train_size=10, epochs=5))
    assert method.runtime_needs == frozenset({"past_model"})  # no per-sample table for (B, K, W) heads
    return method


def _hand(logits: torch.Tensor, soft: torch.Tensor, weight: torch.Tensor) -> float:
    """(1/K) Σ_b Σ_k w_bk (1/W) Σ_i ỹ (log ỹ − log σ(z))."""
    total = 0.0
    p = torch.softmax(logits, -1)
    for b in range(B):
        for k in range(K):
            kl = sum(float(soft[b, k, i] * (torch.log(soft[b, k, i]) - torch.log(p[b, k, i]))) for i in range(W))
            total += float(weight[b, k]) * kl / W
    return total / K


def test_progressive_target_mixes_the_label_distribution_with_the_past_epoch() -> None:
    logits, target, past, weight = _case()
    method = _method()
    state = RunState(epoch=2, epochs=5, step=0, steps=10)
    alpha = 0.8 * 3 / 5
    got = method.loss(_outputs(logits, target, weight), _outputs(past, target, weight), 0.5, state)
    soft = (1 - alpha) * target + alpha * torch.softmax(past, -1)
    assert abs(float(got["pskd/simcc_x"]) - _hand(logits, soft, weight)) < 1e-6  # p_{t−1} is taken in float32


def test_first_epoch_is_the_plain_simcc_loss_and_zero_at_the_label() -> None:
    logits, target, _, weight = _case()
    method = _method()
    state = RunState(epoch=0, epochs=5, step=0, steps=10)
    got = method.loss(_outputs(logits, target, weight), None, 0.0, state)
    assert abs(float(got["pskd/simcc_x"]) - _hand(logits, target, weight)) < 1e-6
    at_label = method.loss(_outputs(target.log(), target, weight), None, 0.0, state)
    assert abs(float(at_label["pskd/simcc_x"])) < 1e-7


def test_zero_weight_keypoints_change_nothing_and_no_gradient_reaches_the_past_model() -> None:
    logits, target, past, weight = _case()
    method = _method()
    state = RunState(epoch=3, epochs=5, step=0, steps=10)
    past.requires_grad_(True)
    logits.requires_grad_(True)
    base = method.loss(_outputs(logits, target, weight), _outputs(past, target, weight), 0.5, state)["pskd/simcc_x"]
    noisy = logits.detach().clone()
    noisy[weight == 0] += 5.0
    other = method.loss(_outputs(noisy, target, weight), _outputs(past, target, weight), 0.5, state)["pskd/simcc_x"]
    assert torch.equal(base, other)
    base.backward()
    assert past.grad is None
