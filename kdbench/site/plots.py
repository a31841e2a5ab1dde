"""Inline SVG figures of one comparison table (matplotlib, no pyplot, no display).

Text stays text (`svg.fonttype: none`) and is never parsed as mathtext: method names are
untrusted, and matplotlib escapes them as XML character data.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from kdbench.compare import BASELINE, TEACHER

_INK, _MUTED, _ACCENT, _TEACHER = "#1f2933", "#8a96a3", "#2f6fb3", "#b36b2f"


@contextmanager
def _style(salt: str) -> Iterator[None]:
    rc: Any = {"svg.fonttype": "none", "svg.hashsalt": salt, "text.parse_math": False, "font.size": 9,
          "axes.edgecolor": _MUTED, "axes.labelcolor": _INK, "xtick.color": _INK, "ytick.color": _INK,
          "axes.spines.top": False, "axes.spines.right": False}
    with mpl.rc_context(rc):
        yield


def _svg(fig: Figure) -> str:
    FigureCanvasSVG(fig)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _labels(methods: list[str]) -> list[str]:
    return [m if len(m) <= 28 else m[:27] + "…" for m in methods]


def _figure(labels: list[str]) -> tuple[Figure, Axes]:
    """A figure sized to its rows, with a left margin for the longest label (no tight-bbox pass:
    it draws the figure twice)."""
    width, height = 6.4, 0.9 + 0.27 * max(len(labels), 1)
    fig = Figure(figsize=(width, height))
    left = 0.2 + 0.075 * max((len(x) for x in labels), default=4)
    fig.subplots_adjust(left=min(left / width, 0.45), right=0.97, top=1 - 0.12 / height, bottom=0.5 / height)
    return fig, fig.add_subplot()


def _color(method: str) -> str:
    return _TEACHER if method == TEACHER else _MUTED if method == BASELINE else _ACCENT


def strip_plot(table: pd.DataFrame, runs: pd.DataFrame, salt: str) -> str:
    """Every seed's primary-metric value as a dot per method (rows in the table's order), the
    mean as a bar across them, and the baseline's mean as a dashed line."""
    primary = table.attrs["primary"]
    methods = list(table["method"])
    row = {m: i for i, m in enumerate(methods)}
    pts = runs.loc[runs["method"].isin(row) & runs[f"m:{primary}"].notna(), ["method", "seed", f"m:{primary}"]]
    pts = pts.sort_values(["method", "seed"])
    k = pts.groupby("method").cumcount().to_numpy()
    ys = pts["method"].map(row).to_numpy() + ((k % 5) - 2) * 0.07
    means = table[f"{primary}_mean"].astype(float)
    has = means.notna().to_numpy()
    with _style(f"{salt}-strip"):
        labels = _labels(methods)
        fig, ax = _figure(labels)
        ax.scatter(pts[f"m:{primary}"].to_numpy(), ys, s=14, c=[_color(m) for m in pts["method"]], alpha=0.85,
                   zorder=3, linewidths=0)
        idx = [i for i in range(len(methods)) if has[i]]
        ax.vlines(means.to_numpy()[has], [i - 0.32 for i in idx], [i + 0.32 for i in idx], color=_INK, lw=1.4,
                  zorder=4)
        _baseline_line(ax, table, primary)
        _finish(ax, labels, f"{primary} per seed (bar: mean)")
        return _svg(fig)


def bar_chart(table: pd.DataFrame, salt: str) -> str:
    """Mean of the primary metric per method with its 95% t-interval; the axis starts near the
    smallest interval, not at zero, so that differences between methods show."""
    primary = table.attrs["primary"]
    methods = list(table["method"])
    mean = table[f"{primary}_mean"].astype(float).to_numpy()
    low = table[f"{primary}_ci_low"].astype(float).to_numpy()
    high = table[f"{primary}_ci_high"].astype(float).to_numpy()
    has, ci = np.isfinite(mean), np.isfinite(low) & np.isfinite(high)
    with _style(f"{salt}-bar"):
        labels = _labels(methods)
        fig, ax = _figure(labels)
        finite = np.concatenate([mean[has], low[ci], high[ci]])
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
        start = lo - pad
        ys = np.arange(len(methods))
        colors = [_color(m) for m, h in zip(methods, has, strict=True) if h]
        ax.barh(ys[has], mean[has] - start, left=start, height=0.6, color=colors, alpha=0.75)
        if ci.any():
            ax.errorbar(mean[ci], ys[ci], xerr=[mean[ci] - low[ci], high[ci] - mean[ci]], fmt="none",
                        ecolor=_INK, capsize=3, lw=1)
        ax.set_xlim(start, hi + pad)
        _baseline_line(ax, table, primary)
        _finish(ax, labels, f"mean {primary} with 95% CI (axis does not start at 0)")
        return _svg(fig)


def _baseline_line(ax: Axes, table: pd.DataFrame, primary: str) -> None:
    base = table.loc[table["method"] == BASELINE, f"{primary}_mean"]
    if len(base) and np.isfinite(base.iloc[0]):
        ax.axvline(base.iloc[0], color=_MUTED, ls="--", lw=1, zorder=1)


def _finish(ax: Axes, labels: list[str], xlabel: str) -> None:
    # Row labels as plain text artists: a y tick per method costs several artists each.
    ax.set_yticks([])
    ax.spines["left"].set_visible(False)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.xaxis.set_major_locator(MaxNLocator(6))
    to_axes = blended_transform_factory(ax.transAxes, ax.transData)
    for i, label in enumerate(labels):
        ax.text(-0.015, i, label, transform=to_axes, ha="right", va="center")
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", color="#e4e7eb", lw=0.6)
    ax.set_axisbelow(True)
