"""The command line: run, teacher, list, validate."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdbench.errors import KDBenchError, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2 (the same as every other usage error)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kdbench", description="Knowledge-distillation benchmark and leaderboard.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train and evaluate one method on one task; write a record")
    _run_args(run)
    run.add_argument("--method", required=True)
    teacher = sub.add_parser("teacher", help="train (or load from the cache) a card's teacher "
                             "and write its record")
    _run_args(teacher)

    lst = sub.add_parser("list", help="list tasks, methods or protocols")
    lst.add_argument("what", choices=["tasks", "methods", "protocols"])
    val = sub.add_parser("validate", help="check result records against the schema")
    val.add_argument("paths", nargs="+", type=Path)

    cmp = sub.add_parser("compare", help="mean ± std over seeds, Δ vs baseline with a paired t-test (Holm)")
    cmp.add_argument("--task", default=None, help="one task's table (default: every task with records)")
    cmp.add_argument("--protocol", default=None,
                     help="a card name or tier (default: small with --task, every protocol without)")
    cmp.add_argument("--results", type=Path, default=Path("results"))
    cmp.add_argument("--format", dest="fmt", default="terminal", help="terminal, csv, json or markdown")
    cmp.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdict")
    return p


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True)
    p.add_argument("--protocol", default="small",
                   help="a tier (smoke, small, medium, standard), a card name, or a card path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    env_root = os.environ.get("KDBENCH_DATA_ROOT")
    p.add_argument("--data-root", type=Path, default=Path(env_root) if env_root else None)
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--teacher", type=Path, default=None, help="a teacher checkpoint to use")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a card field (train.epochs=5) or a hyperparameter "
                        "(method.temperature=2)")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return int(COMMANDS[args.command](args) or 0)
    except KDBenchError as e:
        print(f"kdbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("kdbench: interrupted", file=sys.stderr)
        return 130


def _options(args: argparse.Namespace, method: str) -> Any:
    from kdbench.runner.protocol import parse_sets
    from kdbench.runner.spec import RunOptions

    return RunOptions(task=args.task, method=method, protocol=args.protocol, seed=args.seed,
                      device=args.device, data_root=args.data_root, results=args.results,
                      teacher=args.teacher, sets=parse_sets(args.sets))


def cmd_run(args: argparse.Namespace) -> int:
    from kdbench.runner.run import run

    record, path = run(_options(args, args.method))
    _summary(record, path)
    return 0 if record["status"] == "ok" else 1


def cmd_teacher(args: argparse.Namespace) -> int:
    from kdbench.runner.run import train_teacher

    record, path = train_teacher(_options(args, "kd"))
    _summary(record, path)
    return 0


def _summary(record: dict[str, Any], path: Path) -> None:
    from kdbench.metrics import METRICS

    m = record["metrics"]
    head = (f"{record['task']} / {record['protocol']['name']} / {record['method']['name']} / "
            f"seed {record['seed']}: {record['status']}")
    print(head)
    if record["status"] != "ok":
        print(f"  error: {record['error']}")
    for name, value in m["values"].items():
        info = METRICS.get(name)
        label = (f"{info.label} ({info.unit})" if info.unit else info.label) if info else name
        mark = "  ← primary" if name == m["primary"] else ""
        shown = "       n/a" if value is None else f"{value:10.4f}"
        print(f"  {name:<9} {shown}   {label}{mark}")
    cost = record["cost"]
    print(f"  trained in {cost['train_seconds']:.1f} s on {cost['device']}; record: {path}")


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "tasks":
        from kdbench.adapters import TASKS, get_adapter

        for task in TASKS:
            adapter = get_adapter(task)
            parts = ", ".join(sorted(adapter.provides))
            print(f"{task:<16} primary {adapter.primary_metric:<6} provides {parts}")
    elif args.what == "methods":
        from kdbench.adapters import TASKS, get_adapter
        from kdbench.methods import registry

        provides = {task: get_adapter(task).provides for task in TASKS}
        rows = sorted(registry().values(), key=lambda c: c.name)
        print(f"{'name':<10} {'teacher':<9} {'needs':<36} {'tasks':<28} paper")
        for cls in rows:
            needs = ", ".join(sorted(cls.needs)) or "-"
            tasks = ", ".join(t for t, p in provides.items() if cls.needs <= p) or "-"
            print(f"{cls.name:<10} {cls.teacher:<9} {needs:<36} {tasks:<28} {cls.paper}")
    else:
        from kdbench.adapters import TASKS
        from kdbench.runner.protocol import load_protocol, task_cards

        for task in TASKS:
            for name in task_cards(task):
                p = load_protocol(task, name)
                desc = str(p.card.get("description", "")).strip().splitlines()
                print(f"{task:<16} {name:<12} {p.tier:<9} {desc[0] if desc else ''}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from kdbench.records import validate_paths

    bad = total = 0
    for path, errors in validate_paths(args.paths):
        total += 1
        if errors:
            bad += 1
            print(f"{path}: invalid: {errors[0]}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
        else:
            print(f"{path}: ok")
    if total == 0:
        print("kdbench: error: no .json records found under the given paths", file=sys.stderr)
        return 2
    print(f"{total - bad} valid, {bad} invalid")
    return 1 if bad else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from kdbench.compare import compare_results

    sys.stdout.write(compare_results(args.results, task=args.task, protocol=args.protocol, fmt=args.fmt,
                                     alpha=args.alpha))
    return 0


COMMANDS = {"run": cmd_run, "teacher": cmd_teacher, "list": cmd_list, "validate": cmd_validate,
            "compare": cmd_compare}

if __name__ == "__main__":
    sys.exit(main())
