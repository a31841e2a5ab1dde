"""Inline SVG figures of one comparison table, written directly as SVG elements.

Two small chart types (a strip plot of seeds and a bar chart of means with intervals) do not need
a plotting library: writing the elements takes microseconds where matplotlib's SVG backend took
~0.15 s a figure, the bulk of a 10,000-record site build. Method names are untrusted and are
escaped as XML character data; every number is finite when it reaches the markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np
import pandas as pd

from kdbench.compare import BASELINE, TEACHER

_INK, _MUTED, _ACCENT, _TEACHER, _GRID = "#1f2933", "#8a96a3", "#2f6fb3", "#b36b2f", "#e4e7eb"
_WIDTH, _ROW, _TOP, _BOTTOM, _RIGHT = 640, 27, 12, 50, 20
_FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """At most about `count` round tick positions (steps of 1, 2, 2.5 or 5 × 10^k) within [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / count
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def _tick_text(value: float, ticks: Sequence[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(value) or 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step / 10.0 ** math.floor(math.log10(step) + 1e-9), 6) == 2.5:
        decimals += 1
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def _labels(methods: list[str]) -> list[str]:
    return [m if len(m) <= 28 else m[:27] + "…" for m in methods]


def _color(method: str) -> str:
    return _TEACHER if method == TEACHER else _MUTED if method == BASELINE else _ACCENT


def _n(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


class _Canvas:
    """One figure: a row per method, an x axis in data units, SVG elements appended in order."""

    def __init__(self, labels: list[str], lo: float, hi: float, title: str) -> None:
        self.labels = labels
        self.left = min(0.45 * _WIDTH, 20 + 7.2 * max((len(x) for x in labels), default=4))
        self.height = _TOP + _ROW * max(len(labels), 1) + _BOTTOM
        self.lo, self.hi = lo, hi
        self.parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {self.height}" '
                      f'width="{_WIDTH}" height="{self.height}" role="img" aria-label="{escape(title)}" {_FONT}>']

    def x(self, value: float) -> float:
        return self.left + (value - self.lo) / (self.hi - self.lo) * (_WIDTH - _RIGHT - self.left)

    def y(self, row: float) -> float:
        return _TOP + _ROW * (row + 0.5)

    def axes(self, xlabel: str) -> None:
        """Grid, x axis with ticks, row labels and the axis label (drawn first, below the data)."""
        bottom = _TOP + _ROW * max(len(self.labels), 1)
        ticks = nice_ticks(self.lo, self.hi)
        for t in ticks:
            x = _n(self.x(t))
            self.parts.append(f'<line x1="{x}" x2="{x}" y1="{_TOP}" y2="{bottom}" stroke="{_GRID}" stroke-width="0.6"/>'
                              f'<line x1="{x}" x2="{x}" y1="{bottom}" y2="{bottom + 4}" stroke="{_MUTED}"/>'
                              f'<text x="{x}" y="{bottom + 17}" text-anchor="middle" fill="{_INK}">'
                              f"{escape(_tick_text(t, ticks))}</text>")
        self.parts.append(f'<line x1="{_n(self.left)}" x2="{_WIDTH - _RIGHT}" y1="{bottom}" y2="{bottom}" '
                          f'stroke="{_MUTED}"/>')
        for i, label in enumerate(self.labels):
            self.parts.append(f'<text x="{_n(self.left - 6)}" y="{_n(self.y(i))}" text-anchor="end" '
                              f'dominant-baseline="middle" fill="{_INK}">{escape(label)}</text>')
        self.parts.append(f'<text x="{_n((self.left + _WIDTH - _RIGHT) / 2)}" y="{bottom + 38}" '
                          f'text-anchor="middle" fill="{_INK}">{escape(xlabel)}</text>')

    def vline(self, value: float, row: float | None, color: str, width: float, dash: bool = False) -> None:
        """A vertical line at `value`: across one row (±0.32 of it) or, with `row` None, all rows."""
        y1, y2 = (self.y(row - 0.32), self.y(row + 0.32)) if row is not None else (
            _TOP, _TOP + _ROW * max(len(self.labels), 1))
        x = _n(self.x(value))
        extra = ' stroke-dasharray="4 3"' if dash else ""
        self.parts.append(f'<line x1="{x}" x2="{x}" y1="{_n(y1)}" y2="{_n(y2)}" stroke="{color}" '
                          f'stroke-width="{width}"{extra}/>')

    def svg(self) -> str:
        return "".join(self.parts) + "</svg>"


def _extent(values: np.ndarray, margin: float = 0.05) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    pad = (hi - lo) * margin or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def _baseline(table: pd.DataFrame, primary: str) -> float:
    base = table.loc[table["method"] == BASELINE, f"{primary}_mean"].astype(float)
    return float(base.iloc[0]) if len(base) else math.nan


def strip_plot(table: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Every seed's primary-metric value as a dot per method (rows in the table's order), the
    mean as a bar across them, and the baseline's mean as a dashed line."""
    primary = table.attrs["primary"]
    methods = list(table["method"])
    row = {m: i for i, m in enumerate(methods)}
    pts = runs.loc[runs["method"].isin(row) & runs[f"m:{primary}"].notna(), ["method", "seed", f"m:{primary}"]]
    pts = pts.sort_values(["method", "seed"])
    jitter = ((pts.groupby("method").cumcount().to_numpy() % 5) - 2) * 0.07
    values = pts[f"m:{primary}"].astype(float).to_numpy()
    means = table[f"{primary}_mean"].astype(float).to_numpy()
    base = _baseline(table, primary)
    c = _Canvas(_labels(methods), *_extent(np.concatenate([values, means, [base]])), f"{primary} per seed")
    c.axes(f"{primary} per seed (bar: mean)")
    if math.isfinite(base):
        c.vline(base, None, _MUTED, 1, dash=True)
    for (method, seed, v), dy in zip(pts.itertuples(index=False, name=None), jitter, strict=True):
        if math.isfinite(v):
            c.parts.append(f'<circle cx="{_n(c.x(v))}" cy="{_n(c.y(row[method] + dy))}" r="3.4" '
                           f'fill="{_color(method)}" fill-opacity="0.85"><title>{escape(method)} seed {int(seed)}: '
                           f"{v:.6g}</title></circle>")
    for i, m in enumerate(means):
        if math.isfinite(m):
            c.vline(m, i, _INK, 1.4)
    return c.svg()


def bar_chart(table: pd.DataFrame) -> str:
    """Mean of the primary metric per method with its 95% t-interval; the axis starts near the
    smallest interval, not at zero, so that differences between methods show."""
    primary = table.attrs["primary"]
    methods = list(table["method"])
    mean = table[f"{primary}_mean"].astype(float).to_numpy()
    low = table[f"{primary}_ci_low"].astype(float).to_numpy()
    high = table[f"{primary}_ci_high"].astype(float).to_numpy()
    ci = np.isfinite(low) & np.isfinite(high)
    start, end = _extent(np.concatenate([mean, low[ci], high[ci]]), margin=0.08)
    c = _Canvas(_labels(methods), start, end, f"mean {primary} with 95% CI")
    c.axes(f"mean {primary} with 95% CI (axis does not start at 0)")
    for i, (method, m) in enumerate(zip(methods, mean, strict=True)):
        if not math.isfinite(m):
            continue
        c.parts.append(f'<rect x="{_n(c.x(start))}" y="{_n(c.y(i - 0.3))}" width="{_n(c.x(m) - c.x(start))}" '
                       f'height="{_n(_ROW * 0.6)}" fill="{_color(method)}" fill-opacity="0.75">'
                       f"<title>{escape(method)}: {m:.6g}</title></rect>")
        if ci[i]:
            y, lo_x, hi_x = _n(c.y(i)), _n(c.x(low[i])), _n(c.x(high[i]))
            c.parts.append(f'<path d="M{lo_x} {y}H{hi_x}M{lo_x} {_n(c.y(i) - 4)}V{_n(c.y(i) + 4)}'
                           f'M{hi_x} {_n(c.y(i) - 4)}V{_n(c.y(i) + 4)}" stroke="{_INK}" fill="none"/>')
    base = _baseline(table, primary)
    if math.isfinite(base):
        c.vline(base, None, _MUTED, 1, dash=True)
    return c.svg()
