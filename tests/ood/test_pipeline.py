"""The OOD pipeline end to end on the smoke card, and the encoder's padding behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kdbench.adapters.ood.data import pad
from kdbench.adapters.ood.model import TextEncoder
from kdbench.adapters.ood.scores import OOD_DETECTION_METRICS, OOD_SCORES
from kdbench.cli import main
from kdbench.methods.minilm import padding_mask
from kdbench.metrics import METRICS
from kdbench.records import validation_errors

SMOKE = ["run", "--task", "ood", "--protocol", "smoke", "--device", "cpu"]


def _values(results: Path, method: str) -> dict[str, float]:
    record = json.loads((results / "ood" / "smoke" / method / "seed0.json").read_text())
    assert not validation_errors(record) and record["status"] == "ok"
    assert record["metrics"]["primary"] == "auroc_msp" and record["metrics"]["direction"] == "higher"
    return record["metrics"]["values"]  # type: ignore[no-any-return]


def test_smoke_runs_write_every_score_near_and_far(tmp_path: Path) -> None:
    for method in ("kd", "baseline"):
        assert main([*SMOKE, "--method", method, "--results", str(tmp_path)]) == 0
    kd, baseline, teacher = (_values(tmp_path, m) for m in ("kd", "baseline", "teacher"))
    for values, scores in ((kd, OOD_SCORES), (baseline, OOD_SCORES[:-1]), (teacher, OOD_SCORES[:-1])):
        assert set(values) <= set(METRICS)
        assert {"id_acc", "ece"} <= set(values)
        for m in OOD_DETECTION_METRICS:
            for s in scores:
                for suffix in ("", "_near", "_far"):
                    assert 0.0 <= values[f"{m}_{s}{suffix}"] <= 100.0
    # the teacher-student discrepancy exists only where the method has a teacher
    assert not any("discrepancy" in k for k in (*baseline, *teacher))


def test_padding_changes_nothing_and_is_zero_in_qkv() -> None:
    torch.manual_seed(0)
    model = TextEncoder(20, 3, dim=16, depth=2, heads=2, max_chars=24, patch=2, aux_heads=True).eval()
    short, long = torch.arange(2, 9), torch.arange(2, 20)
    with torch.no_grad():
        alone = model(short[None])
        padded = model(pad([short, long]))
    torch.testing.assert_close(padded.logits[0], alone.logits[0])
    for name, feature in alone.features.items():
        torch.testing.assert_close(padded.features[name][0], feature[0])
    assert len(padded.aux_logits) == 1 and set(padded.attentions) == {"layer0", "layer1"}
    q, _, _ = padded.attentions["layer1"]
    assert q.shape == (2, 2, 9, 8)  # (B, heads, ceil(18 / 2) patches, d)
    assert padding_mask(padded.attentions["layer1"]).tolist() == [[True] * 4 + [False] * 5, [True] * 9]
