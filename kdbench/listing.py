"""`kdbench list tasks|methods|protocols`, without importing torch.

The method classes and adapters import torch (seconds, most of a GB), so the listing reads their
metadata from the committed catalog (`kdbench/site/catalog.json`, the one the site reads; a test
keeps it equal to the live registries). Only when the catalog visibly misses something — a method
file or a task it does not list, e.g. a method you have just written — does the listing read the
live registries instead, and says so on stderr with the command that refreshes the catalog.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdbench.adapters import TASKS

REFRESH = "python -m kdbench.site.catalog"


def method_files() -> set[str]:
    """The method modules on disk, as catalog `source` paths (read from the folder, not imported)."""
    folder = Path(__file__).with_name("methods")
    return {f"kdbench/methods/{p.name}" for p in folder.glob("*.py")
            if not p.name.startswith("_") and p.name != "base.py"}


def stale(catalog: dict[str, Any]) -> str | None:
    """Why the committed catalog cannot answer for the code on disk, or None when it can."""
    sources = {m["source"] for m in catalog["methods"].values()}
    new = sorted(Path(f).name for f in method_files() - sources)
    if new:
        return f"method file{'s' if len(new) > 1 else ''} {', '.join(new)} not in it"
    tasks = sorted(set(TASKS) ^ set(catalog["tasks"]))
    if tasks:
        return f"tasks {', '.join(tasks)} differ from the registry"
    return None


def catalog() -> dict[str, Any]:
    """The method and task metadata: the committed catalog, or the live registries when it is stale."""
    from kdbench.site.catalog import generate, load_catalog

    cat = load_catalog()
    why = stale(cat)
    if why is None:
        return cat
    print(f"kdbench: note: kdbench/site/catalog.json is out of date ({why}); reading the registries "
          f"instead (slow: imports torch). Refresh it with `{REFRESH}`.", file=sys.stderr)
    return generate()


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows in columns as wide as their widest cell (the last column is not padded)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def servable(cat: dict[str, Any], method: str) -> list[str]:
    """The tasks that serve the method: those that provide everything it needs and offer a head of
    a kind it distils (kdbench.methods.base.refusal, the rule `kdbench run` applies, as the catalog
    recorded it)."""
    refused = cat["methods"][method]["refused"]
    return [t for t in cat["tasks"] if t not in refused]


def list_tasks() -> str:
    cat = catalog()
    rows = []
    for task in TASKS:
        info = cat["tasks"][task]
        served = sum(task in servable(cat, m) for m in cat["methods"])
        heads = ", ".join(f"{h} ({k})" for h, k in info["heads"].items())
        rows.append([task, str(served), heads, ", ".join(info["provides"])])
    return table(["task", "methods", "heads", "provides"], rows)


def list_methods() -> str:
    cat = catalog()
    rows = []
    for name, m in sorted(cat["methods"].items()):
        tasks = servable(cat, name)
        shown = "all" if len(tasks) == len(cat["tasks"]) else ", ".join(tasks) or "-"
        rows.append([name, m["teacher"], ", ".join(m["needs"]) or "-", ", ".join(m["accepts"]) or "-", shown,
                     m["paper"]])
    return table(["method", "teacher", "needs", "heads", "tasks", "paper"], rows)


def shorten(text: str, width: int = 96) -> str:
    """The first line of `text`, cut at a word boundary to at most `width` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= width:
        return line
    return line[: width - 1].rsplit(" ", 1)[0].rstrip(",;:") + "…"


def list_protocols() -> str:
    """Every shipped card with its tier, read as plain YAML (the typed load checks method
    hyperparameters against the method classes, which would import torch)."""
    import yaml

    from kdbench.protocol import task_cards

    rows = []
    for task in TASKS:
        for name, path in task_cards(task).items():
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            raw = raw if isinstance(raw, dict) else {}
            rows.append([task, name, str(raw.get("tier", "?")), shorten(str(raw.get("description", "")))])
    return table(["task", "card", "tier", "description"], rows)


LISTS = {"tasks": list_tasks, "methods": list_methods, "protocols": list_protocols}
