"""EMA self-distillation (DeGLA): w·Σ (z_S − sg(z_EMA))² on every head of a kind it accepts, by hand
in float64; the teacher's invalid positions and detection's relative box bins are left out."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState
from kdbench.outputs import Head, Outputs, Rebin

STATE = RunState(epoch=0, epochs=1, step=0, steps=1)


def _outputs(seed: int) -> Outputs:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * 2

    return Outputs(heads={
        "cat": Head(randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), kind="categorical"),
        "cls": Head(randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long),
                    mask=torch.tensor([[True, False, True], [True, True, False]]), kind="binary"),
        "bins": Head(randn(2, 6), torch.zeros(2, dtype=torch.long), kind="binned"),
    })


def _method(**config: float) -> torch.nn.Module:
    cls = get_method("emasd")
    method = cls(cls.Config(**config), MethodContext(_outputs(0).detach(), None, train_size=10, epochs=1))
    assert method.runtime_needs == {"ema_model"}
    return method


def _hand(s: torch.Tensor, t: torch.Tensor, valid: list[bool] | None = None) -> float:
    """Σ over valid positions and the last dim of (s − t)², plain Python."""
    rows_s, rows_t = s.reshape(-1, s.shape[-1]).tolist(), t.reshape(-1, t.shape[-1]).tolist()
    valid = valid or [True] * len(rows_s)
    return sum(sum((a - b) ** 2 for a, b in zip(x, y, strict=True))
               for x, y, ok in zip(rows_s, rows_t, valid, strict=True) if ok)


def test_defaults_are_degla_s() -> None:
    cls = get_method("emasd")
    assert cls.Config() == cls.Config(weight=0.005, ema_momentum=0.9996)  # --distill_weight, --ema_alpha
    assert cls.teacher == "self" and cls.accepts == {"categorical", "binned", "binary"}
    assert _method().ema_momentum() == 0.9996 and _method().ce_weight() == 1.0  # the task loss is kept


def test_every_head_by_hand_with_the_teachers_mask() -> None:
    student, teacher = _outputs(1), _outputs(2)
    teacher.heads["cat"].mask = torch.tensor([[True, True, False], [False, True, True]])  # teacher-invalid
    terms = _method(weight=0.3).loss(student, teacher, 0.0, STATE)
    assert set(terms) == {"emasd/cat", "emasd/cls", "emasd/bins"}
    s, t = student.heads, teacher.heads
    want = {
        "cat": _hand(s["cat"].logits, t["cat"].logits, [True, True, False, False, True, True]),
        "cls": _hand(s["cls"].logits, t["cls"].logits, [True, False, True, True, True, False]),
        "bins": _hand(s["bins"].logits, t["bins"].logits),
    }
    for name, value in want.items():
        got = terms[f"emasd/{name}"]
        assert got.dtype == torch.float64
        assert math.isclose(float(got), 0.3 * value, rel_tol=0, abs_tol=1e-10), name


def test_zero_at_the_teacher_and_no_gradient_into_it() -> None:
    student = _outputs(1)
    teacher = _outputs(1)
    for head in teacher.heads.values():
        head.logits.requires_grad_(True)
    terms = _method().loss(student, teacher, 0.0, STATE)
    assert all(float(v) == 0.0 for v in terms.values()) and len(terms) == 3
    student = _outputs(3)
    for head in student.heads.values():
        head.logits.requires_grad_(True)
    torch.stack(list(_method().loss(student, teacher, 0.0, STATE).values())).sum().backward()
    assert all(h.logits.grad is None for h in teacher.heads.values())
    assert all(h.logits.grad is not None and h.logits.grad.abs().sum() > 0 for h in student.heads.values())
    assert (student.heads["cls"].logits.grad[~student.heads["cls"].mask] == 0).all()  # masked: no gradient


def test_masked_positions_change_nothing() -> None:
    student, teacher = _outputs(1), _outputs(2)
    before = _method().loss(student, teacher, 0.0, STATE)["emasd/cls"]
    invalid = ~student.heads["cls"].mask
    student.heads["cls"].logits[invalid] = float("nan")
    teacher.heads["cls"].logits[invalid] = 1e6
    assert torch.equal(_method().loss(student, teacher, 0.0, STATE)["emasd/cls"], before)


def test_a_teacher_head_on_other_bins_keeps_its_task_loss_only() -> None:
    """Detection's box bins are relative to each model's own initial box: the EMA teacher's are not
    the student's (`rebin` set by `align`), and the squared error reads logits, so it is skipped."""
    student, teacher = _outputs(1), _outputs(2)
    left = torch.zeros(2, 6, dtype=torch.long)
    teacher.heads["bins"].rebin = Rebin(left, torch.ones(2, 6), torch.zeros(2, 6), 6)
    assert set(_method().loss(student, teacher, 0.0, STATE)) == {"emasd/cat", "emasd/cls"}


def test_without_the_runners_teacher_it_says_so() -> None:
    with pytest.raises(ValueError, match="EMA teacher"):
        _method().loss(_outputs(1), None, 0.0, STATE)
