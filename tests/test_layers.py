"""The import rule of docs/architecture.md, Layers: imports only point down.

Every module of the package belongs to one layer; it may import its own layer and any layer below
it, never one above. Every module under kdbench/ is parsed with `ast`, and every import counts:
top-level, function-local (a lazy import is still a dependency) and under `if TYPE_CHECKING:`;
so does a lazy registry entry, a string "kdbench.<module>:<object>". Dynamic imports built at run
time (the method discovery's `import_module(f"{__name__}.{name}")`) are not seen.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdbench"

#: Bottom to top. A layer: (name, the modules it holds, by dotted prefix; what it is).
LAYERS: list[tuple[str, tuple[str, ...], str]] = [
    ("base", ("kdbench", "kdbench.errors", "kdbench.formatting", "kdbench.outputs", "kdbench.stats",
              "kdbench.metrics", "kdbench.record_checks", "kdbench.records", "kdbench.cache", "kdbench.cards",
              "kdbench.registry", "kdbench.tasks"),
     "errors, formatting, Outputs, statistics, the Registry type and the task and metric registries, "
     "records and their schema, cache folder and content hashes, the typed card sections and parser"),
    ("losses", ("kdbench.losses",), "pure tensor functions"),
    ("methods", ("kdbench.methods",), "the method registry and one file per method"),
    ("protocol", ("kdbench.protocol",),
     "loading cards, their sha256, --set overrides; checks a card's methods: section against the registry"),
    ("adapters", ("kdbench.adapters",), "one task pipeline each, and the task registry"),
    ("reports", ("kdbench.compare", "kdbench.site", "kdbench.listing"),
     "tables, the static site and `kdbench list`: read records and cards, never run anything"),
    ("runner", ("kdbench.runner",), "spec → train → evaluate → record; sweeps, executors, caches"),
    ("integrations", ("kdbench.integrations",), "kdbench's methods inside OpenMMLab training"),
    ("cli", ("kdbench.cli", "kdbench.__main__"), "argument parsing and one-line errors"),
]

#: Upward imports the code still needs, each (importing module, imported module): why. None today;
#: one is added here, with its reason, only when removing it would change behaviour.
EXCEPTIONS: dict[tuple[str, str], str] = {}

LAZY_ENTRY = re.compile(r"^(kdbench(?:\.\w+)+):\w+$")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    """Every module of the package by dotted name; kdbench/benchmarks (the link to the cards and
    the perf scripts beside them) is data, not a package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] != "benchmarks":
            found[module_name(path)] = path
    return found


def layer_of(name: str) -> int | None:
    """The index of the layer whose longest prefix holds `name` ("kdbench" itself only exactly)."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes, _) in enumerate(LAYERS):
        for prefix in prefixes:
            holds = name == prefix or (prefix != "kdbench" and name.startswith(prefix + "."))
            if holds and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def imports(text: str, module: str, package: bool = False) -> list[tuple[int, str]]:
    """(line, imported kdbench name) for every import in a module's source, at any depth. `from a
    import b` gives `a.b` (b may be a module), so a layer is judged by the longest name it matches."""
    here = module if package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x / from ..x
                parts = here.split(".")
                source = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found += [(node.lineno, f"{source}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            entry = LAZY_ENTRY.match(node.value)
            if entry:
                found.append((node.lineno, entry.group(1)))
    return [(line, name) for line, name in found if name == "kdbench" or name.startswith("kdbench.")]


def target_layer(name: str) -> int | None:
    """The layer of an imported name: `kdbench.x.y` is judged as `kdbench.x.y`, else as `kdbench.x`."""
    layer = layer_of(name)
    return layer if layer is not None or "." not in name else target_layer(name.rpartition(".")[0])


def upward_imports() -> list[tuple[str, str, int]]:
    """(module, imported name, line) for every import of a higher layer."""
    found = []
    for module, path in sources().items():
        own = layer_of(module)
        assert own is not None, module
        for line, name in imports(path.read_text(), module, path.name == "__init__.py"):
            target = target_layer(name)
            if target is not None and target > own:
                found.append((module, name, line))
    return found


def test_every_module_has_a_layer() -> None:
    homeless = [m for m in sources() if layer_of(m) is None]
    assert not homeless, f"modules in no layer of tests/test_layers.py LAYERS: {homeless}"


def test_every_package_has_an_init() -> None:
    folders = {p.parent for p in sources().values()}
    missing = sorted(str(f.relative_to(PACKAGE.parent)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"packages without an __init__.py: {missing}"


def test_imports_only_point_down() -> None:
    names = [layer for layer, _, _ in LAYERS]
    wrong = []
    for module, name, line in upward_imports():
        if (module, _imported_module(name)) in EXCEPTIONS:
            continue
        own, target = layer_of(module), target_layer(name)
        assert own is not None and target is not None
        wrong.append(f"{sources()[module].relative_to(PACKAGE.parent)}:{line}: {module} ({names[own]}) "
                     f"imports {name} ({names[target]})")
    assert not wrong, "imports that point up (docs/architecture.md, Layers):\n" + "\n".join(wrong)


def test_exceptions_are_still_needed() -> None:
    """An exception that no import uses any more is removed from the list."""
    used = {(module, _imported_module(name)) for module, name, _ in upward_imports()}
    stale = [pair for pair in EXCEPTIONS if pair not in used]
    assert not stale, f"EXCEPTIONS no import needs: {stale}"


def _imported_module(name: str) -> str:
    """The module an imported name lies in: `kdbench.runner.checkpoint.load` → `kdbench.runner.checkpoint`."""
    modules = sources()
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


@pytest.mark.parametrize(("source", "expect"), [
    ("from kdbench.runner.checkpoint import load\n", "kdbench.runner.checkpoint.load"),
    ("import kdbench.runner.train as train\n", "kdbench.runner.train"),
    ("def f():\n    from kdbench.runner import run\n", "kdbench.runner.run"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kdbench.runner.spec import RunSpec\n",
     "kdbench.runner.spec.RunSpec"),
    ("TASKS = {'x': 'kdbench.runner.run:run'}\n", "kdbench.runner.run"),
    ("from ..runner import run\n", "kdbench.runner.run"),
])
def test_the_rule_sees_every_kind_of_import(source: str, expect: str) -> None:
    """An adapter that imports the runner, in each way an import can be written, points up."""
    assert [name for _, name in imports(source, "kdbench.adapters.base")] == [expect]
    adapters, target = layer_of("kdbench.adapters.base"), target_layer(expect)
    assert adapters is not None and target is not None and target > adapters


def test_the_order_keeps_the_rules_it_was_drawn_for() -> None:
    """Reordering LAYERS to let an import through is not the fix: the adapters and the site sit
    below the runner, and the cards and caches they read below the adapters (issue #18)."""
    order = {name: index for index, (name, _, _) in enumerate(LAYERS)}
    assert order["base"] < order["losses"] < order["methods"] < order["protocol"] < order["adapters"]
    assert order["adapters"] < order["reports"] < order["runner"] < order["integrations"] < order["cli"]
    assert layer_of("kdbench.cache") == layer_of("kdbench.records") == order["base"]
    assert layer_of("kdbench.site.data") == order["reports"]
