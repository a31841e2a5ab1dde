"""Records → the leaderboard's data: validated records, submission marks, one comparison table per
(task, protocol key) from `kdbench.compare`, and the overview matrix with each method's wins, ties and
losses against baseline (kdbench.stats.wins_ties_losses).

No statistics are computed here beyond what `kdbench.compare` and `kdbench.stats` compute; this
module arranges their results for the pages.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any, TextIO

import fastjsonschema
import pandas as pd
import yaml

from kdbench.compare import BASELINE, TEACHER, compare_table, frame_from_records, tables_of
from kdbench.compare.frame import canonical_method
from kdbench.errors import UsageError
from kdbench.protocol import TIERS
from kdbench.record_checks import cut, semantic_errors, shown, structural_errors
from kdbench.records import RecordReadError, printable, read_record_text, record_files, schema, validation_errors
from kdbench.site.catalog import family, load_catalog, method_aliases
from kdbench.site.provenance import committed_records
from kdbench.stats import WinsTiesLosses, wins_ties_losses

#: The file that marks a method's records of one (task, protocol) as submitted, not reproduced here.
SUBMISSION_FILE = "submission.yaml"
SUBMISSION_KEYS = ("by", "contact", "url", "paper", "note")
SUBMISSION_BYTES = 64 << 10
#: Tiers shown on the leaderboard (smoke runs prove the pipeline and are never on it).
LEADERBOARD_TIERS = tuple(t for t in TIERS if t != "smoke")
_SAFE = re.compile(r"^[a-z0-9_-]+$")
#: Below this many record files, reading them in this process is faster than forking readers.
PARALLEL_READ_MIN = 2000


@cache
def _fast_validator() -> Any:
    # jsonschema (records.validation_errors) is the reference; it takes ~2 ms a record, too slow for
    # 10,000. fastjsonschema compiles the same schema (formats off, as jsonschema's default), and the
    # reference validator only runs to word the message of a record found invalid.
    return fastjsonschema.compile(schema(), use_formats=False)


def is_valid(record: Any) -> bool:
    """`not records.validation_errors(record)`, fast."""
    if structural_errors(record):
        return False
    try:
        _fast_validator()(record)
    except fastjsonschema.JsonSchemaException:
        return not validation_errors(record)
    return not semantic_errors(record)


def slug(name: str) -> str:
    """A name as one safe URL/file-name segment: itself when it is [a-z0-9_-]+, else a cleaned
    form with a hash of the original (so different names never share a page)."""
    if _SAFE.match(name):
        return name
    clean = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")[:40] or "x"
    return f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def run_id(record: dict[str, Any]) -> str:
    """The permalink id of one run: task.key.method.seedN (key: the protocol key), each part slugged."""
    parts = (record["task"], record["protocol"]["key"], record["method"]["name"])
    return ".".join(slug(p) for p in parts) + f".seed{int(record['seed'])}"


@dataclass
class Submission:
    """What `submission.yaml` says about submitted records (all text, untrusted)."""

    path: str
    fields: dict[str, str]


@dataclass
class Loaded:
    """Everything read from a results folder."""

    frame: pd.DataFrame  # compare.frame_from_records: one row per ok record
    records: list[dict[str, Any]]  # the records the tables use (one card version per table), without history
    files: dict[str, str]  # run id → the record's path relative to the results folder
    submissions: dict[tuple[str, str, str], Submission]  # (task, protocol key, method) → submission
    set_aside: int = 0
    skipped_smoke: int = 0
    root: Path = Path()  # the results folder
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of entries that are not records
    committed: frozenset[str] = frozenset()  # files committed in the leaderboard's folder (site.provenance)
    set_aside_ids: list[str] = field(default_factory=list)  # run ids read but not used (other card versions)


def _read_submission(path: Path, results: Path) -> Submission:
    try:
        raw = path.read_bytes()
        if len(raw) > SUBMISSION_BYTES:
            raise UsageError(f"{path}: over {SUBMISSION_BYTES >> 10} KiB, not a submission file")
        data = yaml.safe_load(raw.decode("utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid YAML: {cut(str(e).splitlines()[0])}") from None
    except RecursionError:
        raise UsageError(f"{path}: not valid YAML: nested too deeply") from None
    except OSError as e:
        raise UsageError(f"{path}: unreadable: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping with keys {', '.join(SUBMISSION_KEYS)}")
    bad = [shown(k) for k in data if k not in SUBMISSION_KEYS]
    if bad:
        raise UsageError(f"{path}: unknown key {bad[0]}; valid: {', '.join(SUBMISSION_KEYS)}")
    for key, value in data.items():
        if not isinstance(value, (str, int, float, type(None))) or len(str(value)) > 2000:
            raise UsageError(f"{path}: {key}: expected a line of text (at most 2000 characters)")
    return Submission(str(path.relative_to(results)), {k: str(v) for k, v in data.items() if v is not None})


def _read(file: str) -> tuple[str, dict[str, Any]]:
    """One record file's text and its parsed, schema-valid record."""
    try:
        text, record = read_record_text(Path(file))
    except (OSError, RecordReadError) as e:
        raise UsageError(f"{file}: not a readable JSON record: {e}") from None
    if not is_valid(record):
        raise UsageError(f"{file}: invalid record: {validation_errors(record)[0]} (check with `kdbench validate`)")
    return text, record


