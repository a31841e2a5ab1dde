"""Result records (DESIGN §5): the schema shipped in the package, atomic writes, validation."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_VERSION = 2


def default_results() -> Path:
    """Where a user's runs go unless `--results` says otherwise: `$KDBENCH_RESULTS`, else
    `./kdbench-results`. The leaderboard's `results/` is only ever written when named."""
    return Path(os.environ.get("KDBENCH_RESULTS") or "kdbench-results")


@cache
def schema() -> dict[str, Any]:
    text = resources.files("kdbench").joinpath("schema/record.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def record_path(results: Path, task: str, protocol: str, method: str, seed: int) -> Path:
    """`results/<task>/<protocol key>/<method>/seed<N>.json` (the key: the card's name, or
    `<name>+<sha8>` for an ablation; kdbench.runner.protocol.Protocol.key)."""
    return Path(results) / task / protocol / method / f"seed{seed}.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Validate, then write atomically (an invalid record never reaches the disk)."""
    errors = validation_errors(record)
    if errors:
        raise ValueError(f"refusing to write an invalid record: {errors[0]}")
    text = json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())


def validation_errors(record: Any) -> list[str]:
    """Every schema violation as 'field.path: message', empty when valid."""
    validator = jsonschema.Draft202012Validator(schema())
    found = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(record)'}: {e.message}" for e in found]


def read_record(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)  # type: ignore[no-any-return]


def validate_paths(paths: list[Path]) -> Iterator[tuple[Path, list[str]]]:
    """(file, errors) for every .json record under the given files and directories."""
    for root in paths:
        files = sorted(Path(root).rglob("seed*.json")) if Path(root).is_dir() else [Path(root)]
        for file in files:
            try:
                record = read_record(file)
            except FileNotFoundError:
                yield file, ["no such file"]
                continue
            except json.JSONDecodeError as e:
                yield file, [f"not JSON: {e}"]
                continue
            yield file, validation_errors(record)


def iter_records(results: Path) -> Iterator[dict[str, Any]]:
    for file in sorted(Path(results).rglob("seed*.json")):
        yield read_record(file)
