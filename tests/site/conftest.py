"""A site built once from the committed records plus hostile submitted records (XSS payloads)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kdbench.records import read_record, write_record
from kdbench.site.build import build_site

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"
TEMPLATE = RESULTS / "classification" / "small" / "kd" / "seed0.json"

#: A hostile method name and notes: rendered anywhere, they must stay text.
EVIL_METHOD = "<script>window.__xss=1</script>evil"
EVIL_NOTE = '<img src=x onerror="window.__xss=2">'
EVIL_BY = "<script>window.__xss=3</script>"


def hostile_records() -> list[dict[str, Any]]:
    """Three seeds of a submitted method whose name and notes carry payloads; seed 2 failed."""
    base = read_record(TEMPLATE)
    out = []
    for seed in range(3):
        r = copy.deepcopy(base)
        r["seed"] = seed
        r["method"] = {"name": EVIL_METHOD, "teacher": "external", "hparams": {"note": EVIL_NOTE}}
        r["metrics"]["values"]["top1"] = 96.0 + seed
        if seed == 2:
            r.update(status="failed", error=f"NaN loss at step 3 {EVIL_NOTE}")
        out.append(r)
    return out


def write_hostile(results: Path) -> Path:
    folder = results / "classification" / "small" / "evil"
    for r in hostile_records():
        write_record(folder / f"seed{r['seed']}.json", r)
    (folder / "submission.yaml").write_text(json.dumps({"by": EVIL_BY, "note": EVIL_NOTE}))
    return folder


@pytest.fixture(scope="session")
def site_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the committed results with the hostile submission added."""
    results = tmp_path_factory.mktemp("site-results") / "results"
    shutil.copytree(RESULTS, results)
    write_hostile(results)
    return results


@pytest.fixture(scope="session")
def built_site(site_results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site-out") / "site"
    build_site(site_results, out, jobs=1)  # no fork: the browser tests' threads may be running
    return out
