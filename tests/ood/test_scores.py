"""OOD scores and detection metrics on constructed cases with known answers, and against
scikit-learn / scipy computed independently."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import entropy
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import average_precision_score, roc_auc_score

from kdbench.adapters.ood import scores as S
from kdbench.adapters.ood.scores import OOD_DETECTION_METRICS, OOD_SCORES
from kdbench.metrics import METRICS, metric

RNG = np.random.default_rng(0)


def _fpr95_by_sorting(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Independent FPR@95%TPR: the threshold keeps the top ceil(0.95·N) ID scores."""
    kept = int(np.ceil(0.95 * len(id_scores)))
    threshold = np.sort(id_scores)[::-1][kept - 1]
    return 100.0 * float((ood_scores >= threshold).mean())


def test_separable_scores_are_perfect() -> None:
    m = S.detection_metrics(np.array([5.0, 6.0, 7.0, 8.0]), np.array([1.0, 2.0, 3.0]))
    assert m == {"auroc": 100.0, "aupr_in": 100.0, "aupr_out": 100.0, "fpr95": 0.0}


def test_reversed_scores_are_worst() -> None:
    m = S.detection_metrics(np.array([1.0, 2.0]), np.array([5.0, 6.0]))
    assert m["auroc"] == 0.0 and m["fpr95"] == 100.0


def test_identical_distributions_are_chance() -> None:
    m = S.detection_metrics(RNG.normal(size=20_000), RNG.normal(size=20_000))
    assert m["auroc"] == pytest.approx(50.0, abs=1.5)
    assert m["fpr95"] == pytest.approx(95.0, abs=1.5)
    assert m["aupr_in"] == pytest.approx(50.0, abs=1.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn_and_sorting(seed: int) -> None:
    rng = np.random.default_rng(seed)
    id_s, ood_s = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.5, 200)
    m = S.detection_metrics(id_s, ood_s)
    y = np.r_[np.ones(300), np.zeros(200)]
    s = np.r_[id_s, ood_s]
    assert m["auroc"] == pytest.approx(100 * roc_auc_score(y, s))
    assert m["aupr_in"] == pytest.approx(100 * average_precision_score(y, s))
    assert m["aupr_out"] == pytest.approx(100 * average_precision_score(1 - y, -s))
    assert m["fpr95"] == pytest.approx(_fpr95_by_sorting(id_s, ood_s))


def test_bad_scores_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        S.detection_metrics(np.array([np.nan, 1.0]), np.array([0.0]))
    with pytest.raises(ValueError, match="at least one"):
        S.detection_metrics(np.array([1.0]), np.array([]))


def test_logit_scores_closed_form() -> None:
    logits = np.array([[0.0, np.log(3.0)], [0.0, 0.0]])
    np.testing.assert_allclose(S.msp(logits), [0.75, 0.5])
    np.testing.assert_allclose(S.max_logit(logits), [np.log(3.0), 0.0])
    np.testing.assert_allclose(S.energy(logits), [np.log(4.0), np.log(2.0)])
    np.testing.assert_allclose(S.energy(logits, temperature=2.0), 2 * np.log(np.exp(logits / 2).sum(1)))


def _confident_vs_flat(k: int = 10, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    confident = RNG.normal(0, 0.1, (n, k))
    confident[np.arange(n), RNG.integers(0, k, n)] += 8.0
    return confident, RNG.normal(0, 0.1, (n, k))


@pytest.mark.parametrize("score", [S.msp, S.max_logit, S.energy])
def test_logit_scores_separate_confident_from_flat(score) -> None:  # type: ignore[no-untyped-def]
    id_logits, ood_logits = _confident_vs_flat()
    assert S.detection_metrics(score(id_logits), score(ood_logits))["auroc"] == 100.0
    same = S.detection_metrics(score(id_logits[:100]), score(id_logits[100:]))["auroc"]
    assert 35.0 < same < 65.0


def _gaussian_data(n: int = 600) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    means = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    labels = RNG.integers(0, 3, n)
    return means[labels] + RNG.normal(size=(n, 3)) @ np.diag([1.0, 0.5, 0.3]), labels, means


def test_mahalanobis_matches_scikit_learn() -> None:
    feats, labels, _ = _gaussian_data()
    g = S.Gaussian(feats, labels, 3)
    query = RNG.normal(size=(50, 3))
    cov = EmpiricalCovariance(assume_centered=True).fit(feats - g.means[labels])
    for c in range(3):
        cov.location_ = g.means[c]  # sklearn's distance to one location with the shared precision
        np.testing.assert_allclose(g.distances(query)[:, c], cov.mahalanobis(query), rtol=1e-9)
    np.testing.assert_allclose(g.score(query), -g.distances(query).min(1))


def test_mahalanobis_separates_far_features_and_not_same_ones() -> None:
    feats, labels, _ = _gaussian_data()
    g = S.Gaussian(feats, labels, 3)
    id_test, _, _ = _gaussian_data(400)
    far = RNG.normal(size=(400, 3)) + np.array([0.0, 0.0, 6.0])
    assert S.detection_metrics(g.score(id_test), g.score(far))["auroc"] == 100.0
    assert 40.0 < S.detection_metrics(g.score(id_test[:200]), g.score(id_test[200:]))["auroc"] < 60.0


def test_mahalanobis_needs_every_class() -> None:
    with pytest.raises(ValueError, match="without training features"):
        S.Gaussian(np.zeros((4, 2)), np.array([0, 0, 1, 1]), 3)


def test_discrepancy_is_negative_kl_and_separates() -> None:
    teacher, student = RNG.normal(size=(20, 5)), RNG.normal(size=(20, 5))
    soft = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)  # noqa: E731
    expected = -entropy(soft(teacher), soft(student), axis=1)
    np.testing.assert_allclose(S.discrepancy(student, teacher), expected, rtol=1e-9)
    agree = S.discrepancy(teacher, teacher)  # ID: the student agrees with its teacher
    np.testing.assert_allclose(agree, 0.0, atol=1e-12)
    assert S.detection_metrics(agree, S.discrepancy(student, teacher))["auroc"] == 100.0


def test_score_metrics_names_are_registered_with_directions() -> None:
    id_scores = {s: RNG.normal(size=30) for s in OOD_SCORES}
    ood = {name: {s: RNG.normal(size=20) for s in OOD_SCORES} for name in ("near", "far")}
    out = S.score_metrics(id_scores, ood)
    assert len(out) == len(OOD_DETECTION_METRICS) * len(OOD_SCORES) * 3
    assert set(out) <= set(METRICS)
    assert metric("fpr95_msp_near").direction == "lower" and metric("auroc_energy").direction == "higher"
    single = S.score_metrics({"msp": id_scores["msp"]}, {"oos": {"msp": ood["near"]["msp"]}})
    assert set(single) == {"auroc_msp", "aupr_in_msp", "aupr_out_msp", "fpr95_msp"}
