"""Teacher → student box-edge distillation in a shared frame (issue #16, item 2).

Each detector's edge bins are offsets from its own initial box, so a teacher's edge distribution
reaches the student re-expressed on the student's reference and bins (`fdr.rebin_edges`,
`outputs.Rebin`, `Head.in_frame`), not copied bin for bin. Checked by hand in float64 on a toy
case, as the identity when the two frames coincide, end to end through `align`, and through the
methods that distil binned heads (`kd` is localization distillation there)."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.adapters.detection.adapter import DetectionAdapter
from kdbench.adapters.detection.fdr import rebin_edges, weighting_function
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState, make_config
from kdbench.outputs import Head, Outputs, Rebin
from kdbench.protocol import load_protocol
from tests.losses.lossref import kl, rows, softmax

F64 = torch.float64


def test_weighting_function_of_the_toy_case() -> None:
    # N = 4, a = 0.5, c = 4: a·c = 2, step (2 + 1)^(2/(4−2)) = 3, W = (−2ac, 1 − 3, 0, 3 − 1, 2ac)
    assert weighting_function(4, 0.5, 4.0, dtype=F64).tolist() == [-4.0, -2.0, 0.0, 2.0, 4.0]


def _toy() -> tuple[torch.Tensor, torch.Tensor]:
    teacher_ref = torch.tensor([0.5, 0.5, 0.2, 0.4], dtype=F64)  # half the student's width, same height
    student_ref = torch.tensor([0.5, 0.5, 0.4, 0.4], dtype=F64)
    return teacher_ref, student_ref


def test_teacher_bins_as_two_bin_targets_on_the_students_reference_by_hand() -> None:
    """Left edge, c = 4. Teacher bin n sits at x1 = 0.5 − (2 + W_n)·0.2/4 = (0.6, 0.5, 0.4, 0.3, 0.2);
    on the student's reference φ = (0.5 − x1)/(0.4/4) − 2 = (−3, −2, −1, 0, 1): bins (0, 1) at ½/½, bin 1,
    bins (1, 2) at ½/½, bin 2, bins (2, 3) at ½/½. The top edge (equal heights, same centre) maps
    bin n to bin n."""
    teacher_ref, student_ref = _toy()
    left, w_left, w_right = rebin_edges(teacher_ref, student_ref, 4, 4)
    assert left.shape == w_left.shape == (4, 5)
    p = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=F64)
    q = Rebin(left, w_left, w_right, 5)(p.expand(4, 5))
    p0, p1, p2, p3, p4 = p.tolist()
    by_hand_left = [0.5 * p0, 0.5 * p0 + p1 + 0.5 * p2, 0.5 * p2 + p3 + 0.5 * p4, 0.5 * p4, 0.0]
    assert q[0].tolist() == pytest.approx(by_hand_left, abs=1e-12)
    assert q[1].tolist() == pytest.approx(p.tolist(), abs=1e-12)  # top: the same frame
    # right edge: x2 = 0.5 + (2 + W_n)·0.05 → φ = (x2 − 0.5)/0.1 − 2, the mirror image of the left edge
    assert q[2].tolist() == pytest.approx(by_hand_left, abs=1e-12)
    # the mass is kept, and so is the expected edge: Σ q_m W_m = Σ p_n φ_n = −0.85 (left)
    values = weighting_function(4, 0.5, 4.0, dtype=F64)
    assert q.sum(-1).tolist() == pytest.approx([1.0] * 4, abs=1e-12)
    assert float((q[0] * values).sum()) == pytest.approx(sum(pi * f for pi, f in zip(p.tolist(), [-3, -2, -1, 0, 1],
                                                                                      strict=True)), abs=1e-12)


def test_out_of_range_edges_clamp_to_an_end_bin_and_equal_frames_are_the_identity() -> None:
    wide = torch.tensor([0.5, 0.5, 0.8, 0.4], dtype=F64)  # twice the student's width
    _, student_ref = _toy()
    left, w_left, w_right = rebin_edges(wide, student_ref, 4, 4)
    # teacher left edges at 0.5 − (2 + W_n)·0.2 → φ = 2·(2 + W_n) − 2 = (−6, −2, 2, 6, 10): below W(0), on
    # bin 1, on bin 3, and beyond W(4) twice (all on bin 4)
    rebin = Rebin(left, w_left, w_right, 5)
    alone = torch.stack([rebin(torch.eye(5, dtype=F64)[n].expand(4, 5))[0] for n in range(5)])  # each bin alone
    expected = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1]])
    assert torch.allclose(alone, expected.to(F64), atol=1e-12, rtol=0)
    refs = torch.rand(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    left, w_left, w_right = rebin_edges(refs, refs, 16, 16)
    p = torch.softmax(torch.randn(3, 4, 17, dtype=F64, generator=torch.Generator().manual_seed(1)), -1)
    assert torch.allclose(Rebin(left, w_left, w_right, 17)(p), p, atol=1e-12, rtol=0)


def _box_outputs(z_s: torch.Tensor, z_t: torch.Tensor, rebin: Rebin, mask: torch.Tensor,
                 target: torch.Tensor) -> tuple[Outputs, Outputs]:
    features = {"f": torch.zeros(2, 3, dtype=F64), "g": torch.ones(2, 3, dtype=F64)}  # for mlkd (2 layers)
    student = Outputs(heads={"box": Head(z_s, target, kind="binned")}, features=features)
    teacher = Outputs(heads={"box": Head(z_t, target, mask=mask, kind="binned", rebin=rebin)}, features=features)
    return student, teacher


def _toy_case() -> tuple[torch.Tensor, torch.Tensor, Rebin, torch.Tensor, torch.Tensor]:
    teacher_ref, student_ref = _toy()
    refs_t = torch.stack([teacher_ref, student_ref])  # position 1: the same frame
    refs_s = torch.stack([student_ref, student_ref])
    rebin = Rebin(*rebin_edges(refs_t, refs_s, 4, 4), 5)  # (2, 4, 5)
    gen = torch.Generator().manual_seed(3)
    z_s = torch.randn(2, 4, 5, dtype=F64, generator=gen)
    z_t = 2 * torch.randn(2, 4, 5, dtype=F64, generator=gen)
    mask = torch.tensor([[True, True, False, True], [True, False, True, True]])
    target = torch.tensor([[1, 2, 0, 3], [2, 2, 1, 0]])
    return z_s, z_t, rebin, mask, target


def test_kd_on_a_rebinned_box_head_is_ld_in_the_students_frame_by_hand() -> None:
    """kd = w·T²·KL(q_T ‖ σ(z_S/T)), q_T the teacher's σ(z_T/T) moved onto the student's bins, averaged
    over the valid (position, edge) pairs; computed here with the toy map written out by hand."""
    z_s, z_t, rebin, mask, target = _toy_case()
    cls = get_method("kd")
    config = make_config(cls.Config, {"temperature": 2.0, "kd_weight": 0.5})
    student, teacher = _box_outputs(z_s, z_t, rebin, mask, target)
    method = cls(config, MethodContext(student, teacher, 2, 1))
    value = float(method.loss(student, teacher, 0.0, RunState(0, 1, 0, 1))["kd/box"])

    def moved(p: list[float], pos: int, edge: int) -> list[float]:
        if pos == 1 or edge in (1, 3):  # the same frame
            return p
        return [0.5 * p[0], 0.5 * p[0] + p[1] + 0.5 * p[2], 0.5 * p[2] + p[3] + 0.5 * p[4], 0.5 * p[4], 0.0]

    per = []
    for i, (s_row, t_row) in enumerate(zip(rows(z_s), rows(z_t), strict=True)):
        pos, edge = divmod(i, 4)
        if mask[pos, edge]:
            q = moved(softmax([v / 2.0 for v in t_row]), pos, edge)
            per.append(4.0 * kl(q, softmax([v / 2.0 for v in s_row])))
    assert math.isclose(value, 0.5 * sum(per) / len(per), rel_tol=0, abs_tol=1e-10)


@pytest.mark.parametrize("name", ["kd", "dkd", "taid", "mlkd"])
def test_masked_positions_change_nothing_and_no_gradient_reaches_the_teacher(name: str) -> None:
    z_s, z_t, rebin, mask, target = _toy_case()
    cls = get_method(name)
    z_s = z_s.clone().requires_grad_(True)
    z_t = z_t.clone().requires_grad_(True)
    student, teacher = _box_outputs(z_s, z_t, rebin, mask, target)
    method = cls(cls.Config(), MethodContext(student, teacher, 2, 1)).double()
    state = RunState(0, 1, 0, 1)
    key = f"{'mlkd_pred' if name == 'mlkd' else name}/box"
    loss = method.loss(student, teacher, 0.0, state)[key]
    loss.backward()
    assert z_t.grad is None and z_s.grad is not None and torch.isfinite(z_s.grad).all()
    assert z_s.grad[~mask].abs().max() == 0  # masked (position, edge) pairs get no gradient
    noisy_s, noisy_t = z_s.detach().clone(), z_t.detach().clone()
    noisy_s[~mask], noisy_t[~mask] = 1e6, -1e6
    again = method.loss(*_box_outputs(noisy_s, noisy_t, rebin, mask, target), 0.0, state)[key]
    assert float(again) == pytest.approx(float(loss.detach()), abs=1e-12)


def test_methods_that_do_not_rebin_leave_a_rebinned_head_alone() -> None:
    z_s, z_t, rebin, mask, target = _toy_case()
    student, teacher = _box_outputs(z_s, z_t, rebin, mask, target)
    for name in ("bdkd", "nkd"):  # reverse KL; two temperatures
        cls = get_method(name)
        assert not cls.rebins
        assert cls(cls.Config(), MethodContext(student, teacher, 2, 1)).loss(student, teacher, 0.0,
                                                                             RunState(0, 1, 0, 1)) == {}


@pytest.fixture(scope="module")
def adapter() -> DetectionAdapter:
    return DetectionAdapter(load_protocol("detection", "smoke"), None, torch.device("cpu"))


def test_align_carries_the_teachers_bins_and_their_map_onto_the_students(adapter: DetectionAdapter) -> None:
    torch.manual_seed(0)
    student = adapter.build_model("student", frozenset()).eval()
    teacher = adapter.build_model("teacher", frozenset()).eval()
    batch = next(adapter.train_batches(4, torch.Generator().manual_seed(1)))
    with torch.no_grad():
        s_out, t_out = adapter.forward(student, batch), adapter.forward(teacher, batch)
        aligned = adapter.align(s_out, t_out)
    box = aligned.heads["box"]
    assert box.rebin is not None and box.rebin.bins == s_out.heads["box"].logits.shape[-1]
    assert aligned.heads["cls"].rebin is None and aligned.heads["cls"].kind == "binary"
    assert s_out.raw is not None and t_out.raw is not None
    n = 0
    for b, ((s_rows, s_cols), (t_rows, t_cols)) in enumerate(zip(s_out.matches[-1], t_out.matches[-1], strict=True)):
        t_of_gt = dict(zip(t_cols.tolist(), t_rows.tolist(), strict=True))
        for q, g in zip(s_rows.tolist(), s_cols.tolist(), strict=True):
            t = t_of_gt[g]
            assert torch.equal(box.logits[b, q], t_out.heads["box"].logits[b, t])  # the teacher's own bins
            left, w_left, _ = rebin_edges(t_out.raw.pre_boxes[b, t], s_out.raw.pre_boxes[b, q], 16, 16)
            assert torch.equal(box.rebin.left[b, q], left) and torch.allclose(box.rebin.weight_left[b, q],
                                                                              w_left.float())
            n += 1
    assert n > 0
    # the re-expressed distribution keeps the teacher's mass and, inside the student's range, its box
    probs = torch.softmax(box.in_frame(1.0), -1)
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5)


def test_a_teacher_that_is_the_student_is_distilled_onto_itself(adapter: DetectionAdapter) -> None:
    """The same model as teacher and student: the same pre-boxes and bins, so the map is the identity
    and the aligned distribution is the student's own (kd's term is 0)."""
    torch.manual_seed(0)
    model = adapter.build_model("student", frozenset()).eval()
    batch = next(adapter.train_batches(4, torch.Generator().manual_seed(2)))
    with torch.no_grad():
        out = adapter.forward(model, batch)
        aligned = adapter.align(out, out)
    box = aligned.heads["box"]
    assert box.mask is not None and box.mask.any()
    for t in (1.0, 4.0):
        moved = torch.softmax(box.in_frame(t) / t, -1)[box.mask]
        own = torch.softmax(out.heads["box"].logits / t, -1)[box.mask]
        assert torch.allclose(moved, own, atol=1e-5)
    kd = get_method("kd")
    method = kd(kd.Config(), MethodContext(out, aligned, 4, 1))
    terms = method.loss(out, aligned, 0.0, RunState(0, 1, 0, 1))
    assert float(terms["kd/box"]) == pytest.approx(0.0, abs=1e-4)


def test_dkd_on_a_re_expressed_teacher_with_no_mass_off_the_target_has_no_nckd() -> None:
    """A teacher edge clamped onto the student's end bin that is also the ground truth's: q is one-hot
    on the target, so there is no non-target distribution; NCKD is 0 there (not the ≈1000 the −1000
    offset would give), and DKD is α·T²·KL((1, 0) ‖ (p_S,t, 1 − p_S,t)) = −α·T²·log p_S,t."""
    from kdbench.losses import dkd
    from tests.losses.lossref import log_softmax

    z_s = torch.tensor([[0.3, -1.2, 0.8, 2.0, -0.5]], dtype=F64)
    z_t = torch.log(torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]], dtype=F64)) * 2.0  # T·log q at T = 2
    target = torch.tensor([4])
    value = float(dkd(z_s, z_t, target, alpha=1.0, beta=8.0, temperature=2.0))
    expected = -4.0 * log_softmax([v / 2.0 for v in z_s[0].tolist()])[4]
    assert math.isclose(value, expected, rel_tol=0, abs_tol=1e-12)
    # with mass off the target the offset trick is untouched: NCKD over the teacher's non-target bins
    z_t = torch.log(torch.tensor([[0.0, 0.25, 0.0, 0.25, 0.5]], dtype=F64)) * 2.0
    p_t, p_s = softmax([v / 2.0 for v in z_t[0].tolist()]), softmax([v / 2.0 for v in z_s[0].tolist()])
    rest_t = [p_t[1] / 0.5, p_t[3] / 0.5]
    rest_s = softmax([z_s[0, k].item() / 2.0 for k in (0, 1, 2, 3)])
    nckd = sum(r * math.log(r / rest_s[k]) for r, k in zip(rest_t, (1, 3), strict=True))
    tckd = kl([p_t[4], 1 - p_t[4]], [p_s[4], 1 - p_s[4]])
    value = float(dkd(z_s, z_t, target, alpha=1.0, beta=8.0, temperature=2.0))
    assert math.isclose(value, 4.0 * (tckd + 8.0 * nckd), rel_tol=0, abs_tol=1e-10)
