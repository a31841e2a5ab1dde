"""Site build I/O: parallel reading, the previous site kept whole on failure, the inline SVG plots."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdbench.errors import UsageError
from kdbench.site import build, data, plots
from kdbench.site.build import build_site

from .conftest import EVIL_METHOD

SVG = "{http://www.w3.org/2000/svg}"


def _tree(site: Path) -> dict[str, bytes]:
    return {str(p.relative_to(site)): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


def test_parallel_reading_reports_the_first_bad_file(site_results: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "PARALLEL_READ_MIN", 1)
    results = tmp_path / "results"
    for f in sorted(site_results.rglob("*")):
        if f.is_file():
            (results / f.relative_to(site_results)).parent.mkdir(parents=True, exist_ok=True)
            (results / f.relative_to(site_results)).write_bytes(f.read_bytes())
    files = sorted(results.rglob("seed*.json"))
    files[-1].write_text('{"task": 1}')
    files[len(files) // 2].write_text("not json")  # earlier in file order: the one reported
    with pytest.raises(UsageError, match=rf"{files[len(files) // 2].name}: not a readable JSON record"):
        data.load(results, workers=2)
    with pytest.raises(UsageError, match="not a readable JSON record"):
        build_site(results, tmp_path / "site", jobs=2)
    assert not (tmp_path / "site").exists() and not list(tmp_path.glob(".site.*"))


def test_a_failed_build_keeps_the_previous_site(site_results: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "site"
    build_site(site_results, out, jobs=1)
    before = _tree(out)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(build, "_task_page", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_site(site_results, out, jobs=2)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no half-built folder left beside it


def _table() -> tuple[pd.DataFrame, pd.DataFrame]:
    methods = ["baseline", "kd", EVIL_METHOD, "teacher", "never-ran"]
    runs = pd.DataFrame({"method": ["baseline"] * 3 + ["kd"] * 3 + [EVIL_METHOD] * 2 + ["teacher"],
                         "seed": [0, 1, 2, 0, 1, 2, 0, 1, 0],
                         "m:top1": [90.0, 91.0, 92.0, 93.0, 94.0, 95.0, 80.0, np.nan, 99.0]})
    table = pd.DataFrame({"method": methods,
                          "top1_mean": [91.0, 94.0, 80.0, 99.0, np.nan],
                          "top1_ci_low": [88.5, 91.5, np.nan, np.nan, np.nan],
                          "top1_ci_high": [93.5, 96.5, np.nan, np.nan, np.nan]})
    table.attrs["primary"] = "top1"
    return table, runs


def test_strip_plot_draws_every_finite_seed_and_escapes_names() -> None:
    table, runs = _table()
    svg = plots.strip_plot(table, runs)
    root = ET.fromstring(svg)  # well-formed XML: a hostile name did not break out of its text node
    dots = root.findall(f"{SVG}circle")
    assert len(dots) == 8  # 9 runs, one of them NaN; "never-ran" has none
    assert "<script>" not in svg and EVIL_METHOD in "".join(root.itertext())
    # x grows with the value: kd's dots lie right of baseline's
    x = {d.find(f"{SVG}title").text: float(d.get("cx")) for d in dots}  # type: ignore[union-attr]
    assert x["kd seed 0: 93"] > x["baseline seed 2: 92"] > x["baseline seed 0: 90"]


def test_bar_chart_has_a_bar_per_mean_and_an_interval_per_ci() -> None:
    table, _ = _table()
    root = ET.fromstring(plots.bar_chart(table))
    bars = root.findall(f"{SVG}rect")
    assert len(bars) == 4
    assert len(root.findall(f"{SVG}path")) == 2
    widths = [float(b.get("width", 0)) for b in bars]  # from the axis start to the mean
    assert list(np.argsort(widths)) == list(np.argsort([91.0, 94.0, 80.0, 99.0]))


@pytest.mark.parametrize(("lo", "hi", "expected"), [
    (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (88.3, 96.9, [90.0, 92.0, 94.0, 96.0]),
    (-0.013, 0.011, [-0.01, -0.005, 0.0, 0.005, 0.01]),
    (37.2, 52.7, [40.0, 45.0, 50.0]),
    (10.0, 25.0, [10.0, 12.5, 15.0, 17.5, 20.0, 22.5, 25.0]),
])
def test_nice_ticks(lo: float, hi: float, expected: list[float]) -> None:
    assert plots.nice_ticks(lo, hi) == pytest.approx(expected)


def test_tick_labels_show_the_step() -> None:
    ticks = plots.nice_ticks(10.0, 25.0)
    assert [plots._tick_text(t, ticks) for t in ticks[:2]] == ["10.0", "12.5"]
    ticks = plots.nice_ticks(-0.013, 0.011)
    assert [plots._tick_text(t, ticks) for t in ticks] == ["-0.010", "-0.005", "0", "0.005", "0.010"]