#: Called for every non-smoke record as it is read (in the reading process): the record, its file
#: text, its path relative to the results folder and its folder's submission, if any.
RecordHook = Callable[[dict[str, Any], str, str, "Submission | None"], None]

#: What forked readers read with: set in the parent just before the pool forks.
_READER: dict[str, Any] = {}


def _read_chunk(files: list[str]) -> list[tuple[str, dict[str, Any]]] | str:
    """Read, validate and hand to the hook each file; (relative path, record without its history)
    per file, or the first error's message. Runs in a worker, or in the parent with one process."""
    root, hook, by_folder, aliases = _READER["root"], _READER["hook"], _READER["submissions"], _READER["aliases"]
    out = []
    try:
        for file in files:
            text, record = _read(file)
            record = canonical_method(record, aliases)  # a renamed method's records, under its name now
            rel = os.path.relpath(file, root)
            if hook is not None and record["tier"] != "smoke":
                hook(record, text, rel, by_folder.get(os.path.dirname(rel)))
            # The history is the bulk of a record and only the run page (drawn above) shows it.
            out.append((rel, {k: v for k, v in record.items() if k != "history"}))
    except UsageError as e:
        return str(e)
    return out


def _read_all(files: list[str], workers: int) -> list[tuple[str, dict[str, Any]]]:
    """Every file read, in order; on `workers` forked processes when there are many."""
    if workers <= 1 or len(files) < PARALLEL_READ_MIN or "fork" not in multiprocessing.get_all_start_methods():
        parts = [_read_chunk(files)]
    else:
        size = -(-len(files) // (4 * workers))
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_read_chunk, [files[a:a + size] for a in range(0, len(files), size)]))
    out: list[tuple[str, dict[str, Any]]] = []
    for part in parts:
        if isinstance(part, str):  # the first error in file order, as a serial read reports it
            raise UsageError(part)
        out += part
    return out


def load(results: Path, warn: TextIO | None = None, workers: int = 1, hook: RecordHook | None = None,
         committed: frozenset[str] | None = None) -> Loaded:
    """Read and validate every record under `results` (smoke-tier records are left out).

    Args:
        results: the results folder.
        warn: where warnings go; stderr by default.
        workers: processes that read and validate the files (1: this process).
        hook: called for every non-smoke record as it is read, in the reading process (the site
            draws run pages there, while the record is at hand); records later set aside (another
            card version) are passed too and listed in `Loaded.set_aside_ids`.
        committed: the files committed in the leaderboard's folder, if the caller has them
            already (`provenance.committed_records`, one git scan per build); read here if not.

    Raises:
        UsageError: `results` is not a folder, a file is not JSON or not a valid record, two files
            hold the same run, or a submission file is malformed.
    """
    results = Path(results)
    if not results.is_dir():
        raise UsageError(f"no results folder at {results} (expected <task>/<key>/<method>/seed<N>.json)")
    by_folder = {}
    for path, problem in record_files(results, SUBMISSION_FILE):
        if problem is not None:
            raise UsageError(f"{path}: {problem}")
        if len(path.relative_to(results).parts) != 4:
            raise UsageError(f"{path}: a submission file belongs in <task>/<key>/<method>/{SUBMISSION_FILE}")
        by_folder[str(path.parent.relative_to(results))] = _read_submission(path, results)
    records: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    smoke = 0
    paths, skipped = [], []
    for path, problem in record_files(results):
        if problem is None and printable(path) != str(path):
            problem = "a file name with undecodable bytes or control characters"
        if problem is None:
            paths.append(str(path))
        else:
            skipped.append((str(path), problem))
    aliases = method_aliases()
    _READER.update(root=str(results), hook=hook, submissions=by_folder, aliases=aliases)
    try:
        read = _read_all(paths, workers)
    finally:
        _READER.clear()
    for rel, record in read:
        if record["tier"] == "smoke":
            smoke += 1
            continue
        rid = run_id(record)
        if rid in files:
            raise UsageError(f"{results / rel}: the same run (task, protocol, method, seed) as {files[rid]}")
        files[rid] = rel
        records.append(record)
    frame = frame_from_records(records, warn or sys.stderr, aliases)
    cols = ["task", "protocol", "protocol_sha", "eval_version"]
    kept = set(zip(*(frame[c] for c in cols), strict=True))
    kept |= {tuple(f[c] for c in cols) for f in frame.attrs["failed"]}
    used = [r for r in records if (r["task"], r["protocol"]["key"], r["protocol"]["sha256"],
                                   int(r["evaluation"]["version"])) in kept]
    ids = {run_id(r) for r in used}
    submissions = {}  # a record is submitted when its folder holds a submission file
    for r in used:
        folder = os.path.dirname(files[run_id(r)])
        if folder in by_folder:
            submissions[(r["task"], r["protocol"]["key"], r["method"]["name"])] = by_folder[folder]
    return Loaded(frame, used, {i: f for i, f in files.items() if i in ids}, submissions,
                  set_aside=sum(frame.attrs["set_aside"].values()), skipped_smoke=smoke, root=results,
                  set_aside_ids=sorted(set(files) - ids), skipped=skipped,
                  committed=committed_records(results) if committed is None else committed)


