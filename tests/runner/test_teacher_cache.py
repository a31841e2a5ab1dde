"""The teacher-output cache: a cached run equals an online run bit for bit, the cache is really
read (tampering with it changes the next run), top-k expansion keeps the top-k probabilities and
spreads the remainder uniformly, and methods reading more than the heads run the teacher online."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.cache import cache_dir
from kdbench.methods import get_method
from kdbench.runner import cache_budget
from kdbench.runner.run import run
from kdbench.runner.spec import RunOptions
from kdbench.runner.teacher_cache import expand_topk, why_online

pytestmark = pytest.mark.slow


def _kd(results: Path, method: str = "kd") -> dict:
    record, _ = run(RunOptions(task="classification", method=method, protocol="smoke", seed=0, device="cpu",
                               results=results, sets={"train.epochs": 1}))
    return record


def test_cached_run_is_bit_identical_and_really_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDBENCH_TEACHER_CACHE", "0")
    online = _kd(tmp_path / "online")
    assert online["spec"]["teacher_outputs"] == {
        "mode": "online", "topk": None, "reason": "the cache is turned off (KDBENCH_TEACHER_CACHE=0)",
        "epoch_bytes": None, "budget_bytes": None}
    monkeypatch.delenv("KDBENCH_TEACHER_CACHE")
    first = _kd(tmp_path / "first")  # computes the teacher and writes the cache
    files = sorted((cache_dir() / "teacher-outputs").rglob("cls.logits.npy"))
    assert len(files) == 1
    second = _kd(tmp_path / "second")  # reads it
    assert first["spec"]["teacher_outputs"] == {  # 160 digits images of 10 classes, float32
        "mode": "full", "topk": None, "reason": None, "epoch_bytes": {"full": 160 * 10 * 4, "topk": None},
        "budget_bytes": 1 << 30}
    assert "teacher cache: 6.2 KiB per epoch as full float32, budget 1 GiB: full" in capsys.readouterr().err
    shas = {r["student"]["checkpoint_sha256"] for r in (online, first, second)}
    assert len(shas) == 1, "cached and online runs must train the same weights"
    assert online["metrics"] == second["metrics"]
    # a cache whose data changed with its meta.json to match changes the next run: it is read
    arr = np.load(files[0])
    np.save(files[0], np.zeros_like(arr))  # np.save's header is also 128 bytes for this shape
    meta_path = files[0].parent / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["arrays"]["cls.logits"]["sha256"] = hashlib.sha256(np.zeros_like(arr).tobytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    assert _kd(tmp_path / "third")["student"]["checkpoint_sha256"] not in shas
    # a damaged one (data changed behind meta.json's back) is refused: the teacher runs and rewrites it
    np.save(files[0], np.ones_like(arr))
    fourth = _kd(tmp_path / "fourth")
    assert "is damaged (cls.logits.npy: its data's sha256 is not the one written)" in capsys.readouterr().err
    assert fourth["student"]["checkpoint_sha256"] in shas
    assert np.array_equal(np.load(files[0]), arr)  # replaced by the teacher's own logits
    assert _kd(tmp_path / "fifth")["student"]["checkpoint_sha256"] in shas


def test_expand_topk_keeps_topk_and_spreads_the_remainder() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 50, dtype=torch.float64)
    logp = logits.log_softmax(-1)
    values, index = logp.topk(7, -1)
    p = expand_topk(values, index, 50).softmax(-1)
    assert torch.allclose(p.gather(-1, index), values.exp())
    rest = torch.ones_like(p, dtype=torch.bool).scatter(-1, index, False)
    remainder = (1 - values.exp().sum(-1, keepdim=True)) / 43
    assert torch.allclose(p[rest].view(5, 43), remainder.expand(5, 43))
    assert torch.allclose(expand_topk(logp, torch.arange(50).expand(5, 50), 50).softmax(-1), logp.exp())


def test_methods_reading_teacher_features_run_online() -> None:
    from kdbench.adapters import get_adapter

    adapter = get_adapter("classification")
    assert why_online(adapter, get_method("kd")) is None
    reason = why_online(adapter, get_method("mlkd"))
    assert reason is not None and "features" in reason
    assert "does not promise that the teacher sees" in (why_online(get_adapter("detection"), get_method("kd")) or "")
    assert why_online(get_adapter("translation"), get_method("kd")) is None
    assert "instead of the references" in (why_online(get_adapter("translation"), get_method("seqkd")) or "")


def _translation(tmp_path: Path, results: str, **sets: object) -> dict:
    record, _ = run(RunOptions(task="translation", method="kd", protocol="smoke", seed=0, device="cpu",
                               results=tmp_path / results, sets={"train.epochs": 1, **sets}))
    return record


def test_translation_token_logits_cached_exactly_and_as_topk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(B, T, V) token logits with per-step shapes: the exact cache reproduces the online run;
    top-k is stored smaller, recorded as such, and trains a different student."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDBENCH_TEACHER_CACHE", "0")
    online = _translation(tmp_path, "online")
    monkeypatch.delenv("KDBENCH_TEACHER_CACHE")
    _translation(tmp_path, "write")
    cached = _translation(tmp_path, "read")
    full = {"full": 7932 * 120 * 4, "topk": None}  # the epoch's padded target tokens × 120 pieces × float32
    assert cached["spec"]["teacher_outputs"] == {
        "mode": "full", "topk": None, "reason": None, "epoch_bytes": full, "budget_bytes": 1 << 30}
    assert cached["student"]["checkpoint_sha256"] == online["student"]["checkpoint_sha256"]
    topk = _translation(tmp_path, "topk", **{"train.teacher_cache_topk": 4})
    assert topk["spec"]["teacher_outputs"] == {
        "mode": "topk", "topk": 4, "reason": None, "epoch_bytes": {"full": full["full"], "topk": 7932 * 4 * 8},
        "budget_bytes": 1 << 30}
    assert topk["student"]["checkpoint_sha256"] != online["student"]["checkpoint_sha256"]
    sizes = sorted(sum(f.stat().st_size for f in d.rglob("*.npy"))
                   for d in (cache_dir() / "teacher-outputs" / "translation").iterdir())
    assert len(sizes) == 2 and sizes[0] * 5 < sizes[1]  # top-4 of an 8x-larger vocabulary
    assert sizes == sorted(128 * n + b for n, b in ((2, 7932 * 4 * 8), (1, full["full"])))  # as estimated


def test_over_the_budget_top_k_automatically_or_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Over the budget a large vocabulary switches to top-8, which trains exactly as the card's own
    top-8 does; with no room even for that (budget 0) the teacher runs online, as exact as a full
    cache."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache_budget, "TOPK_MIN_CLASSES", 100)  # the smoke card's 120 pieces count as large
    auto = _translation(tmp_path, "auto", **{"train.teacher_cache_budget_mib": 1})  # full: 3.6 MiB
    entry = auto["spec"]["teacher_outputs"]
    assert (entry["mode"], entry["topk"], entry["budget_bytes"]) == ("topk", 8, 1 << 20)
    assert "teacher cache: 3.6 MiB per epoch as full float32, over the budget 1 MiB per epoch " \
           "(train.teacher_cache_budget_mib): top-8 log-probabilities instead, 495.8 KiB per epoch" \
           in capsys.readouterr().err
    card = _translation(tmp_path, "card", **{"train.teacher_cache_topk": 8})
    assert card["spec"]["teacher_outputs"]["mode"] == "topk"
    assert auto["student"]["checkpoint_sha256"] == card["student"]["checkpoint_sha256"]
    full = _translation(tmp_path, "full")
    assert full["spec"]["teacher_outputs"]["mode"] == "full"
    online = _translation(tmp_path, "none", **{"train.teacher_cache_budget_mib": 0})
    assert online["spec"]["teacher_outputs"]["mode"] == "online"
    assert "even the top-8 cache would take 495.8 KiB per epoch" in online["spec"]["teacher_outputs"]["reason"]
    assert online["student"]["checkpoint_sha256"] == full["student"]["checkpoint_sha256"]
    assert online["student"]["checkpoint_sha256"] != auto["student"]["checkpoint_sha256"]
    assert len(list((cache_dir() / "teacher-outputs" / "translation").iterdir())) == 3  # auto, card, full
