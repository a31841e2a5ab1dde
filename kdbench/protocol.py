"""Protocol cards: YAML files `benchmarks/<task>/<name>.yaml` that fix everything a fair
comparison needs. They ship inside the wheel (`kdbench/benchmarks`, a link to the repository's
`benchmarks/` in a clone) and are parsed into typed sections on load (kdbench.cards), so a
misspelt key or an out-of-range value is one line before any work starts.

A card's identity is the sha256 of its *effective* content (after `--set` overrides, with the
prose fields left out), not of its file: a comment or a description edit changes nothing. A
run on exactly a shipped card is stored under the card's name; anything else (a `--set`, an
edited or foreign card file) is an ablation stored under `<name>+<first 8 hex of its sha>`, so
it never enters the shipped card's table.

This module sits below the adapters and the runner, which both read cards, and above the method
registry, which it loads lazily (importing this module imports no torch) to check a card's
`methods:` section (docs/architecture.md, Layers).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kdbench.cards.sections import TIERS, Card
from kdbench.cards.typed import leaves, parse, to_plain
from kdbench.errors import UsageError
from kdbench.tasks import TASKS

#: Card fields that describe rather than determine a run: left out of the card's sha256.
PROSE = ("description", "reference", "default", "seeds", "tuning", "comparisons", "convergence_seeds")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def cards_dir() -> Path:
    return Path(str(resources.files("kdbench").joinpath("benchmarks")))


def task_cards(task: str) -> dict[str, Path]:
    """Card name → path for one task's shipped cards: those in the folder its declaration names
    (kdbench.tasks.Task.cards), else in `kdbench/benchmarks/<task>/`."""
    declared = TASKS.get(task)
    folder = declared.cards if declared is not None and declared.cards is not None else cards_dir() / task
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


@dataclass
class Protocol:
    """A loaded card: its name, tier, effective content (plain, defaults filled, unset optional
    fields left out), its typed form, and the sha256 that identifies it."""

    name: str
    task: str
    tier: str
    sha256: str
    card: dict[str, Any]
    path: Path
    typed: Card
    shipped_sha256: str | None = None  # the shipped card of this name, if there is one
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def is_shipped(self) -> bool:
        """Exactly a shipped card: its records belong in that card's table."""
        return self.shipped_sha256 == self.sha256

    @property
    def key(self) -> str:
        """Where its records live: `<name>` for a shipped card, `<name>+<sha8>` otherwise."""
        return self.name if self.is_shipped else f"{self.name}+{self.sha256[:8]}"

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.card
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def method_hparams(self, method: str) -> dict[str, Any]:
        return dict((self.card.get("methods") or {}).get(method) or {})


def load_protocol(task: str, choice: str) -> Protocol:
    """Resolve `--protocol`: a tier (the task's default card of it), a card name, or a path."""
    TASKS[task]  # an unknown task lists the registered ones
    cards = task_cards(task)
    if choice in cards:
        return _load(cards[choice], task)
    if choice in TIERS:
        matching = [p for p in cards.values() if _read(p).get("tier") == choice]
        defaults = [p for p in matching if _read(p).get("default")]
        if len(matching) == 1 or len(defaults) == 1:
            return _load((defaults or matching)[0], task)
        raise UsageError(f"task {task!r} has no {choice!r} card; cards: {', '.join(sorted(cards)) or '(none)'}")
    path = Path(choice)
    if path.suffix in (".yaml", ".yml") or "/" in choice or path.exists():
        if not path.is_file():
            raise UsageError(f"--protocol {choice}: no such card file")
        return _load(path, task)
    tiers = sorted({str(_read(p).get("tier")) for p in cards.values()} & set(TIERS), key=TIERS.index)
    names = [n for n in cards if n not in tiers]
    raise UsageError(f"unknown protocol {choice!r} for task {task!r}; valid: tiers {', '.join(tiers)}; "
                     f"cards {', '.join(names)}; or a card file path (.yaml)")


@cache
def _read_cached(path: str, mtime: float) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"malformed protocol card {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"malformed protocol card {path}: expected a mapping at the top")
    return data


def _read(path: Path) -> dict[str, Any]:
    return copy.deepcopy(_read_cached(str(path), path.stat().st_mtime))


