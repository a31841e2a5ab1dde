"""Real dataset files for the tests, found under $KDBENCH_DATA_ROOT (docs/test-data.md).

A test that needs one calls `data_root(...)` with the files it reads: it gets the root, or is
skipped with a reason naming what is missing, whether the variable is unset, names a folder that
does not exist, or names one without those files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The files each dataset's tests read, relative to $KDBENCH_DATA_ROOT.
FILES: dict[str, tuple[str, ...]] = {
    "coco-fixtures": ("coco-fixtures/test_coco.json", "coco-fixtures/test_coco_wholebody.json"),
    "clinc150": ("clinc150/data_full.json",),
    "multi30k": tuple(f"multi30k/{stem}.{lang}.gz" for stem in ("train", "val", "test_2016_flickr")
                      for lang in ("de", "en")),
}


def missing(dataset: str) -> str | None:
    """Why the files of `dataset` cannot be read here, or None when they can."""
    root = os.environ.get("KDBENCH_DATA_ROOT")
    if not root:
        return f"{dataset} needs KDBENCH_DATA_ROOT (a folder holding {dataset}/; see docs/test-data.md)"
    absent = [f for f in FILES[dataset] if not (Path(root) / f).is_file()]
    if absent:
        return (f"{dataset}: KDBENCH_DATA_ROOT={root} lacks {', '.join(absent[:2])}"
                f"{f' and {len(absent) - 2} more' if len(absent) > 2 else ''} (see docs/test-data.md)")
    return None


def data_root(dataset: str) -> Path:
    """$KDBENCH_DATA_ROOT, resolved, when it holds `dataset`'s files; else skip the test."""
    why = missing(dataset)
    if why is not None:
        pytest.skip(why)
    return Path(os.environ["KDBENCH_DATA_ROOT"]).resolve()


def needs(dataset: str) -> pytest.MarkDecorator:
    """A skipif mark for a test that reads `dataset` (the reason is `missing`'s)."""
    why = missing(dataset)
    return pytest.mark.skipif(why is not None, reason=why or "")
