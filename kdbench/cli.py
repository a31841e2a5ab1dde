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
        from kdbench.record_checks import cut

        raise UsageError(cut(message, 300))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kdbench", description="Knowledge-distillation benchmark and leaderboard.")
    from kdbench import __version__

    p.add_argument("--version", action="version", version=f"kdbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train and evaluate one method on one task; write a record")
    _run_args(run)
    run.add_argument("--method", required=True, help="a method name (kdbench list methods)")
    teacher = sub.add_parser("teacher", help="train (or load from the cache) a card's teacher "
                             "and write its record")
    _run_args(teacher)

    rep = sub.add_parser("reproduce", help="re-run a record from its embedded spec into a scratch folder and "
                         "print each metric's difference to the record")
    rep.add_argument("record", type=Path, help="a record file (results/<task>/<key>/<method>/seed<N>.json)")
    rep.add_argument("--scratch", type=Path, default=None, help="where the re-run goes (default: a new temp dir)")
    rep.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _data_root_arg(rep)
    rep.add_argument("--teacher", type=Path, default=None,
                     help="the teacher checkpoint, for records of a given teacher")

    tune = sub.add_parser("tune", help="a method's declared grid on one seed, chosen on val; writes the tune "
                          "file a card cites")
    tune.add_argument("--task", required=True, help="a task (kdbench list tasks)")
    tune.add_argument("--protocol", default="small", help="a tier, card name or card path (default: small)")
    tune.add_argument("--method", required=True, help="a method with a tuning grid (kdbench list methods)")
    tune.add_argument("--seed", type=int, default=0, help="the one seed tuning trains (default: 0)")
    tune.add_argument("--out", type=Path, default=None,
                      help="the tune file (default: tuning/<card>-<method>.json beside the card)")
    tune.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _data_root_arg(tune)
    _results_arg(tune)

    proto = sub.add_parser("protocol", help="protocol tools: check that a card can measure distillation")
    proto_sub = proto.add_subparsers(dest="protocol_command", required=True, parser_class=_Parser)
    check = proto_sub.add_parser("check", help="baseline at 1× and 2× epochs, teacher at 1× and 1.5×, baseline "
                                 "over the card's seeds, all on val: convergence, gap, headroom, power")
    check.add_argument("--task", required=True, help="a task (kdbench list tasks)")
    check.add_argument("--protocol", default="small", help="a tier, card name or card path (default: small)")
    check.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    check.add_argument("--records-only", action="store_true",
                       help="judge the records already in --results; train nothing (a missing record is an error)")
    _data_root_arg(check)
    _results_arg(check)

    sweep = sub.add_parser("sweep", help="tasks × methods × seeds × protocols on a local pool, Ray or Slurm")
    _sweep_args(sweep)

    lst = sub.add_parser("list", help="list tasks, methods or protocols")
    lst.add_argument("what", choices=["tasks", "methods", "protocols"],
                     help="tasks (what each provides), methods (teacher, needs, the tasks that serve it) or "
                          "protocols (every shipped card and its tier)")
    val = sub.add_parser("validate", help="check result records against the schema")
    val.add_argument("paths", nargs="+", type=Path, help="record files or folders of them")

    cmp = sub.add_parser("compare", help="mean ± std over seeds, Δ vs baseline with a paired t-test (Holm)")
    cmp.add_argument("--task", default=None, help="one task's table (default: every task with records)")
    cmp.add_argument("--protocol", default=None,
                     help="a card name or tier (default: small with --task, every protocol without)")
    _results_arg(cmp)
    cmp.add_argument("--format", dest="fmt", default="terminal",
                     help="terminal, csv, json or markdown (default: terminal)")
    cmp.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdict (default: 0.05)")

    site = sub.add_parser("site", help="the static leaderboard: build it from records, or serve it locally")
    site_sub = site.add_subparsers(dest="site_command", required=True, parser_class=_Parser)
    build = site_sub.add_parser("build", help="render results/ into a static site (offline, no torch)")
    build.add_argument("--results", type=Path, default=Path("results"),
                       help="the records to render (default: results, the leaderboard's)")
    build.add_argument("--out", type=Path, default=Path("site"), help="where the site goes (default: site)")
    build.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts (default: 0.05)")
    build.add_argument("--jobs", type=int, default=None, help="processes reading records (default: CPUs, at most 4)")
    serve = site_sub.add_parser("serve", help="serve a built site on localhost for a local look")
    serve.add_argument("--out", type=Path, default=Path("site"), help="the built site folder (default: site)")
    serve.add_argument("--port", type=int, default=8000, help="the port (default: 8000)")
    serve.add_argument("--bind", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    return p


def _data_root_arg(p: argparse.ArgumentParser) -> None:
    env_root = os.environ.get("KDBENCH_DATA_ROOT")
    p.add_argument("--data-root", type=Path, default=Path(env_root) if env_root else None,
                   help="where real datasets are read from (default: $KDBENCH_DATA_ROOT)")


def _results_arg(p: argparse.ArgumentParser) -> None:
    from kdbench.records import default_results

    p.add_argument("--results", type=Path, default=default_results(),
                   help="the results folder (default: $KDBENCH_RESULTS, else ./kdbench-results; the "
                        "leaderboard's is results/, written only when named)")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="a task (kdbench list tasks)")
    p.add_argument("--protocol", default="small",
                   help="a tier (smoke, small, medium, standard), a card name, or a card path (default: small)")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _data_root_arg(p)
    _results_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing record of the same key")
    p.add_argument("--teacher", type=Path, default=None, help="a teacher checkpoint to use")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a card field (train.epochs=5) or a hyperparameter (method.temperature=2); "
                        "the run is then an ablation, stored under <card>+<hash>")


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default="all", help="'all' or a comma list of tasks (default: all)")
    p.add_argument("--methods", default="all",
                   help="'all' (every method each task serves) or a comma list (default: all)")
    p.add_argument("--seeds", default="card", help="'card' (each card's seeds: list), or ranges and lists: "
                   "0-4, 0,3,5 (default: card)")
    p.add_argument("--protocol", "--protocols", dest="protocols", default="small",
                   help="tiers, card names or card paths, comma-separated, or 'all' (default: small)")
    p.add_argument("--executor", default="local", help="local, ray or slurm (default: local)")
    p.add_argument("--workers", type=int, default=1, help="runs at a time (local pool size, Ray CPUs; default: 1)")
    p.add_argument("--threads", type=int, default=None, help="threads per run (default: CPUs / workers)")
    p.add_argument("--gpus-per-run", type=int, default=0, metavar="N",
                   help="GPUs reserved for each run, which sees only those (local: slot i gets visible GPUs "
                        "[i·N, (i+1)·N); Ray: num_gpus=N; Slurm: gpus_per_node=N); 0: runs on CPU (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda; cuda needs --gpus-per-run N >= 1, and "
                   "auto is cuda when N >= 1, cpu when N = 0 (default: auto)")
    _data_root_arg(p)
    _results_arg(p)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="an override applied to every run (as in kdbench run: an ablation)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--logs", type=Path, default=None, help="where per-run logs go (default: a temp dir)")
    p.add_argument("--fresh-workers", action="store_true", help="local: a fresh worker process per run "
                   "(default: one long-lived worker per slot, importing once)")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--slurm-partition", default=None)
    p.add_argument("--slurm-cluster", default=None, help="submitit cluster: slurm (default when "
                   "available), local or debug")
    p.add_argument("--slurm-param", dest="slurm_params", action="append", default=[], metavar="KEY=VALUE",
                   help="any submitit parameter, e.g. slurm_gres=gpu:1, timeout_min=120")
    p.add_argument("--no-slurm-array", dest="slurm_array", action="store_false",
                   help="one job per run instead of one job array")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return int(COMMANDS[args.command](args) or 0)
    except KDBenchError as e:
        from kdbench.records import printable

        print(f"kdbench: error: {printable(str(e), one_line=False)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("kdbench: interrupted", file=sys.stderr)
        return 130


def _options(args: argparse.Namespace, method: str) -> Any:
    from kdbench.protocol import parse_sets
    from kdbench.runner.spec import RunOptions

    return RunOptions(task=args.task, method=method, protocol=args.protocol, seed=args.seed,
                      device=args.device, data_root=args.data_root, results=args.results,
                      teacher=args.teacher, sets=parse_sets(args.sets), overwrite=args.overwrite)


def cmd_run(args: argparse.Namespace) -> int:
    from kdbench.runner.run import run

    record, path = run(_options(args, args.method))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for the run
        _summary(record, path)
    return 0 if record["status"] == "ok" else 1


def cmd_teacher(args: argparse.Namespace) -> int:
    from kdbench.runner.run import train_teacher
    from kdbench.runner.spec import TEACHER_ONLY

    record, path = train_teacher(_options(args, TEACHER_ONLY))
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


def cmd_sweep(args: argparse.Namespace) -> int:
    from kdbench.protocol import parse_sets
    from kdbench.runner.executors import EXECUTORS, ExecutorOptions, check_gpus, drive
    from kdbench.runner.gpus import sweep_device, visible_gpus
    from kdbench.runner.sweep import describe, make_plan

    if args.executor not in EXECUTORS:
        raise UsageError(f"unknown executor {args.executor!r}; valid: {', '.join(EXECUTORS)}")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    sets = parse_sets(args.sets)
    slurm = dict(parse_sets(args.slurm_params))
    if args.slurm_partition:
        slurm["slurm_partition"] = args.slurm_partition
    opts = ExecutorOptions(args.executor, args.workers, args.results, args.data_root, args.device, args.threads,
                           args.ray_address, slurm, args.slurm_cluster, args.slurm_array, args.logs,
                           args.fresh_workers, args.gpus_per_run)
    # before any work: the device and GPU request agree (a dry run), and this machine can meet it
    if args.dry_run:
        sweep_device(args.device, args.gpus_per_run)
    else:
        check_gpus(opts)
    plan = make_plan(args.tasks, args.methods, args.seeds, args.protocols, sets, args.results, args.data_root)
    if args.dry_run:
        describe(plan)
        return 0
    print(f"sweep: {len(plan.teachers)} teachers, {len(plan.runs)} runs, {len(plan.skipped)} already done",
          file=sys.stderr)
    if args.gpus_per_run == 0 and args.device == "auto" and args.executor == "local" and visible_gpus():
        print(f"sweep: {len(visible_gpus())} GPU(s) visible, but --gpus-per-run 0 runs on CPU; pass --gpus-per-run 1 "
              "to give each run a GPU of its own", file=sys.stderr)
    if args.gpus_per_run > 1:
        print(f"sweep: each run sees its {args.gpus_per_run} GPUs but trains as one process on the first of them "
              "(multi-rank sweep items are not built yet; torchrun runs one kdbench run on several)", file=sys.stderr)
    outcomes = drive(plan, opts)
    failed = [o for o in outcomes if o.status != "ok"]
    for o in failed:
        print(f"  {o.status}: {o.item.label}: {o.message.splitlines()[0] if o.message else ''}")
    print(f"{len(outcomes) - len(failed)} ok, {len(failed)} failed, {len(plan.skipped)} skipped")
    return 1 if failed else 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from kdbench.runner.reproduce import reproduce

    report = reproduce(args.record, args.scratch, device=args.device, data_root=args.data_root,
                       teacher=args.teacher)
    print(report.text)
    return 0 if report.status == "ok" else 1


def cmd_tune(args: argparse.Namespace) -> int:
    from kdbench.runner.tune import tune

    result = tune(args.task, args.protocol, args.method, args.results, out=args.out, device=args.device,
                  data_root=args.data_root, seed=args.seed)
    print(result.text)
    return 0


def cmd_protocol(args: argparse.Namespace) -> int:
    from kdbench.runner.protocol_check import protocol_check

    report = protocol_check(args.task, args.protocol, args.results, device=args.device, data_root=args.data_root,
                            records_only=args.records_only)
    print(report.text)
    return 1 if report.data["passed"] is False else 0


def cmd_list(args: argparse.Namespace) -> int:
    from kdbench.listing import LISTS

    sys.stdout.write(LISTS[args.what]())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from kdbench.records import printable, validate_paths

    bad = total = 0
    for path, errors in validate_paths(args.paths):
        total += 1
        if errors:
            bad += 1
            more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
            print(f"{printable(path)}: invalid: {printable(errors[0])}{more}")
        else:
            print(f"{printable(path)}: ok")
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


def cmd_site(args: argparse.Namespace) -> int:
    if args.site_command == "serve":
        from kdbench.site.serve import serve

        serve(args.out, args.port, args.bind)
        return 0
    from kdbench.site.build import build_site

    done = build_site(args.results, args.out, alpha=args.alpha, jobs=args.jobs)
    skipped = f", {len(done.skipped)} entries skipped (listed above)" if done.skipped else ""
    print(f"site: {done.records} records, {done.settings} settings, {done.methods} methods, {done.pages} pages "
          f"in {done.seconds:.1f} s{skipped} → {done.out / 'index.html'}")
    return 0


COMMANDS = {"run": cmd_run, "reproduce": cmd_reproduce, "tune": cmd_tune, "protocol": cmd_protocol, "sweep": cmd_sweep,
            "teacher": cmd_teacher, "list": cmd_list, "validate": cmd_validate,
            "compare": cmd_compare, "site": cmd_site}

if __name__ == "__main__":
    sys.exit(main())
