"""`Registry[T]`: the one type behind every name kdbench resolves (docs/architecture.md, Registries).

Methods, tasks, task adapters, metrics, optimizers and schedules each keep one registry. A
registry is loud, as HELM's is and timm's was not (timm #1694: "Unknown model" because a file
was never imported): it is filled by importing every module that may register (`discover`, run
once before the first lookup), a name registered twice raises naming both definitions, and an
unknown name is a one-line usage error listing the registered names. As in lm-eval's generic
registry, an entry may be a lazy `"module:object"` string, imported on its first lookup (so a
listing never imports a task's torch code), and a registry may name a base class every entry
must be, checked when the entry resolves. As timm keeps deprecated model names, an alias maps
an old name to its renamed entry, so records written under the old name still resolve.

Importing this module imports nothing beyond the standard library and kdbench.errors.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any, Generic, TypeVar, overload

from kdbench.errors import UsageError, unknown

T = TypeVar("T")

#: A lazy entry: "package.module:object" (the object may be dotted: "module:Class.attr").
LAZY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
NAME = re.compile(r"^[A-Za-z0-9][\w.+-]*$")


class UnknownName(UsageError, KeyError):
    """An unknown registry name: a usage error (exit 2, one line) that is also a KeyError, so a
    registry behaves as a read-only mapping (`registry.get(name)` gives None)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownName:
    """kdbench's usual `unknown method 'x'; valid: a, b, c` (kdbench.errors.unknown), as an UnknownName."""
    return UnknownName(str(unknown(kind, name, choices)))


def resolve(ref: str) -> Any:
    """The object a lazy `"module:object"` entry names, importing its module."""
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def definition(obj: Any, stacklevel: int = 2) -> str:
    """Where an entry is defined, for an error message: a lazy entry's own text, a class's or a
    function's `module:qualname`, otherwise the module and line `stacklevel` frames up (1: the
    caller of this function)."""
    if isinstance(obj, str):
        return obj
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return f"{obj.__module__}:{obj.__qualname__}"
    frame = sys._getframe(stacklevel)
    return f"{frame.f_globals.get('__name__', '?')}:{frame.f_lineno}"


def import_submodules(package: ModuleType, skip: Iterable[str] = (), packages_only: bool = False) -> list[str]:
    """Import every module of `package` (names starting with "_" and those in `skip` left out)
    in name order, and return their dotted names; a module that fails to import raises."""
    skipped = set(skip)
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in skipped or (packages_only and not info.ispkg):
            continue
        found.append(importlib.import_module(f"{package.__name__}.{info.name}").__name__)
    return found


class _Missing:
    pass


_MISSING = _Missing()


