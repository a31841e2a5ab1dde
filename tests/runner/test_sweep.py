"""`kdbench sweep` on its three real executors: a local process pool, a local Ray, and submitit's
local executor. Each sweep includes a run that fails at run time (a card whose student cannot be
built): its `failed` record carries the error and a traceback tail, and the other runs complete."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kdbench.cli import main
from kdbench.errors import UsageError
from kdbench.records import read_record, validation_errors
from kdbench.runner.executors import ExecutorOptions, drive
from kdbench.runner.sweep import Item, make_plan, parse_seeds

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache of this test's own: the counts below include training the teachers, which a
    teacher another test left in the session's cache would skip."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))


def test_parse_seeds() -> None:
    assert parse_seeds("0-2") == [0, 1, 2]
    assert parse_seeds("0,3,5") == [0, 3, 5]
    assert parse_seeds("4-5,1") == [1, 4, 5]
    for bad in ("2-0", "a", "-1"):
        with pytest.raises(UsageError, match="--seeds"):
            parse_seeds(bad)


def test_item_round_trips_through_json() -> None:
    item = Item("classification", "smoke", 3, "kd", (("train.epochs", 1),), "smoke")
    assert Item.from_json(item.to_json()) == item


def test_plan_rejects_bad_names(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown method 'nope'; valid: .*baseline"):
        make_plan("classification", "nope", "0", "smoke", {}, tmp_path, None)
    with pytest.raises(UsageError, match="unknown task 'nope';"):
        make_plan("nope", "kd", "0", "smoke", {}, tmp_path, None)
    with pytest.raises(UsageError, match="cannot serve method 'pskd'"):
        make_plan("detection", "pskd", "0", "smoke", {}, tmp_path, None)


def _broken_card(tmp_path: Path) -> Path:
    """The smoke card with a student that cannot be built: fails at run time, not at planning."""
    from kdbench.protocol import task_cards

    card = yaml.safe_load(task_cards("classification")["smoke"].read_text())
    card["name"], card["student"]["widths"] = "broken", [8, 16]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


def _check(results: Path, ok: list[str]) -> None:
    for rel in ok:
        record = read_record(results / "classification" / rel)
        assert record["status"] == "ok" and not validation_errors(record), rel
    [failed_path] = (results / "classification").glob("broken+*/baseline/seed0.json")  # not a shipped card
    failed = read_record(failed_path)
    assert not validation_errors(failed)
    assert failed["status"] == "failed" and "ConvNet needs" in failed["error"]
    assert "Traceback" in failed["traceback"] or "File " in failed["traceback"]


def test_local_pool_sweep_then_nothing_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    broken = _broken_card(tmp_path)
    args = ["sweep", "--tasks", "classification", "--methods", "baseline,kd", "--seeds", "0",
            "--protocol", f"smoke,{broken}", "--executor", "local", "--workers", "2",
            "--results", str(results), "--logs", str(tmp_path / "logs")]
    assert main(args) == 1  # one run failed; the others completed
    out = capsys.readouterr().out
    # the teacher (one: the broken card differs only in its student, which the teacher key leaves out)
    # and 2 smoke runs ok; broken baseline and kd failed
    assert "3 ok, 2 failed" in out
    _check(results, ["smoke/baseline/seed0.json", "smoke/kd/seed0.json", "smoke/teacher/seed0.json"])
    assert main([*args[:8], "smoke", *args[9:], "--dry-run"]) == 0
    assert "0 teachers to train, 0 runs, 2 already done" in capsys.readouterr().out
    assert main([*args[:8], "smoke", *args[9:]]) == 0  # the second invocation runs nothing
    assert "0 ok, 0 failed, 2 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["ray", "slurm"])
def test_ray_and_submitit_sweeps(kind: str, tmp_path: Path) -> None:
    pytest.importorskip("ray" if kind == "ray" else "submitit")
    results = tmp_path / "results"
    broken = _broken_card(tmp_path)
    plan = make_plan("classification", "baseline", "0", f"smoke,{broken}", {}, results, None)
    assert len(plan.runs) == 2 and not plan.teachers
    opts = ExecutorOptions(kind, workers=2, results=results, threads=1, slurm_cluster="local",
                           logs=tmp_path / "logs")
    outcomes = {o.item.card: o for o in drive(plan, opts, progress=False)}
    assert outcomes["smoke"].status == "ok", outcomes["smoke"].message
    assert outcomes["broken"].status == "failed" and "ConvNet needs" in outcomes["broken"].message
    _check(results, ["smoke/baseline/seed0.json"])


def test_seeds_default_to_each_cards_own(tmp_path: Path) -> None:
    from kdbench.protocol import load_protocol

    plan = make_plan("classification", "baseline", "card", "smoke,small", {}, tmp_path, None)
    by_card: dict[str, list[int]] = {}
    for item in plan.runs:
        by_card.setdefault(item.card, []).append(item.seed)
    for card, seeds in by_card.items():
        assert seeds == list(load_protocol("classification", card).typed.seeds)


def test_dry_run_estimates_from_measured_costs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kdbench.records import write_record
    from kdbench.runner.sweep import describe, estimate_seconds
    from tests.recordkit import valid_record

    for seed, seconds in ((0, 10.0), (1, 20.0)):
        record = valid_record(seed=seed, method={"name": "baseline", "teacher": "none", "hparams": {}})
        record["cost"]["train_seconds"] = seconds
        record["protocol"]["key"] = "smoke"
        write_record(tmp_path / "classification" / "smoke" / "baseline" / f"seed{seed}.json", record)
    assert estimate_seconds(tmp_path, "classification", "smoke", "baseline") == 15.0
    assert estimate_seconds(tmp_path, "classification", "smoke", "kd") == 15.0  # another method of the card
    assert estimate_seconds(tmp_path, "classification", "small", "kd") is None
    plan = make_plan("classification", "kd", "3", "smoke", {}, tmp_path, None)
    describe(plan)
    assert "~15 s" in capsys.readouterr().out


def test_a_method_with_generations_is_estimated_at_one_training_a_generation(tmp_path: Path) -> None:
    """gtsd trains G + 1 times the card's epochs: without records of its own, (G + 1) × the card's
    cost per training; its own records count whole, and count per training for other methods."""
    from kdbench.records import write_record
    from kdbench.runner.sweep import estimate_seconds
    from tests.recordkit import valid_record

    def write(method: str, seed: int, seconds: float, generations: int) -> None:
        record = valid_record(seed=seed, method={"name": method, "teacher": "none", "hparams": {}})
        record["cost"]["train_seconds"] = seconds
        record["protocol"]["key"] = "smoke"
        record["history"] = [{"epoch": 0, "loss": 1.0, "seconds": 0.5, **({"generation": g} if generations else {})}
                             for g in range(generations or 1)]
        write_record(tmp_path / "classification" / "smoke" / method / f"seed{seed}.json", record)

    write("baseline", 0, 10.0, 0)
    write("baseline", 1, 20.0, 0)
    plan = make_plan("classification", "gtsd", "3", "smoke", {}, tmp_path, None)
    assert list(plan.estimates.values()) == [75.0]  # 5 trainings (generations 4) at 15 s
    assert estimate_seconds(tmp_path, "classification", "smoke", "gtsd", 2) == 30.0  # generations 1
    write("gtsd", 0, 100.0, 5)
    assert estimate_seconds(tmp_path, "classification", "smoke", "gtsd", 5) == 100.0  # its own, whole
    assert estimate_seconds(tmp_path, "classification", "smoke", "kd") == pytest.approx((10 + 20 + 100 / 5) / 3)
