"""What the leaderboard knows about methods and tasks without importing them.

The method classes and the adapters import torch; the site must not (docs/architecture.md, Leaderboard). So their
metadata — paper, earlier names (aliases), docstring (which states the formula), teacher kind, needs, the head kinds it
distils, hyperparameter defaults, family, and why each task that cannot serve it refuses it; each
task's primary metric, what its Outputs provide and the kind of each head — is written once
from the live registries into `catalog.json` beside this file, and the site reads only that.
`python -m kdbench.site.catalog` regenerates it; a test fails while the committed file differs
from the registries, naming that command.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

#: Family of a method, shown and filtered on the overview. Rule: the teacher kind decides "self"
#: (self-distillation) and "none" (no teacher: the baseline and regularisers such as label
#: smoothing); an external- or online-teacher method is "feature" when it distils intermediate features or
#: attention (it needs `features` or `attentions`), else "logit". A method whose needs mislead the
#: rule is listed here with the reason.
FAMILY_OVERRIDES: dict[str, str] = {
    "dhkd": "logit",  # needs `features` only to feed its auxiliary head; the loss is on logits
}
FAMILIES = ("logit", "feature", "self", "none")

CATALOG_FILE = "catalog.json"


def family(name: str, teacher: str, needs: frozenset[str] | set[str]) -> str:
    """The method's family by the rule of FAMILY_OVERRIDES."""
    if name in FAMILY_OVERRIDES:
        return FAMILY_OVERRIDES[name]
    if teacher in ("self", "none"):
        return teacher
    return "feature" if needs & {"features", "attentions"} else "logit"


def _hparams(config: type) -> list[dict[str, Any]]:
    out = []
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append({"name": f.name, "type": kind, "default": default})
    return out


def generate() -> dict[str, Any]:
    """The catalog from the live registries (imports every method and adapter, hence torch)."""
    from kdbench.adapters import TASKS, get_adapter
    from kdbench.adapters.base import why_not_served
    from kdbench.methods import registry
    from kdbench.methods.base import NEEDS, head_refusals
    from kdbench.outputs import HEAD_KINDS

    repo_root = Path(__file__).resolve().parents[2]
    methods = {}
    for name, cls in sorted(registry().items()):
        source = Path(inspect.getfile(cls)).resolve()
        methods[name] = {
            "paper": cls.paper,
            "aliases": sorted(cls.aliases),  # earlier names: their records are read as this method's
            "teacher": cls.teacher,
            "needs": sorted(cls.needs),
            "requests": sorted(cls.requests),
            "accepts": sorted(cls.accepts),
            "rebins": cls.rebins,
            "refused": {task: why for task in TASKS if (why := why_not_served(get_adapter(task), cls))},
            # served task → head → "" where the method distils it, else why it keeps its task loss only
            "heads": {task: head_refusals(cls, get_adapter(task).head_kinds, get_adapter(task).relative_heads)
                      for task in TASKS if not why_not_served(get_adapter(task), cls)},
            "family": family(name, cls.teacher, cls.needs),
            "summary": cls.summary(),
            "doc": inspect.cleandoc(cls.__doc__ or ""),
            "hparams": _hparams(cls.Config),
            "source": str(source.relative_to(repo_root)) if source.is_relative_to(repo_root) else source.name,
        }
    tasks = {}
    for task in TASKS:
        adapter = get_adapter(task)
        tasks[task] = {
            "provides": sorted(adapter.provides),
            "heads": dict(adapter.head_kinds),
            "relative_heads": sorted(adapter.relative_heads),
            "doc": inspect.cleandoc(adapter.__doc__ or "").split("\n\n")[0],
        }
    return {"generated_by": "python -m kdbench.site.catalog", "needs": dict(NEEDS), "head_kinds": dict(HEAD_KINDS),
            "tasks": tasks, "methods": methods}


@cache
def load_catalog() -> dict[str, Any]:
    """The committed catalog (no torch import)."""
    text = resources.files("kdbench.site").joinpath(CATALOG_FILE).read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def method_aliases() -> dict[str, str]:
    """A renamed method's earlier name → its name now (`Method.aliases`, as the committed catalog
    records them): how records written under an earlier name are read (kdbench.compare, the site)."""
    return {old: name for name, m in load_catalog()["methods"].items() for old in m.get("aliases", [])}


def dumps(catalog: dict[str, Any]) -> str:
    return json.dumps(catalog, indent=1, ensure_ascii=False, sort_keys=False, default=str) + "\n"


def main() -> int:
    path = Path(__file__).with_name(CATALOG_FILE)
    path.write_text(dumps(generate()), encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
