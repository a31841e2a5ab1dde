"""`kdbench tune`: the one way a card may change a method's key hyperparameters.

Every method declares a small grid over its one or two key hyperparameters (`Method.tune_grid`,
`TUNE_BUDGET` points for every method, the paper default among them). Tuning trains each point
once, on one seed, and picks the best **val** score (ties: the earlier grid point); test is never
read. The grid, every point's val score and the choice are written beside the card as
`tuning/<card>-<method>.json`, and the card cites the file (`tuning: {<method>: tuning/...}`)
next to the chosen values in its `methods:` section; loading a card checks that the two agree
(kdbench.protocol.check_citations).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.errors import UsageError
from kdbench.records import atomic_write_bytes, read_record

TUNE_SEED = 0


@dataclass
class TuneResult:
    path: Path
    choice: dict[str, Any]
    text: str


def grid_points(grid: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def tune(task: str, protocol: str, method: str, results: Path, *, out: Path | None = None, device: str = "auto",
         data_root: Path | None = None, seed: int = TUNE_SEED) -> TuneResult:
    """Train every grid point of `method` on `protocol` (one seed), choose on val, write the file."""
    from kdbench.methods import get_method
    from kdbench.methods.base import TUNE_BUDGET
    from kdbench.metrics import metric
    from kdbench.protocol import load_protocol
    from kdbench.runner.run import run
    from kdbench.runner.spec import RunOptions, resolve
    from kdbench.runner.sweep import _done

    cls = get_method(method)
    method = cls.name  # an alias (a renamed method's earlier name) tunes the method under its name
    if not cls.tune_grid:
        raise UsageError(f"method {method!r} declares no tuning grid (it has no key hyperparameter to tune)")
    points = grid_points(cls.tune_grid)
    if len(points) != TUNE_BUDGET:
        raise UsageError(f"method {method!r}: its grid has {len(points)} points; every method gets {TUNE_BUDGET}")
    card = load_protocol(task, protocol)
    primary = card.typed.metrics.primary
    sign = 1.0 if metric(primary).direction == "higher" else -1.0
    rows = []
    for point in points:
        options = RunOptions(task=task, method=method, protocol=protocol, seed=seed, device=device,
                             data_root=data_root, results=results,
                             sets={f"method.{k}": v for k, v in point.items()})
        spec = resolve(options)
        print(f"tune {task}/{card.key} {method} {point}", file=sys.stderr)
        if _done(spec, results):
            record = read_record(spec.record_path)
        else:
            options.overwrite = True
            record = run(options)[0]
        value = (record["metrics"].get("val") or {}).get(primary) if record["status"] == "ok" else None
        rows.append({"hparams": point, "val": value, "status": record["status"],
                     "record": str(spec.record_path.relative_to(results)),
                     "train_seconds": record["cost"]["train_seconds"]})
    scored = [r for r in rows if r["val"] is not None]
    if not scored:
        raise UsageError(f"tune {task}/{card.key} {method}: no grid point finished with a val {primary}")
    best = max(scored, key=lambda r: (sign * r["val"], -rows.index(r)))
    data = {"task": task, "card": card.name, "card_sha256": card.sha256, "method": method, "seed": seed,
            "split": "val", "metric": primary, "direction": metric(primary).direction, "budget": TUNE_BUDGET,
            "grid": {k: list(v) for k, v in cls.tune_grid.items()}, "runs": rows, "choice": best["hparams"],
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path = out or card.path.parent / "tuning" / f"{card.name}-{method}.json"
    atomic_write_bytes(path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode())
    lines = [f"tune {task}/{card.key} {method} (val {primary}, seed {seed}, {len(points)} points)"]
    lines += [f"  {json.dumps(r['hparams'])}: {r['val'] if r['val'] is not None else r['status']}" for r in rows]
    lines.append(f"  choice {json.dumps(best['hparams'])} → {path}")
    lines.append(f"  cite it in the card: methods: {{{method}: {json.dumps(best['hparams'])}}} and "
                 f"tuning: {{{method}: tuning/{path.name}}}")
    return TuneResult(path, best["hparams"], "\n".join(lines))

