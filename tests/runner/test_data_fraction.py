"""The data-fraction service (kdbench.runner.data_fraction, card `train.data_fraction`): which
training samples the student keeps (random from the run's seed, or the highest EL2N scores, by
class where samples have one), EL2N against a hand computation in float64, the teacher's cache key
blind to the fraction, the card option's refusals in one line before any work, and every adapter's
`keep_train`. The smoke runs are in test_data_fraction_runs.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.adapters import TASKS, get_adapter
from kdbench.adapters.base import Adapter
from kdbench.cli import main
from kdbench.errors import UsageError
from kdbench.protocol import apply_overrides, load_protocol
from kdbench.runner import data_fraction as DF
from kdbench.runner.sweep import make_plan
from kdbench.runner.teachers import teacher_key, teacher_path

EXPLORATION = Path(__file__).parents[2] / "docs" / "explorations" / "classification-small-fraction.yaml"


def _fraction(**values: object) -> dict[str, object]:
    return {f"train.data_fraction.{k}": v for k, v in values.items()}


# --- which samples are kept -----------------------------------------------------------------------

def test_random_keeps_round_keep_times_each_class_drawn_from_the_generator() -> None:
    classes = torch.tensor([0] * 10 + [1] * 7 + [2] * 3)[torch.randperm(20, generator=torch.Generator().manual_seed(5))]
    kept = DF.choose(20, 0.3, classes, None, torch.Generator().manual_seed(1))
    assert kept.dtype == torch.long and torch.equal(kept, torch.sort(kept).values)
    assert len(set(kept.tolist())) == len(kept)
    assert [int((classes[kept] == c).sum()) for c in range(3)] == [round(0.3 * 10), round(0.3 * 7), round(0.3 * 3)]
    again = DF.choose(20, 0.3, classes, None, torch.Generator().manual_seed(1))
    other = DF.choose(20, 0.3, classes, None, torch.Generator().manual_seed(2))
    assert torch.equal(kept, again) and not torch.equal(kept, other)
    assert torch.equal(DF.choose(20, 1.0, classes, None, torch.Generator().manual_seed(3)), torch.arange(20))
    assert len(DF.choose(9, 0.5, None, None, torch.Generator().manual_seed(0))) == round(4.5) == 4  # half to even


def test_el2n_keeps_the_highest_scores_of_each_class_ties_to_the_lower_position() -> None:
    classes = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.2, 0.3, 0.8, 0.1])
    assert DF.choose(8, 0.5, classes, scores, None).tolist() == [1, 3, 5, 6]
    assert DF.choose(8, 0.25, classes, scores, None).tolist() == [1, 6]  # 1 beats 3 on the tie
    assert DF.choose(8, 0.25, None, scores, None).tolist() == [1, 3]  # unstratified: the global top 2


def test_a_fraction_that_keeps_nothing_is_refused() -> None:
    with pytest.raises(UsageError, match="keeps no sample of the 3 training samples per class"):
        DF.choose(3, 0.1, torch.tensor([0, 1, 2]), None, torch.Generator().manual_seed(0))


def test_el2n_is_the_l2_norm_of_softmax_minus_onehot_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.5]], dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    z = math.exp(2.0) + 1.0 + math.exp(-1.0)
    row0 = math.sqrt((math.exp(2.0) / z - 1) ** 2 + (1 / z) ** 2 + (math.exp(-1.0) / z) ** 2)
    row1 = math.sqrt((1 / 3) ** 2 + (1 / 3) ** 2 + (2 / 3) ** 2)  # = √6 / 3
    w = math.exp(1.0) + math.exp(3.0) + math.exp(0.5)
    row2 = math.sqrt((math.exp(1.0) / w) ** 2 + (math.exp(3.0) / w - 1) ** 2 + (math.exp(0.5) / w) ** 2)
    got = DF.el2n(logits, target)
    assert got.dtype == torch.float64
    assert torch.allclose(got, torch.tensor([row0, row1, row2], dtype=torch.float64), rtol=0, atol=1e-12)
    assert abs(row1 - math.sqrt(6) / 3) < 1e-15
    assert float(DF.el2n(torch.tensor([[50.0, -50.0]]), torch.tensor([0]))[0]) < 1e-12  # confident and right
    assert abs(float(DF.el2n(torch.tensor([[-50.0, 50.0]]), torch.tensor([0]))[0]) - math.sqrt(2)) < 1e-12


def test_the_indices_hash_is_of_sorted_little_endian_int64() -> None:
    import hashlib

    digest = hashlib.sha256(np.array([1, 5, 9], dtype="<i8").tobytes()).hexdigest()
    assert DF.indices_sha256(torch.tensor([9, 1, 5])) == digest


def test_seeds_of_subsets_and_scoring_models_are_derived_and_distinct() -> None:
    subsets = [DF.subset_seed(s) for s in range(50)]
    scorers = [DF.score_seed(r) for r in range(50)]
    assert len(set(subsets)) == 50 and len(set(scorers)) == 50 and not set(subsets) & set(scorers)
    assert DF.score_epochs({}, 150) == 15 and DF.score_epochs({}, 4) == 1
    assert DF.score_epochs({"score_epochs": 9}, 5) == 5 and DF.score_epochs({"score_epochs": 3}, 150) == 3


# --- the card option and the teacher --------------------------------------------------------------

def test_the_rules_are_one_list() -> None:
    import typing

    from kdbench.cards.sections import DATA_FRACTION_RULES, DataFraction

    assert typing.get_args(typing.get_type_hints(DataFraction)["rule"]) == DATA_FRACTION_RULES
    assert tuple(DF.RULE_NEEDS) == DATA_FRACTION_RULES


def test_the_fraction_is_in_the_cards_sha256_but_not_in_the_teachers_cache_key() -> None:
    small = load_protocol("classification", "small")
    assert small.is_shipped and small.get("train.data_fraction") is None
    keys = {teacher_key(small, "classification", 0, 2)}
    paths = {teacher_path(small, "classification", 0)}
    shas = {small.sha256}
    for keep, rule in ((0.1, "random"), (0.3, "random"), (0.3, "el2n"), (1.0, "random")):
        ablation = apply_overrides(small, _fraction(keep=keep, rule=rule))
        assert not ablation.is_shipped and ablation.key == f"small+{ablation.sha256[:8]}"
        keys.add(teacher_key(ablation, "classification", 0, 2))
        paths.add(teacher_path(ablation, "classification", 0))
        shas.add(ablation.sha256)
    assert len(keys) == 1 and len(paths) == 1 and len(shas) == 5
    other_seed = teacher_key(small, "classification", 1, 2)
    assert other_seed not in keys  # the key still tells teachers apart


def test_the_exploration_card_is_small_with_a_fraction_and_shares_its_teacher() -> None:
    card = load_protocol("classification", str(EXPLORATION))
    small = load_protocol("classification", "small")
    assert card.card["train"]["data_fraction"] == {"keep": 0.3, "rule": "random"}
    assert teacher_path(card, "classification", 0) == teacher_path(small, "classification", 0)
    assert {k: v for k, v in card.card["train"].items() if k != "data_fraction"} == small.card["train"]
    assert card.typed.seeds == small.typed.seeds


SMOKE = ["run", "--task", "classification", "--protocol", "smoke", "--method", "kd", "--device", "cpu"]


@pytest.mark.parametrize("sets, message", [
    (["train.data_fraction.keep=0"], "--set train.data_fraction.keep: must be > 0, got 0.0 (valid: 0 < keep ≤ 1)"),
    (["train.data_fraction.keep=-0.2"], "must be > 0, got -0.2 (valid: 0 < keep ≤ 1)"),
    (["train.data_fraction.keep=1.5"], "must be ≤ 1, got 1.5 (valid: 0 < keep ≤ 1)"),
    (["train.data_fraction.keep=half"], "train.data_fraction.keep: expected a number, got 'half'"),
    (["train.data_fraction.keep=0.3", "train.data_fraction.rule=forgetting"],
     "train.data_fraction.rule: 'forgetting' is not valid; valid: random, el2n"),
    (["train.data_fraction.rule=el2n"], "train.data_fraction.keep: missing (a required key)"),
    (["train.data_fraction.keep=0.3", "train.data_fraction.score_runs=3"],
     "train.data_fraction.score_runs is a setting of rule el2n; rule random takes keep alone "
     "(valid rules: random, el2n)"),
    (["train.data_fraction.keep=0.3", "train.data_fraction.rule=el2n", "train.data_fraction.score_runs=0"],
     "train.data_fraction.score_runs: must be ≥ 1, got 0"),
])
def test_bad_fractions_and_rules_are_one_line_before_any_work(
        sets: list[str], message: str, results: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    argv = [*SMOKE, "--results", str(results)]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not results.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("task", ["pose", "detection", "translation"])
def test_a_task_without_per_sample_class_logits_refuses_el2n_in_one_line(
        task: str, results: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    argv = ["run", "--task", task, "--protocol", "smoke", "--method", "baseline", "--device", "cpu",
            "--results", str(results), "--set", "train.data_fraction.keep=0.5",
            "--set", "train.data_fraction.rule=el2n"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"task {task!r} cannot serve train.data_fraction.rule el2n" in err
    assert f"valid rules for {task}: random" in err
    assert not results.exists() and not (tmp_path / "cache").exists()


def test_a_sweep_over_all_tasks_lists_the_tasks_that_cannot_serve_el2n(tmp_path: Path) -> None:
    sets = {"train.data_fraction.keep": 0.5, "train.data_fraction.rule": "el2n"}
    plan = make_plan("all", "baseline", "0", "smoke", sets, tmp_path / "results", None)
    refused = {t for t, _, _ in plan.not_served}
    assert {"detection", "pose", "translation"} <= refused and {"classification", "ood"} <= {i.task for i in plan.runs}
    assert all(not DF.served(get_adapter(t), "el2n") for t in refused)
    assert all("cannot serve train.data_fraction.rule el2n" in why for _, _, why in plan.not_served)
    with pytest.raises(DF.SubsetRefused, match="task 'pose' cannot serve"):
        make_plan("pose", "baseline", "0", "smoke", sets, tmp_path / "results", None)


def test_a_method_with_an_online_teacher_is_refused_under_a_data_fraction(
        results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--task", "classification", "--protocol", "smoke", "--method", "bdkd_online", "--device", "cpu",
            "--results", str(results), "--set", "train.data_fraction.keep=0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trains its teacher online" in err, err
    assert not results.exists()


def test_a_task_that_cannot_train_on_a_subset_is_refused() -> None:
    class NoSubsets(get_adapter("classification")):  # type: ignore[misc, valid-type]
        train_subsets = False

    card = apply_overrides(load_protocol("classification", "smoke"), _fraction(keep=0.5))
    assert DF.refusal(NoSubsets, card) == ("task 'classification' cannot serve train.data_fraction: it cannot train "
                                           "on a subset of its training split")
    assert DF.refusal(NoSubsets, load_protocol("classification", "smoke")) is None  # no fraction, nothing to refuse


# --- the adapters ---------------------------------------------------------------------------------

@pytest.mark.parametrize("task", sorted(TASKS))
def test_an_adapter_declares_train_subsets_exactly_when_it_overrides_keep_train(task: str) -> None:
    cls = get_adapter(task)
    assert cls.train_subsets == (cls.keep_train is not Adapter.keep_train), task
    assert DF.served(cls, "random") == cls.train_subsets
    assert DF.served(cls, "el2n") == (task in ("classification", "ood"))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_keep_train_restricts_every_path_over_the_training_split(task: str) -> None:
    adapter = get_adapter(task)(load_protocol(task, "smoke"), None, torch.device("cpu"))
    total = adapter.train_size
    kept = torch.arange(1, total, 3)
    classes = adapter.train_classes()
    adapter.keep_train(kept)
    assert adapter.train_size == len(kept) and adapter.steps_per_epoch(4) == -(-len(kept) // 4)
    batches = list(adapter.train_batches(4, torch.Generator().manual_seed(0)))
    ids = torch.cat([b.ids.cpu() for b in batches])
    assert sorted(ids.tolist()) == list(range(len(kept)))  # every kept sample once, ids index the subset
    if classes is not None:
        assert torch.equal(adapter.train_classes(), classes[kept])  # type: ignore[arg-type]
    if task == "classification":  # the kept samples are the ones asked for, in order
        full = get_adapter(task)(load_protocol(task, "smoke"), None, torch.device("cpu"))
        assert torch.equal(adapter.train_set.images, full.train_set.images[kept])  # type: ignore[attr-defined]
    if "teacher_pass" in adapter.provides:
        model = adapter.build_model("teacher", frozenset())
        passed = torch.cat([o.ids.cpu() for o in adapter.teacher_pass(model) if o.ids is not None])
        assert sorted(passed.tolist()) == list(range(len(kept)))
