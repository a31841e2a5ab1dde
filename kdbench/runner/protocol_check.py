"""`kdbench protocol check`: can a card measure distillation at all?

It runs (or reuses the records of) the baseline at the card's epochs on every seed of the card
and at 2× the epochs on its first `convergence_seeds` seeds (the card's field; 1 where unset),
and the teacher at its epochs and at 1.5× them, all scored on **val**, and reports:

- convergence: the baseline's mean change from 1× to 2× epochs over those seeds (each seed
  paired with itself), as a fraction of the teacher–baseline gap (a card whose baseline still
  climbs measures training speed, not distillation), with the standard error of that mean where
  more than one seed is run; the same for the teacher at 1.5×. On a card whose seed SD is a
  large part of its gap one seed's change is mostly noise, so such a card runs several;
- the gap over the baseline's seed SD, and the headroom from the teacher to the metric's ceiling;
- power: the minimal detectable difference (two-sided paired t-test, 80 % power, α / m: Holm's
  most stringent level, m the card's `comparisons` — the family it is planned for — or, where a
  card leaves it unset, the methods the task serves besides the baseline) at the card's
  seeds, over the gap, and the seeds that would bring it to a quarter of the gap. The paired
  SD is estimated as √2 × the baseline's seed SD, i.e. a method uncorrelated with the baseline
  on a seed; methods that share the seed's data order correlate and do better than this;
- the measured cost per run;

and a verdict on each rule a small or medium card must pass (`RULES`): R1 converged (both
convergence changes ≤ 10 % of the gap), R2 a real teacher with headroom (gap ≥ 3 baseline seed
SDs; the baseline at most 95 % of the way to the metric's ceiling), R3 power (≥ 5 seeds, an
MDD ≤ 25 % of the gap, and a family m no smaller than the methods the task serves), R4 cost
(a baseline run's training ≤ 120 s, 240 s for detection and pose, on small cards). R5 (real data
is credible: reference models beside the teacher) is stated in the medium cards and not computed
here. Smoke cards are reported, never judged.

The 2× and 1.5× runs are ablations (stored under `<card>+<sha8>`), never the card's records.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.errors import UsageError
from kdbench.metrics import ceiling, metric
from kdbench.records import atomic_write_bytes, read_record
from kdbench.stats import minimal_detectable_difference, seeds_needed, summarize

POWER = 0.8
ALPHA = 0.05
CONVERGED = 0.10  # R1: the most a longer run may move, as a fraction of the gap
GAP_SDS = 3.0  # R2: the least gap, in baseline seed SDs
CEILING_FRACTION = 0.95  # R2: the baseline at most this far from the metric's floor to its ceiling
MDD_FRACTION = 0.25  # R3
MIN_SEEDS = 5  # R3
RUN_SECONDS = {"detection": 240.0, "pose": 240.0}  # R4, small cards; other tasks 120 s
RULES = ("R1", "R2", "R3", "R4")


@dataclass
class CheckReport:
    text: str
    data: dict[str, Any]
    path: Path


def _reuse_or_run(options: Any, records_only: bool = False) -> dict[str, Any]:
    """The ok record of exactly this run if one exists, else a fresh run's record (with
    `records_only`, a missing record is an error instead)."""
    from kdbench.runner.run import run, train_teacher
    from kdbench.runner.spec import TEACHER_ONLY, resolve
    from kdbench.runner.sweep import _done

    teacher = options.method == "teacher"
    if teacher:
        options.method = TEACHER_ONLY
    spec = resolve(options)
    if teacher:
        from kdbench.records import record_path

        path = record_path(options.results, spec.protocol.task, spec.protocol.key, "teacher", options.seed)
        if path.is_file():
            record = read_record(path)
            if record.get("protocol", {}).get("sha256") == spec.protocol.sha256:
                return record
        _missing(records_only, path)
        options.overwrite = True
        return train_teacher(options)[0]
    if _done(spec, options.results):
        return read_record(spec.record_path)
    _missing(records_only, spec.record_path)
    options.overwrite = True
    return run(options)[0]


def _missing(records_only: bool, path: Path) -> None:
    if records_only:
        raise UsageError(f"--records-only: no ok record of this card's current content at {path}; run "
                         "`kdbench protocol check` without --records-only to train it")


def _val(record: dict[str, Any], primary: str) -> float:
    value = (record["metrics"].get("val") or {}).get(primary)
    if record["status"] != "ok" or value is None:
        raise UsageError(f"{record['task']}/{record['protocol']['key']}/{record['method']['name']} seed "
                         f"{record['seed']}: no val {primary} ({record['status']}: {record.get('error')})")
    return float(value)


def protocol_check(task: str, protocol: str, results: Path, *, device: str = "auto",
                   data_root: Path | None = None, alpha: float = ALPHA, records_only: bool = False) -> CheckReport:
    from kdbench.adapters import get_adapter
    from kdbench.adapters.base import why_not_served
    from kdbench.methods import registry
    from kdbench.protocol import load_protocol
    from kdbench.runner.spec import RunOptions

    card = load_protocol(task, protocol)
    if card.get("teacher.train") is False:
        raise UsageError(f"protocol {card.name!r} uses a given teacher (teacher.train: false); protocol check "
                         "trains the teacher and needs a card that does")
    primary, typed = card.typed.metrics.primary, card.typed
    sign = 1.0 if metric(primary).direction == "higher" else -1.0
    epochs = typed.train.epochs
    teacher_epochs = (typed.teacher.train.epochs or epochs) if typed.teacher.train else epochs  # type: ignore[attr-defined]
    seeds = list(typed.seeds)

    def opts(method: str, seed: int, sets: dict[str, Any] | None = None) -> RunOptions:
        return RunOptions(task=task, method=method, protocol=protocol, seed=seed, device=device,
                          data_root=data_root, results=results, sets=dict(sets or {}))

    print(f"protocol check {task}/{card.key}: baseline × {len(seeds)} seeds, baseline at {2 * epochs} epochs, "
          f"teacher at {teacher_epochs} and {math.ceil(1.5 * teacher_epochs)} epochs (reusing records in {results})",
          file=sys.stderr)
    base = {s: _reuse_or_run(opts("baseline", s), records_only) for s in seeds}
    seeds_2x = seeds[:typed.convergence_seeds or 1]
    base2 = {s: _reuse_or_run(opts("baseline", s, {"train.epochs": 2 * epochs}), records_only) for s in seeds_2x}
    tseed = int(typed.teacher.seed)  # type: ignore[attr-defined]
    teacher = _reuse_or_run(opts("teacher", tseed), records_only)
    teacher15 = _reuse_or_run(opts("teacher", tseed, {"teacher.train.epochs": math.ceil(1.5 * teacher_epochs)}),
                              records_only)

    b_vals = {s: _val(r, primary) for s, r in base.items()}
    b = summarize(b_vals.values())
    t_val, t15_val = _val(teacher, primary), _val(teacher15, primary)
    b2_vals = {s: _val(r, primary) for s, r in base2.items()}
    change = summarize(sign * (b2_vals[s] - b_vals[s]) for s in seeds_2x)  # paired: each seed with itself
    gap = sign * (t_val - b.mean)
    sd_pair = math.sqrt(2.0) * b.std if b.n >= 2 else math.nan
    served = [m for m, cls in registry().items()
              if m != "baseline" and why_not_served(get_adapter(task), cls) is None and m not in ("teacher",)]
    family = typed.comparisons if typed.comparisons is not None else len(served)
    alpha_holm = alpha / max(family, 1)
    mdd = minimal_detectable_difference(sd_pair, len(seeds), alpha_holm, POWER)
    best = ceiling(primary)

    def ratio(x: float, y: float) -> float | None:
        return None if not math.isfinite(x) or not math.isfinite(y) or y == 0 else x / y

    needed = seeds_needed(sd_pair, 0.25 * gap, alpha_holm, POWER) if gap > 0 and math.isfinite(sd_pair) else None
    data: dict[str, Any] = {
        "task": task, "protocol": card.name, "key": card.key, "sha256": card.sha256, "split": "val",
        "metric": primary, "direction": metric(primary).direction, "seeds": seeds,
        "baseline": {"epochs": epochs, "val": b_vals, "mean": b.mean, "sd": b.std,
                     "epochs_2x": 2 * epochs, "seeds_2x": seeds_2x, "val_2x": b2_vals,
                     "mean_2x": summarize(b2_vals.values()).mean},
        "teacher": {"seed": tseed, "epochs": teacher_epochs, "val": t_val,
                    "epochs_1_5x": math.ceil(1.5 * teacher_epochs), "val_1_5x": t15_val},
        "gap": gap,
        "convergence_baseline": ratio(change.mean, gap),
        "convergence_baseline_se": ratio(change.std / math.sqrt(change.n), gap) if change.n >= 2 else None,
        "convergence_teacher": ratio(sign * (t15_val - t_val), gap),
        "gap_over_sd": ratio(gap, b.std),
        "ceiling": best, "headroom": None if best is None else sign * (best - t_val),
        "power": {"alpha": alpha, "methods": family, "served": len(served), "alpha_holm": alpha_holm, "power": POWER,
                  "paired_sd": sd_pair if math.isfinite(sd_pair) else None, "paired_sd_rule": "sqrt(2) x baseline SD",
                  "n": len(seeds), "mdd": mdd if math.isfinite(mdd) else None,
                  "mdd_over_gap": ratio(mdd, gap), "n_for_quarter_gap": needed},
        "cost_seconds": {"baseline": summarize(r["cost"]["train_seconds"] for r in base.values()).mean,
                         "teacher": teacher["cost"]["train_seconds"]},
    }
    data["rules"] = verdicts(data, typed.tier)
    data["passed"] = None if typed.tier == "smoke" else all(r["pass"] for r in data["rules"].values())
    path = Path(results) / task / card.key / "protocol-check.json"
    data = _finite(data)
    atomic_write_bytes(path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode())
    return CheckReport(_text(data), data, path)


def verdicts(d: dict[str, Any], tier: str) -> dict[str, dict[str, Any]]:
    """Each rule's pass/fail and the figures it was judged on (module docstring)."""
    def le(x: float | None, bound: float) -> bool:
        return x is not None and math.isfinite(x) and x <= bound

    p, gap = d["power"], d["gap"]
    # How far the baseline is from 0 to the ceiling; higher-is-better metrics only (their floor is 0).
    reach = d["baseline"]["mean"] / d["ceiling"] if d["direction"] == "higher" and d["ceiling"] else None
    run_s = d["cost_seconds"]["baseline"]
    limit = RUN_SECONDS.get(d["task"], 120.0)
    r1 = [d["convergence_baseline"], d["convergence_teacher"]]  # finite or None (`ratio`)
    return {
        "R1": {"pass": gap > 0 and all(x is not None and abs(x) <= CONVERGED for x in r1),
               "rule": f"|baseline 2x - 1x| and |teacher 1.5x - 1x| <= {CONVERGED:g} of the gap",
               "values": r1},
        "R2": {"pass": gap > 0 and (d["gap_over_sd"] or 0.0) >= GAP_SDS
               and (reach is None or reach <= CEILING_FRACTION),
               "rule": f"gap >= {GAP_SDS:g} baseline seed SDs, baseline <= {CEILING_FRACTION:g} of the way "
                       "to the ceiling",
               "values": [d["gap_over_sd"], reach]},
        "R3": {"pass": p["n"] >= MIN_SEEDS and le(p["mdd_over_gap"], MDD_FRACTION)
               and p.get("served", p["methods"]) <= p["methods"],
               "rule": f">= {MIN_SEEDS} seeds and MDD <= {MDD_FRACTION:g} of the gap, at a Holm family "
                       "(the card's comparisons) no smaller than the methods the task serves",
               "values": [p["n"], p["mdd_over_gap"], p["methods"]]},  # not `served`: a new method changes no
               # verdict of a card planned for it
        "R4": {"pass": tier != "small" or le(run_s, limit),
               "rule": f"small cards: a baseline run trains in <= {limit:g} s"
                       + ("" if tier == "small" else " (not a small card)"),
               "values": [run_s]},
    }


