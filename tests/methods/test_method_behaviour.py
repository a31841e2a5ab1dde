"""Method-specific behaviour beyond the contract: schedules, memories, learnable parts."""

from __future__ import annotations

import math

import torch

from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState, make_config
from kdbench.outputs import Head, Outputs


def _outputs(logits: torch.Tensor, target: torch.Tensor, ids: torch.Tensor | None = None,
             features: dict[str, torch.Tensor] | None = None) -> Outputs:
    return Outputs(heads={"cls": Head(logits, target, kind="categorical")}, features=features or {}, ids=ids)


def test_pskd_targets_start_one_hot_then_follow_the_last_prediction() -> None:
    cls = get_method("pskd")
    target = torch.tensor([0, 1])
    probe = _outputs(torch.zeros(2, 3), target, torch.tensor([0, 1]))
    method = cls(cls.Config(), MethodContext(probe, None, train_size=4, epochs=2))
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    out = _outputs(logits, target, torch.tensor([0, 1]))
    first = method.loss(out, None, 0.0, RunState(0, 2, 0, 4))["pskd/cls"]
    onehot_ce = torch.nn.functional.cross_entropy(logits, target)
    assert torch.allclose(first, onehot_ce)  # unseen samples: the table is one-hot
    method.after_step(out, {}, RunState(0, 2, 0, 4))
    assert torch.allclose(method.past_cls[:2], logits.softmax(-1))
    assert not method.seen_cls[2:].any()


def _taid(**overrides: object) -> torch.nn.Module:
    cls = get_method("taid")
    probe = _outputs(torch.zeros(2, 3), torch.tensor([0, 1]))
    return cls(make_config(cls.Config, overrides), MethodContext(probe, None, 2, 1))


def _taid_schedule(losses: list[float], steps: int, t_start: float, alpha: float, beta: float,
                   adaptive: bool = True, ahead: int = 0) -> list[float]:
    """t after each step by hand, as SakanaAI/TAID's update_t (progress = global_step / N,
    global_step = steps completed before the current one = its 0-based index; `ahead` 1 gives
    the former, one-step-ahead (k + 1)/N)."""
    t, m, prev, out = t_start, 0.0, None, []
    for k, loss in enumerate(losses):
        if prev is not None:
            m = beta * m + (1 - beta) * (prev - loss) / (prev + 1e-15)
            t_lin = t_start + (1.0 - t_start) * (k + ahead) / steps
            t = min(1.0, max(t_lin, t + alpha * (1 / (1 + math.exp(-m))) * (1 - t))) if adaptive else t_lin
        prev = loss
        out.append(t)
    return out


def _run_taid(method: torch.nn.Module, losses: list[float], steps: int) -> list[float]:
    probe = _outputs(torch.zeros(2, 3), torch.tensor([0, 1]))
    ts = []
    for step, loss in enumerate(losses):
        method.after_step(probe, {"taid/cls": torch.tensor(loss, dtype=torch.float64)},
                          RunState(0, 1, step, steps))
        ts.append(float(method.t))
    return ts


def test_taid_t_never_falls_below_its_linear_schedule() -> None:
    ts = _run_taid(_taid(), [3.0, 2.5, 2.6, 2.0, 1.9, 1.0], 10)
    assert ts[0] == 0.2  # the first call only stores J (as the official update_t)
    for step in range(1, len(ts)):  # t_lin at the number of completed steps, k/N
        assert ts[step] >= 0.2 + 0.8 * step / 10 - 1e-12
    assert ts == sorted(ts) and ts[-1] <= 1.0


def test_taid_schedule_matches_the_official_update_by_hand() -> None:
    steps = 20
    losses = [3.0 * 0.9**k + 0.1 * (k % 3) for k in range(steps)]  # falling, not monotonically
    # α large: the adaptive step wins early, the linear floor late (both branches of the max).
    expected = _taid_schedule(losses, steps, 0.2, 0.2, 0.9)
    floor = [0.2 + 0.8 * k / steps for k in range(steps)]
    assert expected[3] > floor[3] + 1e-3 and expected[-1] == floor[-1]
    got = _run_taid(_taid(alpha=0.2, beta=0.9), losses, steps)
    assert all(math.isclose(a, b, rel_tol=0, abs_tol=1e-12) for a, b in zip(got, expected, strict=True))
    ahead = _taid_schedule(losses, steps, 0.2, 0.2, 0.9, ahead=1)  # the former schedule
    assert abs(got[-1] - ahead[-1]) > 0.03


def test_taid_disable_adaptive_follows_the_linear_schedule() -> None:
    losses = [3.0, 1.0, 0.5, 0.2, 0.1]
    got = _run_taid(_taid(disable_adaptive="true", alpha=0.5), losses, 5)
    linear = [0.2] + [0.2 + 0.8 * k / 5 for k in range(1, 5)]  # t_start until J_prev exists
    assert all(math.isclose(a, b, rel_tol=0, abs_tol=1e-12) for a, b in zip(got, linear, strict=True))
    by_hand = _taid_schedule(losses, 5, 0.2, 0.5, 0.99, adaptive=False)
    assert all(math.isclose(a, b, rel_tol=0, abs_tol=1e-12) for a, b in zip(got, by_hand, strict=True))
    assert get_method("taid").Config().disable_adaptive is False  # the official default


def test_mlkd_layer_weights_stay_one_unless_learned() -> None:
    cls = get_method("mlkd")
    feats = {"a": torch.randn(4, 5), "b": torch.randn(4, 6)}
    student = _outputs(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), features=feats)
    teacher = _outputs(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]),
                       features={"a": torch.randn(4, 7), "b": torch.randn(4, 8)})
    fixed = cls(cls.Config(), MethodContext(student, teacher, 4, 1))
    assert not fixed.layer_logits.requires_grad
    learned = cls(cls.Config(learn_weights=True), MethodContext(student, teacher, 4, 1))
    terms = learned.loss(student, teacher, 0.0, RunState(0, 1, 0, 1))
    terms["mlkd_sim"].backward()
    assert learned.layer_logits.grad is not None
    assert torch.allclose(learned.layer_logits.softmax(-1) * 2, torch.ones(2, 2))


def test_dkd_warms_up_linearly_over_its_epochs() -> None:
    cls = get_method("dkd")
    out = _outputs(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    teacher = _outputs(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    method = cls(cls.Config(warmup_epochs=4), MethodContext(out, teacher, 4, 8))
    values = [float(method.loss(out, teacher, 0.0, RunState(e, 8, 0, 1))["dkd/cls"])
              for e in range(6)]
    assert abs(values[0] * 4 - values[3]) < 1e-5 and values[3] == values[5]
