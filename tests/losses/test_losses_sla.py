"""SLA's losses (kdbench/losses/sla.py) against float64 hand computations: the aggregated classifier,
the joint CE (mean over copies and positions, ×M with large_loss), and SLA-SD's T²·KL from the
detached aggregate into the single head; zero at equality, masked positions change nothing."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.losses import sla_aggregate, sla_joint_ce, sla_sd
from tests.losses.lossref import kl, log_softmax, softmax

B, M, K = 3, 4, 5


def _joint(seed: int, b: int = B) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, M, K * M, generator=g, dtype=torch.float64) * 2


def _hand_aggregate(joint: torch.Tensor) -> list[list[float]]:
    z = joint.tolist()
    return [[sum(z[b][m][k * M + m] for m in range(M)) / M for k in range(K)] for b in range(len(z))]


def test_the_aggregate_is_the_mean_of_each_copys_logit_at_its_own_transformation() -> None:
    joint = _joint(0)
    got = sla_aggregate(joint)
    assert got.shape == (B, K) and got.dtype == torch.float64
    want = _hand_aggregate(joint)
    assert all(math.isclose(got[b, k].item(), want[b][k], rel_tol=0, abs_tol=1e-12) for b in range(B) for k in range(K))
    # one position by hand: class 1 reads copy 0 at index 4, copy 1 at 5, copy 2 at 6, copy 3 at 7
    z = joint[0]
    assert math.isclose(got[0, 1].item(), (z[0, 4] + z[1, 5] + z[2, 6] + z[3, 7]).item() / 4, abs_tol=1e-12)
    with pytest.raises(ValueError, match="divisible by M"):
        sla_aggregate(torch.zeros(2, 4, 10))


def test_the_aggregate_takes_any_leading_positions() -> None:
    joint = _joint(1, b=6)
    assert torch.equal(sla_aggregate(joint.view(2, 3, M, K * M)), sla_aggregate(joint).view(2, 3, K))


def _hand_joint_ce(joint: torch.Tensor, target: torch.Tensor, valid: list[bool]) -> float:
    z, y = joint.tolist(), target.tolist()
    per_position = [sum(-log_softmax(z[b][m])[y[b][m]] for m in range(M)) / M for b in range(len(z))]
    kept = [v for v, ok in zip(per_position, valid, strict=True) if ok]
    return sum(kept) / len(kept)


def test_the_joint_ce_by_hand_with_a_mask_and_the_large_loss() -> None:
    joint = _joint(2)
    labels = torch.tensor([4, 0, 2])
    target = labels[:, None] * M + torch.arange(M)
    got = sla_joint_ce(joint, target)
    assert math.isclose(got.item(), _hand_joint_ce(joint, target, [True] * B), rel_tol=0, abs_tol=1e-12)
    assert torch.allclose(got, torch.nn.functional.cross_entropy(joint.reshape(-1, K * M), target.reshape(-1)))
    mask = torch.tensor([True, False, True])
    masked = sla_joint_ce(joint, target, mask)
    assert math.isclose(masked.item(), _hand_joint_ce(joint, target, [True, False, True]), rel_tol=0, abs_tol=1e-12)
    large = sla_joint_ce(joint, target, mask, large_loss=True)
    assert math.isclose(large.item(), M * masked.item(), rel_tol=1e-15)  # the sum over the M copies


def _hand_sd(single: torch.Tensor, joint: torch.Tensor, t: float, valid: list[bool]) -> float:
    agg = _hand_aggregate(joint)
    values = [t * t * kl(softmax([v / t for v in agg[b]]), softmax([v / t for v in single[b].tolist()]))
              for b in range(len(agg))]
    kept = [v for v, ok in zip(values, valid, strict=True) if ok]
    return sum(kept) / len(kept)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_the_self_distillation_by_hand(temperature: float) -> None:
    single = torch.randn(B, K, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    joint = _joint(4)
    got = sla_sd(single, joint, temperature)
    assert got.dtype == torch.float64
    assert math.isclose(got.item(), _hand_sd(single, joint, temperature, [True] * B), rel_tol=0, abs_tol=1e-12)
    # the official F.kl_div(log_softmax(z/T), softmax(z_agg/T), "batchmean")·T²
    ref = torch.nn.functional.kl_div(torch.log_softmax(single / temperature, 1),
                                     torch.softmax(sla_aggregate(joint) / temperature, 1), reduction="batchmean")
    assert torch.allclose(got, ref * temperature**2, rtol=0, atol=1e-12)
    mask = torch.tensor([False, True, True])
    assert math.isclose(sla_sd(single, joint, temperature, mask).item(),
                        _hand_sd(single, joint, temperature, [False, True, True]), rel_tol=0, abs_tol=1e-12)


def test_zero_when_the_single_head_is_the_aggregate_and_no_gradient_into_the_joint_side() -> None:
    joint = _joint(5).requires_grad_(True)
    single = sla_aggregate(joint.detach()).clone().requires_grad_(True)
    loss = sla_sd(single, joint, 2.0)
    assert abs(loss.item()) < 1e-12
    single2 = torch.randn(B, K, dtype=torch.float64, requires_grad=True)
    sla_sd(single2, joint, 2.0).backward()
    assert joint.grad is None  # the aggregated target is detached
    assert single2.grad is not None and single2.grad.abs().sum() > 0
    sla_joint_ce(joint, torch.zeros(B, M, dtype=torch.long)).backward()
    assert joint.grad is not None and joint.grad.abs().sum() > 0  # the joint CE trains the joint head


def test_masked_positions_change_nothing() -> None:
    single = torch.randn(B, K, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    joint, target = _joint(7), torch.zeros(B, M, dtype=torch.long)
    mask = torch.tensor([True, False, True])
    before = sla_sd(single, joint, 1.0, mask), sla_joint_ce(joint, target, mask)
    single[1], joint[1] = float("nan"), 1e6
    after = sla_sd(single, joint, 1.0, mask), sla_joint_ce(joint, target, mask)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
