"""Number formatting shared by `kdbench compare` (kdbench.compare.render) and the site (kdbench.site).

One place for how a number is shown: a missing or non-finite value is "—", a column's decimals
show about four significant digits of its typical magnitude, p-values below 0.001 read "<0.001".
Imports nothing of kdbench, so any layer may use it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def plain(v: Any) -> Any:
    """A JSON-ready scalar: NaN/NA → None, numpy scalars → Python."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def finite(v: Any) -> bool:
    """Whether `v` is a finite number (not a bool, None, NaN, NA or ±inf)."""
    v = plain(v)
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def decimals(values: Any) -> int:
    """Decimals that show about four significant digits of the values' typical magnitude."""
    nonzero = [abs(float(v)) for v in values if finite(v) and v != 0]
    if not nonzero:
        return 2
    return int(min(6, max(1, 3 - math.floor(math.log10(float(np.median(nonzero)))))))


def num(v: Any, d: int = 4, sign: bool = False) -> str:
    """`v` with `d` decimals (a leading sign with `sign`), "—" when not a finite number."""
    if not finite(v):
        return "—"
    return f"{float(v):+.{d}f}" if sign else f"{float(v):.{d}f}"


def pct(v: Any) -> str:
    """A fraction as a whole percentage ("42%"), "—" when not a finite number."""
    return f"{round(100 * float(v)) + 0:.0f}%" if finite(v) else "—"  # + 0: no "-0%"


def pval(v: Any) -> str:
    """A p-value with three decimals, "<0.001" below that, "—" when not a finite number."""
    return "—" if not finite(v) else "<0.001" if float(v) < 0.001 else f"{float(v):.3f}"


def intcomma(v: Any) -> str:
    """An integer with thousands separators ("1,234"), "—" when not a finite number."""
    return f"{int(v):,}" if finite(v) else "—"


def sortval(v: Any) -> str:
    """A cell's `data-value` for sorting: a number, or empty (sorted last)."""
    return repr(float(v)) if finite(v) else ""