# --------------------------------------------------------------------------------- the model


@dataclass
class Setting:
    """One (task, protocol key): its comparison table and what the pages show beside it."""

    task: str
    protocol: str  # the protocol key: the card's name, or <name>+<sha8> for an ablation
    tier: str
    table: pd.DataFrame  # compare.compare_table
    runs: pd.DataFrame  # the frame's rows of this setting
    card: str = ""  # the card's name
    shipped: bool = True  # exactly a shipped card (else an ablation of `card`)

    @cached_property
    def by_method(self) -> dict[str, dict[str, Any]]:
        """The table's row of each method, as a dict."""
        return {str(r["method"]): r for r in self.table.to_dict(orient="records")}

    @property
    def key(self) -> str:
        return f"{self.task}/{self.protocol}"

    @property
    def primary(self) -> str:
        return str(self.table.attrs["primary"])

    @property
    def direction(self) -> str:
        return str(self.table.attrs["direction"])


def tier_order(tier: str) -> int:
    return TIERS.index(tier) if tier in TIERS else len(TIERS)


def settings(loaded: Loaded, alpha: float = 0.05) -> list[Setting]:
    """One Setting per (task, protocol key) with records, in task order, then tier order, then the
    shipped card before its ablations."""
    frame = loaded.frame
    groups = tables_of(frame)
    parts = dict(iter(frame.groupby(["task", "protocol"], sort=False))) if len(frame) else {}
    set_aside = frame.attrs["set_aside"]
    out = []
    for g in sorted(groups, key=lambda g: (g.task, tier_order(g.tier), g.card, not g.shipped, g.protocol)):
        # compare_table on this setting's rows alone: the same table, without scanning every run per setting
        runs = parts.get((g.task, g.protocol), frame.iloc[:0]).copy()
        runs.attrs = {"failed": [f for f in frame.attrs["failed"] if (f["task"], f["protocol"]) == g[:2]],
                      "set_aside": {k: v for k, v in set_aside.items() if k == f"{g.task}/{g.protocol}"}}
        out.append(Setting(g.task, g.protocol, g.tier, compare_table(runs, g.task, g.protocol, alpha), runs,
                           g.card, g.shipped))
    return out


def method_info(name: str, records: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The catalog entry of a method, or what its records say when the catalog does not know it."""
    entry = load_catalog()["methods"].get(name)
    if entry is not None:
        return {**entry, "known": True}
    teacher = next((r["method"]["teacher"] for r in records or [] if r["method"]["name"] == name), "none")
    if name == TEACHER:
        return {"paper": "", "teacher": "none", "needs": [], "requests": [], "accepts": [], "rebins": False,
                "refused": {}, "heads": {}, "family": "teacher",
                "summary": "The protocol card's teacher model, trained once per card and teacher seed.",
                "doc": "", "hparams": [], "source": "", "known": True}
    return {"paper": "", "teacher": teacher, "needs": [], "requests": [], "accepts": [], "rebins": False,
            "refused": {}, "heads": {}, "family": family(name, teacher, set()),
            "summary": "", "doc": "", "hparams": [], "source": "", "known": False}


def serves(method: str, task: str) -> tuple[bool | None, str]:
    """Whether a task's pipeline can serve a method, and why not (None: the catalog does not know)."""
    cat = load_catalog()
    m, t = cat["methods"].get(method), cat["tasks"].get(task)
    if m is None or t is None:
        return None, "not in the site's catalog"
    why = m["refused"].get(task)  # kdbench.methods.base.refusal, recorded by the catalog
    return (True, "") if why is None else (False, why)


def on_leaderboard(s: Setting) -> bool:
    """A shipped card's table on a leaderboard tier (ablations and smoke runs have their own pages only)."""
    return s.shipped and s.tier in LEADERBOARD_TIERS


def overview(sets: list[Setting]) -> tuple[pd.DataFrame, dict[str, WinsTiesLosses]]:
    """The methods × settings matrix of primary-metric means (shipped cards on leaderboard tiers
    only) and each method's wins/ties/losses against baseline over those settings
    (kdbench.stats.wins_ties_losses: only significant differences after Holm count; a setting
    counts where the method shares a seed with baseline; baseline and teacher have none)."""
    shown = [s for s in sets if on_leaderboard(s)]
    means = pd.DataFrame({s.key: s.table.set_index("method")[f"{s.primary}_mean"] for s in shown})
    verdicts: dict[str, list[str]] = {}
    for s in shown:
        for row in s.by_method.values():
            if row["method"] not in (BASELINE, TEACHER) and row["n_paired"] > 0:
                verdicts.setdefault(str(row["method"]), []).append(str(row["verdict"]))
    return means, {m: wins_ties_losses(v) for m, v in verdicts.items()}


def is_baseline_or_teacher(method: str) -> bool:
    return method in (BASELINE, TEACHER)
