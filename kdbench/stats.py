"""Aggregation over seeds: summaries with t-intervals, paired tests with intervals, Holm correction,
the minimal detectable difference of a paired design, wins/ties/losses against a baseline.

Pure functions on numbers and pandas objects; shared by `kdbench compare` and the leaderboard,
so this module never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import optimize
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
        ci_low, ci_high: the t-interval of the mean difference, delta_mean ∓ t_{(1+c)/2, n−1} · sd/√n
            (NaN whenever there is no test: fewer than 2 shared seeds or no spread).
        sd: sample standard deviation (ddof 1) of the per-seed differences (NaN when n < 2).
    """

    delta_mean: float
    n: int
    p_value: float
    test: str
    statistic: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    sd: float = math.nan


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


def paired_test(a: Mapping[int, float | None], b: Mapping[int, float | None],
                confidence: float = 0.95) -> PairedResult:
    """Paired t-test of `a` against `b` over the seeds both have a finite value for, with the
    t-interval of the mean difference (the paired CI: there is no separate function for it).

    Rule for the p-value: NaN when fewer than 2 seeds are shared, and NaN when the per-seed
    differences have no spread (all identical, all-zero included, up to floating-point noise):
    then the t statistic is 0/0 or ±∞ from a zero variance estimate, and three equal
    differences are no evidence of a certain effect. The interval follows the same rule (NaN
    when there is no test). `delta_mean` is reported in every case where at least one seed is
    shared.

    Args:
        a: seed → value of the method under test.
        b: seed → value of the reference (e.g. the baseline).
        confidence: coverage of the interval of the mean difference.

    Returns:
        delta_mean = mean(a − b), the number of shared seeds, the two-sided p-value, the test,
        the interval and the standard deviation of the differences.
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
    sd = float(d.std(ddof=1))
    scale = float(max(np.abs(xa).max(), np.abs(xb).max()))
    if float(d.max() - d.min()) <= _IDENTICAL_RTOL * scale:
        return PairedResult(delta, n, math.nan, "n/a: identical differences on every seed", sd=sd)
    res = sps.ttest_rel(xa, xb)
    half = _t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return PairedResult(delta, n, float(res.pvalue), "paired t-test", float(res.statistic),
                        delta - half, delta + half, sd)


def pooled_sd(parts: Iterable[tuple[float, int]]) -> float:
    """Pooled standard deviation of several samples, weighting each variance by its degrees of freedom.

    sqrt( Σ (n_i − 1) · s_i² / Σ (n_i − 1) ) over the parts with n_i ≥ 2 and a finite s_i.

    Args:
        parts: (sample standard deviation, sample size) of each sample.

    Returns:
        The pooled SD; NaN when no part has n ≥ 2 and a finite SD.
    """
    num = den = 0.0
    for sd, n in parts:
        if n >= 2 and math.isfinite(sd):
            num += (n - 1) * sd * sd
            den += n - 1
    return math.sqrt(num / den) if den else math.nan


def _paired_power(delta: float, df: int, t_crit: float) -> float:
    """P(|T| > t_crit) for T noncentral t with `df` degrees of freedom and noncentrality `delta` ≥ 0."""
    upper = float(sps.nct.sf(t_crit, df, delta))
    lower = float(sps.nct.cdf(-t_crit, df, delta))
    # scipy's lower tail turns NaN far out; it is below P(T < 0) = Φ(−δ) there, i.e. negligible
    lower = min(lower, float(sps.norm.cdf(-delta))) if math.isfinite(lower) else 0.0
    return upper + lower


@cache
def _noncentrality(n: int, alpha: float, power: float) -> float:
    df = n - 1
    t_crit = float(sps.t.ppf(1 - alpha / 2, df))
    hi = t_crit + float(sps.norm.ppf(power)) + 1.0
    while _paired_power(hi, df, t_crit) < power:
        hi *= 2
    return float(optimize.brentq(lambda x: _paired_power(x, df, t_crit) - power, 0.0, hi, xtol=1e-12, rtol=1e-12))


def minimal_detectable_difference(sd: float, n: int, alpha: float, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test detects with the given power.

    With n pairs whose differences have standard deviation sd, the test rejects when
    |t| > t_c = t_{1−α/2, n−1}, where t = mean(d) / (sd/√n). For a true mean difference Δ, t is
    noncentral t with n − 1 degrees of freedom and noncentrality δ = Δ·√n / sd, so the power is

        power(δ) = P(T'_{n−1, δ} > t_c) + P(T'_{n−1, δ} < −t_c).

    The function solves power(δ) = `power` for δ ≥ 0 (exactly, from scipy's noncentral t) and
    returns MDD = δ · sd / √n. For large n this tends to the normal approximation
    (z_{1−α/2} + z_{power}) · sd / √n.

    Args:
        sd: standard deviation of the paired differences.
        n: number of pairs (seeds).
        alpha: two-sided significance level (e.g. after a multiple-testing correction).
        power: the probability of detecting the difference.

    Returns:
        The MDD in the units of sd; math.inf when n < 2 or sd is not finite; 0 when sd == 0.

    Raises:
        ValueError: alpha or power outside (0, 1), or power not above alpha.
    """
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1), got alpha={alpha}, power={power}")
    if power <= alpha:
        raise ValueError(f"power ({power}) must exceed alpha ({alpha}): power(0) is alpha")
    if n < 2 or not math.isfinite(sd):
        return math.inf
    if sd == 0:
        return 0.0
    return _noncentrality(int(n), float(alpha), float(power)) * abs(sd) / math.sqrt(n)


def seeds_needed(sd: float, target: float, alpha: float, power: float = 0.8, max_n: int = 1000) -> int | None:
    """The fewest seeds n ≥ 2 at which a paired t-test detects a difference of `target`.

    The smallest n with minimal_detectable_difference(sd, n, alpha, power) ≤ target (the MDD
    falls as n grows, so this is a bisection).

    Args:
        sd: standard deviation of the paired differences.
        target: the difference to detect (in the units of sd).
        alpha: two-sided significance level.
        power: the probability of detecting it.
        max_n: the largest n considered.

    Returns:
        n, or None when even max_n seeds do not suffice (or sd is not finite, or target < 0).
    """
    def ok(n: int) -> bool:
        return minimal_detectable_difference(sd, n, alpha, power) <= target

    if max_n < 2 or not ok(max_n):
        return None
    lo, hi = 1, max_n  # ok(hi), and lo is below every candidate
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


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


@dataclass(frozen=True)
class WinsTiesLosses:
    """A method's record against the baseline over settings."""

    wins: int
    ties: int
    losses: int

    @property
    def settings(self) -> int:
        return self.wins + self.ties + self.losses

    def __str__(self) -> str:
        return f"{self.wins}/{self.ties}/{self.losses}"


def wins_ties_losses(verdicts: Iterable[str]) -> WinsTiesLosses:
    """Count a method's verdicts against the baseline: only significant differences count.

    Rule: "better" (significantly better after Holm) is a win, "worse" (significantly worse) a
    loss, "≈" (not significant, or no test possible) a tie; anything else (e.g. "—": no
    comparison) is not counted.

    Args:
        verdicts: one verdict per setting (kdbench.compare's "better", "≈", "worse", "—").

    Returns:
        The counts.
    """
    counts = {"better": 0, "≈": 0, "worse": 0}
    for v in verdicts:
        if v in counts:
            counts[v] += 1
    return WinsTiesLosses(counts["better"], counts["≈"], counts["worse"])
