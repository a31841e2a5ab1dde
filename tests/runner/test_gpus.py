"""GPU placement on CPU (issue #21): `--gpus-per-run N` gives each local slot its own
CUDA_VISIBLE_DEVICES, Ray tasks `num_gpus=N`, Slurm jobs `gpus_per_node` / `cpus_per_task`; a CUDA
sweep that reserves no GPU, or GPUs this machine has not got, is refused in one line before any
work; a record names the GPUs it trained on. The machine's GPUs are faked by patching
`torch.cuda.device_count` in the sweep's own process; its workers really see no GPU, so a `cuda`
item fails there, after reporting the CUDA_VISIBLE_DEVICES its executor gave it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from kdbench.cli import main
from kdbench.errors import UsageError
from kdbench.records import read_record, validation_errors
from kdbench.runner.distributed import rank_placement
from kdbench.runner.env import UNSEEN_GPU, gpus_used
from kdbench.runner.executors import (
    CPUS_PER_GPU,
    ExecutorOptions,
    _check_ray_gpus,
    check_gpus,
    drive,
    ray_options,
    slurm_parameters,
    worker_env,
)
from kdbench.runner.gpus import slot_gpus, sweep_device, visible_gpus
from kdbench.runner.sweep import make_plan
from tests.recordkit import valid_record


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`gpus(n)`: this process sees n GPUs and no CUDA_VISIBLE_DEVICES."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def fake(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return fake


def test_visible_gpus_follow_cuda_visible_devices(gpus: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(4)
    assert visible_gpus() == ["0", "1", "2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 1,GPU-5e1d,7")
    gpus(3)  # CUDA stops at the first invalid entry: torch counts 3 of the 4
    assert visible_gpus() == ["3", "1", "GPU-5e1d"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    gpus(0)
    assert visible_gpus() == []


def test_slots_get_disjoint_gpus_in_order() -> None:
    four = ["0", "1", "2", "3"]
    assert slot_gpus(2, 2, four) == [["0", "1"], ["2", "3"]]
    assert slot_gpus(3, 1, four) == [["0"], ["1"], ["2"]]
    assert slot_gpus(2, 0, four) == [[], []]
    assert slot_gpus(1, 2, ["5", "GPU-a", "7"]) == [["5", "GPU-a"]]


def test_too_many_slots_or_no_gpu_are_refused_in_one_line(gpus: Any) -> None:
    gpus(2)
    with pytest.raises(UsageError) as e:
        slot_gpus(3, 1, visible_gpus())
    assert str(e.value) == ("--workers 3 × --gpus-per-run 1 needs 3 GPUs, 2 visible here (torch.cuda.device_count() "
                            "is 2): 0, 1; valid: --workers 2 or fewer at --gpus-per-run 1")
    with pytest.raises(UsageError, match=r"valid: --gpus-per-run 2 or fewer$"):
        slot_gpus(1, 3, visible_gpus())
    gpus(0)
    with pytest.raises(UsageError) as e:
        slot_gpus(1, 1, visible_gpus())
    assert str(e.value) == ("--gpus-per-run 1: no CUDA GPU is visible here (torch.cuda.device_count() is 0); "
                            "valid here: --gpus-per-run 0 (runs on CPU)")


def test_the_device_follows_the_gpus_reserved() -> None:
    assert sweep_device("auto", 0) == "cpu"  # no GPU reserved: auto stays on CPU
    assert sweep_device("cpu", 0) == "cpu"
    assert sweep_device("auto", 1) == "cuda"  # reserved: a worker that cannot see it fails, never trains on CPU
    assert sweep_device("cuda", 2) == "cuda"
    for device, n, message in [
        ("cuda", 0, "--device cuda: the sweep reserves no GPU for its runs (--gpus-per-run 0)"),
        ("cpu", 1, "--device cpu with --gpus-per-run 1: CPU runs reserve no GPU"),
        ("auto", -1, "--gpus-per-run must be 0 (CPU runs) or more, got -1"),
        ("tpu", 0, "unknown device 'tpu'; valid: auto, cpu, cuda"),
    ]:
        with pytest.raises(UsageError) as e:
            sweep_device(device, n)
        assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_worker_environment_names_exactly_the_slots_gpus() -> None:
    env, _ = worker_env([0], 1, ["2", "3"])
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["OMP_NUM_THREADS"] == "1"
    env, _ = worker_env([0], 2, [])
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # N = 0: the worker sees no GPU


SWEEP = ["sweep", "--tasks", "classification", "--methods", "baseline", "--seeds", "0", "--protocol", "smoke"]


@pytest.mark.parametrize(("count", "extra", "line"), [
    (1, ["--device", "cuda"], "kdbench: error: --device cuda: the sweep reserves no GPU for its runs "
     "(--gpus-per-run 0), so they would share or miss GPUs; pass --gpus-per-run N (N >= 1), or --device auto or cpu"),
    (0, ["--gpus-per-run", "1"], "kdbench: error: --gpus-per-run 1: no CUDA GPU is visible here "
     "(torch.cuda.device_count() is 0); valid here: --gpus-per-run 0 (runs on CPU)"),
    (0, ["--gpus-per-run", "1", "--executor", "slurm", "--slurm-cluster", "local"], "kdbench: error: "
     "--gpus-per-run 1: no CUDA GPU is visible here (torch.cuda.device_count() is 0); valid here: --gpus-per-run 0 "
     "(runs on CPU)"),
    (2, ["--gpus-per-run", "1", "--workers", "4", "--device", "cuda"], "kdbench: error: --workers 4 × "
     "--gpus-per-run 1 needs 4 GPUs, 2 visible here (torch.cuda.device_count() is 2): 0, 1; valid: --workers 2 or "
     "fewer at --gpus-per-run 1"),
    (2, ["--gpus-per-run", "1", "--device", "cpu"], "kdbench: error: --device cpu with --gpus-per-run 1: CPU runs "
     "reserve no GPU; use --device cuda (or auto), or --gpus-per-run 0"),
])
def test_sweep_refuses_gpu_requests_before_any_work(
        count: int, extra: list[str], line: str, gpus: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpus(count)
    assert main([*SWEEP, "--results", str(tmp_path / "results"), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == line and captured.out == ""
    assert not (tmp_path / "results").exists()  # nothing planned, trained or written


def test_a_dry_run_plans_a_gpu_sweep_on_a_machine_without_gpus(gpus: Any, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    gpus(0)
    assert main([*SWEEP, "--results", str(tmp_path), "--gpus-per-run", "1", "--dry-run"]) == 0
    assert "run      classification/smoke/baseline/seed0" in capsys.readouterr().out
    assert main([*SWEEP, "--results", str(tmp_path), "--device", "cuda", "--dry-run"]) == 2  # still inconsistent


def test_check_gpus_leaves_remote_clusters_to_their_own_checks(gpus: Any) -> None:
    gpus(0)  # a login node: Slurm and a remote Ray cluster have the GPUs, not this machine
    assert check_gpus(ExecutorOptions("ray", gpus_per_run=2, ray_address="ray://head:10001")).device == "cuda"
    assert check_gpus(ExecutorOptions("slurm", gpus_per_run=1, slurm_cluster="slurm")).device == "cuda"
    with pytest.raises(UsageError, match="no CUDA GPU is visible here"):
        check_gpus(ExecutorOptions("ray", gpus_per_run=1))  # a Ray started here sees this machine's GPUs
    gpus(1)
    assert check_gpus(ExecutorOptions("ray", workers=4, gpus_per_run=1)).device == "cuda"  # Ray queues the rest
    assert check_gpus(ExecutorOptions("local", workers=4)).device == "cpu"


def test_ray_tasks_ask_for_their_gpus_and_a_cluster_without_them_is_refused() -> None:
    assert ray_options(ExecutorOptions("ray")) == {"num_cpus": 1, "num_gpus": 0, "max_calls": 1}
    assert ray_options(ExecutorOptions("ray", gpus_per_run=2))["num_gpus"] == 2
    cluster = SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
                                             {"Alive": False, "Resources": {"GPU": 8.0}}])
    _check_ray_gpus(cluster, ExecutorOptions("ray", gpus_per_run=1))
    with pytest.raises(UsageError) as e:
        _check_ray_gpus(cluster, ExecutorOptions("ray", gpus_per_run=2, ray_address="ray://head:10001"))
    assert str(e.value) == ("--gpus-per-run 2: no node of the Ray cluster at ray://head:10001 has 2 GPUs (the most on "
                            "one node: 1); valid: --gpus-per-run 1 or fewer")


def test_slurm_parameters_follow_the_gpus_per_run() -> None:
    params, threads = slurm_parameters(ExecutorOptions("slurm", workers=3), "slurm")
    assert params == {"timeout_min": 1440, "cpus_per_task": 1, "nodes": 1, "slurm_array_parallelism": 3}
    assert threads == 1
    params, threads = slurm_parameters(ExecutorOptions("slurm", workers=3, gpus_per_run=2), "slurm")
    assert params == {"timeout_min": 1440, "cpus_per_task": 2 * CPUS_PER_GPU, "nodes": 1, "gpus_per_node": 2,
                      "slurm_array_parallelism": 3}
    assert threads == 2 * CPUS_PER_GPU
    params, threads = slurm_parameters(ExecutorOptions("slurm", threads=4, gpus_per_run=1), "local")
    assert params == {"timeout_min": 1440, "cpus_per_task": 4, "nodes": 1, "gpus_per_node": 1} and threads == 4
    opts = ExecutorOptions("slurm", gpus_per_run=1, slurm={"cpus_per_task": 6, "slurm_partition": "gpu"})
    params, threads = slurm_parameters(opts, "slurm")  # --slurm-param overrides a default without a clash
    assert params["cpus_per_task"] == 6 and params["slurm_partition"] == "gpu" and threads == 6


def test_rank_placement_shares_gpus_over_gloo_only_when_ranks_outnumber_them() -> None:
    assert rank_placement(0, 2, 2) == ("nccl", 0)
    assert rank_placement(1, 2, 4) == ("nccl", 1)
    assert rank_placement(1, 2, 1) == ("gloo", 0)  # two ranks on one GPU: NCCL refuses, gloo shares it
    assert rank_placement(3, 4, 2) == ("gloo", 1)


def test_a_record_names_the_gpu_it_trained_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name=f"Fake GPU {i}", uuid="5e1d-0001"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6,GPU-77")
    assert gpus_used(torch.device("cuda")) == [{"id": "GPU-77", "name": "Fake GPU 1", "uuid": "5e1d-0001"}]
    assert gpus_used(torch.device("cuda", 0))[0]["id"] == "6"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpus_used(torch.device("cuda"))[0]["id"] == "1"  # unset: the CUDA ordinal
    assert gpus_used(torch.device("cpu")) == []
    record = valid_record()
    record["cost"]["gpus"] = [{"id": "GPU-77", "name": "Fake GPU 1", "uuid": None},
                              {"id": "0", "name": "x", "uuid": "u"}]
    assert validation_errors(record) == []
    record["cost"]["gpus"] = [{"id": "", "name": "x", "uuid": None}]
    assert validation_errors(record) and validation_errors(record)[0].startswith("cost.gpus.0.id")
    record["cost"]["gpus"] = [{"id": "0", "name": "x", "uuid": None, "memory": 1}]
    assert validation_errors(record)
    record["cost"]["gpus"] = []
    assert validation_errors(record)


@pytest.fixture
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
@pytest.mark.usefixtures("_own_cache")
def test_each_local_slot_worker_gets_its_own_gpus(gpus: Any, tmp_path: Path) -> None:
    gpus(4)
    results = tmp_path / "results"
    plan = make_plan("classification", "baseline", "0-1", "smoke", {}, results, None)
    opts = ExecutorOptions("local", workers=2, results=results, threads=1, logs=tmp_path / "logs", gpus_per_run=2)
    outcomes = drive(plan, opts, progress=False)
    assert sorted(o.gpus or "" for o in outcomes) == ["0,1", "2,3"]  # one slot each, disjoint
    for o in outcomes:  # the workers have no real GPU: `cuda` fails there, in one line, recorded
        assert o.status == "failed" and "--device cuda: no CUDA device is available here" in o.message
        record = read_record(results / "classification" / "smoke" / "baseline" / f"seed{o.item.seed}.json")
        assert not validation_errors(record) and record["status"] == "failed"
        assert record["cost"]["device"] == "cuda" and record["cost"]["hardware"] == UNSEEN_GPU
        assert record["cost"]["peak_memory_mb"] is None and "gpus" not in record["cost"]


@pytest.mark.slow
@pytest.mark.usefixtures("_own_cache")
def test_a_cpu_sweep_hides_the_gpus_from_its_workers(gpus: Any, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    gpus(2)  # --device auto with no GPU reserved stays on CPU even where GPUs are visible
    results = tmp_path / "results"
    plan = make_plan("classification", "baseline", "0", "smoke", {}, results, None)
    opts = ExecutorOptions("local", results=results, threads=1, logs=tmp_path / "logs", fresh_workers=True)
    [outcome] = drive(plan, opts, progress=False)  # a fresh worker (persistent ones: the test above)
    assert outcome.status == "ok" and outcome.gpus == ""
    record = read_record(results / "classification" / "smoke" / "baseline" / "seed0.json")
    assert record["cost"]["device"] == "cpu" and "gpus" not in record["cost"]
    assert main([*SWEEP, "--results", str(results)]) == 0  # nothing left to run; the sweep says why not on GPUs
    assert ("sweep: 2 GPU(s) visible, but --gpus-per-run 0 runs on CPU; pass --gpus-per-run 1 to give each run a "
            "GPU of its own") in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("_own_cache")
def test_submitit_jobs_get_gpus_per_node(gpus: Any, tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    gpus(1)  # submitit's local executor hands each job GPUs 0..N-1 through CUDA_VISIBLE_DEVICES
    results = tmp_path / "results"
    plan = make_plan("classification", "baseline", "0", "smoke", {}, results, None)
    opts = ExecutorOptions("slurm", results=results, slurm_cluster="local", logs=tmp_path / "logs", gpus_per_run=1)
    [outcome] = drive(plan, opts, progress=False)
    assert outcome.gpus == "0" and outcome.status == "failed" and "no CUDA device" in outcome.message


@pytest.mark.slow
@pytest.mark.usefixtures("_own_cache")
def test_ray_tasks_see_the_gpus_ray_reserved_for_them(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    # Ray's GPUs are logical: a node started with num_gpus=2 schedules on them and sets each task's
    # CUDA_VISIBLE_DEVICES to the ids it reserved, whether or not the machine has them
    context = ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = tmp_path / "results"
        plan = make_plan("classification", "baseline", "0-1", "smoke", {}, results, None)
        opts = ExecutorOptions("ray", workers=2, results=results, threads=1, gpus_per_run=1,
                               ray_address=context.address_info["address"])
        outcomes = drive(plan, opts, progress=False)
        assert all(o.gpus in ("0", "1") for o in outcomes), [o.gpus for o in outcomes]
        assert all(o.status == "failed" and "no CUDA device" in o.message for o in outcomes)
        one_item = make_plan("classification", "baseline", "2", "smoke", {}, results, None)
        [one] = drive(one_item, ExecutorOptions("ray", results=results, threads=1, gpus_per_run=2,
                                                ray_address=context.address_info["address"]), progress=False)
        assert one.gpus == "0,1"
        with pytest.raises(UsageError, match=r"no node of the Ray cluster at .* has 3 GPUs"):
            drive(one_item, ExecutorOptions("ray", results=results, gpus_per_run=3,
                                        ray_address=context.address_info["address"]), progress=False)
    finally:
        ray.shutdown()
