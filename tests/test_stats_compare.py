"""kdbench.stats against hand-computed values; kdbench.compare on v2 records written here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps

from kdbench.cli import main
from kdbench.compare import compare_table, load_frame
from kdbench.compare.render import render
from kdbench.records import validation_errors
from kdbench.stats import (
    holm,
    minimal_detectable_difference,
    paired_test,
    pooled_sd,
    seeds_needed,
    summarize,
    teacher_gap_closed,
    wins_ties_losses,
)

from .site.fixtures import ABLATION_KEY, ABLATION_SHA, EPYC, TEACHER_A, TEACHER_B, XEON, make_record, write

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------- stats


def test_summarize_by_hand() -> None:
    s = summarize([1.0, 2.0, 4.0])
    # mean = 7/3; deviations -4/3, -1/3, 5/3; squares sum to 42/9 = 14/3; variance (ddof 1) = 7/3
    assert s.n == 3
    assert s.mean == pytest.approx(2.3333333333333335, abs=1e-15)
    assert s.std == pytest.approx(1.5275252316519468, abs=1e-15)  # sqrt(7/3)
    # half width = t_{0.975,2} * sqrt(7/3) / sqrt(3) = 4.302652729749464 * sqrt(7) / 3 = 3.7946...
    half = 4.302652729749464 * 2.6457513110645906 / 3
    assert half == pytest.approx(3.794583, abs=1e-6)
    assert s.ci_low == pytest.approx(7 / 3 - half, abs=1e-12)  # -1.461250...
    assert s.ci_high == pytest.approx(7 / 3 + half, abs=1e-12)  # 6.127916...


def test_summarize_small_and_missing() -> None:
    one = summarize([5.0, None, math.nan])  # missing values do not count
    assert (one.n, one.mean) == (1, 5.0)
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_paired_test_by_hand() -> None:
    # shared seeds 0, 1, 2 (seed 3 only in a, seed 7 only in b are ignored)
    a = {0: 3.0, 1: 5.0, 2: 6.0, 3: 100.0}
    b = {0: 1.0, 1: 2.0, 2: 4.0, 7: -100.0}
    r = paired_test(a, b)
    # d = 2, 3, 2: mean 7/3; deviations -1/3, 2/3, -1/3 → SS = 6/9 → var = 1/3 → se = sqrt(1/3)/sqrt(3) = 1/3
    # t = (7/3) / (1/3) = 7 with 2 degrees of freedom
    assert r.n == 3
    assert r.delta_mean == pytest.approx(7 / 3)
    assert r.statistic == pytest.approx(7.0)
    assert r.p_value == pytest.approx(2 * sps.t.sf(7.0, df=2), rel=1e-10)
    # closed form for 2 degrees of freedom: p = 1 − t / sqrt(t² + 2) = 1 − 7 / sqrt(51) = 0.019803...
    assert r.p_value == pytest.approx(1 - 7 / math.sqrt(51), rel=1e-10)
    assert r.test == "paired t-test"
    # the paired 95% interval: 7/3 ± t_{0.975,2} · sd/√3 with sd = sqrt(1/3), i.e. ± 4.302652729749464 / 3
    assert r.sd == pytest.approx(math.sqrt(1 / 3))
    assert r.ci_low == pytest.approx(7 / 3 - 4.302652729749464 / 3, abs=1e-12)  # 0.899116...
    assert r.ci_high == pytest.approx(7 / 3 + 4.302652729749464 / 3, abs=1e-12)  # 3.767551...
    r90 = paired_test(a, b, confidence=0.90)  # 2 df: t_q = (2q − 1)·sqrt(2 / (1 − (2q − 1)²)); t_0.95 = 2.91999
    assert r90.ci_high - r90.ci_low == pytest.approx(2 * 0.9 * math.sqrt(2 / 0.19) / 3, abs=1e-12)


def test_paired_test_rule_for_no_test() -> None:
    assert math.isnan(paired_test({0: 1.0}, {0: 0.5}).p_value)  # n < 2
    assert paired_test({0: 1.0}, {0: 0.5}).delta_mean == 0.5
    zero = paired_test({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})  # all differences zero
    assert math.isnan(zero.p_value) and zero.delta_mean == 0.0
    # identical nonzero differences (up to float noise): no spread, no test
    same = paired_test({0: 97.33333333333334, 1: 98.44444444444444}, {0: 96.22222222222221, 1: 97.33333333333334})
    assert math.isnan(same.p_value) and same.delta_mean == pytest.approx(1.1111111111111)
    assert math.isnan(same.ci_low) and math.isnan(same.ci_high)  # no test, no interval
    assert math.isnan(paired_test({0: 1.0}, {0: 0.5}).ci_low)
    assert paired_test({0: 1.0}, {1: 1.0}).n == 0


def test_holm_by_hand() -> None:
    p = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005, "e": math.nan}
    # m = 4 (NaN excluded); sorted d .005, a .01, c .03, b .04
    # d: 4·.005 = .02; a: 3·.01 = .03; c: 2·.03 = .06; b: 1·.04 = .04 → raised to .06 (monotone)
    # statsmodels multipletests([.01, .04, .03, .005], method="holm")[1] = [.03, .06, .06, .02]
    adj = holm(p)
    assert list(adj) == ["a", "b", "c", "d", "e"]
    assert [adj[k] for k in "abcd"] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adj["e"])
    # capped at 1: .6·2 = 1.2 → 1; .7·1 = .7 → raised to 1
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}
    assert holm({}) == {}


def test_teacher_gap_closed() -> None:
    assert teacher_gap_closed(97.0, 96.0, 99.0) == pytest.approx(1 / 3)
    assert teacher_gap_closed(0.2, 0.4, 0.1) == pytest.approx(2 / 3)  # lower is better reads the same
    assert math.isnan(teacher_gap_closed(97.0, 96.0, 96.0))
    assert math.isnan(teacher_gap_closed(None, 96.0, 99.0))
    assert math.isnan(teacher_gap_closed(97.0, math.nan, 99.0))




def test_pooled_sd_by_hand() -> None:
    # sqrt((2 · 1² + 4 · 2²) / (2 + 4)) = sqrt(18 / 6) = sqrt(3); n < 2 and NaN parts do not count
    assert pooled_sd([(1.0, 3), (2.0, 5), (math.nan, 4), (3.0, 1)]) == pytest.approx(math.sqrt(3))
    assert math.isnan(pooled_sd([(1.0, 1)])) and math.isnan(pooled_sd([]))


def _power_by_integration(delta: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test, integrated over the variance estimate (no noncentral t):
    t = (Z + δ) / sqrt(V / df) with V ~ χ²_df, so P(|t| > c) = E_V[Φ(δ − c·sqrt(V/df)) + Φ(−δ − c·sqrt(V/df))]."""
    df = n - 1
    c = sps.t.ppf(1 - alpha / 2, df)

    def f(v: float) -> float:
        s = c * math.sqrt(v / df)
        return float((sps.norm.cdf(delta - s) + sps.norm.cdf(-delta - s)) * sps.chi2.pdf(v, df))

    return float(integrate.quad(f, 0, math.inf, limit=200)[0])


