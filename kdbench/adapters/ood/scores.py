"""OOD scores and their detection metrics.

Convention: every score is a confidence, HIGHER = MORE IN-DISTRIBUTION, and ID is the positive
class. Metrics come from scikit-learn, in percent:

- AUROC: `roc_auc_score` with ID = 1.
- AUPR-In: `average_precision_score` with ID = 1, scored by the score.
- AUPR-Out: `average_precision_score` with OOD = 1, scored by the negated score.
- FPR@95%TPR: the fraction of OOD samples accepted at the highest threshold that keeps at
  least 95% of ID samples (from `roc_curve` with ID = 1, `drop_intermediate=False`): the FPR at
  the first ROC point whose TPR ≥ 0.95. Lower is better.

Scores (all from one trained model):
- msp: max softmax probability (Hendrycks & Gimpel, ICLR 2017).
- maxlogit: max logit (Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World
  Settings", ICML 2022).
- energy: the negative free energy T·logsumexp(z/T), T = 1 (Liu et al., "Energy-based
  Out-of-distribution Detection", NeurIPS 2020).
- mahalanobis: −min_c (f − μ_c)ᵀ Σ⁻¹ (f − μ_c) on the sentence embedding f, with class means
  μ_c and one shared covariance Σ (scikit-learn's `EmpiricalCovariance`, pseudo-inverse
  precision) fitted on the ID training set (Lee et al., NeurIPS 2018; no input
  preprocessing, no layer ensemble).
- discrepancy: −KL(σ(z_T) ‖ σ(z_S)), the student's divergence from its teacher's prediction
  (after MLKD, Wu et al., ACL 2023, which detects OOD by the student-teacher gap); only for
  students that have an external teacher.
"""

from __future__ import annotations

import numpy as np

from kdbench.adapters.classification.metrics import expected_calibration_error
from kdbench.metrics import Direction, register_metric

TPR_LEVEL = 0.95

#: The detection metrics of every score, registered as `{metric}_{score}` (pooled over the OOD
#: test sets) and `{metric}_{score}_{set}` (per set), e.g. "fpr95_energy_near". scikit-learn and
#: scipy are imported only when scores are computed, so the leaderboard reads the registry without them.
OOD_DETECTION_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")
OOD_SCORES = ("msp", "maxlogit", "energy", "mahalanobis", "discrepancy")
OOD_SETS = ("near", "far")
_LABELS: dict[str, tuple[Direction, str]] = {
    "auroc": ("higher", "AUROC"), "aupr_in": ("higher", "AUPR-In (ID positive)"),
    "aupr_out": ("higher", "AUPR-Out (OOD positive)"), "fpr95": ("lower", "FPR at 95% TPR")}


def _register() -> None:
    register_metric("id_acc", "higher", "In-distribution accuracy", "%", (0.0, 100.0))
    for m in OOD_DETECTION_METRICS:
        direction, label = _LABELS[m]
        for score in OOD_SCORES:
            register_metric(f"{m}_{score}", direction, f"{label}, {score}", "%", (0.0, 100.0))
            for part in OOD_SETS:
                register_metric(f"{m}_{score}_{part}", direction, f"{label}, {score} ({part}-OOD)", "%", (0.0, 100.0))


_register()


def msp(logits: np.ndarray) -> np.ndarray:
    """(N, K) → (N,) max softmax probability."""
    from scipy.special import softmax

    return np.asarray(softmax(logits, axis=1).max(axis=1))


