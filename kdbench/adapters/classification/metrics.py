"""Classification metrics: accuracy, likelihood and calibration beside it.

Top-k accuracy and NLL come from scikit-learn; ECE and AURC, which it lacks, are written here
from their papers and checked against hand-computed golden values in the tests. Each is
registered here with its direction, range and unit (kdbench.metrics); scikit-learn and scipy are
imported only when a metric is computed, so the leaderboard reads the registry without them.
"""

from __future__ import annotations

import numpy as np

from kdbench.metrics import register_metric

ECE_BINS = 15

register_metric("top1", "higher", "Top-1 accuracy", "%", (0.0, 100.0))
register_metric("top5", "higher", "Top-5 accuracy", "%", (0.0, 100.0))
register_metric("nll", "lower", "Negative log-likelihood", "nats")
register_metric("ece", "lower", "Expected calibration error (15 bins)", "%", (0.0, 100.0))
register_metric("aurc", "lower", "Area under the risk-coverage curve", "×1000", (0.0, 1000.0))
register_metric("agg_top1", "higher", "Top-1 accuracy of SLA's aggregated classifier (M transformed passes)", "%",
                (0.0, 100.0))


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[1] < 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"expected logits (N, K ≥ 2) and labels (N,), got {logits.shape} and {labels.shape}"
        )
    if logits.shape[0] == 0:
        raise ValueError("no samples to evaluate")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contain NaN or inf")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels outside [0, {logits.shape[1]})")
    return logits, labels.astype(np.int64)


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percentage of samples whose label is among the k most probable classes.

    Args:
        probs: (N, K) class probabilities (or any scores).
        labels: (N,) class indices.
        k: how many top classes count as a hit.
    """
    from sklearn.metrics import top_k_accuracy_score

    num_classes = probs.shape[1]
    # scikit-learn takes the positive-class score alone in the binary case
    scores = probs[:, 1] if num_classes == 2 else probs
    return 100.0 * float(top_k_accuracy_score(labels, scores, k=k, labels=np.arange(num_classes)))


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """Expected calibration error in percent (Guo et al., "On Calibration of Modern Neural
    Networks", ICML 2017).

    ECE = Σ_b |B_b| / N · |acc(B_b) − conf(B_b)|, with confidence = max softmax probability,
    prediction = its argmax, and `n_bins` equal-width bins (lo, hi] over [0, 1] (the first bin
    also holds 0). Reported ×100.

    Args:
        probs: (N, K) class probabilities.
        labels: (N,) class indices.
        n_bins: number of confidence bins.
    """
    confidence = probs.max(axis=1)  # (N,)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)  # (N,)
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bin_of = np.digitize(confidence, inner_edges, right=True)  # (N,) edges[b] < conf ≤ edges[b+1]
    count = np.bincount(bin_of, minlength=n_bins).astype(np.float64)  # (n_bins,)
    gap = np.bincount(bin_of, weights=correct - confidence, minlength=n_bins)  # Σ (acc − conf)
    # |B_b|/N · |acc_b − conf_b| = |Σ_b (correct − conf)| / N
    return 100.0 * float(np.abs(gap[count > 0]).sum() / len(labels))


def aurc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Area under the risk–coverage curve, ×1000 as is conventional (Geifman & El-Yaniv,
    "Selective Classification for Deep Neural Networks", NeurIPS 2017; Geifman et al., "Bias-
    Reduced Uncertainty Estimation for Deep Neural Classifiers", ICLR 2019; Ding et al.,
    "Revisiting the Evaluation of Uncertainty Estimation and Its Application to Explore Model
    Complexity-Uncertainty Trade-Off", CVPR-W 2020).

    Samples are sorted by confidence (max softmax probability) descending; at coverage i/N the
    risk is the error rate among the i most confident. AURC = (1/N) Σ_{i=1..N} risk(i/N).
    Ties in confidence keep their input order (a stable sort).

    Args:
        probs: (N, K) class probabilities.
        labels: (N,) class indices.
    """
    confidence = probs.max(axis=1)  # (N,)
    errors = (probs.argmax(axis=1) != labels).astype(np.float64)  # (N,)
    order = np.argsort(-confidence, kind="stable")
    risk = np.cumsum(errors[order]) / np.arange(1, len(labels) + 1)  # (N,) risk at i/N
    return 1000.0 * float(risk.mean())


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All classification metrics of one evaluation.

    Softmax is taken in float64 (scipy's, a stable log-sum-exp).

    Args:
        logits: (N, K) final logits.
        labels: (N,) class indices.

    Returns:
        "top1" and (when K > 5) "top5" accuracy in percent (scikit-learn's
        `top_k_accuracy_score`); "nll", the mean negative log-likelihood in nats (scikit-learn's
        `log_loss`); "ece" in percent (Guo et al., 2017; 15 bins); "aurc" ×1000 (Geifman &
        El-Yaniv, 2017).
    """
    from scipy.special import softmax
    from sklearn.metrics import log_loss

    logits, labels = _check(logits, labels)
    num_classes = logits.shape[1]
    probs = softmax(logits, axis=1)  # (N, K) float64
    metrics = {"top1": top_k_accuracy(probs, labels, 1)}
    if num_classes > 5:  # with K = 5, top-5 is trivially 100%
        metrics["top5"] = top_k_accuracy(probs, labels, 5)
    metrics["nll"] = float(log_loss(labels, probs, labels=np.arange(num_classes)))
    metrics["ece"] = expected_calibration_error(probs, labels)
    metrics["aurc"] = aurc(probs, labels)
    return metrics


def aggregated_top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """"agg_top1": top-1 accuracy in percent of SLA's aggregated classifier (Lee et al., ICML 2020),
    reported beside the single head's metrics for a model trained with a joint head (SLA-SD).

    Args:
        logits: (N, K) aggregated logits, z_agg,k = (1/M) Σ_m z(t_m(x))[k·M + m].
        labels: (N,) class indices.
    """
    from scipy.special import softmax

    logits, labels = _check(logits, labels)
    return top_k_accuracy(softmax(logits, axis=1), labels, 1)