class Registry(Mapping[str, T], Generic[T]):
    """Names → entries of one kind; a read-only mapping over the registered (canonical) names.

    `registry[name]` resolves an alias to its entry, imports a lazy entry and checks it against
    `base` (each once), and raises `UnknownName` listing the registered names for any other
    name; `registry.get(name)` gives None instead. Iteration, `len` and `names()` see the
    registered names in registration order, never aliases; `name in registry` is true for
    both and imports nothing beyond the discovery.

    Args:
        kind: what a name names ("method", "task", "metric"), used in every message.
        base: the class every entry is (a subclass of, for classes; an instance of, otherwise),
            or a lazy `"module:Class"` for it; checked when an entry first resolves.
        discover: imports the modules that register, called once before the first lookup;
            registering while it runs is what fills the registry.
    """

    def __init__(self, kind: str, *, base: type | str | None = None,
                 discover: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._base = base
        self._discover = discover
        self._entries: dict[str, Any] = {}  # name → the entry, or its lazy "module:object"
        self._where: dict[str, str] = {}  # name or alias → where it was defined
        self._resolved: dict[str, T] = {}
        self._aliases: dict[str, str] = {}  # old name → registered name
        self._state = "new" if discover else "done"  # new → running → done | failed
        self._failure: BaseException | None = None

    # ---------------------------------------------------------------------- registering

    @overload
    def register(self, name: str, *, aliases: Iterable[str] = ..., where: str | None = ...) -> Callable[[Any], Any]:
        ...

    @overload
    def register(self, name: str, entry: Any, *, aliases: Iterable[str] = ..., where: str | None = ...) -> Any: ...

    def register(self, name: str, entry: Any = _MISSING, *, aliases: Iterable[str] = (),
                 where: str | None = None) -> Any:
        """Add `entry` under `name` (and its old names `aliases`) and return it; without an
        entry, a decorator that registers what it decorates. `where` names the definition in
        messages (default: `definition`'s).

        Raises:
            ValueError: the name or an alias is taken (naming both definitions), is malformed,
                or a string entry is not `"module:object"`.
        """
        if isinstance(entry, _Missing):
            def decorate(obj: Any) -> Any:
                self._add(name, obj, tuple(aliases), where or definition(obj, 2))
                return obj

            return decorate
        self._add(name, entry, tuple(aliases), where or definition(entry, 2))
        return entry

    def alias(self, old: str, new: str) -> None:
        """Resolve the old name `old` to the registered (or later registered) name `new`."""
        self._add_alias(old, new, definition(None, 2))

    def _add(self, name: str, entry: Any, aliases: tuple[str, ...], where: str) -> None:
        if isinstance(entry, str) and not LAZY.match(entry):
            raise ValueError(f"{self.kind} {name!r}: a string entry must be 'module:object', got {entry!r}")
        self._check_free(name, where)
        for old in aliases:
            self._check_free(old, where)
        self._entries[name] = entry
        self._where[name] = where
        for old in aliases:
            self._add_alias(old, name, where)

    def _add_alias(self, old: str, new: str, where: str) -> None:
        self._check_free(old, where)
        if old == new:
            raise ValueError(f"{self.kind} {old!r}: an alias of itself ({where})")
        self._aliases[old] = new
        self._where[old] = where

    def _check_free(self, name: str, where: str) -> None:
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} ({where}): letters, digits, '.', '_', '+' or '-'")
        if name in self._entries or name in self._aliases:
            what = "registered" if name in self._entries else f"an alias of {self._aliases[name]!r}"
            raise ValueError(f"{self.kind} {name!r} registered twice: {self._where[name]} ({what}) and {where}")

    # ------------------------------------------------------------------------- looking up

    def discover(self) -> None:
        """Run the discovery once; a discovery that failed raises again on every lookup."""
        if self._state == "done" or self._state == "running":
            return
        if self._state == "failed":
            raise RuntimeError(f"discovering the {self.kind} registry failed earlier: {self._failure}") \
                from self._failure
        self._state = "running"
        try:
            assert self._discover is not None
            self._discover()
        except BaseException as e:
            self._state, self._failure = "failed", e
            raise
        self._state = "done"

    def canonical(self, name: str) -> str:
        """The registered name `name` is or is an alias of; UnknownName otherwise."""
        self.discover()
        name = self._aliases.get(name, name)
        if name not in self._entries:
            raise unknown_name(self.kind, name, self._entries)
        return name

    def __getitem__(self, name: str) -> T:
        key = self.canonical(name)
        if key not in self._resolved:
            entry = self._entries[key]
            obj = resolve(entry) if isinstance(entry, str) else entry
            self._check_base(key, obj)
            self._resolved[key] = obj
        return self._resolved[key]

    def _check_base(self, name: str, obj: Any) -> None:
        if self._base is None:
            return
        base = resolve(self._base) if isinstance(self._base, str) else self._base
        if not (issubclass(obj, base) if inspect.isclass(obj) else isinstance(obj, base)):
            raise TypeError(f"{self.kind} {name!r} ({self._where[name]}) is {obj!r}, not a {base.__qualname__}")

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered names in name order (no aliases)."""
        return list(self)

    def aliases(self) -> dict[str, str]:
        """Old name → registered name."""
        self.discover()
        return dict(self._aliases)

    def aliases_of(self, name: str) -> tuple[str, ...]:
        """The old names that resolve to the registered name `name`."""
        key = self.canonical(name)
        return tuple(old for old, new in self.aliases().items() if new == key)

    def where(self, name: str) -> str:
        """Where a registered name or alias was defined (`definition`'s text)."""
        self.discover()
        if name not in self._where:
            raise unknown_name(self.kind, name, self._entries)
        return self._where[name]

    def entry(self, name: str) -> Any:
        """What was registered under `name`, unresolved (a lazy entry stays its string)."""
        return self._entries[self.canonical(name)]

    def unregister(self, name: str) -> None:
        """Remove a registered name and its aliases (for tests that register a fake entry)."""
        key = self.canonical(name)
        for old in [o for o, n in self._aliases.items() if n == key]:
            del self._aliases[old], self._where[old]
        del self._entries[key], self._where[key]
        self._resolved.pop(key, None)

    def __repr__(self) -> str:
        shown = ", ".join(sorted(self._entries)) if self._state == "done" else "not yet discovered"
        return f"Registry({self.kind!r}: {shown})"
