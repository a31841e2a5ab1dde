"""The real-data tests skip, never fail, when KDBENCH_DATA_ROOT lacks their files (docs/test-data.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import datafiles


@pytest.mark.parametrize("dataset", sorted(datafiles.FILES))
def test_unset_missing_or_empty_roots_skip_with_the_reason(
        dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDBENCH_DATA_ROOT", raising=False)
    assert "needs KDBENCH_DATA_ROOT" in (datafiles.missing(dataset) or "")
    for root in (tmp_path / "nosuch", tmp_path):
        monkeypatch.setenv("KDBENCH_DATA_ROOT", str(root))
        why = datafiles.missing(dataset) or ""
        assert f"lacks {datafiles.FILES[dataset][0]}" in why and "docs/test-data.md" in why
        with pytest.raises(pytest.skip.Exception, match=dataset):
            datafiles.data_root(dataset)
    for name in datafiles.FILES[dataset]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert datafiles.missing(dataset) is None and datafiles.data_root(dataset) == tmp_path.resolve()


def test_the_documented_layout_names_every_file() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "test-data.md").read_text(encoding="utf-8")
    for files in datafiles.FILES.values():
        for name in files:
            assert Path(name).name in doc, name
