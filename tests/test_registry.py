"""`kdbench.registry.Registry`: loud on duplicates and unknown names, lazy entries, base classes,
aliases, discovery once (docs/architecture.md, Registries)."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

from kdbench.errors import UsageError
from kdbench.registry import Registry, UnknownName, import_submodules

ROOT = Path(__file__).resolve().parents[1]


class Base:
    pass


class One(Base):
    pass


def test_register_directly_and_as_a_decorator() -> None:
    reg: Registry[type[Base]] = Registry("thing", base=Base)
    assert reg.register("one", One) is One

    @reg.register("two")
    class Two(Base):
        pass

    assert reg["one"] is One and reg["two"] is Two
    assert reg.names() == ["one", "two"] == list(reg) and len(reg) == 2
    assert dict(reg) == {"one": One, "two": Two}


def test_a_duplicate_names_both_definitions() -> None:
    reg: Registry[type[Base]] = Registry("thing")
    reg.register("one", One)
    again = type("Again", (Base,), {"__qualname__": "Again"})
    with pytest.raises(ValueError, match=r"thing 'one' registered twice: tests.test_registry:One \(registered\) "
                                         r"and tests.test_registry:Again$"):
        reg.register("one")(again)
    reg.register("lazy", "collections:OrderedDict")
    with pytest.raises(ValueError, match=r"'lazy' registered twice: collections:OrderedDict \(registered\) and "
                                         r"tests.test_registry:\d+"):
        reg.register("lazy", 3)
    assert reg.names() == ["lazy", "one"]  # a refused registration changes nothing


def test_an_unknown_name_is_one_usage_line_listing_the_names() -> None:
    reg: Registry[int] = Registry("metric")
    reg.register("b", 2)
    reg.register("a", 1, aliases=("old_a",))
    assert reg.names() == ["a", "b"]  # name order, not registration order
    with pytest.raises(UsageError, match=r"^unknown metric 'c'; valid: a, b$") as caught:
        reg["c"]
    assert isinstance(caught.value, UnknownName) and caught.value.exit_code == 2
    assert str(caught.value) == "unknown metric 'c'; valid: a, b"  # not KeyError's quoted form
    assert reg.get("c") is None and reg.get("a") == 1 and "c" not in reg and "old_a" in reg


def test_a_lazy_entry_is_imported_on_first_lookup_and_checked_against_its_base() -> None:
    code = ("import sys\n"
            "from kdbench.registry import Registry\n"
            "reg = Registry('codec', base='json:JSONDecoder')\n"
            "reg.register('json', 'json.decoder:JSONDecoder')\n"
            "reg.register('bad', 'json.encoder:JSONEncoder')\n"
            "assert 'json' in reg and 'json.decoder' not in sys.modules, 'imported before its lookup'\n"
            "import json.decoder\n"
            "assert reg['json'] is json.decoder.JSONDecoder\n"
            "try:\n"
            "    reg['bad']\n"
            "except TypeError as e:\n"
            "    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "codec 'bad' (json.encoder:JSONEncoder) is <class 'json.encoder.JSONEncoder'>, not a JSONDecoder" \
        in done.stdout
    with pytest.raises(ValueError, match="must be 'module:object'"):
        Registry("codec").register("x", "no colon here")


def test_an_instance_entry_is_checked_with_isinstance() -> None:
    reg: Registry[object] = Registry("mapping", base=dict)
    reg.register("ordered", OrderedDict())
    reg.register("list", [])
    assert reg["ordered"] == OrderedDict()
    with pytest.raises(TypeError, match=r"'list'.*not a dict"):
        reg["list"]


def test_an_alias_resolves_to_its_renamed_entry() -> None:
    reg: Registry[type[Base]] = Registry("method")
    reg.register("new", One, aliases=("old",))
    reg.alias("older", "new")
    assert reg["old"] is reg["older"] is reg["new"] is One
    assert reg.canonical("old") == "new" and reg.canonical("new") == "new"
    assert reg.names() == ["new"] and reg.aliases() == {"old": "new", "older": "new"}
    assert reg.aliases_of("new") == ("old", "older") and reg.aliases_of("old") == ("old", "older")
    with pytest.raises(ValueError, match=r"'old' registered twice: .*an alias of 'new'"):
        reg.register("old", Base)
    with pytest.raises(ValueError, match="'new' registered twice"):
        reg.alias("new", "new")
    reg.unregister("old")
    assert reg.names() == [] and "old" not in reg and "older" not in reg


def test_discovery_runs_once_before_the_first_lookup_and_a_failure_stays_loud() -> None:
    calls = []
    reg: Registry[int] = Registry("task", discover=lambda: calls.append(reg.register(f"t{len(calls)}", 1)))
    assert calls == []
    assert reg.names() == ["t0"] and "t0" in reg and reg["t0"] == 1
    assert calls == [1]

    def broken() -> None:
        raise ImportError("no module named 'x'")

    failing: Registry[int] = Registry("task", discover=broken)
    with pytest.raises(ImportError):
        failing.names()
    with pytest.raises(RuntimeError, match="discovering the task registry failed earlier: no module named 'x'"):
        "a" in failing  # noqa: B015


def test_import_submodules_imports_a_package_in_name_order() -> None:
    import kdbench.compare

    assert import_submodules(kdbench.compare) == ["kdbench.compare.frame", "kdbench.compare.render",
                                                  "kdbench.compare.table"]
    assert import_submodules(kdbench.compare, skip=("render",), packages_only=False) == [
        "kdbench.compare.frame", "kdbench.compare.table"]
    assert import_submodules(kdbench.compare, packages_only=True) == []


def test_the_registry_module_imports_no_torch() -> None:
    code = "import sys, kdbench.registry; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_where_names_each_definition() -> None:
    reg: Registry[type[Base]] = Registry("thing")
    reg.register("one", One, aliases=("uno",))
    assert reg.where("one") == reg.where("uno") == "tests.test_registry:One"
    with pytest.raises(UnknownName, match="unknown thing 'two'; valid: one"):
        reg.where("two")
