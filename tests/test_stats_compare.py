"""kdbench.stats against hand-computed values; kdbench.compare on written and on the shipped records."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from scipy import stats as sps

from kdbench.cli import main
from kdbench.compare import compare_table, load_frame, render
from kdbench.records import read_record, record_path, write_record
from kdbench.stats import average_ranks, holm, paired_test, summarize, teacher_gap_closed

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
SMALL = RESULTS / "classification" / "small"
TEMPLATE = SMALL / "kd" / "seed0.json"


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


def test_paired_test_rule_for_no_test() -> None:
    assert math.isnan(paired_test({0: 1.0}, {0: 0.5}).p_value)  # n < 2
    assert paired_test({0: 1.0}, {0: 0.5}).delta_mean == 0.5
    zero = paired_test({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})  # all differences zero
    assert math.isnan(zero.p_value) and zero.delta_mean == 0.0
    # identical nonzero differences (up to float noise): no spread, no test
    same = paired_test({0: 97.33333333333334, 1: 98.44444444444444}, {0: 96.22222222222221, 1: 97.33333333333334})
    assert math.isnan(same.p_value) and same.delta_mean == pytest.approx(1.1111111111111)
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


def test_average_ranks_shared_settings_only() -> None:
    table = pd.DataFrame(
        {"s1": [0.9, 0.8, 0.8], "s2": [0.3, 0.1, 0.2], "s3": [1.0, 2.0, math.nan]},
        index=["A", "B", "C"],
    )
    ranks = average_ranks(table, {"s1": "higher", "s2": "lower", "s3": "higher"})
    # s1 (higher): A 1, B 2.5, C 2.5 (tie); s2 (lower): B 1, C 2, A 3; s3 left out (C missing)
    assert ranks.to_dict() == {"A": 2.0, "B": 1.75, "C": 2.25}
    assert ranks.name == "avg_rank"
    with pytest.raises(ValueError, match="s1"):
        average_ranks(table, {"s2": "lower"})


# ------------------------------------------------------------------------------------- compare


def _write(results: Path, method: str, seed: int, top1: float | None = None, *, sha: str | None = None,
           failed: bool = False, protocol: str = "small") -> None:
    record: dict[str, Any] = copy.deepcopy(read_record(TEMPLATE))
    record["method"]["name"] = method
    record["seed"] = seed
    record["protocol"]["name"] = protocol
    if sha is not None:
        record["protocol"]["sha256"] = sha
    if top1 is not None:
        record["metrics"]["values"]["top1"] = top1
    if failed:
        record["status"], record["error"] = "failed", "loss is NaN at step 12"
    write_record(record_path(results, "classification", protocol, method, seed), record)


def test_load_frame_mixed_sha_and_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = "ab" * 32
    for seed, (b, k) in enumerate([(90.0, 92.0), (91.0, 92.5), (92.0, 94.0)]):
        _write(tmp_path, "baseline", seed, b)
        _write(tmp_path, "kd", seed, k)
    _write(tmp_path, "kd", 3, failed=True)
    _write(tmp_path, "dkd", 5, 99.0, sha=other)  # an older card version: must not be mixed in
    _write(tmp_path, "dkd", 6, 99.0, sha=other)

    frame = load_frame(tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set aside 2 record(s)" in err[0] and other[:12] in err[0]
    assert len(frame) == 6 and set(frame["method"]) == {"baseline", "kd"}
    assert set(frame["protocol_sha"]) == {read_record(TEMPLATE)["protocol"]["sha256"]}
    assert {"task", "tier", "protocol", "method", "seed", "primary", "direction", "m:top1", "m:nll",
            "train_seconds", "params", "flops"} <= set(frame.columns)
    assert frame.attrs["failed"] == [{"task": "classification", "tier": "small", "protocol": "small",
                                      "protocol_sha": frame["protocol_sha"].iloc[0], "method": "kd",
                                      "seed": 3, "primary": "top1", "error": "loss is NaN at step 12"}]
    assert frame.attrs["set_aside"] == {"classification/small": 2}

    table = compare_table(frame, "classification", "small")
    kd = table.set_index("method").loc["kd"]
    assert (kd["n"], kd["failed"]) == (3, 1)
    assert kd["delta"] == pytest.approx(5.5 / 3)  # differences 2, 1.5, 2
    assert kd["verdict"] in ("better", "≈")
    assert list(table["method"]) == ["kd", "baseline"]  # top1: higher first
    assert "kd seed 3" in render(table)


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


def test_compare_cli_on_shipped_records(capsys: pytest.CaptureFixture[str]) -> None:
    methods = sorted(p.name for p in SMALL.iterdir() if any(p.glob("seed*.json")))
    assert "teacher" in methods and "baseline" in methods
    args = ["compare", "--task", "classification", "--protocol", "small", "--results", str(RESULTS)]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for method in methods:
        assert any(line.split()[:1] == [method] for line in lines), method
    assert "top1" in out and "p_holm" in out

    assert main([*args, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(r["method"] for r in data["rows"]) == methods
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["baseline"]["verdict"] == rows["teacher"]["verdict"] == "—"
    assert rows["teacher"]["p"] is None and rows["kd"]["n"] == 3

    for fmt in ("csv", "markdown"):
        assert main([*args, "--format", fmt]) == 0
        assert "baseline" in capsys.readouterr().out

    assert main([*args, "--format", "xml"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and "'xml'" in err and "csv, json, markdown, terminal" in err


def test_no_torch_import() -> None:
    code = "import sys, kdbench.stats, kdbench.compare; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
