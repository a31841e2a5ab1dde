"""The data-fraction service: the student trains on a fraction of the training split, the teacher
on all of it (card `train.data_fraction: {keep, rule}`; docs/architecture.md, Runner).

This is the setting of Ben-Baruch, Botach, Kviatkovsky, Aggarwal and Medioni, "Distilling the
Knowledge in Data Pruning" (ICML 2025, arXiv 2403.07854): a teacher trained on the complete
training set distils into a student trained on a pruned subset of it. Val and test are never
touched. What kdbench fixes, and why:

- **Where it applies.** After the teacher is built (trained on the whole split, its cache key
  blind to `train.data_fraction`: kdbench.runner.teachers.teacher_key) and told to the adapter
  (`attach_teacher`), before the student is built: `Adapter.keep_train` restricts the training
  split, so the student, the method's per-sample tables (`train_size`), the teacher-output cache
  and every epoch see the kept samples only. The card's epochs are run over the subset, so a
  smaller fraction trains fewer steps (DeepCore's main.py, the framework the paper used, does
  the same; `--set train.epochs=...` keeps the steps instead).
- **How many.** On a task whose training samples each have a class (`Adapter.train_classes`:
  classification, OOD), round(keep · n_c) samples of each class c, Python's round, as DeepCore's
  class-balanced selection (`balance=True`, its main.py default); elsewhere round(keep · N) of
  the N samples. A fraction that keeps no sample is refused.
- **`random`**: within each class (or among all samples), the first round(keep · n_c) of a
  permutation drawn by `torch.randperm` from a generator seeded with `subset_seed(seed)`, the
  run's seed: every seed of a card trains on its own subset, and every method at that seed on
  the same one (paired comparisons stay paired).
- **`el2n`**: EL2N, "the error L2-norm" of Paul, Ganguli and Dziugaite, "Deep Learning on a Data
  Diet" (NeurIPS 2021): ‖softmax(f(x)) − onehot(y)‖₂ of the final categorical head on the
  un-augmented sample (eval mode), averaged over `score_runs` (default 10) models of the
  student's architecture trained from independent initialisations (seeds `score_seed(r)`) for
  the first `score_epochs` epochs (default a tenth of `train.epochs`, at least 1: the paper's
  epoch 20 of 200) of the card's student schedule, on the whole training split, with the task
  loss alone, the raw weights (no EMA). The highest scores are kept (the hardest samples,
  `run_keep_max_scores.py` of the official code, mansheej/data_diet at 1910b07), within each
  class as above; ties go to the lower index. Official code read: mansheej/data_diet
  (`data_diet/scores.py` get_lord_error_fn, `data_diet/data.py` subset_train_idxs_by_scores,
  `scripts/get_mean_score.py`) at 1910b07cfe9aad1b4d7869f0dc97b5618d1fe0d2; DeepCore
  (PatrickZH/DeepCore `main.py` at 31b6740: `--balance` true by default, `specific_model=None`;
  `deepcore/methods/uniform.py` at 4312342; `deepcore/methods/earlytrain.py` and `grand.py` at
  7436c0a: the scoring model is the trained model's architecture, the top scores kept per class
  under balance) for the class-balanced selection and the scoring model. The scores are the
  card's, not the seed's: one score vector prunes every seed (as one vector prunes every run in
  the official code), cached under `$KDBENCH_CACHE/data-scores/` per scoring model, so a sweep
  computes each model once.
- **Which tasks.** `random` needs `Adapter.train_subsets` (every shipped task has it); `el2n`
  also one categorical prediction per sample over the training set (`sample_heads`,
  `teacher_pass`; classification, OOD). A card a task cannot serve is refused in one line when
  the run is resolved, before any work (`refusal`).

The record's `spec.train_subset` says what the student saw: rule, keep, how many were kept of how
many, whether by class, the random subset's seed, the sha256 of the kept indices (positions in
the training split, sorted, as little-endian int64: `indices_sha256`) and, for `el2n`, the
scoring models and the sha256 of the score vector. A teacher's own record has none (it trained
on every sample).
"""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor

