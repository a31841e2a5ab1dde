"""A record counts the parameters a method trains beside the student."""

from __future__ import annotations

import json
from pathlib import Path

from kdbench.cli import main


def test_a_methods_own_modules_are_counted_beside_the_student(tmp_path: Path) -> None:
    """DHKD's auxiliary head trains with the student: the record counts it as method_params."""
    for method in ("baseline", "dhkd"):
        assert main(["run", "--task", "classification", "--protocol", "smoke", "--method", method,
                     "--results", str(tmp_path), "--device", "cpu"]) == 0
    records = {m: json.loads(next(tmp_path.rglob(f"{m}/seed0.json")).read_text()) for m in ("baseline", "dhkd")}
    assert records["baseline"]["student"]["method_params"] == 0
    assert records["dhkd"]["student"]["method_params"] > 0
    assert records["dhkd"]["student"]["params"] == records["baseline"]["student"]["params"]
