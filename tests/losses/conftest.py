"""Make the float64 reference helpers (lossref.py, next to this file) importable.

The suite runs with --import-mode=importlib, which does not put test directories on
sys.path; the loss tests share one small helper module, so this directory is added once.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