from kdbench.adapters.base import Adapter
from kdbench.adapters.splits import class_members, first_of_permutation
from kdbench.cache import cache_dir, sha256_json
from kdbench.cards.sections import DATA_FRACTION_RULES
from kdbench.errors import UsageError
from kdbench.methods.base import Method, MethodContext
from kdbench.methods.baseline import Baseline
from kdbench.protocol import Protocol
from kdbench.records import atomic_write_bytes
from kdbench.runner import checkpoint
from kdbench.runner.train import Job, fit, probe_outputs

#: What each rule needs from the adapter beside `train_subsets` (and, for el2n, exactly one
#: categorical head): the adapter services of kdbench.methods.base.ADAPTER_NEEDS.
RULE_NEEDS: dict[str, frozenset[str]] = {"random": frozenset(), "el2n": frozenset({"teacher_pass", "sample_heads"})}
#: Scoring models averaged when the card leaves `score_runs` unset (Paul et al.: 10 runs).
SCORE_RUNS = 10
#: Bumped whenever the score computation changes what a cached score vector holds.
SCORES_VERSION = 1
#: Card sections that cannot change a scoring model (it is the student's architecture, trained on
#: the whole split with the task loss): the teacher, the methods and the prose.
NOT_SCORING = ("teacher", "methods", "description", "reference", "default", "seeds", "tuning", "comparisons",
               "name", "tier")


class SubsetRefused(UsageError):
    """The task cannot serve the card's `train.data_fraction` (one line: why, and the valid rules)."""


def section(protocol: Protocol) -> dict[str, Any] | None:
    """The card's `train.data_fraction` (plain, unset keys left out), or None: all of the split."""
    value = protocol.get("train.data_fraction")
    return dict(value) if isinstance(value, dict) else None


def served(adapter: type[Adapter], rule: str) -> bool:
    """Whether the task can train its student on a subset chosen by `rule`."""
    if not adapter.train_subsets or not RULE_NEEDS[rule] <= adapter.provides:
        return False
    return rule != "el2n" or sum(kind == "categorical" for kind in adapter.head_kinds.values()) == 1


def refusal(adapter: type[Adapter], protocol: Protocol, method: type[Method] | None = None) -> str | None:
    """Why the task (or the method) cannot serve the card's data fraction (one line), or None when
    it can. A method of teacher kind "online" cannot: its teacher trains in the student's steps, so
    it would see only the student's subset."""
    spec = section(protocol)
    if spec is None:
        return None
    if method is not None and method.teacher == "online":
        return (f"method {method.name!r} trains its teacher online, in the student's steps, so under "
                "train.data_fraction its teacher would see only the student's subset; the data-fraction "
                "setting needs a teacher trained on the whole split (an external or self teacher)")
    rule = str(spec["rule"])
    settings = [k for k in ("score_epochs", "score_runs") if k in spec]
    if rule != "el2n" and settings:
        return (f"train.data_fraction.{settings[0]} is a setting of rule el2n; rule {rule} takes keep alone "
                f"(valid rules: {', '.join(DATA_FRACTION_RULES)})")
    if served(adapter, rule):
        return None
    task = adapter.task
    valid = [r for r in DATA_FRACTION_RULES if served(adapter, r)]
    if not adapter.train_subsets:
        return f"task {task!r} cannot serve train.data_fraction: it cannot train on a subset of its training split"
    return (f"task {task!r} cannot serve train.data_fraction.rule {rule}: EL2N scores every training sample "
            "from one categorical prediction per sample over the training set (sample_heads, teacher_pass, one "
            f"categorical head), which {task} does not provide; valid rules for {task}: {', '.join(valid)}")


def subset_seed(seed: int) -> int:
    """The seed of a run's `random` subset: derived from the run's seed alone."""
    return (seed * 1_000_039 + 271_828) % (2**63 - 1)


def score_seed(run: int) -> int:
    """The seed of EL2N scoring model `run` (its initialisation and data order): the card's, not the run's."""
    return (run * 1_000_081 + 314_159) % (2**63 - 1)


def score_epochs(spec: dict[str, Any], epochs: int) -> int:
    """The epochs each EL2N scoring model trains: the card's `score_epochs`, else a tenth of the
    card's epochs (Paul et al. score at epoch 20 of 200), at least 1, at most all of them."""
    value = spec.get("score_epochs")
    return min(epochs, int(value) if value is not None else max(1, round(epochs / 10)))