def max_logit(logits: np.ndarray) -> np.ndarray:
    """(N, K) → (N,) largest logit."""
    return np.asarray(logits.max(axis=1))


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, K) → (N,) negative free energy T·logsumexp(z/T)."""
    from scipy.special import logsumexp

    return np.asarray(temperature * logsumexp(logits / temperature, axis=1))


class Gaussian:
    """Class-conditional Gaussians with a shared covariance (Lee et al., 2018).

    Args:
        features: (N, D) ID training features.
        labels: (N,) their classes in [0, num_classes).
        num_classes: K; every class needs at least one sample.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
        features = np.asarray(features, dtype=np.float64)
        counts = np.bincount(labels, minlength=num_classes)
        if (counts == 0).any():
            raise ValueError(f"classes without training features: {np.flatnonzero(counts == 0).tolist()}")
        self.means = np.stack([features[labels == c].mean(axis=0) for c in range(num_classes)])  # (K, D)
        centered = features - self.means[labels]
        from sklearn.covariance import EmpiricalCovariance

        self.precision = EmpiricalCovariance(assume_centered=True).fit(centered).get_precision()  # (D, D)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N, D) → (N, K) squared Mahalanobis distance to every class mean."""
        diff = np.asarray(features, dtype=np.float64)[:, None, :] - self.means[None]  # (N, K, D)
        return np.einsum("nkd,de,nke->nk", diff, self.precision, diff)

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N, D) → (N,) −min_c squared distance (higher = more ID)."""
        return np.asarray(-self.distances(features).min(axis=1))


def discrepancy(student_logits: np.ndarray, teacher_logits: np.ndarray) -> np.ndarray:
    """(N, K), (N, K) → (N,) −KL(σ(z_T) ‖ σ(z_S))."""
    from scipy.special import log_softmax

    log_t, log_s = log_softmax(teacher_logits, axis=1), log_softmax(student_logits, axis=1)
    return np.asarray(-(np.exp(log_t) * (log_t - log_s)).sum(axis=1))


def id_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ID accuracy ("id_acc": the share of ID samples whose argmax is their class, in percent)
    and ECE ("ece", kdbench.adapters.classification.metrics) on the ID set.

    Args:
        probs: (N, K) class probabilities of the ID samples.
        labels: (N,) their classes.
    """
    return {"id_acc": 100.0 * float((probs.argmax(axis=1) == labels).mean()),
            "ece": expected_calibration_error(probs, labels)}


def detection_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out and FPR@95%TPR in percent (conventions in the module doc).

    Args:
        id_scores: (N_id,) scores of ID samples (higher = more ID).
        ood_scores: (N_ood,) scores of OOD samples.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    id_scores, ood_scores = np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise ValueError("need at least one ID and one OOD sample")
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise ValueError("scores contain NaN or inf")
    scores = np.concatenate([id_scores, ood_scores])
    is_id = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    fpr, tpr, _ = roc_curve(is_id, scores, drop_intermediate=False)
    values = {
        "auroc": roc_auc_score(is_id, scores),
        "aupr_in": average_precision_score(is_id, scores),
        "aupr_out": average_precision_score(1 - is_id, -scores),
        "fpr95": fpr[np.searchsorted(tpr, TPR_LEVEL, side="left")],
    }
    assert tuple(values) == OOD_DETECTION_METRICS
    return {k: 100.0 * float(v) for k, v in values.items()}


def score_metrics(
    id_scores: dict[str, np.ndarray], ood_scores: dict[str, dict[str, np.ndarray]]
) -> dict[str, float]:
    """Every detection metric of every score, per OOD set and pooled over all sets.

    Args:
        id_scores: score name → (N_id,) scores of the ID test set.
        ood_scores: OOD set name → score name → (N_set,) scores.

    Returns:
        `{metric}_{score}` pooled over every OOD set and, when there are several sets,
        `{metric}_{score}_{set}` for each, e.g. "auroc_msp", "auroc_msp_near", "fpr95_energy_far".
    """
    out: dict[str, float] = {}
    for score, on_id in id_scores.items():
        pooled = np.concatenate([s[score] for s in ood_scores.values()])
        out |= {f"{m}_{score}": v for m, v in detection_metrics(on_id, pooled).items()}
        if len(ood_scores) > 1:
            for name, sets in ood_scores.items():
                out |= {f"{m}_{score}_{name}": v for m, v in detection_metrics(on_id, sets[score]).items()}
    return out
