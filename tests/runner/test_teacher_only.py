"""Teacher-only runs (`kdbench teacher`, sweep teacher items, the protocol check's teacher rows)
resolve without borrowing a registered method."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.errors import UsageError
from kdbench.runner import spec as spec_module
from kdbench.runner.spec import TEACHER_ONLY, RunOptions, resolve


def test_a_teacher_only_run_is_no_registered_method(tmp_path: Path) -> None:
    spec = resolve(RunOptions(task="classification", method=TEACHER_ONLY, protocol="smoke", results=tmp_path))
    assert spec.method_cls.name == TEACHER_ONLY and spec.hparams == {}
    assert spec.method_cls.teacher == "external"  # --teacher PATH and given-teacher cards apply


def test_a_teacher_only_run_is_never_refused_for_what_a_method_distils(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec_module, "why_not_served", lambda adapter, method: f"{method.name} is refused")
    with pytest.raises(UsageError, match="kd is refused"):
        resolve(RunOptions(task="classification", method="kd", protocol="smoke", results=tmp_path))
    resolve(RunOptions(task="classification", method=TEACHER_ONLY, protocol="smoke", results=tmp_path))


def test_kdbench_teacher_refuses_method_hyperparameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["teacher", "--task", "classification", "--protocol", "smoke", "--results", str(tmp_path),
                 "--set", "method.temperature=2"])
    err = capsys.readouterr().err
    assert code != 0 and "--set method.temperature: a teacher-only run" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.rglob("*.json"))

