"""The teacher-output cache's size estimate and mode: exact bytes for known shapes, full within the
budget, the automatic top-k switch at the budget's edge, online where top-k does not serve or
fit, the card's own top-k, translation's counted token positions, and the record field each
choice writes (schema-valid; legacy entries still valid)."""

from __future__ import annotations

import copy

import pytest
import torch

from kdbench.adapters import get_adapter
from kdbench.outputs import Head, Outputs
from kdbench.protocol import apply_overrides, load_protocol
from kdbench.records import validation_errors
from kdbench.runner.cache_budget import (
    DEFAULT_BUDGET_MIB,
    DEFAULT_TOPK,
    TOPK_MIN_CLASSES,
    Estimate,
    HeadSize,
    choose,
    epoch_rows,
    estimate,
    size,
)
from kdbench.runner.train import probe_outputs
from tests.recordkit import valid_record

MIB = 1 << 20


def test_estimate_is_exact_bytes_for_a_known_shape() -> None:
    probe = Outputs(heads={"token": Head(torch.zeros(2, 7, 10_000), kind="categorical"),
                           "cls": Head(torch.zeros(2, 100), kind="categorical")})
    est = estimate(probe, {"token": 4_000_000, "cls": 45_000})
    assert est.full_bytes() == 4_000_000 * 10_000 * 4 + 45_000 * 100 * 4
    assert est.topk_bytes(8) == 4_000_000 * 8 * 8 + 45_000 * 8 * 8
    assert est.topk_bytes(500) == 4_000_000 * 500 * 8 + 45_000 * 100 * 8  # k is at most the classes


def test_epoch_rows_from_the_probe_and_per_rank() -> None:
    adapter = get_adapter("classification")(load_protocol("classification", "smoke"), None, torch.device("cpu"))
    probe = Outputs(heads={"cls": Head(torch.zeros(2, 10), kind="categorical"),
                           "grid": Head(torch.zeros(2, 3, 5, 10), kind="binned")})
    g = torch.Generator().manual_seed(0)
    assert epoch_rows(adapter, probe, 32, g) == {"cls": 160, "grid": 160 * 15}
    assert epoch_rows(adapter, probe, 32, g, world_size=3) == {"cls": 54, "grid": 800}


def test_translation_counts_every_padded_token_of_the_epoch() -> None:
    adapter = get_adapter("translation")(load_protocol("translation", "smoke"), None, torch.device("cpu"))
    for epoch_seed in (0, 5):
        counted = adapter.epoch_positions(32, torch.Generator().manual_seed(epoch_seed))
        batches = adapter.train_batches(32, torch.Generator().manual_seed(epoch_seed))
        assert counted == {"token": sum(b.tgt_out.numel() for b in batches)}
    model = adapter.build_model("teacher", frozenset())
    probe = probe_outputs(adapter, model)
    rows = epoch_rows(adapter, probe, 32, torch.Generator().manual_seed(0))
    assert rows == adapter.epoch_positions(32, torch.Generator().manual_seed(0))
    assert estimate(probe, rows).full_bytes() == rows["token"] * adapter.tokenizer.size * 4


def _est(rows: int, classes: int, kind: str = "categorical") -> Estimate:
    return Estimate((HeadSize("token", rows, classes, kind),))


def test_full_within_the_budget_and_top_k_one_row_over_it() -> None:
    classes = 2048
    rows = MIB // 4  # exactly 2048 MiB as float32
    at_edge = choose(_est(rows, classes), None, 2048, epochs=3)
    assert (at_edge.mode, at_edge.topk, at_edge.reason) == ("full", None, None)
    assert at_edge.line == "teacher cache: 2 GiB per epoch as full float32, budget 2 GiB: full (6 GiB over 3 epochs)"
    over = choose(_est(rows + 1, classes), None, 2048, epochs=3)
    assert (over.mode, over.topk) == ("topk", DEFAULT_TOPK)
    assert over.reason is not None and "over the budget 2 GiB" in over.reason
    assert f"top-{DEFAULT_TOPK} log-probabilities instead" in over.line
    assert over.topk_bytes == (rows + 1) * DEFAULT_TOPK * 8


def test_the_default_budget() -> None:
    rows = (DEFAULT_BUDGET_MIB * MIB) // (4 * 2000)
    assert choose(_est(rows, 2000), None, None, 1).mode == "full"
    assert choose(_est(rows + 1, 2000), None, None, 1).mode == "topk"
    assert choose(_est(rows, 2000), None, None, 1).budget_bytes == DEFAULT_BUDGET_MIB * MIB


