"""Aggregation over seeds: summaries with t-intervals, paired tests, Holm correction, ranks.

Pure functions on numbers and pandas objects; shared by `kdbench compare` and the leaderboard,
so this module never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
from scipy import stats as sps

#: Differences whose spread is below this fraction of the largest compared value count as identical
#: (accuracies like 97.33333333333334 − 96.22222222222221 differ from each other in the last bits).
_IDENTICAL_RTOL = 1e-9


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and a Student-t confidence interval of the mean."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison of two methods over the seeds both have.

    Attributes:
        delta_mean: mean of the per-seed differences a − b (NaN when no seed is shared).
        n: number of shared seeds.
        p_value: two-sided p-value of the paired t-test, NaN when no test is possible.
        test: "paired t-test", or why no test was done.
        statistic: the t statistic (NaN when no test is possible).
    """

    delta_mean: float
    n: int
    p_value: float
    test: str
    statistic: float = math.nan


def _finite(values: Iterable[float | None]) -> np.ndarray:
    arr = np.array([math.nan if v is None else float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def _finite_by_seed(values: Mapping[int, float | None]) -> dict[int, float]:
    return {s: float(v) for s, v in values.items() if v is not None and math.isfinite(v)}


@cache
def _t_quantile(q: float, df: int) -> float:
    """Student-t quantile, cached: scipy's ppf costs ~0.3 ms and tables ask for the same few."""
    return float(sps.t.ppf(q, df=df))


def summarize(values: Iterable[float | None], confidence: float = 0.95) -> Summary:
    """Summarize one method's metric over seeds.

    Missing values (None, NaN) are left out and do not count in `n`. The interval is
    mean ± t_{(1+confidence)/2, n−1} · std / √n.

    Args:
        values: one value per seed.
        confidence: coverage of the interval.

    Returns:
        The summary; std and the interval are NaN when n < 2, everything is NaN when n == 0.
    """
    x = _finite(values)
    n = int(x.size)
    if n == 0:
        return Summary(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = _t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half)


def paired_test(a: Mapping[int, float | None], b: Mapping[int, float | None]) -> PairedResult:
    """Paired t-test of `a` against `b` over the seeds both have a finite value for.

    Rule for the p-value: NaN when fewer than 2 seeds are shared, and NaN when the per-seed
    differences have no spread (all identical, all-zero included, up to floating-point noise):
    then the t statistic is 0/0 or ±∞ from a zero variance estimate, and three equal
    differences are no evidence of a certain effect. `delta_mean` is reported in every case
    where at least one seed is shared.

    Args:
        a: seed → value of the method under test.
        b: seed → value of the reference (e.g. the baseline).

    Returns:
        delta_mean = mean(a − b), the number of shared seeds, the two-sided p-value and the test.
    """
    fa, fb = _finite_by_seed(a), _finite_by_seed(b)
    seeds = sorted(set(fa) & set(fb))
    n = len(seeds)
    if n == 0:
        return PairedResult(math.nan, 0, math.nan, "n/a: no shared seeds")
    xa = np.array([fa[s] for s in seeds], dtype=float)
    xb = np.array([fb[s] for s in seeds], dtype=float)
    d = xa - xb
    delta = float(d.mean())
    if n < 2:
        return PairedResult(delta, n, math.nan, "n/a: fewer than 2 shared seeds")
    scale = float(max(np.abs(xa).max(), np.abs(xb).max()))
    if float(d.max() - d.min()) <= _IDENTICAL_RTOL * scale:
        return PairedResult(delta, n, math.nan, "n/a: identical differences on every seed")
    res = sps.ttest_rel(xa, xb)
    return PairedResult(delta, n, float(res.pvalue), "paired t-test", float(res.statistic))


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values (the same as statsmodels' `multipletests(method="holm")`).

    With the m finite p-values sorted ascending, p_(1) ≤ … ≤ p_(m), the adjusted value of the
    i-th is max_{j ≤ i} min(1, (m − j + 1) · p_(j)), which keeps the adjusted values in the
    order of the raw ones. NaN p-values pass through unchanged and do not count in m.

    Args:
        pvalues: name → raw p-value.

    Returns:
        name → adjusted p-value, in the order of `pvalues`.
    """
    finite = sorted((p, k) for k, p in pvalues.items() if not math.isnan(p))
    m = len(finite)
    adjusted: dict[str, float] = {}
    running = 0.0
    for i, (p, k) in enumerate(finite):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[k] = running
    return {k: adjusted.get(k, p) for k, p in pvalues.items()}


def teacher_gap_closed(m: float | None, m_baseline: float | None, m_teacher: float | None) -> float:
    """Fraction of the baseline-to-teacher gap a method closes: (m − m_base) / (m_teacher − m_base).

    1 means the method matches the teacher, 0 the baseline, above 1 it beats the teacher, below 0
    it is worse than the baseline. The ratio reads the same for lower-is-better metrics.

    Args:
        m: the method's value.
        m_baseline: the baseline's value.
        m_teacher: the teacher's value.

    Returns:
        The fraction; NaN when a value is missing (None or NaN) or the teacher equals the baseline.
    """
    if m is None or m_baseline is None or m_teacher is None:
        return math.nan
    if not all(math.isfinite(v) for v in (m, m_baseline, m_teacher)):
        return math.nan
    denom = float(m_teacher) - float(m_baseline)
    if denom == 0:
        return math.nan
    return (float(m) - float(m_baseline)) / denom


def average_ranks(table: pd.DataFrame, directions: Mapping[str, str]) -> pd.Series:
    """Average rank of each method over the settings all methods share.

    Rule: ranks are taken within each column (1 = best by that column's metric direction; tied
    values get the average of the ranks they span) and averaged over the shared settings only,
    i.e. the columns where every row has a value. A column with any missing cell is left out for
    everyone, so a method is never ranked on settings the others were not run on. With no shared
    column, every average is NaN.

    Args:
        table: rows are methods, columns are settings (e.g. "classification/small"), cells the
            setting's metric value (mean over seeds).
        directions: column → "higher" or "lower" (the direction of the metric in that column).

    Returns:
        The average rank of each row, named "avg_rank", in the row order of `table`.
    """
    shared = [c for c in table.columns if bool(table[c].notna().all())]
    ranks = {}
    for col in shared:
        direction = directions.get(col)
        if direction not in ("higher", "lower"):
            raise ValueError(f"no direction ('higher' or 'lower') for column {col!r}; got {direction!r}")
        ranks[col] = table[col].astype(float).rank(method="average", ascending=direction == "lower")
    if not ranks:
        return pd.Series(math.nan, index=table.index, name="avg_rank", dtype=float)
    return pd.DataFrame(ranks, index=table.index).mean(axis=1).rename("avg_rank")
