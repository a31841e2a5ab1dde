"""A renamed method keeps its records: its earlier name (`Method.aliases`) resolves to it on the
command line, in a card's `methods:` section, in the record path of a rerun and a sweep's skip of
done runs, in `kdbench compare` and on the site (docs/architecture.md, Registries).

The rename is faked: `nkd` is unregistered and re-registered as `normkd` with alias `nkd`, and
the committed catalog the readers consult is patched to say the same.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import kdbench.site.catalog as catalog
from kdbench.compare import load_frame
from kdbench.errors import UsageError
from kdbench.methods import METHODS, Method, register
from kdbench.protocol import cards_dir, load_protocol
from kdbench.records import write_record
from kdbench.runner.run import failure_record
from kdbench.runner.spec import RunOptions, refuse_existing, resolve
from kdbench.runner.sweep import make_plan
from kdbench.site import data as site_data
from tests.recordkit import valid_record

OLD, NEW = "nkd", "normkd"


@pytest.fixture
def renamed(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Method]]:
    original = METHODS[OLD]
    METHODS.unregister(OLD)
    cls = type("NormKD", (original,), {"name": NEW, "aliases": (OLD,), "__module__": __name__})
    try:
        register(cls)
        real = catalog.load_catalog()
        fake = copy.deepcopy(real)
        fake["methods"][NEW] = {**fake["methods"].pop(OLD), "aliases": [OLD]}
        monkeypatch.setattr(catalog, "load_catalog", lambda: fake)
        yield cls
    finally:
        if NEW in METHODS:
            METHODS.unregister(NEW)
        register(original)


def _options(results: Path, method: str = OLD, seed: int = 0, protocol: str = "small") -> RunOptions:
    return RunOptions(task="classification", method=method, protocol=protocol, seed=seed, results=results)


def _record(results: Path, method: str, seed: int, top1: float) -> Path:
    """A valid ok record of classification/small as a run of `method` would have written it."""
    spec = resolve(_options(results, NEW, seed))
    path = results / "classification" / "small" / method / f"seed{seed}.json"
    hparams = spec.hparams
    record = valid_record(seed=seed)
    record["protocol"]["sha256"] = spec.protocol.sha256
    record["evaluation"]["version"] = spec.adapter_cls.evaluation_version
    record["method"] = {"name": method, "teacher": "external", "hparams": hparams}
    record["spec"] = {**record["spec"], "seed": seed, "method": {"name": method, "hparams": hparams}}
    record["metrics"]["values"] = {"top1": top1}
    write_record(path, record)
    return path


def test_the_earlier_name_resolves_with_the_cards_section_and_writes_under_the_new_name(
        renamed: type[Method], tmp_path: Path) -> None:
    spec = resolve(_options(tmp_path))
    assert spec.method_cls is renamed and spec.options.method == NEW
    # the card keeps its `nkd:` section (renaming the key would change its sha256): it still applies
    assert (spec.config.temperature, spec.config.gamma) == (3.0, 3.5)
    assert spec.protocol.sha256 == load_protocol("classification", "small").sha256
    assert spec.record_path == tmp_path / "classification" / "small" / NEW / "seed0.json"
    written = failure_record(_options(tmp_path, seed=2), "boom")  # a record written after the rename
    assert written == tmp_path / "classification" / "small" / NEW / "seed2.json"
    assert json.loads(written.read_text())["method"]["name"] == NEW


def test_a_record_under_the_earlier_name_is_the_runs_record(renamed: type[Method], tmp_path: Path) -> None:
    old = _record(tmp_path, OLD, 0, 70.0)
    for method in (OLD, NEW):
        spec = resolve(_options(tmp_path, method))
        assert spec.record_path == old  # a rerun is refused, or with --overwrite replaces it in place
        with pytest.raises(UsageError, match=r"a record already exists at .*/nkd/seed0\.json"):
            refuse_existing(spec.record_path, overwrite=False)
        plan = make_plan("classification", method, "0,1", "small", {}, tmp_path, None)
        assert [(i.method, i.seed) for i in plan.skipped] == [(NEW, 0)]  # done, under either name
        assert [(i.method, i.seed) for i in plan.runs] == [(NEW, 1)]
    assert resolve(_options(tmp_path, seed=1)).record_path.parent.name == NEW


def test_compare_and_the_site_read_the_earlier_names_records_as_the_methods(
        renamed: type[Method], tmp_path: Path) -> None:
    _record(tmp_path, OLD, 0, 70.0)
    _record(tmp_path, NEW, 1, 72.0)
    frame = load_frame(tmp_path)
    assert sorted(zip(frame["method"], frame["seed"], strict=True)) == [(NEW, 0), (NEW, 1)]
    loaded = site_data.load(tmp_path)
    assert {r["method"]["name"] for r in loaded.records} == {NEW}
    assert sorted(loaded.files) == [f"classification.small.{NEW}.seed0", f"classification.small.{NEW}.seed1"]
    # the file itself is evidence and keeps the name it was written under
    assert json.loads((tmp_path / "classification/small/nkd/seed0.json").read_text())["method"]["name"] == OLD


def test_one_method_under_two_names_in_a_card_is_refused(renamed: type[Method], tmp_path: Path) -> None:
    raw: dict[str, Any] = yaml.safe_load((cards_dir() / "classification" / "small.yaml").read_text())
    raw["methods"][NEW] = {"temperature": 2.0}
    card = tmp_path / "small.yaml"
    card.write_text(yaml.safe_dump(raw))
    with pytest.raises(UsageError, match=r"methods\.nkd and methods\.normkd both set method 'normkd'; keep one"):
        load_protocol("classification", str(card))
