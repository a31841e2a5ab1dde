"""Protocol cards (DESIGN §4): YAML files `benchmarks/<task>/<name>.yaml` that fix everything a
fair comparison needs. They ship inside the wheel (`kdbench/benchmarks`, a link to the
repository's `benchmarks/` in a clone)."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kdbench.errors import UsageError, unknown

TIERS = ("smoke", "small", "medium", "standard")
REQUIRED = ("task", "tier", "data", "student", "train", "metrics")


def cards_dir() -> Path:
    return Path(str(resources.files("kdbench").joinpath("benchmarks")))


def task_cards(task: str) -> dict[str, Path]:
    """Card name → path for one task."""
    folder = cards_dir() / task
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


@dataclass
class Protocol:
    """A loaded card: its name, tier, content hash, and the (possibly overridden) fields."""

    name: str
    task: str
    tier: str
    sha256: str
    card: dict[str, Any]
    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)

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
    cards = task_cards(task)
    if choice in cards:
        return _load(cards[choice], task)
    if choice in TIERS:
        matching = [p for p in cards.values() if _read(p).get("tier") == choice]
        defaults = [p for p in matching if _read(p).get("default")]
        if len(matching) == 1 or len(defaults) == 1:
            return _load((defaults or matching)[0], task)
        raise UsageError(f"task {task!r} has no default {choice!r} card; cards: "
                         f"{', '.join(sorted(cards)) or '(none)'}")
    path = Path(choice)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _load(path, task)
    raise unknown(f"protocol for task {task!r}", choice, [*cards, *(t for t in TIERS
                  if any(_read(p).get("tier") == t for p in cards.values()))])


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UsageError(f"malformed protocol card {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"malformed protocol card {path}: expected a mapping at the top")
    return data


def _load(path: Path, task: str) -> Protocol:
    card = _read(path)
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise UsageError(f"malformed protocol card {path}: missing {', '.join(missing)}")
    if card["task"] != task:
        raise UsageError(f"protocol card {path} is for task {card['task']!r}, not {task!r}")
    if card["tier"] not in TIERS:
        raise UsageError(f"protocol card {path}: tier {card['tier']!r}; valid: {', '.join(TIERS)}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Protocol(card.get("name", path.stem), task, card["tier"], digest, card, path)


#: Optional card keys a `--set` may add where the card leaves them out (their default is off).
OPTIONAL_KEYS = ("train.amp", "train.teacher_cache_topk")


def apply_overrides(protocol: Protocol, sets: dict[str, Any]) -> Protocol:
    """Override existing card keys (dotted) or set an optional one; an unknown key names the valid ones."""
    card = copy.deepcopy(protocol.card)
    for dotted, value in sets.items():
        node = card
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if dotted in OPTIONAL_KEYS and isinstance(node, dict) and part not in node:
                node[part] = {} if i < len(parts) - 1 else value
            if not isinstance(node, dict) or part not in node:
                valid = [*sorted(set(_leaves(card)) | set(OPTIONAL_KEYS)), "method.<hyperparameter>"]
                raise UsageError(f"unknown --set key {dotted!r}; valid: {', '.join(valid)}")
            if i == len(parts) - 1:
                node[part] = value
            node = node[part]
    return Protocol(protocol.name, protocol.task, protocol.tier, protocol.sha256, card,
                    protocol.path, {**protocol.overrides, **sets})


def _leaves(node: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        if key in ("methods", "reference", "description", "name", "task", "tier"):
            continue
        path = f"{prefix}{key}"
        out += _leaves(value, f"{path}.") if isinstance(value, dict) else [path]
    return out


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`key=value` strings → {key: YAML-parsed value}."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(raw) if raw else ""
    return out