@pytest.mark.parametrize(("n", "alpha"), [(2, 0.05), (3, 0.05), (3, 0.05 / 12), (5, 0.01), (10, 0.05)])
def test_mdd_has_the_stated_power(n: int, alpha: float) -> None:
    mdd = minimal_detectable_difference(2.0, n, alpha)
    assert _power_by_integration(mdd * math.sqrt(n) / 2.0, n, alpha) == pytest.approx(0.8, abs=1e-7)
    assert minimal_detectable_difference(1.0, n, alpha) == pytest.approx(mdd / 2, rel=1e-12)  # scales with sd


def test_mdd_hand_checked_values_and_simulation() -> None:
    # n = 3, α = 0.05: δ = 5.6534 (t_c = 4.3027 with 2 df), MDD = δ/√3 = 3.26404 sd
    assert minimal_detectable_difference(1.0, 3, 0.05) == pytest.approx(3.2640435, rel=1e-6)
    assert minimal_detectable_difference(1.0, 10, 0.05) == pytest.approx(0.9960014, rel=1e-6)
    # a simulation of 200,000 paired designs with the true difference at the MDD rejects 80% of the time
    rng = np.random.default_rng(20261201)
    n, alpha, sd = 4, 0.05 / 3, 1.5
    mdd = minimal_detectable_difference(sd, n, alpha)
    d = rng.normal(mdd, sd, size=(200_000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    rejected = float((np.abs(t) > sps.t.ppf(1 - alpha / 2, n - 1)).mean())
    assert rejected == pytest.approx(0.8, abs=0.005)  # 5.6 standard errors of the simulation


def test_mdd_large_n_is_the_normal_approximation() -> None:
    for n in (5_000, 20_000):
        approx = (sps.norm.ppf(1 - 0.01 / 2) + sps.norm.ppf(0.8)) * 3.0 / math.sqrt(n)
        assert minimal_detectable_difference(3.0, n, 0.01) == pytest.approx(approx, rel=5e-4)
    assert minimal_detectable_difference(3.0, 30, 0.01) > (sps.norm.ppf(0.995) + sps.norm.ppf(0.8)) * 3 / math.sqrt(30)


def test_mdd_edges() -> None:
    assert minimal_detectable_difference(1.0, 1, 0.05) == math.inf
    assert minimal_detectable_difference(math.nan, 5, 0.05) == math.inf
    assert minimal_detectable_difference(math.inf, 5, 0.05) == math.inf
    assert minimal_detectable_difference(0.0, 5, 0.05) == 0.0
    assert minimal_detectable_difference(1.0, 5, 0.05, power=0.9) > minimal_detectable_difference(1.0, 5, 0.05)
    for bad in ({"alpha": 0.0}, {"alpha": 1.0}, {"alpha": 0.05, "power": 1.0}, {"alpha": 0.5, "power": 0.4}):
        with pytest.raises(ValueError):
            minimal_detectable_difference(1.0, 5, **bad)


def test_seeds_needed() -> None:
    # MDD(1, 9) = 1.0563 > 1 ≥ MDD(1, 10) = 0.9960
    assert minimal_detectable_difference(1.0, 9, 0.05) > 1.0 >= minimal_detectable_difference(1.0, 10, 0.05)
    assert seeds_needed(1.0, 1.0, 0.05) == 10
    n = seeds_needed(2.0, 0.5, 0.05 / 12)
    assert n is not None
    before, at = (minimal_detectable_difference(2.0, k, 0.05 / 12) for k in (n - 1, n))
    assert before > 0.5 >= at
    assert seeds_needed(0.0, 0.0, 0.05) == 2
    assert seeds_needed(1.0, 0.01, 0.05) is None  # needs ~78,500 seeds
    assert seeds_needed(1.0, 0.01, 0.05, max_n=100_000) == pytest.approx(78_500, rel=0.01)
    assert seeds_needed(math.nan, 1.0, 0.05) is None


def test_wins_ties_losses_count_only_significant_differences() -> None:
    wtl = wins_ties_losses(["better", "≈", "≈", "worse", "—", "better", ""])
    assert (wtl.wins, wtl.ties, wtl.losses, wtl.settings, str(wtl)) == (2, 2, 1, 5, "2/2/1")
    assert str(wins_ties_losses([])) == "0/0/0"


# ------------------------------------------------------------------------------------- compare


def _write(results: Path, method: str, seed: int, value: float = 95.0, **kw: Any) -> dict[str, Any]:
    record = make_record("classification", method, seed, value, **kw)
    assert validation_errors(record) == []
    write(results, record)
    return record


def test_load_frame_keeps_one_card_and_evaluation_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = "ab" * 32
    for seed, (b, k) in enumerate([(90.0, 92.0), (91.0, 92.5), (92.0, 94.0)]):
        _write(tmp_path, "baseline", seed, b)
        _write(tmp_path, "kd", seed, k)
    _write(tmp_path, "kd", 3, failed=True)
    _write(tmp_path, "dkd", 5, 99.0, sha=other)  # an older card version: must not be mixed in
    _write(tmp_path, "dkd", 6, 99.0, sha=other)
    _write(tmp_path, "nkd", 0, 99.0, eval_version=1)  # the same card, an older evaluation: not mixed in either

    frame = load_frame(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set aside 3 record(s)" in err[0]
    assert f"{other[:12]} eval v2" in err[0] and "5d5d5d5d5d5d eval v1" in err[0]
    assert len(frame) == 6 and set(frame["method"]) == {"baseline", "kd"}
    assert set(frame["eval_version"]) == {2} and set(frame["protocol"]) == {"small"}
    assert {"task", "tier", "protocol", "card", "shipped", "method", "seed", "primary", "direction", "m:top1",
            "m:nll", "train_seconds", "params", "flops", "device", "cpu_model", "threads", "checkpoint",
            "teacher_sha", "teacher_test"} <= set(frame.columns)
    assert frame.attrs["failed"] == [{"task": "classification", "tier": "small", "protocol": "small", "card": "small",
                                      "shipped": True, "protocol_sha": "5d" * 32, "eval_version": 2,
                                      "method": "kd", "seed": 3, "primary": "top1",
                                      "error": "loss is NaN at step 12"}]
    assert frame.attrs["set_aside"] == {"classification/small": 3}

    table = compare_table(frame, "classification", "small")
    kd = table.set_index("method").loc["kd"]
    assert (kd["n"], kd["failed"]) == (3, 1)
    # differences 2, 1.5, 2: mean 11/6, sd sqrt(1/12); 95% half width t_{0.975,2} · sqrt(1/12) / √3 = 4.3026527 / 6
    assert kd["delta"] == pytest.approx(11 / 6)
    assert kd["delta_sd"] == pytest.approx(math.sqrt(1 / 12))
    assert (kd["delta_ci_low"], kd["delta_ci_high"]) == pytest.approx((11 / 6 - 4.302652729749464 / 6,
                                                                       11 / 6 + 4.302652729749464 / 6))
    assert list(table["method"]) == ["teacher", "kd", "baseline"]  # top1: higher first
    assert table.set_index("method").loc["teacher", "source"] == "spec.teacher"  # no teacher record: the spec's
    text = render(table)
    assert "kd seed 3" in text and "[+1.12, +2.55]" in text and "evaluation v2" in text


def test_an_ablation_is_its_own_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed in range(3):
        _write(tmp_path, "baseline", seed, 90.0 + seed)
        _write(tmp_path, "kd", seed, 91.0 + seed + 0.1 * seed)
        _write(tmp_path, "baseline", seed, 70.0 + seed, key=ABLATION_KEY, sha=ABLATION_SHA)
        _write(tmp_path, "kd", seed, 99.0, key=ABLATION_KEY, sha=ABLATION_SHA)
    frame = load_frame(tmp_path)
    assert capsys.readouterr().err == ""  # two keys, two tables: nothing set aside
    shipped = compare_table(frame, "classification", "small")
    assert shipped.attrs["protocol"] == "small" and shipped.attrs["shipped"]
    assert shipped.set_index("method").loc["baseline", "top1_mean"] == pytest.approx(91.0)
    ablation = compare_table(frame, "classification", ABLATION_KEY)
    a = ablation.attrs
    assert (a["protocol"], a["card"], a["shipped"]) == (ABLATION_KEY, "small", False)
    assert ablation.set_index("method").loc["kd", "top1_mean"] == 99.0
    assert compare_table(frame, "classification", "small").attrs["protocol"] == "small"  # a name: its shipped table
    assert "classification / small+0a1b2c3d (ablation of small; tier small" in render(ablation)
    assert render(ablation, "markdown").startswith("### classification / small+0a1b2c3d (ablation of small)")
    data = json.loads(render(ablation, "json"))
    assert [data[k] for k in ("protocol", "card", "shipped", "ablation_of")] == [ABLATION_KEY, "small", False, "small"]
    assert main(["compare", "--protocol", "small", "--results", str(tmp_path), "--format", "json"]) == 0
    assert [t["protocol"] for t in json.loads(capsys.readouterr().out)] == ["small", ABLATION_KEY]


#: seed → per-seed difference to baseline of five methods over six seeds (baseline 50 … 55)
MDD_DELTAS = {"ma": [5.0, 0.0, 4.5, 0.5, 3.5, 1.5],  # large but noisy: ≈, and large enough to be resolvable
              "mb": [0.1, -0.1, 0.05, 0.0, -0.05, 0.0], "mc": [0.2, 0.1, 0.0, -0.1, 0.15, 0.05],
              "md": [-0.1, 0.0, 0.1, 0.05, -0.05, 0.0], "me": [0.3, 0.2, 0.25, 0.35, 0.3, 0.2]}


def test_minimal_detectable_difference_of_a_table(tmp_path: Path) -> None:
    for seed in range(6):
        _write(tmp_path, "baseline", seed, 50.0 + seed)
        for method, deltas in MDD_DELTAS.items():
            _write(tmp_path, method, seed, 50.0 + seed + deltas[seed])
    _write(tmp_path, "teacher", 0, 60.0)
    table = compare_table(load_frame(tmp_path), "classification", "small")
    mdd = table.attrs["mdd"]
    # pooled SD: every method has 5 df, so the pooled variance is the mean of the five variances
    pooled = math.sqrt(float(np.mean([np.var(d, ddof=1) for d in MDD_DELTAS.values()])))
    assert (mdd["m"], mdd["n"], mdd["alpha"], mdd["power"]) == (5, 6, pytest.approx(0.01), 0.8)
    assert mdd["pooled_sd"] == pytest.approx(pooled)  # 0.9513
    assert mdd["value"] == pytest.approx(minimal_detectable_difference(pooled, 6, 0.01))  # 2.0067
    assert 2.0 < mdd["value"] < 2.5
    rows = table.set_index("method")
    assert (rows.loc["ma", "verdict"], rows.loc["ma", "resolution"]) == ("≈", "resolvable")  # |2.5| ≥ 2.007
    assert (rows.loc["mc", "verdict"], rows.loc["mc", "resolution"]) == ("≈", "below MDD")  # |0.067| < 2.007
    assert (rows.loc["me", "verdict"], rows.loc["me", "resolution"]) == ("better", "")
    assert rows.loc["baseline", "resolution"] == rows.loc["teacher", "resolution"] == ""
    text = render(table)
    base = float(np.mean([50.0 + s for s in range(6)]))
    assert (f"n = 6 seeds; MDD (80% power, α = 0.05/5 Holm) = {mdd['value']:.2f} pp; teacher–baseline gap "
            f"{60.0 - base:.2f} pp: this table cannot resolve differences below {mdd['value']:.2f} pp") in text
    assert "≈ resolvable" in text and "≈ below MDD" in text
    data = json.loads(render(table, "json"))
    assert data["mdd"]["value"] == pytest.approx(mdd["value"]) and data["mdd"]["pooled_sd"] == pytest.approx(pooled)
    a = next(r for r in data["rows"] if r["method"] == "ma")
    # the unadjusted 95% interval excludes 0 (p 0.034), Holm over five tests does not reject
    assert 0 < a["delta_ci_low"] < a["delta"] < a["delta_ci_high"] and a["p"] < 0.05 < a["p_holm"]
    csv = render(table, "csv").splitlines()
    assert csv[0].startswith("task,protocol,card,mdd,mdd_alpha,mdd_n,pooled_sd,method")
    assert all(line.split(",")[5] == "6" for line in csv[1:])


def test_the_teacher_row_is_the_students_teacher(tmp_path: Path) -> None:
    for seed in range(3):
        _write(tmp_path, "baseline", seed, 90.0 + seed)
        _write(tmp_path, "kd", seed, 93.0 + seed, teacher_ckpt=TEACHER_A, teacher_test=98.5)
    _write(tmp_path, "dkd", 0, 95.0, teacher_ckpt=TEACHER_B)
    _write(tmp_path, "teacher", 0, 99.0, teacher_ckpt=TEACHER_A)
    _write(tmp_path, "teacher", 1, 97.0, teacher_ckpt=TEACHER_B)  # a teacher, not the students' main one
    table = compare_table(load_frame(tmp_path), "classification", "small")
    rows = table.set_index("method")
    assert (rows.loc["teacher", "n"], rows.loc["teacher", "top1_mean"]) == (1, 99.0)  # not the mean 98
    assert rows.loc["kd", "gap_closed"] == pytest.approx((94.0 - 91.0) / (99.0 - 91.0))
    t = table.attrs["teacher"]
    assert (t["sha256"], t["source"], t["value"], t["seeds"], t["other_records"]) == (TEACHER_A, "record", 99.0, [0], 1)
    assert t["teachers"] == [{"sha256": TEACHER_A, "records": 3}, {"sha256": TEACHER_B, "records": 1}]
    text = render(table)
    assert "the students used 2 different teachers: 626262626262 (3 record(s)), 737373737373 (1 record(s))" in text
    assert "1 other teacher record(s) not shown" in text

    (tmp_path / "classification" / "small" / "teacher" / "seed0.json").unlink()  # no record of the students' teacher
    table = compare_table(load_frame(tmp_path), "classification", "small")
    rows = table.set_index("method")
    assert (rows.loc["teacher", "n"], rows.loc["teacher", "top1_mean"]) == (0, 98.5)  # the students' spec value
    assert rows.loc["teacher", "source"] == "spec.teacher" and rows.loc["kd", "source"] == "records"
    assert rows.loc["kd", "gap_closed"] == pytest.approx(3.0 / 7.5)
    assert "teacher*" in render(table) and "spec.teacher.metric.test" in render(table)

    for f in (tmp_path / "classification" / "small").glob("*d/seed*.json"):  # kd, dkd: no student names a teacher
        f.unlink()
    _write(tmp_path, "teacher", 2, 95.0, teacher_ckpt=TEACHER_A)
    table = compare_table(load_frame(tmp_path), "classification", "small")
    assert table.attrs["teacher"]["source"] == "teacher records"
    assert table.set_index("method").loc["teacher", "top1_mean"] == pytest.approx(96.0)  # (97 + 95) / 2


def test_hardware_mix(tmp_path: Path) -> None:
    for seed in range(3):
        _write(tmp_path, "baseline", seed, 90.0)
        _write(tmp_path, "kd", seed, 91.0, **({"cpu": EPYC, "threads": 2} if seed == 2 else {}))
    _write(tmp_path, "dkd", 0, 91.0, device="cuda", threads=8)
    table = compare_table(load_frame(tmp_path), "classification", "small")
    assert table.attrs["hardware"] == [{"device": "cpu", "cpu": XEON, "threads": 1, "records": 5},
                                       {"device": "cpu", "cpu": EPYC, "threads": 2, "records": 1},
                                       {"device": "cuda", "cpu": XEON, "threads": 8, "records": 1}]
    assert (f"hardware: 5 × {XEON}, 1 thread; 1 × {EPYC}, 2 threads; 1 × cuda ({XEON}, 8 threads)"
            in render(table).splitlines())


def test_compare_unknown_task_and_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, "baseline", 0, 90.0)
    assert main(["compare", "--task", "pose", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'pose'" in err and "classification" in err
    assert main(["compare", "--task", "classification", "--protocol", "cifar100", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "valid: small" in err
    assert main(["compare", "--results", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no result records" in err


def test_compare_cli_on_written_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from .site.fixtures import DELTAS, write_site_results

    write_site_results(tmp_path)
    methods = sorted([*DELTAS, "baseline", "teacher"])
    args = ["compare", "--task", "classification", "--protocol", "small", "--results", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for method in methods:
        assert any(line.split()[:1] == [method] for line in lines), method
    assert "top1" in out and "p_holm" in out and "Δ 95% CI" in out and "MDD (80% power, α = 0.05/12 Holm)" in out

    assert main([*args, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(r["method"] for r in data["rows"]) == methods
    assert {"mdd", "teacher_used", "hardware", "card", "shipped", "ablation_of", "eval_version"} <= set(data)
    assert {"value", "pooled_sd", "alpha", "alpha_family", "m", "n", "power"} <= set(data["mdd"])
    assert data["mdd"]["m"] == 12 and data["mdd"]["alpha"] == pytest.approx(0.05 / 12)
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["baseline"]["verdict"] == rows["teacher"]["verdict"] == "—"
    assert rows["teacher"]["p"] is None and rows["kd"]["n"] == 3
    assert rows["kd"]["verdict"] == "better" and rows["pskd"]["verdict"] == "worse"
    assert rows["kd"]["delta_ci_low"] == pytest.approx(2.0 - 4.302652729749464 * 0.1 / math.sqrt(3))

    for fmt in ("csv", "markdown"):
        assert main([*args, "--format", fmt]) == 0
        assert "baseline" in capsys.readouterr().out

    assert main([*args, "--format", "xml"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and "'xml'" in err and "csv, json, markdown, terminal" in err


def test_no_torch_import() -> None:
    code = ("import sys, kdbench.stats, kdbench.compare, kdbench.compare.render; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
