"""Protocol v2, part 2: the rules a small or medium card must pass, and the committed evidence
that the shipped cards pass them (judged from the committed records, training nothing)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kdbench.cli import main
from kdbench.errors import UsageError
from kdbench.runner.protocol_check import protocol_check, verdicts

ROOT = Path(__file__).resolve().parents[2]
CHECKS = sorted((ROOT / "results").glob("*/*/protocol-check.json"))

PASSING: dict[str, Any] = {
    "task": "classification", "direction": "higher", "gap": 4.0, "ceiling": 100.0,
    "baseline": {"mean": 90.0}, "convergence_baseline": 0.05, "convergence_teacher": -0.02,
    "gap_over_sd": 8.0, "power": {"n": 8, "mdd_over_gap": 0.2, "methods": 24, "served": 18},
    "cost_seconds": {"baseline": 60.0},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    d = copy.deepcopy(PASSING)
    *parents, leaf = path.split(".")
    node = d
    for key in parents:
        node = node[key]
    node[leaf] = value
    return d


def test_a_card_meeting_every_rule_passes() -> None:
    assert all(r["pass"] for r in verdicts(PASSING, "small").values())


@pytest.mark.parametrize("path, value, rule", [
    ("convergence_baseline", 0.11, "R1"),  # the baseline still climbs: a Δ would be training speed
    ("convergence_teacher", -0.15, "R1"),  # a teacher that moves either way is not converged
    ("convergence_teacher", None, "R1"),
    ("gap_over_sd", 2.9, "R2"),
    ("baseline.mean", 96.0, "R2"),  # saturated: more than 95 % of the way to the ceiling
    ("gap", -1.0, "R2"),  # the teacher below the baseline
    ("power.n", 4, "R3"),
    ("power.mdd_over_gap", 0.26, "R3"),
    ("power.mdd_over_gap", None, "R3"),
    ("power.served", 25, "R3"),  # the task serves more methods than the card's power is stated for
    ("cost_seconds.baseline", 121.0, "R4"),
])
def test_each_rule_fails_on_its_own_figure(path: str, value: Any, rule: str) -> None:
    failed = {name for name, r in verdicts(_with(path, value), "small").items() if not r["pass"]}
    assert failed == ({"R1", "R2"} if path == "gap" else {rule})


def test_detection_and_pose_runs_may_take_four_minutes_and_medium_cards_any() -> None:
    slow = _with("cost_seconds.baseline", 200.0)
    assert not verdicts(slow, "small")["R4"]["pass"]
    assert verdicts(dict(slow, task="pose"), "small")["R4"]["pass"]
    assert verdicts(_with("cost_seconds.baseline", 900.0), "medium")["R4"]["pass"]


def test_lower_is_better_metrics_have_no_ceiling_fraction() -> None:
    d = dict(PASSING, direction="lower", ceiling=0.0)
    assert verdicts(d, "small")["R2"]["pass"]


def test_a_card_judged_at_its_planned_family_keeps_its_verdicts_when_a_method_is_added() -> None:
    before = verdicts(PASSING, "small")
    after = verdicts(_with("power.served", 19), "small")
    assert before == after


def test_the_family_is_the_cards_comparisons_and_a_new_method_leaves_the_check_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kdbench.methods import registry
    from kdbench.protocol import load_protocol

    text = (ROOT / "kdbench" / "benchmarks" / "classification" / "smoke.yaml").read_text()
    planned = tmp_path / "planned.yaml"
    planned.write_text(text.replace("name: smoke", "name: planned") + "\ncomparisons: 30\n")
    unset = tmp_path / "unset" / "planned.yaml"
    unset.parent.mkdir()
    unset.write_text(text.replace("name: smoke", "name: planned"))
    assert load_protocol("classification", str(planned)).sha256 == load_protocol("classification", str(unset)).sha256
    a = protocol_check("classification", str(planned), tmp_path / "r").data["power"]
    assert (a["methods"], a["alpha_holm"]) == (30, pytest.approx(0.05 / 30))
    served = a["served"]
    unplanned = protocol_check("classification", "smoke", tmp_path / "r").data["power"]
    assert unplanned["methods"] == served  # unset: the methods the task serves today
    fake = dict(registry())
    fake["zzz-new"] = fake["kd"]
    monkeypatch.setattr("kdbench.methods.registry", lambda: fake)
    b = protocol_check("classification", str(planned), tmp_path / "r").data["power"]
    assert b["served"] == served + 1
    assert {k: v for k, v in b.items() if k != "served"} == {k: v for k, v in a.items() if k != "served"}


def test_a_card_with_no_comparisons_is_refused(tmp_path: Path) -> None:
    from kdbench.protocol import load_protocol

    text = (ROOT / "kdbench" / "benchmarks" / "classification" / "smoke.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("name: smoke", "name: bad") + "\ncomparisons: 0\n")
    with pytest.raises(UsageError, match="comparisons must be a positive number"):
        load_protocol("classification", str(bad))


def test_records_only_trains_nothing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--records-only: no ok record"):
        protocol_check("classification", "smoke", tmp_path, records_only=True)
    assert not list(tmp_path.rglob("*.json"))


@pytest.mark.parametrize("check", CHECKS, ids=[f"{p.parent.parent.name}/{p.parent.name}" for p in CHECKS])
def test_the_committed_cards_pass_from_their_committed_records(check: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    task, card = check.parent.parent.name, check.parent.name
    shutil.copytree(ROOT / "results" / task, tmp_path / task)
    argv = ["protocol", "check", "--task", task, "--protocol", card, "--records-only", "--results", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().out
    fresh = json.loads((tmp_path / task / card / "protocol-check.json").read_text())
    assert fresh["passed"] is True
    committed = json.loads(check.read_text())
    assert committed["sha256"] == fresh["sha256"], "the committed protocol-check.json is of another card content"
    assert committed.get("rules") == fresh["rules"], "re-run `kdbench protocol check` and commit its output"



def _seeds(smoke: str, name: str) -> str:
    assert "\nseeds: [0]\n" in smoke
    return smoke.replace("name: smoke", f"name: {name}").replace("\nseeds: [0]\n", "\nseeds: [0, 1, 2]\n")


def test_convergence_over_several_seeds_is_the_mean_paired_change(tmp_path: Path) -> None:
    from kdbench.protocol import load_protocol

    text = (ROOT / "kdbench" / "benchmarks" / "classification" / "smoke.yaml").read_text()
    card = tmp_path / "conv.yaml"
    card.write_text(_seeds(text, "conv") + "\nconvergence_seeds: 2\n")
    one = tmp_path / "one" / "conv.yaml"
    one.parent.mkdir()
    one.write_text(_seeds(text, "conv"))
    assert load_protocol("classification", str(card)).sha256 == load_protocol("classification", str(one)).sha256
    d = protocol_check("classification", str(card), tmp_path / "r").data
    b = d["baseline"]
    assert b["seeds_2x"] == [0, 1] and sorted(b["val_2x"]) == [0, 1]
    changes = [b["val_2x"][s] - b["val"][s] for s in (0, 1)]
    assert d["convergence_baseline"] == pytest.approx(sum(changes) / 2 / d["gap"], rel=1e-12)
    se = abs(changes[0] - changes[1]) / 2  # SD of two values / √2
    assert d["convergence_baseline_se"] == pytest.approx(se / d["gap"], rel=1e-9)
    # unset: the first seed alone, and the same 1x and 2x records are reused (nothing trains)
    d1 = protocol_check("classification", str(one), tmp_path / "r", records_only=True).data
    assert d1["baseline"]["seeds_2x"] == [0] and d1["convergence_baseline_se"] is None
    assert d1["convergence_baseline"] == pytest.approx(changes[0] / d1["gap"], rel=1e-12)


@pytest.mark.parametrize("k", [0, 4])
def test_convergence_seeds_outside_the_cards_seeds_is_refused(tmp_path: Path, k: int) -> None:
    from kdbench.protocol import load_protocol

    text = (ROOT / "kdbench" / "benchmarks" / "classification" / "smoke.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(_seeds(text, "bad") + f"\nconvergence_seeds: {k}\n")
    with pytest.raises(UsageError, match="convergence_seeds must be between 1 and the card's 3 seeds"):
        load_protocol("classification", str(bad))
