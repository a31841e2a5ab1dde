"""Teacher-output cache: top-k vs full token logits on the translation small tier, and BLEU of both.

    python benchmarks/perf/teacher_cache_topk.py [--topk 8] [--epochs 8] [--method kd] [--set KEY=VALUE ...]

Runs `--method` on the translation small card twice from a fresh teacher-output cache: once
storing the teacher's full (B, T, V) float32 logits, once only each position's top-k
log-probabilities and indices (`--set train.teacher_cache_topk=k`). Each run writes its cache
(the training a sweep's first method does), so the student trains on exactly what later runs
would read. Prints the cache size on disk per epoch, the ratio, and test BLEU / chrF of both,
side by side. The card's teacher must be trained already (`kdbench teacher --task translation
--protocol small`); it is read from $KDBENCH_CACHE and not retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdbench.protocol import load_protocol
from kdbench.runner.teachers import teacher_path


def run(method: str, sets: list[str], results: Path, env: dict[str, str]) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "kdbench", "run", "--task", "translation", "--method", method,
           "--protocol", "small", "--results", str(results), "--device", "cpu"]
    for s in sets:
        cmd += ["--set", s]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return json.loads((results / "translation" / "small" / method / "seed0.json").read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--method", default="kd")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="more overrides for both runs, e.g. method.temperature=1")
    args = parser.parse_args()
    protocol = load_protocol("translation", "small")
    teacher = teacher_path(protocol, "translation", int(protocol.card["teacher"].get("seed", 0)))
    if not teacher.is_file():
        sys.exit(f"no cached teacher at {teacher}; train it first: kdbench teacher --task translation --protocol small")
    vocab = protocol.card["data"]["vocab_size"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, mode, extra in (("full", "full", []),
                                   (f"top-{args.topk}", "topk", [f"train.teacher_cache_topk={args.topk}"])):
            cache = Path(tmp) / label / "cache"
            (cache / "teachers" / "translation").mkdir(parents=True)
            shutil.copy(teacher, cache / "teachers" / "translation" / teacher.name)
            env = {**os.environ, "KDBENCH_CACHE": str(cache)}
            sets = [f"train.epochs={args.epochs}", *args.sets, *extra]
            record, seconds = run(args.method, sets, Path(tmp) / label, env)
            assert record["spec"]["teacher_outputs"]["mode"] == mode, record["spec"]["teacher_outputs"]
            nbytes = sum(f.stat().st_size for f in (cache / "teacher-outputs").rglob("*.npy"))
            rows.append((label, nbytes / args.epochs, record["metrics"]["values"], seconds))
    full = rows[0][1]
    print(f"translation/small, {args.method} {' '.join(args.sets)}, {args.epochs} epochs, vocabulary {vocab}")
    print(f"  {'cache':8s} {'MiB/epoch':>10s} {'ratio':>7s} {'BLEU':>7s} {'chrF':>7s} {'wall s':>7s}")
    for label, per_epoch, values, seconds in rows:
        print(f"  {label:8s} {per_epoch / 2**20:10.2f} {per_epoch / full:7.3f} {values['bleu']:7.2f} "
              f"{values['chrf']:7.2f} {seconds:7.1f}")


if __name__ == "__main__":
    main()
