"""`kdbench reproduce RECORD`: re-run a record from the spec it embeds, into a scratch folder, and
say how far each metric moved — beside the seed SD of the record's table, which is the scale a
difference has to be read on (a run on another CPU model or thread count varies like a seed)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdbench.errors import UsageError
from kdbench.records import read_record, validation_errors
from kdbench.stats import summarize


@dataclass
class Reproduction:
    status: str
    text: str
    original: dict[str, Any]
    rerun: dict[str, Any]
    path: Path


def _load(path: Path) -> dict[str, Any]:
    try:
        record = read_record(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such record") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable JSON record: {e}") from None
    errors = validation_errors(record)
    if errors:
        raise UsageError(f"{path}: not a valid record: {errors[0]} (kdbench validate)")
    if record["tier"] == "external":
        raise UsageError(f"{path}: a record of an OpenMMLab run (tier external); re-run its config with mmengine")
    return record


def _seed_sd(path: Path, metric: str) -> tuple[float | None, int]:
    """SD over seeds of `metric` among the ok records beside `path` (the same method and card)."""
    values = []
    for file in sorted(path.parent.glob("seed*.json")):
        try:
            other = read_record(file)
        except (OSError, ValueError):
            continue
        if other.get("status") == "ok" and other.get("protocol") == read_record(path).get("protocol"):
            values.append((other["metrics"]["values"] or {}).get(metric))
    summary = summarize(values)
    return (summary.std if summary.n >= 2 else None), summary.n


def reproduce(record_path: Path, scratch: Path | None = None, *, device: str = "auto",
              data_root: Path | None = None, teacher: Path | None = None) -> Reproduction:
    """Re-run `record_path`'s spec (card, method and hyperparameters, seed) under `scratch`."""
    from kdbench.runner.env import environment
    from kdbench.runner.run import run
    from kdbench.runner.spec import RunOptions

    original = _load(record_path)
    spec = original["spec"]
    if original["method"]["name"] == "teacher":
        raise UsageError(f"{record_path}: a teacher's record; reproduce a student record (its teacher is re-made)")
    if spec["world_size"] != 1:
        raise UsageError(f"{record_path}: a {spec['world_size']}-process run; re-run it under torchrun")
    scratch = Path(scratch) if scratch is not None else Path(tempfile.mkdtemp(prefix="kdbench-reproduce-"))
    scratch.mkdir(parents=True, exist_ok=True)
    card_path = scratch / f"{original['protocol']['name']}.yaml"
    card_path.write_text(yaml.safe_dump(spec["card"], sort_keys=False))
    options = RunOptions(task=original["task"], method=original["method"]["name"], protocol=str(card_path),
                         seed=int(spec["seed"]), device=device, data_root=data_root, results=scratch / "results",
                         teacher=teacher, overwrite=True)
    rerun, path = run(options)
    if rerun["protocol"]["sha256"] != original["protocol"]["sha256"]:
        raise UsageError(f"the re-run's card hashes to {rerun['protocol']['sha256'][:12]}, the record's to "
                         f"{original['protocol']['sha256'][:12]}: this kdbench version reads the card differently")
    lines = [f"reproduce {record_path} → {path}",
             f"  {'metric':<22} {'record':>11} {'re-run':>11} {'Δ':>11} {'seed SD (n)':>16}"]
    for name, value in original["metrics"]["values"].items():
        new = rerun["metrics"]["values"].get(name)
        delta = None if value is None or new is None else new - value
        sd, n = _seed_sd(record_path, name)
        cells = [f"{v:11.4f}" if v is not None else f"{'n/a':>11}" for v in (value, new, delta)]
        sd_cell = f"{sd:.4f} ({n})" if sd is not None else f"n/a ({n})"
        lines.append(f"  {name:<22} {' '.join(cells)} {sd_cell:>16}")
    here, there = environment(), original["environment"]
    same = (here["cpu"] == there["cpu"] and rerun["environment"]["threads"] == there["threads"]
            and rerun["cost"]["device"] == original["cost"]["device"])
    lines.append("  same CPU model, ISA flags and thread count: differences should be 0" if same else
                 f"  recorded on {there['cpu']['model']} ({there['threads']} threads, {original['cost']['device']}), "
                 f"re-run on {here['cpu']['model']} ({rerun['environment']['threads']} threads, "
                 f"{rerun['cost']['device']}): expect differences of the order of the seed SD")
    return Reproduction(rerun["status"], "\n".join(lines), original, rerun, path)
