"""The long-tailed training split (`data.imbalance`), cutout, the experts model and the weak/strong
views that MDCS runs on, and the method itself on the long-tailed smoke card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdbench.adapters.classification import data as D
from kdbench.adapters.classification.adapter import ClassificationAdapter
from kdbench.adapters.classification.models import EXPERT_SCALE, build_model
from kdbench.adapters.splits import long_tail_counts, long_tail_indices
from kdbench.cli import main
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext, RunState
from kdbench.protocol import load_protocol
from kdbench.runner.train import probe_outputs


def test_long_tail_counts_follow_the_cifar_lt_recipe_with_truncation():
    # n_c = int(n_max · ρ^(−c/(C−1))): LDAM-DRW's get_img_num_per_cls with imb_factor 1/ρ
    assert long_tail_counts(500, 10, 100.0) == [int(500 * 100.0 ** (-c / 9)) for c in range(10)]
    assert long_tail_counts(500, 10, 100.0)[0] == 500 and long_tail_counts(500, 10, 100.0)[-1] == 5
    assert long_tail_counts(7, 3, 1.0) == [7, 7, 7]
    with pytest.raises(ValueError, match="must be ≥ 1"):
        long_tail_counts(10, 3, 0.5)


def test_long_tail_indices_keep_per_class_counts_reproducibly():
    classes = torch.arange(4).repeat_interleave(torch.tensor([30, 25, 40, 20]))
    kept, counts = long_tail_indices(classes, 4, 4.0, seed=3)
    assert counts == long_tail_counts(20, 4, 4.0)  # n_max is the smallest class's size
    assert torch.bincount(classes[kept], minlength=4).tolist() == counts
    assert torch.equal(kept, torch.sort(kept).values)
    again, _ = long_tail_indices(classes, 4, 4.0, seed=3)
    other, _ = long_tail_indices(classes, 4, 4.0, seed=4)
    assert torch.equal(kept, again) and not torch.equal(kept, other)
    with pytest.raises(ValueError, match="leaves class 2 empty"):
        long_tail_indices(classes, 4, 100.0, seed=0)


def test_the_long_tailed_card_trains_on_a_long_tail_and_scores_balanced_splits():
    plain = ClassificationAdapter(load_protocol("classification", "smoke"), None, torch.device("cpu"))
    lt = ClassificationAdapter(load_protocol("classification", "smoke-lt"), None, torch.device("cpu"))
    counts = torch.bincount(lt.train_classes(), minlength=10).tolist()
    assert counts == long_tail_counts(min(torch.bincount(plain.train_classes()).tolist()), 10, 4.0)
    assert counts[0] >= 4 * counts[-1] - 3 and lt.train_size < plain.train_size
    assert torch.equal(lt.val_set.labels, plain.val_set.labels)
    assert torch.equal(lt.test_set.labels, plain.test_set.labels)


@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (5, 1, 40)])
def test_cutout_zeroes_one_window_and_is_deterministic(shape):
    x = torch.randn(*shape) + 10.0  # no zeros before the cutout
    out = D.cutout(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, D.cutout(x, torch.Generator().manual_seed(0)))
    zeroed = (out == 0).reshape(shape[0], -1).sum(dim=1)
    side = [max(1, s // 2) for s in shape[2:]] if len(shape) == 4 else [max(1, shape[2] // 4)]
    assert bool((zeroed >= 1).all()) and bool((zeroed <= torch.tensor(side).prod()).all())
    kept = out != 0
    assert torch.equal(out[kept], x[kept])


def test_experts_share_the_trunk_and_predict_by_their_mean():
    torch.manual_seed(0)
    single = build_model("convnet", 10, 1, widths=(4, 8, 8))
    torch.manual_seed(0)
    model = build_model("convnet", 10, 1, widths=(4, 8, 8))
    model.add_experts(3)
    shared = {k: v for k, v in single.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in shared.items())  # same seed, same trunk
    out = model(torch.randn(6, 1, 8, 8))
    assert model.experts == 3 and len(out.expert_logits) == 3
    assert torch.allclose(out.logits, torch.stack(out.expert_logits).mean(dim=0))
    assert all(float(e.detach().abs().max()) <= EXPERT_SCALE + 1e-4 for e in out.expert_logits)  # s·cosine
    assert not torch.equal(out.expert_logits[0], out.expert_logits[1])


def _adapter(needs: frozenset[str]) -> ClassificationAdapter:
    adapter = ClassificationAdapter(load_protocol("classification", "smoke-lt"), None, torch.device("cpu"))
    adapter.configure(needs)
    return adapter


def test_weak_batches_are_the_other_methods_batches_and_strong_views_differ():
    plain = next(iter(_adapter(frozenset()).train_batches(16, torch.Generator().manual_seed(7))))
    two = next(iter(_adapter(frozenset({"weak_strong_views"})).train_batches(16, torch.Generator().manual_seed(7))))
    assert plain.strong is None and two.strong is not None
    assert torch.equal(plain.images, two.images) and torch.equal(plain.ids, two.ids)
    assert not torch.equal(two.strong, two.images)


def test_mdcs_terms_warm_up_from_the_first_epoch_and_train_the_experts():
    cls = get_method("mdcs")
    adapter = _adapter(cls.needs)
    torch.manual_seed(0)
    student = adapter.build_model("student", cls.needs)
    ctx = MethodContext(probe_outputs(adapter, student, cls), None, adapter.train_size, 40, adapter.train_classes())
    method = cls(cls.Config(), ctx)
    counts = torch.bincount(adapter.train_classes(), minlength=10)
    assert torch.allclose(method.shifts[2], 2.5 * counts.double().log(), atol=1e-6)
    batch = next(iter(adapter.train_batches(16, torch.Generator().manual_seed(0))))
    out = adapter.forward(student, batch)
    first = method.loss(out, None, 0.0, RunState(epoch=0, epochs=40, step=0, steps=400))
    later = method.loss(out, None, 0.5, RunState(epoch=30, epochs=40, step=300, steps=400))
    assert sorted(first) == sorted([f"mdcs/{kind}/e{i}" for kind in ("diversity", "consistency") for i in range(3)])
    for i in range(3):  # 0.6·min(t/20, 1) at the 1-based epoch t
        raw = later[f"mdcs/consistency/e{i}"] / 0.6
        assert torch.allclose(first[f"mdcs/consistency/e{i}"], raw * 0.6 / 20)
        assert torch.equal(first[f"mdcs/diversity/e{i}"], later[f"mdcs/diversity/e{i}"])
    sum(later.values()).backward()
    assert all(p.grad is not None for p in student.expert_fcs.parameters())


def test_mdcs_runs_on_the_long_tailed_smoke_card_and_is_refused_where_it_cannot_run(results: Path) -> None:
    assert main(["run", "--task", "classification", "--protocol", "smoke-lt", "--method", "mdcs",
                 "--results", str(results)]) == 0
    record = json.loads((results / "classification" / "smoke-lt" / "mdcs" / "seed0.json").read_text())
    assert record["status"] == "ok"
    assert {"mdcs/diversity/e0", "mdcs/consistency/e2"} <= set(record["history"][-1]["terms"])
    for task in ("detection", "pose", "translation", "ood"):
        assert main(["run", "--task", task, "--protocol", "smoke", "--method", "mdcs", "--results", str(results)]) != 0
        assert not (results / task).exists()  # refused before any work