def test_online_where_top_k_does_not_serve_or_fit() -> None:
    small = choose(_est(10**6, TOPK_MIN_CLASSES), None, 1, 1)  # 3.7 GiB of a 1000-class head
    assert small.mode == "online" and small.topk is None
    assert f"only for heads of over {TOPK_MIN_CLASSES} classes (token has {TOPK_MIN_CLASSES})" in (small.reason or "")
    assert small.line.startswith("teacher cache: 3.7 GiB per epoch as full float32: online, the teacher runs")
    binary = choose(_est(10**6, 5000, "binary"), None, 1, 1)
    assert binary.mode == "online" and "token (binary) is not one" in (binary.reason or "")
    huge = choose(_est(10**8, 5000), None, 1, 1)  # even top-8 is 6 GiB
    assert huge.mode == "online" and "even the top-8 cache would take" in (huge.reason or "")
    nothing = choose(_est(1, 5000), None, 0, 1)  # budget 0: never a cache
    assert nothing.mode == "online"


def test_the_cards_top_k_within_and_over_the_budget() -> None:
    within = choose(_est(1000, 800), 4, None, 1)
    assert (within.mode, within.topk, within.reason) == ("topk", 4, None)
    assert within.line.endswith("as the card's top-4; budget 1 GiB: top-4")
    over = choose(_est(10**8, 800), 4, 1, 1)
    assert over.mode == "online" and "the card's top-4 cache would take" in (over.reason or "")
    assert choose(_est(1000, 800, "binary"), 4, None, 1).mode == "online"


def test_sizes_in_binary_units() -> None:
    assert [size(n) for n in (0, 1023, 1024, 1536, 123_500_000, 1 << 30, 5 << 40)] == [
        "0 B", "1023 B", "1 KiB", "1.5 KiB", "117.8 MiB", "1 GiB", "5 TiB"]


def _with(entry: object) -> dict:
    record = valid_record()
    record["spec"]["teacher_outputs"] = copy.deepcopy(entry)
    return record


def test_every_choice_writes_a_valid_record_field() -> None:
    for choice in (choose(_est(10, 2000), None, None, 1), choose(_est(10**9, 2000), None, 65536, 1),
                   choose(_est(10**6, 500), None, 1, 1), choose(_est(10, 2000), 3, None, 1)):
        assert validation_errors(_with(choice.entry())) == [], choice
    assert choose(_est(10**9, 2000), None, 65536, 1).entry() == {
        "mode": "topk", "topk": 8, "reason": "the full cache would take 7.3 TiB per epoch, over the budget 64 GiB "
        "per epoch (train.teacher_cache_budget_mib)", "epoch_bytes": {"full": 8 * 10**12, "topk": 64 * 10**9},
        "budget_bytes": 64 << 30}
    not_applied = {"mode": "online", "topk": None, "reason": "the cache is turned off", "epoch_bytes": None,
                   "budget_bytes": None}
    assert validation_errors(_with(not_applied)) == []


@pytest.mark.parametrize("entry", [
    {"mode": "cached", "topk": None}, {"mode": "cached", "topk": 8}, {"mode": "online", "reason": "off"}])
def test_records_written_before_the_budget_stay_valid(entry: dict) -> None:
    assert validation_errors(_with(entry)) == []


@pytest.mark.parametrize("entry", [
    {"mode": "topk", "topk": None, "reason": None, "epoch_bytes": {"full": 1, "topk": 1}, "budget_bytes": 1},
    {"mode": "full", "topk": 8, "reason": None, "epoch_bytes": {"full": 1, "topk": None}, "budget_bytes": 1},
    {"mode": "full", "topk": None, "reason": None, "epoch_bytes": None, "budget_bytes": None},
    {"mode": "online", "topk": None, "reason": None, "epoch_bytes": None, "budget_bytes": None},
    {"mode": "mmap", "topk": None, "reason": None, "epoch_bytes": None, "budget_bytes": None},
    {"mode": "full", "topk": None, "reason": None, "epoch_bytes": {"full": -1, "topk": None}, "budget_bytes": 1},
    {"mode": "cached", "topk": 0}, {"mode": "full"}, {"mode": "online"}])
def test_a_malformed_record_field_is_refused(entry: dict) -> None:
    assert validation_errors(_with(entry))


def test_the_budget_is_a_card_setting() -> None:
    protocol = load_protocol("translation", "smoke")
    assert protocol.typed.train.teacher_cache_budget_mib is None
    assert "teacher_cache_budget_mib" not in protocol.card["train"]  # unset: no shipped card's sha changes
    changed = apply_overrides(protocol, {"train.teacher_cache_budget_mib": 64})
    assert changed.typed.train.teacher_cache_budget_mib == 64 and not changed.is_shipped
    with pytest.raises(Exception, match="teacher_cache_budget_mib"):
        apply_overrides(protocol, {"train.teacher_cache_budget_mib": -1})
