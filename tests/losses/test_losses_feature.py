"""Hand-computed values and properties: feature MSE, ND, MLKD similarity, MiniLM relations."""

from __future__ import annotations

import math

import pytest
import torch

from kdbench.losses import feature_mse, minilm_relations, nd, similarity
from tests.losses.lossref import close, flat, kl, rows, softmax

TOL = dict(rtol=0, atol=1e-10)



def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# feature_mse --------------------------------------------------------------------------------


def test_feature_mse_values():
    s, t = _randn(2, 3, 4, 4, seed=0), _randn(2, 3, 4, 4, seed=1)
    sq = [(a - b) ** 2 for a, b in zip(flat(s), flat(t), strict=True)]
    close(feature_mse(s, t), sum(sq) / len(sq))
    close(feature_mse(s, t, reduction="sum"), sum(sq) / 2)
    # mask over (B, C): only the valid (b, c) slices count.
    mask = torch.tensor([[True, False, True], [False, False, True]])
    valid = [m for m in flat(mask) for _ in range(16)]
    kept = [v for v, ok in zip(sq, valid, strict=True) if ok]
    close(feature_mse(s, t, mask), sum(kept) / len(kept))
    close(feature_mse(s, t, mask, "sum"), sum(kept) / 2)
    assert float(feature_mse(s, s.clone())) == 0.0
    with pytest.raises(ValueError, match="reduction"):
        feature_mse(s, t, reduction="max")  # type: ignore[arg-type]


# nd -----------------------------------------------------------------------------------------


def _nd_reference(fs, ft, means, y):
    total = 0.0
    for a, b, c in zip(rows(fs), rows(ft), y, strict=True):
        center = rows(means)[c]
        norm_c = math.sqrt(sum(v * v for v in center))
        dot = sum(x * v / norm_c for x, v in zip(a, center, strict=True))
        longest = max(math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b)))
        total += 1 - dot / longest
    return total / len(y)


def test_nd_value_and_properties():
    fs, ft, means = _randn(4, 6, seed=2), _randn(4, 6, seed=3), _randn(3, 6, seed=4)
    y = torch.tensor([0, 2, 1, 2])
    close(nd(fs, ft, means, y), _nd_reference(fs, ft, means, flat(y)))
    assert float(nd(fs, ft, means, y)) >= 0
    # Minimal (0) when f_S points along its class mean and is at least as long as f_T.
    along = means[y] / means[y].norm(dim=-1, keepdim=True) * (ft.norm(dim=-1, keepdim=True) + 1)
    assert float(nd(along, ft, means, y)) == pytest.approx(0.0, abs=1e-12)
    fs.requires_grad_(True)
    ft.requires_grad_(True)
    means.requires_grad_(True)
    nd(fs, ft, means, y).backward()
    assert ft.grad is None and means.grad is None
    assert fs.grad is not None and torch.isfinite(fs.grad).all()


# similarity ---------------------------------------------------------------------------------


