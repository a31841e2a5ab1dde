"""Classification metrics against hand-computed golden values."""

from __future__ import annotations

import numpy as np
import pytest

from kdbench.adapters.classification.metrics import classification_metrics

# Six samples, three classes; no confidence sits on a bin edge (multiples of 1/15).
PROBS = np.array(
    [
        [0.92, 0.05, 0.03],  # label 0: correct, conf 0.92, bin 13 (0.867, 0.933]
        [0.04, 0.08, 0.88],  # label 1: wrong,   conf 0.88, bin 13
        [0.10, 0.70, 0.20],  # label 1: correct, conf 0.70, bin 10 (0.667, 0.733]
        [0.15, 0.20, 0.65],  # label 2: correct, conf 0.65, bin 9  (0.600, 0.667]
        [0.50, 0.30, 0.20],  # label 1: wrong,   conf 0.50, bin 7  (0.467, 0.533]
        [0.45, 0.30, 0.25],  # label 0: correct, conf 0.45, bin 6  (0.400, 0.467]
    ]
)
LABELS = np.array([0, 1, 1, 2, 1, 0])
LOGITS = np.log(PROBS) + 3.0  # softmax(LOGITS) == PROBS; the shift must not matter


def test_golden_ece_and_aurc() -> None:
    m = classification_metrics(LOGITS, LABELS)
    # ECE by hand: bin 13 holds 2 samples, acc 0.5, mean conf 0.90 → 2/6 · 0.40
    # bins 10, 9, 7, 6 hold one each: 1/6 · (0.30 + 0.35 + 0.50 + 0.55)
    # total (0.80 + 1.70) / 6 = 2.5 / 6 = 0.416667 → 41.6667 %
    assert m["ece"] == pytest.approx(41.666667, abs=1e-4)
    # AURC by hand: by confidence 0.92 ✓, 0.88 ✗, 0.70 ✓, 0.65 ✓, 0.50 ✗, 0.45 ✓
    # cumulative errors 0, 1, 1, 1, 2, 2 → risks 0, 1/2, 1/3, 1/4, 2/5, 2/6
    # sum = 109/60; mean = 109/360 = 0.302778 → ×1000 = 302.7778
    assert m["aurc"] == pytest.approx(302.777778, abs=1e-4)


def test_accuracy_and_nll_match_numpy() -> None:
    m = classification_metrics(LOGITS, LABELS)
    assert m["top1"] == pytest.approx(100 * 4 / 6)
    assert "top5" not in m  # K = 3
    nll = -np.log(PROBS[np.arange(6), LABELS]).mean()
    assert m["nll"] == pytest.approx(nll, rel=1e-9)


def test_top5_and_nll_on_random_logits() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 20)) * 3
    labels = rng.integers(0, 20, size=200)
    m = classification_metrics(logits, labels)
    rank = (logits > logits[np.arange(200), labels][:, None]).sum(axis=1)  # classes above label
    assert m["top1"] == pytest.approx(100 * np.mean(rank == 0))
    assert m["top5"] == pytest.approx(100 * np.mean(rank < 5))
    log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    assert m["nll"] == pytest.approx(np.mean(log_z - logits[np.arange(200), labels]), rel=1e-9)
    assert 0 <= m["ece"] <= 100 and 0 <= m["aurc"] <= 1000


def test_perfect_confident_predictions() -> None:
    labels = np.array([0, 3, 1, 2, 2, 4, 5])
    logits = 50.0 * np.eye(6)[labels]
    m = classification_metrics(logits, labels)
    assert m["top1"] == 100.0 and m["top5"] == 100.0
    assert m["ece"] == pytest.approx(0.0, abs=1e-9)
    assert m["aurc"] == 0.0
    assert m["nll"] == pytest.approx(0.0, abs=1e-9)


def test_binary_case() -> None:
    m = classification_metrics(np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), np.array([0, 1, 1]))
    assert m["top1"] == pytest.approx(100 * 2 / 3)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(np.zeros((3, 4)), np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.full((2, 3), np.nan), np.array([0, 1]))
