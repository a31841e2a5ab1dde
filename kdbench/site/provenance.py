"""Where a record on the site comes from: reproduced here, submitted, or local.

A record cannot claim its own provenance (nothing in it is trusted for that); its place decides:

- **submitted**: its folder `<task>/<key>/<method>/` holds a `submission.yaml`;
- **reproduced here**: it is committed, unmodified, in the leaderboard's folder, `results/` at the
  top of a git work tree: the maintainers' sweeps write there and their records arrive by commit;
- **local**: anything else: your own runs (`./kdbench-results`, `$KDBENCH_RESULTS`, any other
  folder), and records in `results/` not (or not as) committed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

Provenance = Literal["reproduced here", "submitted", "local"]
PROVENANCES: tuple[Provenance, ...] = ("reproduced here", "submitted", "local")
#: The leaderboard's folder, relative to the top of the repository.
LEADERBOARD_FOLDER = "results"


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, timeout=60, check=False,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "surrogateescape") if done.returncode == 0 else None


def committed_records(results: Path) -> frozenset[str]:
    """Paths, relative to `results`, of the files committed and unmodified in git, when `results` is
    the `results/` folder at the top of a git work tree; else none (no git, another folder)."""
    top = _git(results, "rev-parse", "--show-toplevel")
    if top is None or (Path(top.strip()) / LEADERBOARD_FOLDER).resolve() != Path(results).resolve():
        return frozenset()
    tracked = _git(results, "ls-files", "-z")
    changed = _git(results, "ls-files", "-z", "--modified", "--deleted", "--others")  # --others: untracked
    if tracked is None or changed is None:
        return frozenset()
    return frozenset(os.path.normpath(p) for p in tracked.split("\0") if p) - \
        {os.path.normpath(p) for p in changed.split("\0") if p}


def of_record(rel: str, submitted: bool, committed: frozenset[str]) -> Provenance:
    """One record's provenance from its path relative to the results folder."""
    if submitted:
        return "submitted"
    return "reproduced here" if os.path.normpath(rel) in committed else "local"


def of_row(rels: Iterable[str], submitted: bool, committed: frozenset[str]) -> Provenance:
    """A table row's: submitted, else reproduced here when every one of its records is, else local."""
    if submitted:
        return "submitted"
    files = list(rels)
    return "reproduced here" if files and all(of_record(f, False, committed) == "reproduced here"
                                              for f in files) else "local"
