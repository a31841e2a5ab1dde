"""A site built once from v2 records written here (tests/site/fixtures.py) plus hostile submitted
records (XSS payloads). Nothing is read from the shipped results/ folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdbench.records import write_record
from kdbench.site.build import build_site

from .fixtures import make_record, write_site_results

#: A submitted method (names are [a-z0-9_-]+ by the schema: markup cannot be one) and hostile
#: notes: rendered anywhere, they must stay text.
EVIL_METHOD = "evil"
EVIL_NAME = "<script>window.__xss=1</script>evil"  # refused by the schema (test_build)
EVIL_NOTE = '<img src=x onerror="window.__xss=2">'
EVIL_BY = "<script>window.__xss=3</script>"


def hostile_records() -> list[dict[str, Any]]:
    """Three seeds of a submitted method whose name and notes carry payloads; seed 2 failed."""
    out = []
    for seed in range(3):
        r = make_record("classification", "kd", seed, 96.0 + seed, hparams={"note": EVIL_NOTE}, failed=seed == 2)
        r["method"]["name"] = r["spec"]["method"]["name"] = EVIL_METHOD
        if seed == 2:
            r["error"] = f"NaN loss at step 3 {EVIL_NOTE}"
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
    """The site tests' records with the hostile submission added."""
    results = tmp_path_factory.mktemp("site-results") / "results"
    write_site_results(results)
    write_hostile(results)
    return results


@pytest.fixture(scope="session")
def built_site(site_results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site-out") / "site"
    build_site(site_results, out, jobs=1)  # no fork: the browser tests' threads may be running
    return out
