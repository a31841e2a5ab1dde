"""The command line as a user meets it: listings, one-line errors with exit 2, runs, validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdbench.cli import main

METHODS = ["baseline", "ls", "kd", "dkd", "nkd", "uskd", "pskd", "taid", "bdkd", "bdkd_online", "dhkd", "nd",
           "mlkd", "lsskd", "gold"]


def test_list_methods_shows_every_method_with_paper_and_teacher(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    for name in METHODS:
        assert name in rows, name
    assert "external" in rows["kd"] and "Hinton" in rows["kd"]
    assert "self" in rows["pskd"] and "ICCV 2021" in rows["pskd"]
    assert "none" in rows["baseline"]
    assert "layers" in rows["gold"] and "D-FINE" in rows["gold"]
    assert rows["bdkd_online"].split()[1] == "online" and "Amara" in rows["bdkd_online"]  # its teacher kind
    assert rows["bdkd"].split()[1] == "external"


def test_list_tasks_and_protocols(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "tasks"]) == 0
    assert "classification" in capsys.readouterr().out
    assert main(["list", "protocols"]) == 0
    out = capsys.readouterr().out
    for card in ("smoke", "small", "cifar100"):
        assert card in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["run", "--task", "classification", "--method", "nosuch"], "unknown method 'nosuch'; valid: "),
    (["run", "--task", "nosuch", "--method", "kd"], "unknown task 'nosuch'; valid: classification"),
    (["run", "--task", "classification", "--method", "kd", "--protocol", "huge"],
     "unknown protocol 'huge' for task 'classification'; valid: tiers smoke, small, standard"),
    (["run", "--task", "classification", "--method", "kd", "--set", "train.nosuch=1"],
     "unknown --set key 'train.nosuch'; valid: "),
    (["run", "--task", "classification", "--method", "kd", "--set", "method.nosuch=1"],
     "unknown hyperparameter 'nosuch' for KD; valid: temperature, ce_weight, kd_weight"),
    (["run", "--task", "classification", "--method", "kd", "--device", "tpu"],
     "unknown device 'tpu'; valid: auto, cpu, cuda"),
    (["list", "nothing"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], results: Path
) -> None:
    assert main([*argv, "--results", str(results)] if argv[0] == "run" else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert needle in err[0]
    assert not results.exists()  # nothing written


def test_unknown_method_lists_all_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--task", "classification", "--method", "nosuch"]) == 2
    err = capsys.readouterr().err
    for name in METHODS:
        assert name in err


def test_standard_card_without_teacher_says_what_to_pass(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--task", "classification", "--method", "kd", "--protocol", "standard"]
    assert main(argv) == 2
    assert "--teacher PATH" in capsys.readouterr().err


def test_smoke_run_prints_summary_and_writes_a_valid_record(
    capsys: pytest.CaptureFixture[str], results: Path
) -> None:
    argv = ["run", "--task", "classification", "--method", "pskd", "--protocol", "smoke",
            "--seed", "0", "--device", "cpu", "--results", str(results)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "classification / smoke / pskd / seed 0: ok" in out
    assert "top1" in out and "ece" in out
    path = results / "classification" / "smoke" / "pskd" / "seed0.json"
    record = json.loads(path.read_text())
    assert record["metrics"]["primary"] == "top1"
    assert record["method"]["hparams"] == {"alpha_T": 0.8, "ce_weight": 0.0}
    assert main(["validate", str(results)]) == 0
    assert "1 valid, 0 invalid" in capsys.readouterr().out


def test_validate_rejects_a_broken_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "seed0.json"
    bad.write_text(json.dumps({"schema_version": 1, "task": "classification"}))
    assert main(["validate", str(bad)]) == 1
    assert "invalid" in capsys.readouterr().out
    assert main(["validate", str(tmp_path / "none")]) == 1