def el2n(logits: Tensor, target: Tensor) -> Tensor:
    """EL2N (Paul et al., 2021) of each row, in float64: ‖softmax(z) − onehot(y)‖₂ over the classes.

    Args:
        logits: (N, K) a model's logits.
        target: (N,) class indices.
    """
    p = torch.softmax(logits.double(), dim=-1)
    y = torch.nn.functional.one_hot(target.long(), p.shape[-1]).double()
    return torch.linalg.vector_norm(p - y, dim=-1)


def choose(n: int, keep: float, classes: Tensor | None, scores: np.ndarray | None,
           generator: torch.Generator | None) -> Tensor:
    """The kept positions of an n-sample training split, sorted (int64).

    Per class (`classes` (n,), else all n samples as one group) round(keep · size) samples: the
    highest `scores` (ties to the lower position) or, without scores, the first of a permutation
    drawn from `generator`, class by class in increasing class order.

    Raises:
        UsageError: nothing would be kept.
    """
    groups = [torch.arange(n)] if classes is None else class_members(classes)
    kept = []
    for members in groups:
        count = round(keep * len(members))
        if scores is None:
            kept.append(first_of_permutation(members, count, generator))
        else:
            order = np.argsort(-scores[members.numpy()], kind="stable")[:count]
            kept.append(members[torch.from_numpy(order.copy())])
    indices = torch.sort(torch.cat(kept)).values if kept else torch.empty(0, dtype=torch.long)
    if len(indices) == 0:
        raise UsageError(f"train.data_fraction.keep {keep} keeps no sample of the {n} training samples"
                         f"{' per class' if classes is not None else ''}; choose a larger fraction")
    return indices


def indices_sha256(indices: Tensor) -> str:
    """The sha256 of kept positions as sorted little-endian int64 bytes (the record's `indices_sha256`)."""
    return hashlib.sha256(np.sort(indices.cpu().numpy()).astype("<i8").tobytes()).hexdigest()


def apply(adapter: Adapter, seed: int) -> dict[str, Any] | None:
    """Restrict the adapter's training split as its card's `train.data_fraction` says (nothing
    without one) and return the record's `spec.train_subset` entry. Called once per run, after the
    teacher is attached and before the student is built."""
    spec = section(adapter.protocol)
    if spec is None:
        return None
    rule, keep, total = str(spec["rule"]), float(spec["keep"]), adapter.train_size
    classes = adapter.train_classes()
    scored: dict[str, Any] | None = None
    if rule == "el2n":
        scores, scored = el2n_scores(adapter, spec)
        indices = choose(total, keep, classes, scores, None)
    else:
        indices = choose(total, keep, classes, None, torch.Generator().manual_seed(subset_seed(seed)))
    digest = indices_sha256(indices)
    adapter.keep_train(indices)
    if adapter.train_size != len(indices):
        raise AssertionError(f"task {adapter.task!r} kept {adapter.train_size} samples, asked for {len(indices)}")
    print(f"data fraction: the student trains on {len(indices)} of the {total} training samples ({rule}, keep "
          f"{keep}{', by class' if classes is not None else ''}; indices sha256 {digest[:12]}); the teacher on all",
          file=sys.stderr)
    return {"rule": rule, "keep": keep, "kept": len(indices), "total": total, "stratified": classes is not None,
            "seed": subset_seed(seed) if rule == "random" else None, "indices_sha256": digest, "scores": scored}


def scoring_key(protocol: Protocol, task: str, epochs: int, evaluation_version: int) -> str:
    """What a cached EL2N scoring model's scores depend on: the effective card but the teacher,
    methods, prose and the data fraction itself, the epochs it trains and the evaluation version."""
    card = {k: v for k, v in protocol.card.items() if k not in NOT_SCORING}
    card["train"] = {k: v for k, v in card["train"].items() if k != "data_fraction"}
    return sha256_json({"task": task, "card": card, "score_epochs": epochs, "scores": "el2n",
                        "version": SCORES_VERSION, "evaluation": evaluation_version})


