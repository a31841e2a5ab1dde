"""Processes and folders: a sweep from a working directory holding a `kdbench` folder, a sweep
worker killed with SIGKILL (a `failed` record; a persistent worker killed mid-item is replaced for
the next item), a killed sweep (its workers die with it), and a
results folder that cannot be written (one line before any training)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kdbench.cli import main
from kdbench.records import read_record, validation_errors
from kdbench.runner.executors import ExecutorOptions, drive
from kdbench.runner.sweep import Outcome, make_plan

from .conftest import SMOKE, one_line

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _workers_of(pid: int) -> list[int]:
    """The sweep workers (`kdbench.runner.worker`) whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"kdbench.runner.worker" in cmdline:
            found.append(int(entry))
    return found


def _wait_for(pid: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = _workers_of(pid)
        if workers:
            return workers[0]
        time.sleep(0.05)
    raise AssertionError("no sweep worker started")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _plan(results: Path):  # type: ignore[no-untyped-def]
    return make_plan("classification", "baseline", "0", "smoke", {}, results, None)


def test_a_kdbench_folder_in_the_working_directory_does_not_shadow_the_package(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shadow = tmp_path / "cwd" / "kdbench"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise SystemExit('the shadow package was imported')\n")
    monkeypatch.chdir(shadow.parent)
    results = tmp_path / "results"
    outcomes = drive(_plan(results), ExecutorOptions("local", 1, results, logs=tmp_path / "logs"), progress=False)
    assert [o.status for o in outcomes] == ["ok"], outcomes
    record = read_record(results / "classification" / "smoke" / "baseline" / "seed0.json")
    assert record["status"] == "ok" and not validation_errors(record)


def test_a_worker_killed_by_a_signal_gets_a_failed_record(tmp_path: Path, cache: Path) -> None:
    results = tmp_path / "results"
    got: list[Outcome] = []
    sweep = threading.Thread(target=lambda: got.extend(drive(
        _plan(results), ExecutorOptions("local", 1, results, logs=tmp_path / "logs"), progress=False)))
    sweep.start()
    os.kill(_wait_for(os.getpid()), signal.SIGKILL)
    sweep.join(120)
    assert [o.status for o in got] == ["crashed"] and "killed by signal SIGKILL" in got[0].message
    record = read_record(results / "classification" / "smoke" / "baseline" / "seed0.json")
    assert record["status"] == "failed" and not validation_errors(record)
    assert record["error"].startswith("worker killed by signal SIGKILL")


def test_a_persistent_worker_killed_mid_item_fails_that_item_and_is_replaced(tmp_path: Path, cache: Path) -> None:
    results, logs = tmp_path / "results", tmp_path / "logs"
    plan = make_plan("classification", "baseline", "0-1", "smoke", {}, results, None)
    got: list[Outcome] = []
    sweep = threading.Thread(target=lambda: got.extend(drive(
        plan, ExecutorOptions("local", 1, results, threads=1, logs=logs), progress=False)))
    sweep.start()
    worker = _wait_for(os.getpid())
    first = logs / "classification_smoke_baseline_seed0.log"
    deadline = time.monotonic() + 60
    while not first.exists() and time.monotonic() < deadline:  # the worker has begun the item
        time.sleep(0.01)
    os.kill(worker, signal.SIGKILL)
    sweep.join(120)
    by_seed = {o.item.seed: o for o in got}
    assert by_seed[0].status == "crashed" and "killed by signal SIGKILL" in by_seed[0].message
    record = read_record(results / "classification" / "smoke" / "baseline" / "seed0.json")
    assert record["status"] == "failed" and not validation_errors(record)
    assert record["error"].startswith("worker killed by signal SIGKILL")
    assert by_seed[1].status == "ok", by_seed[1].message  # a fresh worker ran the next item
    assert by_seed[1].pid not in (None, worker)
    assert read_record(results / "classification" / "smoke" / "baseline" / "seed1.json")["status"] == "ok"


def test_the_workers_of_a_killed_sweep_die_with_it(tmp_path: Path, cache: Path) -> None:
    script = textwrap.dedent(f"""
        from pathlib import Path
        from kdbench.runner.executors import ExecutorOptions, drive
        from kdbench.runner.sweep import make_plan
        results = Path({str(tmp_path / "results")!r})
        plan = make_plan("classification", "baseline", "0-3", "smoke", {{}}, results, None)
        drive(plan, ExecutorOptions("local", 1, results, logs=Path({str(tmp_path / "logs")!r})), progress=False)
    """)
    parent = subprocess.Popen([sys.executable, "-P", "-c", script], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        worker = _wait_for(parent.pid)
        parent.kill()
        parent.wait(30)
        deadline = time.monotonic() + 3  # a smoke run takes longer than this: the worker is killed
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker), "the worker outlived its sweep"
    finally:
        parent.kill()


def _unwritable(tmp_path: Path) -> list[Path]:
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")
    out = [blocked / "results", Path("/proc/kdbench-results")]  # /proc: unwritable even for root
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        readonly.chmod(0o555)
        out.append(readonly / "results")
    return out


def test_an_unwritable_results_folder_is_one_line_before_training(
        tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for results in _unwritable(tmp_path):
        for command in (["run", *SMOKE, "--method", "kd"], ["teacher", *SMOKE]):
            assert main([*command, "--results", str(results)]) == 2, results
            line = one_line(capsys.readouterr().err)
            assert "cannot write records under" in line, line
    assert not (cache / "teachers").exists() and not (cache / "runs").exists()  # nothing trained
