"""Every committed record is evidence of the card as it is now: the card it embeds (prose
included, which the card's sha256 leaves out) and that sha256 equal the current card's, with the
record's own `--set` overrides applied for an ablation. A card edited after its records ran, even
in its description, fails here until the records are re-run or removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdbench.protocol import apply_overrides, load_protocol

ROOT = Path(__file__).resolve().parents[2]
RECORDS = sorted((ROOT / "results").glob("*/*/*/seed*.json"))


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_a_committed_record_embeds_the_current_card(path: Path) -> None:
    record = json.loads(path.read_text())
    card = path.parents[1].name.split("+")[0]
    protocol = apply_overrides(load_protocol(record["task"], card), record["spec"]["overrides"] or {},
                               record["spec"]["method"]["name"])
    assert record["protocol"]["sha256"] == protocol.sha256, f"{path}: made with an older {card} card"
    assert record["spec"]["card"] == protocol.card, f"{path}: its card's text has changed since it ran"
