"""The local pool's persistent workers (issue #20): one long-lived worker per slot runs many items,
and an item there gets exactly the record a fresh process per item gives it (no state leaks from
the worker's earlier items); a failing item leaves the worker serving. A worker killed mid-item is
in tests/reliability/test_processes.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdbench.records import read_record, validation_errors
from kdbench.runner.executors import ExecutorOptions, drive
from kdbench.runner.sweep import make_plan

from .test_sweep import _broken_card

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))


def _result(record: dict[str, Any]) -> dict[str, Any]:
    """What a run computed: metrics, the student (its checkpoint's sha256), the history less timing."""
    history = [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in record["history"]]
    return {"metrics": record["metrics"], "student": record["student"], "history": history,
            "teacher": record["teacher"]}


def test_one_worker_runs_every_item_with_the_records_of_fresh_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    got: dict[bool, dict[str, dict[str, Any]]] = {}
    for fresh in (False, True):
        monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / f"cache-{fresh}"))  # each trains its teacher
        results = tmp_path / f"results-{fresh}"
        plan = make_plan("classification", "baseline,kd", "0-1", "smoke", {}, results, None)
        opts = ExecutorOptions("local", 1, results, threads=1, logs=tmp_path / f"logs-{fresh}",
                               fresh_workers=fresh)
        outcomes = drive(plan, opts, progress=False)
        assert [o.status for o in outcomes] == ["ok"] * 5, outcomes
        runs = [o for o in outcomes if o.item.method is not None]
        pids = {o.pid for o in runs}
        assert None not in pids
        assert len(pids) == (4 if fresh else 1), pids  # persistent: all four runs in one process
        got[fresh] = {}
        for o in runs:
            record = read_record(results / "classification" / "smoke" / o.item.method / f"seed{o.item.seed}.json")
            assert record["status"] == "ok" and not validation_errors(record)
            got[fresh][o.item.label] = _result(record)
    assert got[False] == got[True]  # bit for bit: floats compared exactly


def test_a_failing_item_does_not_end_its_worker(tmp_path: Path) -> None:
    results = tmp_path / "results"
    broken = _broken_card(tmp_path)
    plan = make_plan("classification", "baseline", "0", f"{broken},smoke", {}, results, None)
    assert not plan.teachers and [i.card for i in plan.runs] == ["broken", "smoke"]
    outcomes = {o.item.card: o for o in drive(plan, ExecutorOptions("local", 1, results, threads=1,
                                                                     logs=tmp_path / "logs"), progress=False)}
    assert outcomes["broken"].status == "failed" and "ConvNet needs" in outcomes["broken"].message
    assert outcomes["smoke"].status == "ok", outcomes["smoke"].message
    assert outcomes["broken"].pid == outcomes["smoke"].pid is not None
    [failed_path] = (results / "classification").glob("broken+*/baseline/seed0.json")
    failed = read_record(failed_path)
    assert failed["status"] == "failed" and "ConvNet needs" in failed["error"] and not validation_errors(failed)
    log = (tmp_path / "logs" / f"{outcomes['broken'].item.label.replace('/', '_')}.log").read_text()
    assert "ConvNet needs" in log  # the item's traceback went to its own log
