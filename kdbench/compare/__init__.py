"""`kdbench compare`: result records → one table per (task, protocol key) with honest statistics.

A table is one results folder `<task>/<key>`: the shipped card's table under its name, an ablation
(or a card of one's own) under `<name>+<sha8>`, never mixed. Three modules, each a step:
`frame` reads the records into one row each, `table` computes one table's statistics
(kdbench.stats), `render` words and formats it (terminal, markdown, csv, json). Reused by the
leaderboard, so no module here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from kdbench.compare.frame import BASELINE, TEACHER, direction_of, frame_from_records, load_frame
from kdbench.compare.render import FORMATS, render, render_many
from kdbench.compare.table import MDD_POWER, TableId, compare_table, tables_of
from kdbench.errors import UsageError, unknown

__all__ = [
    "BASELINE", "FORMATS", "MDD_POWER", "TEACHER", "TableId", "compare_results", "compare_table", "direction_of",
    "frame_from_records", "load_frame", "render", "render_many", "tables_of",
]



def compare_results(results: Path, task: str | None = None, protocol: str | None = None,
                    fmt: str = "terminal", alpha: float = 0.05) -> str:
    """What `kdbench compare` prints.

    Args:
        results: the results folder.
        task: one task's table; every (task, key) with records when None.
        protocol: a key, card name or tier; "small" when a task is given; without a task, every
            table whose key, card name or tier it is (every table when None).
        fmt: one of FORMATS.
        alpha: significance level for the verdict.

    Returns:
        The rendered table(s).

    Raises:
        UsageError: unknown format, task or protocol, or no records under `results`.
    """
    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)
    frame = load_frame(results)
    groups = tables_of(frame)
    if not groups:
        raise UsageError(f"no result records under {results} (expected <task>/<key>/<method>/seed<N>.json)")
    if task is not None:
        return render(compare_table(frame, task, protocol or "small", alpha), fmt)
    pairs = sorted({(g.task, g.protocol) for g in groups
                    if protocol is None or protocol in (g.protocol, g.card, g.tier)})
    if not pairs:
        raise unknown("protocol", str(protocol), {x for g in groups for x in (g.protocol, g.card, g.tier)})
    return render_many([compare_table(frame, t, p, alpha) for t, p in pairs], fmt)