def _finite(node: Any) -> Any:
    """NaN and infinities (an SD of one seed, an MDD without one) as null."""
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_finite(v) for v in node]
    return None if isinstance(node, float) and not math.isfinite(node) else node


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _text(d: dict[str, Any]) -> str:
    p, b, t = d["power"], d["baseline"], d["teacher"]
    return "\n".join([
        f"protocol check: {d['task']}/{d['key']} (val {d['metric']}, {d['direction']} is better)",
        f"  baseline   {b['epochs']:>4} epochs  {_fmt(b['mean'])} ± {_fmt(b['sd'])} over seeds {d['seeds']}",
        f"  baseline   {b['epochs_2x']:>4} epochs  {_fmt(b['mean_2x'])} (seeds {b['seeds_2x']})",
        f"  teacher    {t['epochs']:>4} epochs  {_fmt(t['val'])} (seed {t['seed']})",
        f"  teacher    {t['epochs_1_5x']:>4} epochs  {_fmt(t['val_1_5x'])}",
        f"  teacher–baseline gap            {_fmt(d['gap'])}",
        f"  convergence: baseline 2× − 1×   {_fmt(d['convergence_baseline'], '.2f')} of the gap"
        + ("" if d.get("convergence_baseline_se") is None else
           f" (mean over {len(b['seeds_2x'])} seeds, SE {_fmt(d['convergence_baseline_se'], '.2f')})"),
        f"               teacher 1.5× − 1×  {_fmt(d['convergence_teacher'], '.2f')} of the gap",
        f"  gap / baseline seed SD          {_fmt(d['gap_over_sd'], '.2f')}",
        f"  headroom teacher → ceiling      {_fmt(d['headroom'])} (ceiling {_fmt(d['ceiling'], 'g')})",
        f"  Holm family                     {p['methods']} comparisons (the task serves {p.get('served', '?')} "
        "methods besides the baseline)",
        f"  MDD at n = {p['n']} (80% power, α = {p['alpha']}/{p['methods']}, paired SD {_fmt(p['paired_sd'])})"
        f"  {_fmt(p['mdd'])} = {_fmt(p['mdd_over_gap'], '.2f')} of the gap",
        f"  seeds for MDD ≤ gap/4           {p['n_for_quarter_gap'] if p['n_for_quarter_gap'] else 'n/a'}",
        f"  cost per run (train s)          baseline {_fmt(d['cost_seconds']['baseline'], '.1f')}, "
        f"teacher {_fmt(d['cost_seconds']['teacher'], '.1f')}",
        *[f"  {name} {'pass' if r['pass'] else 'FAIL'}: {r['rule']}" for name, r in d["rules"].items()],
        "  verdict: " + ("smoke card, not judged" if d["passed"] is None else
                         "passes R1-R4" if d["passed"] else "FAILS " + ", ".join(
                             n for n, r in d["rules"].items() if not r["pass"])),
    ])
