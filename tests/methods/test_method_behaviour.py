"""Method-specific behaviour beyond the contract: schedules, memories, learnable parts."""

from __future__ import annotations

import torch

from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState
from kdbench.outputs import Head, Outputs


def _outputs(logits: torch.Tensor, target: torch.Tensor, ids: torch.Tensor | None = None,
             features: dict[str, torch.Tensor] | None = None) -> Outputs:
    return Outputs(heads={"cls": Head(logits, target)}, features=features or {}, ids=ids)


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


def test_taid_t_never_falls_below_its_linear_schedule() -> None:
    cls = get_method("taid")
    probe = _outputs(torch.zeros(2, 3), torch.tensor([0, 1]))
    method = cls(cls.Config(), MethodContext(probe, None, 2, 1))
    ts = []
    for step, loss in enumerate([3.0, 2.5, 2.6, 2.0, 1.9, 1.0]):
        method.after_step(probe, {"taid/cls": torch.tensor(loss)}, RunState(0, 1, step, 10))
        ts.append(float(method.t))
        if step > 0:  # the first call only stores J (as the official update_t)
            assert ts[-1] >= 0.2 + 0.8 * (step + 1) / 10 - 1e-12
    assert ts == sorted(ts) and ts[-1] <= 1.0


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
