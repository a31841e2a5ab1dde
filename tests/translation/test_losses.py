"""Token-level losses under teacher forcing against float64 hand computations: fairseq's
label-smoothed CE, masked word-level KD, SeqKD's plain NLL on the teacher's outputs, and MiniLM's
relations through the method with padding read from zeroed q/k/v (normalised per sequence, as the
paper's 1/(A_h·|x|))."""

from __future__ import annotations

import math

import torch

from kdbench.losses import kd
from kdbench.losses.sequence import label_smoothed_nll
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState
from kdbench.methods.minilm import MiniLM, padding_mask
from kdbench.outputs import Head, Outputs
from tests.losses.lossref import kl, log_softmax, rows, scaled, softmax


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _close(value: torch.Tensor, expected: float) -> None:
    assert math.isclose(float(value), expected, rel_tol=0, abs_tol=1e-10), (float(value), expected)


MASK = torch.tensor([[True, True, True, False], [True, True, False, False]])  # (B, T) real tokens


def test_label_smoothed_nll_is_fairseqs_convention() -> None:
    logits, eps = _randn(2, 4, 5, seed=0), 0.1
    target = torch.tensor([[1, 4, 0, 0], [2, 3, 0, 0]])
    per_token = []
    for row, y in zip(rows(logits), target.flatten().tolist(), strict=True):
        logp = log_softmax(row)
        # target 1 − ε on the gold token, ε/(V−1) on each of the V−1 others
        per_token.append(-sum(((1 - eps) if k == y else eps / 4) * lp for k, lp in enumerate(logp)))
    valid = MASK.flatten().tolist()
    kept = [v for v, ok in zip(per_token, valid, strict=True) if ok]
    _close(label_smoothed_nll(logits, target, eps, MASK), sum(kept) / len(kept))
    plain = [-log_softmax(r)[y] for r, y in zip(rows(logits), target.flatten().tolist(), strict=True)]
    _close(label_smoothed_nll(logits, target, 0.0, MASK),
           sum(p for p, ok in zip(plain, valid, strict=True) if ok) / sum(valid))


def test_masked_token_level_kd() -> None:
    s, t, temp = _randn(2, 4, 6, seed=1), _randn(2, 4, 6, seed=2), 2.0
    s[~MASK] = 1e6  # whatever padding holds must not leak
    values = [temp**2 * kl(softmax(scaled(tr, 1 / temp)), softmax(scaled(sr, 1 / temp)))
              for sr, tr in zip(rows(s), rows(t), strict=True)]
    valid = MASK.flatten().tolist()
    expected = sum(v for v, ok in zip(values, valid, strict=True) if ok) / sum(valid)
    _close(kd(s, t, temp, MASK), expected)


def test_seqkd_is_plain_nll_on_the_teachers_targets_whatever_the_cards_smoothing() -> None:
    """Kim & Rush's seq2seq-attn trains with ClassNLLCriterion (no smoothing, padding weight 0)."""
    logits = _randn(2, 4, 5, seed=3).requires_grad_(True)
    beam = torch.tensor([[2, 0, 4, -100], [1, 3, -100, -100]])  # teacher's tokens; padding −100
    out = Outputs(heads={"token": Head(logits, beam, MASK, kind="categorical")})
    cls = get_method("seqkd")
    method = cls(cls.Config(), MethodContext(out.detach(), None, 2, 1))
    assert method.task_weight("token", 0.5) == 0.0  # the card's label-smoothed term is off
    assert method.task_weight("layer0/token", 0.5) == 1.0  # other task terms keep weight 1
    terms = method.loss(out, None, 0.0, RunState(0, 1, 0, 1))
    assert set(terms) == {"seqkd/token"}
    nll = [-log_softmax(r)[y] for r, y, ok in zip(rows(logits), beam.flatten().tolist(),
                                                  MASK.flatten().tolist(), strict=True) if ok]
    _close(terms["seqkd/token"].detach(), sum(nll) / len(nll))
    assert terms["seqkd/token"].item() != label_smoothed_nll(logits.detach(), beam, 0.1, MASK).item()
    # zero when the student puts all its mass on the teacher's tokens
    sure = torch.full((2, 4, 5), -1e4, dtype=torch.float64)
    sure.scatter_(-1, beam.clamp_min(0).unsqueeze(-1), 0.0)
    confident = method.loss(Outputs(heads={"token": Head(sure, beam, MASK, kind="categorical")}), None, 0.0,
                            RunState(0, 1, 0, 1))
    assert float(confident["seqkd/token"]) == 0.0
    # padded positions change nothing and get no gradient
    noisy = logits.detach().clone()
    noisy[~MASK] = 1e6
    again = method.loss(Outputs(heads={"token": Head(noisy, beam, MASK, kind="categorical")}), None, 0.0,
                        RunState(0, 1, 0, 1))
    assert torch.equal(again["seqkd/token"], terms["seqkd/token"].detach())
    terms["seqkd/token"].backward()
    assert logits.grad is not None and (logits.grad[~MASK] == 0).all() and torch.isfinite(logits.grad).all()


def _relations(a: torch.Tensor, b: torch.Tensor, batch: int, head: int, query: int, keys: list[int]) -> list[float]:
    d = a.shape[-1]
    return softmax([sum(x * y for x, y in zip(a[batch, head, query].tolist(), b[batch, head, j].tolist(), strict=True))
                    / math.sqrt(d) for j in keys])


def test_minilm_method_last_layer_with_padding_from_zeroed_rows() -> None:
    lengths = [3, 2]
    valid = torch.tensor([[i < n for i in range(4)] for n in lengths])

    def qkv(d: int, seed: int) -> tuple[torch.Tensor, ...]:
        return tuple(_randn(2, 2, 4, d, seed=seed + i) * valid[:, None, :, None] for i in range(3))

    student = Outputs(heads={"token": Head(_randn(2, 4, 5, seed=9), kind="categorical")},
                      attentions={"encoder.0": qkv(3, 100), "encoder.1": qkv(3, 10)})
    teacher = Outputs(heads={"token": Head(_randn(2, 4, 5, seed=8), kind="categorical")},
                      attentions={"encoder.0": qkv(5, 200), "encoder.1": qkv(5, 20)})
    assert torch.equal(padding_mask(student.attentions["encoder.1"]), valid)
    method = MiniLM(MiniLM.Config(weight=1.0), MethodContext(student, teacher, 2, 1))
    loss = method.loss(student, teacher, 0.0, RunState(0, 1, 0, 1))["minilm"]
    (qs, ks, vs), (qt, kt, vt) = student.attentions["encoder.1"], teacher.attentions["encoder.1"]
    expected = 0.0
    for (as_, bs), (at, bt) in (((qs, ks), (qt, kt)), ((vs, vs), (vt, vt))):
        per_sequence = []
        for b, n in enumerate(lengths):  # 1/(A_h·|x|) per sequence, then the mean over sequences
            keys = list(range(n))
            per_sequence.append(sum(kl(_relations(at, bt, b, h, q, keys), _relations(as_, bs, b, h, q, keys))
                                    for h in range(2) for q in keys) / (2 * n))
        expected += sum(per_sequence) / len(per_sequence)
    _close(loss, expected)