def el2n_scores(adapter: Adapter, spec: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """The mean EL2N score of every training sample (float64, (N,)) over the card's scoring models,
    each read from the cache or trained now, and the record's description of them."""
    protocol = adapter.protocol
    train_epochs = int(protocol.card["train"]["epochs"])
    epochs, runs = score_epochs(spec, train_epochs), int(spec.get("score_runs") or SCORE_RUNS)
    key = scoring_key(protocol, adapter.task, epochs, adapter.evaluation_version)
    folder = cache_dir() / "data-scores" / adapter.task / key[:24]
    folder.mkdir(parents=True, exist_ok=True)
    vectors = []
    for run in range(runs):
        path = folder / f"run{run}.npy"
        with FileLock(str(path) + ".lock"):  # two workers of a sweep never train the same scoring model
            scores = _read(path, adapter.train_size)
            if scores is None:
                scores = _score_run(adapter, run, runs, epochs)
                buffer = io.BytesIO()
                np.save(buffer, scores, allow_pickle=False)
                atomic_write_bytes(path, buffer.getvalue())
        vectors.append(scores)
    mean = np.mean(np.stack(vectors), axis=0)
    digest = hashlib.sha256(mean.astype("<f8").tobytes()).hexdigest()
    return mean, {"kind": "el2n", "model": adapter.arch_name("student"), "runs": runs, "epochs": epochs,
                  "of_epochs": train_epochs, "sha256": digest}


def _read(path: Path, n: int) -> np.ndarray | None:
    """A cached score vector, or None (a damaged one is moved aside and computed again)."""
    if not path.is_file():
        return None
    try:
        scores = np.load(path, allow_pickle=False)
        if scores.shape != (n,) or scores.dtype != np.float64 or not np.isfinite(scores).all():
            raise ValueError(f"holds {scores.dtype} {scores.shape}, expected {n} finite float64 scores")
        return scores  # type: ignore[no-any-return]
    except (OSError, ValueError) as e:
        aside = checkpoint.move_aside(path)
        print(f"kdbench: warning: cached EL2N scores {path} unusable ({str(e)[:200]}); moved to {aside.name} "
              "and computed again", file=sys.stderr)
        return None


def _score_run(adapter: Adapter, run: int, runs: int, epochs: int) -> np.ndarray:
    """Train scoring model `run` (the student's architecture, the task loss, the first `epochs`
    epochs of the card's schedule on the whole split, no EMA) and score every training sample."""
    card_train = adapter.protocol.card["train"]
    train = {k: v for k, v in card_train.items() if k not in ("data_fraction", "ema")} | {"eval_every": 0}
    seed = score_seed(run)
    print(f"el2n: training scoring model {run + 1}/{runs} ({adapter.arch_name('student')}, {epochs} of "
          f"{card_train['epochs']} epochs); cached", file=sys.stderr)
    torch.manual_seed(seed)
    model = adapter.build_model("student", frozenset()).to(adapter.device)
    ctx = MethodContext(probe_outputs(adapter, model), None, adapter.train_size, int(train["epochs"]))
    job = Job(adapter, model, Baseline(Baseline.Config(), ctx), None, train, seed, None,
              label=f"el2n model {run + 1}/{runs}", stop_epoch=epochs)
    fit(job)
    return sample_scores(adapter, model)


@torch.no_grad()
def sample_scores(adapter: Adapter, model: torch.nn.Module) -> np.ndarray:
    """EL2N of every training sample under `model`: its one categorical head over the adapter's
    teacher pass (eval mode, no augmentation), placed at each sample's id."""
    scores = np.full(adapter.train_size, np.nan)
    was_training = model.training
    for out in adapter.teacher_pass(model):
        [head] = [h for name, h in out.heads.items() if adapter.head_kinds.get(name) == "categorical"]
        assert out.ids is not None and head.target is not None, "sample_heads come with ids and class targets"
        scores[out.ids.cpu().numpy()] = el2n(head.logits, head.target).cpu().numpy()
    model.train(was_training)
    if not np.isfinite(scores).all():
        raise AssertionError(f"task {adapter.task!r}: its teacher pass left {int(np.isnan(scores).sum())} "
                             "training samples without a score")
    return scores