def _similarity_reference(students, teachers, weights, nearest, mask):
    """Per position: for each student layer keep the `nearest` smallest MSEs, weighted."""
    positions = len(rows(students[0]))
    valid = [True] * positions if mask is None else flat(mask)
    per = []
    for pos in range(positions):
        total = 0.0
        for i, s in enumerate(students):
            a = rows(s)[pos]
            mses = []
            for j, t in enumerate(teachers):
                b = rows(t)[pos]
                mses.append((sum((x - z) ** 2 for x, z in zip(a, b, strict=True)) / len(a), j))
            for value, j in sorted(mses)[:nearest]:
                total += weights[i][j] * value
        per.append(total)
    kept = [v for v, ok in zip(per, valid, strict=True) if ok]
    return sum(kept) / len(kept)


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 6)])
def test_similarity_value(shape):
    students = [_randn(*shape, seed=10 + i) for i in range(3)]
    teachers = [_randn(*shape, seed=20 + j) for j in range(4)]
    weights = 0.5 + torch.rand(
        3, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    mask = (
        torch.tensor([True, False, True, True])
        if len(shape) == 2
        else torch.tensor([[True, True, False], [False, True, True]])
    )
    w_list = weights.tolist()
    for nearest in (1, 2):
        expected = _similarity_reference(students, teachers, w_list, nearest, mask)
        close(similarity(students, teachers, weights, nearest, mask), expected)
    close(
        similarity(students, teachers, weights),
        _similarity_reference(students, teachers, w_list, 2, None),
    )


def test_similarity_zero_when_a_teacher_layer_matches_and_validation():
    students = [_randn(4, 6, seed=30), _randn(4, 6, seed=31)]
    teachers = [students[1].clone(), _randn(4, 6, seed=32), students[0].clone()]
    assert float(similarity(students, teachers, torch.ones(2, 3), nearest=1)) == 0.0
    assert float(similarity(students, teachers, torch.ones(2, 3))) > 0
    with pytest.raises(ValueError, match="weights"):
        similarity(students, teachers, torch.ones(3, 2))
    with pytest.raises(ValueError, match="nearest"):
        similarity(students, teachers, torch.ones(2, 3), nearest=4)


def test_similarity_gradients_reach_projection_and_weights_not_teacher():
    students = [_randn(4, 6, seed=40).requires_grad_(True) for _ in range(2)]
    raw_teacher = [_randn(4, 8, seed=41 + j).requires_grad_(True) for j in range(3)]
    projection = torch.nn.Linear(8, 6).double()
    weights = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    similarity(students, raw_teacher, weights, projection=projection).backward()
    assert all(t.grad is None for t in raw_teacher)
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    assert weights.grad is not None and all(s.grad is not None for s in students)


# minilm_relations ---------------------------------------------------------------------------


def _relation_kl(a_t, b_t, a_s, b_s, valid):
    """Per sequence 1/(A_h·|x|)·Σ_heads Σ_valid queries KL over valid keys of σ(a bᵀ/√d) rows,
    then the mean over sequences (those with a valid token)."""
    batch, heads, length = a_t.shape[:3]
    per_sequence = []
    for b in range(batch):
        keys = [j for j in range(length) if valid[b][j]]
        if not keys:
            continue
        total = 0.0
        for h in range(heads):
            for q in keys:
                dists = []
                for a, k in ((a_t, b_t), (a_s, b_s)):
                    d = a.shape[-1]
                    row_a = a[b, h, q].tolist()
                    scores = [
                        sum(x * y for x, y in zip(row_a, k[b, h, j].tolist(), strict=True))
                        / math.sqrt(d)
                        for j in keys
                    ]
                    dists.append(softmax(scores))
                total += kl(dists[0], dists[1])
        per_sequence.append(total / (heads * len(keys)))
    return sum(per_sequence) / len(per_sequence)


def _minilm_by_hand(student, teacher, valid):
    (q_s, k_s, v_s), (q_t, k_t, v_t) = student, teacher
    return _relation_kl(q_t, k_t, q_s, k_s, valid) + _relation_kl(v_t, v_t, v_s, v_s, valid)


def test_minilm_relations_value_and_padding():
    student = tuple(_randn(2, 2, 4, 3, seed=50 + i) for i in range(3))
    teacher = tuple(_randn(2, 2, 4, 5, seed=60 + i) for i in range(3))  # larger head size
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    close(minilm_relations(student, teacher, mask), _minilm_by_hand(student, teacher, mask.tolist()))
    close(minilm_relations(student, teacher), _minilm_by_hand(student, teacher, [[True] * 4] * 2))

    def garbage(qkv, seed):
        out = []
        for i, x in enumerate(qkv):
            x = x.clone()
            by_token = x.transpose(1, 2)  # (B, T, A, d) view of x
            pads = int((~mask).sum())
            by_token[~mask] = _randn(pads, x.shape[1], x.shape[-1], seed=seed + i) * 1e6
            out.append(x)
        return tuple(out)

    noisy = minilm_relations(garbage(student, 70), garbage(teacher, 80), mask)
    assert torch.equal(noisy, minilm_relations(student, teacher, mask))


def test_minilm_relations_normalise_per_sequence_not_per_batch_token():
    """Lengths 4 and 1: the one-token sequence weighs half the batch (paper: 1/(A_h·|x|) per x),
    not a fifth of it (a mean over the batch's valid queries). A one-token sequence has a single
    key, so its relations are both (1) and its KL is 0: the loss is half the long one's."""
    student = tuple(_randn(3, 2, 4, 3, seed=100 + i) for i in range(3))
    teacher = tuple(_randn(3, 2, 4, 3, seed=110 + i) for i in range(3))
    mask = torch.tensor([[True] * 4, [True, False, False, False], [False] * 4])  # 3rd: no token
    alone = _minilm_by_hand(tuple(x[:1] for x in student), tuple(x[:1] for x in teacher), [[True] * 4])
    close(minilm_relations(student, teacher, mask), alone / 2)
    close(minilm_relations(student, teacher, mask), _minilm_by_hand(student, teacher, mask.tolist()))
    per_token = alone * 4 / 5  # the former reduction: 4 of the 5 valid queries carry KL
    assert not math.isclose(float(minilm_relations(student, teacher, mask)), per_token, abs_tol=1e-6)


def test_minilm_relations_properties():
    student = tuple(_randn(2, 2, 4, 3, seed=90 + i).requires_grad_(True) for i in range(3))
    teacher = tuple(_randn(2, 2, 4, 3, seed=95 + i).requires_grad_(True) for i in range(3))
    same = minilm_relations(student, tuple(x.detach().clone() for x in student))
    assert same.item() == 0.0
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    same_masked = minilm_relations(student, tuple(x.detach().clone() for x in student), mask)
    assert same_masked.item() == 0.0
    loss = minilm_relations(student, teacher, mask)
    assert loss.item() > 0
    loss.backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in student)
    # padded positions of the student get no gradient (they are neither queries nor keys)
    assert all((s.grad.transpose(1, 2)[~mask] == 0).all() for s in student)
    with pytest.raises(ValueError, match="head"):
        minilm_relations(student, tuple(x[:, :1] for x in teacher))
