"""Task discovery (kdbench.tasks): every package under kdbench/adapters is a task that declares
itself, its declaration loads nothing above the base layer and no torch, and a package that
declares nothing is an error (docs/architecture.md, Registries)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kdbench.adapters import ADAPTERS, get_adapter
from kdbench.cards.sections import Card
from kdbench.tasks import TASKS, Task

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["classification", "detection", "ood", "pose", "translation"]


def test_the_shipped_tasks_are_discovered_from_their_packages() -> None:
    assert [t for t in TASKS if t in SHIPPED] == SHIPPED
    for name in SHIPPED:
        task = TASKS[name]
        assert task.name == name and issubclass(task.card, Card)
        assert task.adapter == f"kdbench.adapters.{name}.adapter:{get_adapter(name).__name__}"
        assert ADAPTERS.entry(name) == task.adapter  # the adapter registry mirrors the declarations


def test_declarations_import_only_the_base_layer_and_no_torch() -> None:
    """Discovery is the one upward load (base → the task packages): it must stay a declaration."""
    code = ("import sys, json\n"
            "from kdbench.tasks import TASKS\n"
            "names = TASKS.names()\n"
            "print(json.dumps([names, sorted(m for m in sys.modules if m.split('.')[0] in ('kdbench', 'torch'))]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    names, modules = json.loads(done.stdout)
    assert set(SHIPPED) <= set(names)
    assert not [m for m in modules if m.split(".")[0] == "torch"]
    packages = {f"kdbench.adapters.{n}" for n in names} | {"kdbench.adapters"}
    from tests.test_layers import layer_of

    above = [m for m in modules if m not in packages and layer_of(m) != layer_of("kdbench.tasks")]
    assert not above, f"task declarations imported modules above the base layer: {above}"


def _fake_package(tmp_path: Path, members: dict[str, str]) -> dict[str, str]:
    root = tmp_path / "fakeadapters"
    for name, text in {"__init__": "", **members}.items():
        path = root / (f"{name}.py" if name == "__init__" else f"{name}/__init__.py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return {"PYTHONPATH": f"{tmp_path}:{ROOT}"}


def _discover_in(tmp_path: Path, members: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = ("import kdbench.tasks as t\n"
            "t.TASK_PACKAGE = 'fakeadapters'\n"
            "print(t.TASKS.names())\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**_fake_package(tmp_path, members), "PATH": "/usr/bin:/bin"}, check=False)


DECLARE = """
from kdbench.cards.tasks import ClassificationCard
from kdbench.tasks import Task, register_task
register_task(Task("{name}", adapter="fakeadapters.{name}.adapter:A", card=ClassificationCard))
"""


def test_a_task_package_is_found_by_dropping_it_in(tmp_path: Path) -> None:
    done = _discover_in(tmp_path, {"alpha": DECLARE.format(name="alpha"), "beta": DECLARE.format(name="beta")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['alpha', 'beta']"


def test_a_task_package_imported_before_discovery_is_still_found(tmp_path: Path) -> None:
    """Importing one of a task's modules (a test does) declares the task before discovery runs."""
    code = ("import kdbench.tasks as t\n"
            "t.TASK_PACKAGE = 'fakeadapters'\n"
            "import fakeadapters.beta\n"
            "print(t.TASKS.names())\n")
    env = {**_fake_package(tmp_path, {"alpha": DECLARE.format(name="alpha"), "beta": DECLARE.format(name="beta")}),
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['alpha', 'beta']"


def test_a_package_that_declares_no_task_is_an_error(tmp_path: Path) -> None:
    done = _discover_in(tmp_path, {"alpha": DECLARE.format(name="alpha"), "helpers": "X = 1\n"})
    assert done.returncode != 0
    assert "package fakeadapters.helpers registers no task" in done.stderr


def test_two_packages_declaring_one_task_name_both_definitions(tmp_path: Path) -> None:
    again = DECLARE.format(name="alpha").replace("fakeadapters.alpha", "fakeadapters.beta")
    done = _discover_in(tmp_path, {"alpha": DECLARE.format(name="alpha"), "beta": again})
    assert done.returncode != 0
    assert "task 'alpha' registered twice: fakeadapters.alpha:4 (registered) and fakeadapters.beta:4" in done.stderr


def test_a_declaration_is_checked() -> None:
    with pytest.raises(ValueError, match="adapter must be 'module:Class'"):
        Task("x", adapter="kdbench.adapters.x.Adapter", card=Card)
    with pytest.raises(ValueError, match=r"card must be a kdbench\.cards\.sections\.Card subclass"):
        Task("x", adapter="m:A", card=dict)  # type: ignore[arg-type]


def test_an_unknown_task_lists_the_registered_ones() -> None:
    from kdbench.errors import UsageError
    from kdbench.protocol import load_protocol

    with pytest.raises(UsageError, match=r"^unknown task 'nope'; valid: classification, detection, ood, pose"):
        load_protocol("nope", "smoke")
    with pytest.raises(UsageError, match=r"^unknown task 'nope'; valid: classification"):
        get_adapter("nope")


def test_metrics_are_registered_by_their_tasks_modules_without_torch_or_sklearn() -> None:
    """The leaderboard, `kdbench compare` and `kdbench validate` read the metric registry: filling it
    imports each task's metric modules, none of which may import torch (nor scikit-learn, slow)."""
    code = ("import sys, json\n"
            "from kdbench.metrics import METRICS\n"
            "names = list(METRICS)\n"
            "print(json.dumps([len(names), sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'sklearn'})]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    count, heavy = json.loads(done.stdout)
    assert count == 76 and heavy == []


def test_each_metric_is_registered_where_it_is_computed() -> None:
    from kdbench.metrics import METRICS, bounds, ceiling

    modules = {name: METRICS.where(name).split(":")[0] for name in METRICS}
    assert modules["top1"] == modules["aurc"] == modules["ece"] == "kdbench.adapters.classification.metrics"
    assert modules["ap"] == modules["ar"] == "kdbench.adapters.coco"
    assert modules["bleu"] == "kdbench.adapters.translation.metrics"
    assert modules["id_acc"] == modules["fpr95_energy_near"] == "kdbench.adapters.ood.scores"
    declared = {m for t in TASKS for m in TASKS[t].metrics}
    assert set(modules.values()) == declared
    assert bounds("aurc") == (0.0, 1000.0) and ceiling("aurc") == 0.0 and ceiling("ap") == 1.0
    assert ceiling("nll") == 0.0 and bounds("nll")[1] == float("inf") and ceiling("fpr95_msp") == 0.0