def _typed(raw: dict[str, Any], task: str, where: str) -> tuple[Card, dict[str, Any], str]:
    """(typed card, its plain effective form, its sha256); a UsageError starts with `where`."""
    if raw.get("task") != task:
        raise UsageError(f"{where}is for task {raw.get('task')!r}, not {task!r}")
    try:
        typed = parse(TASKS[task].card, raw, "")
    except UsageError as e:
        raise UsageError(f"{where}{e}") from None
    if not NAME.match(typed.name):
        raise UsageError(f"{where}name {typed.name!r} must be lower-case letters, digits, "
                         "'-' or '_' (it names a results folder)")
    if typed.comparisons is not None and typed.comparisons < 1:
        raise UsageError(f"{where}comparisons must be a positive number of methods besides the baseline, "
                         f"not {typed.comparisons}")
    k = typed.convergence_seeds
    if k is not None and not 1 <= k <= len(typed.seeds):
        raise UsageError(f"{where}convergence_seeds must be between 1 and the card's {len(typed.seeds)} seeds, not {k}")
    _check_methods(typed, where)
    plain = drop_none(to_plain(typed))
    return typed, plain, card_sha256(plain)


def _check_methods(typed: Card, where: str) -> None:
    # imported here: the method registry imports torch; importing this module (the site does) must not
    from kdbench.methods import get_method
    from kdbench.methods.base import make_config

    seen: dict[str, str] = {}
    for name, hparams in typed.methods.items():
        try:
            cls = get_method(name)
            make_config(cls.Config, hparams)
        except UsageError as e:
            raise UsageError(f"{where}methods.{name}: {e}") from None
        if cls.name in seen:  # one method under its name and an alias (an earlier name)
            raise UsageError(f"{where}methods.{seen[cls.name]} and methods.{name} both set method {cls.name!r}; "
                             "keep one section")
        seen[cls.name] = name


def drop_none(node: Any) -> Any:
    """A plain card without its unset (None) fields, at every depth: what `card_sha256` hashes."""
    if isinstance(node, dict):
        return {k: drop_none(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [drop_none(v) for v in node]
    return node


def card_sha256(plain: dict[str, Any]) -> str:
    """The identity of an effective card: canonical JSON of every field that determines a run."""
    kept = {k: v for k, v in plain.items() if k not in PROSE}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _load(path: Path, task: str) -> Protocol:
    raw = _read(path)
    typed, plain, sha = _typed(raw, task, f"protocol card {path}: ")
    check_citations(typed.methods, typed.tuning, path.parent, f"protocol card {path}: ")
    shipped = task_cards(task).get(typed.name)
    if shipped is not None and shipped.resolve() == path.resolve():
        shipped_sha: str | None = sha
    elif shipped is not None:
        shipped_sha = _typed(_read(shipped), task, f"protocol card {shipped}: ")[2]
    else:
        shipped_sha = None
    return Protocol(typed.name, task, typed.tier, sha, plain, path, typed, shipped_sha)


def check_citations(methods: dict[str, dict[str, Any]], tuning: dict[str, str], folder: Path, where: str) -> None:
    """A card's `tuning` entries: each file lies in the card's folder, is a tuning file of that
    method, and its choice is what the card's `methods:` section sets."""
    for method, rel in tuning.items():
        path = (folder / rel).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise UsageError(f"{where}tuning.{method}: {rel!r} lies outside the card's folder")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{where}tuning.{method}: cannot read {rel!r}: {e}") from None
        if not isinstance(data, dict) or data.get("method") != method or not isinstance(data.get("choice"), dict):
            raise UsageError(f"{where}tuning.{method}: {rel!r} is not a kdbench tune file of {method!r}")
        chosen = methods.get(method, {})
        differs = {k: v for k, v in data["choice"].items() if chosen.get(k) != v}
        if differs:
            raise UsageError(f"{where}tuning.{method}: the card sets {chosen}, the tune file chose {data['choice']}")


def apply_overrides(protocol: Protocol, sets: dict[str, Any], method: str | None = None) -> Protocol:
    """The card with `--set` overrides: card keys (`train.epochs`) and, for `method`, its
    hyperparameters (`method.temperature`, stored as `methods.<method>.temperature`). The
    result is validated as a whole; an unknown key names the valid ones."""
    if not sets:
        return protocol
    raw = copy.deepcopy(protocol.card)
    valid = [k for k in leaves(TASKS[protocol.task].card) if k.split(".")[0] not in (*PROSE, "name", "task", "tier")]
    for dotted, value in sets.items():
        parts = dotted.split(".")
        if parts[0] == "method":
            if method is None or len(parts) != 2:
                raise UsageError(f"--set {dotted}: method hyperparameters are method.<name>, e.g. method.temperature")
            raw.setdefault("methods", {}).setdefault(method, {})[parts[1]] = value
            continue
        if dotted not in valid:
            raise UsageError(f"unknown --set key {dotted!r}; valid: {', '.join(valid)}, method.<hyperparameter>")
        node = raw
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    typed, plain, sha = _typed(raw, protocol.task, "--set ")
    return Protocol(protocol.name, protocol.task, typed.tier, sha, plain, protocol.path, typed,
                    protocol.shipped_sha256, {**protocol.overrides, **sets})


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`key=value` strings → {key: YAML-parsed value}."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out
