"""benchmarks/perf/gpu_check.sh's CPU parts, so CI runs the GPU check's own code (issue #21).

`--device cpu --parts smoke,sweep,ddp,cache`: every task's smoke card with kd, the 2-item local
sweep and its one-line refusals, the 2-rank gloo run. Left out here: `standard` (two epochs each of
the coco2017 and coco_wholebody cards on the COCO fixtures, about a minute on 2 cores; those cards
run on the same fixtures in tests/detection/test_pipeline.py and tests/pose/test_standard.py), and
everything that needs a GPU (bf16, --gpus-per-run 1, NCCL), which the script checks only on
--device cuda. `cache` reports SKIP until kdbench estimates the teacher-output cache's size.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kdbench

ROOT = Path(kdbench.__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "perf" / "gpu_check.sh"


def _env(tmp_path: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": path, "OMP_NUM_THREADS": "1",
            "TMPDIR": str(tmp_path)}


def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path) -> None:
    for args, line in [(["--device", "tpu"], "gpu_check.sh: --device 'tpu'; valid: cuda, cpu"),
                       (["--parts", "smoke,nope"], "gpu_check.sh: unknown part 'nope'; valid: smoke, sweep, ddp, "
                                                   "cache, standard"),
                       (["--fast"], "gpu_check.sh: unknown argument '--fast'; valid: --device cuda|cpu, --parts "
                                    "LIST, --keep DIR")]:
        done = subprocess.run(["bash", str(SCRIPT), *args], env=_env(tmp_path), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and done.stderr.strip() == line and done.stdout == ""


def test_cuda_on_a_machine_without_a_gpu_fails_in_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU: --device cuda runs the whole check")
    done = subprocess.run(["bash", str(SCRIPT), "--device", "cuda"], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert done.stdout.splitlines()[-2:] == [
        "FAIL  setup: --device cuda but torch sees no GPU (torch.cuda.device_count() is 0); --device cpu runs the "
        "CPU parts", "gpu_check: 0 passed, 1 failed, 0 skipped"]


@pytest.mark.slow
def test_cpu_parts_pass(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--parts", "smoke,sweep,ddp,cache"],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    verdicts = {line.split(":", 1)[0]: line for line in lines if line[:4] in ("PASS", "FAIL", "SKIP")}
    expected_pass = [*(f"smoke/{t}" for t in ("classification", "detection", "pose", "ood", "translation")),
                     "sweep/seed0", "sweep/seed1", "sweep/refuse-cuda-without-gpus", "sweep/refuse-too-few-gpus",
                     "ddp (gloo on CPU)"]
    assert {f"PASS  {name}" for name in expected_pass} <= set(verdicts), lines
    assert {"SKIP  sweep/placement", "SKIP  cache", "SKIP  standard"} <= set(verdicts), lines
    assert not [v for v in verdicts if v.startswith("FAIL")]
    assert "ok on cpu" in verdicts["PASS  smoke/translation"] and "2 rank(s)" in verdicts["PASS  ddp (gloo on CPU)"]
    assert lines[-1].startswith(f"gpu_check: {len(expected_pass)} passed, 0 failed, 3 skipped")
    assert not list(tmp_path.glob("kdbench-gpu-check.*"))  # its work folder is removed
