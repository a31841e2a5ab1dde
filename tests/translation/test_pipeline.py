"""The translation pipeline end to end on the smoke card: records with BLEU, chrF and the
evaluation settings (SeqKD, MiniLM, FIRST); SeqKD's targets come from the teacher and are cached; PS-KD's past model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdbench.adapters.translation.adapter import TranslationAdapter
from kdbench.cache import cache_dir
from kdbench.cli import main
from kdbench.methods import get_method
from kdbench.methods.base import MethodContext
from kdbench.protocol import load_protocol
from kdbench.records import validation_errors
from kdbench.runner.train import Job, fit, probe_outputs


def _adapter(needs: frozenset[str] = frozenset()) -> TranslationAdapter:
    adapter = TranslationAdapter(load_protocol("translation", "smoke"), None, torch.device("cpu"))
    adapter.configure(needs)
    return adapter


@pytest.mark.parametrize("method", ["seqkd", "minilm", "first"])
def test_run_writes_a_valid_record_with_bleu_chrf_and_settings(method: str, results: Path) -> None:
    assert main(["run", "--task", "translation", "--method", method, "--protocol", "smoke",
                 "--results", str(results)]) == 0
    record = json.loads((results / "translation" / "smoke" / method / "seed0.json").read_text())
    assert validation_errors(record) == []
    assert record["status"] == "ok" and record["metrics"]["primary"] == "bleu"
    values = record["metrics"]["values"]
    assert set(values) == {"bleu", "chrf"} and all(0 <= v <= 100 for v in values.values())
    evaluation = record["evaluation"]
    assert evaluation["decoding"]["beam"] == 2 and evaluation["split"] == "test"
    assert evaluation["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert "chrF2" in evaluation["signatures"]["chrf"] or "nc:6" in evaluation["signatures"]["chrf"]
    terms = record["history"][-1]["terms"]
    if method == "minilm":
        assert "minilm" in terms
    elif method == "first":  # FIRST's top-k KL alone: no hard-label term
        assert "first/token" in terms and "task/token" not in terms
    else:  # SeqKD's plain NLL replaces the card's hard-label term
        assert "seqkd/token" in terms and "task/token" not in terms


def test_seqkd_targets_are_the_teachers_beam_outputs_and_cached() -> None:
    plain = _adapter()
    adapter = _adapter(get_method("seqkd").needs)
    torch.manual_seed(0)
    teacher = adapter.build_model("teacher", frozenset()).eval()
    adapter.attach_teacher(teacher)
    expected = adapter.translate(teacher, plain.encoded["train"][0])
    assert adapter.encoded["train"][1] == expected != plain.encoded["train"][1]
    assert adapter.encoded["train"][0] == plain.encoded["train"][0]
    cached = list((cache_dir() / "translation" / "seqkd").glob("*.pt"))
    assert cached
    again = _adapter(get_method("seqkd").needs)
    again.attach_teacher(teacher)  # from the cache: same targets
    assert again.encoded["train"][1] == expected
    plain.attach_teacher(teacher)  # no request: references stay
    assert plain.encoded["train"][1] == _adapter().encoded["train"][1]


def test_pskd_uses_the_previous_epochs_model() -> None:
    adapter = _adapter()
    cls = get_method("pskd")
    torch.manual_seed(0)
    student = adapter.build_model("student", cls.needs)
    method = cls(cls.Config(), MethodContext(probe_outputs(adapter, student), None, adapter.train_size, 2))
    assert method.runtime_needs == {"past_model"}  # (B, T, V) heads: no per-token table
    seen: list[torch.nn.Module | None] = []
    loss = method.loss

    def spy(s, t, progress, state):  # type: ignore[no-untyped-def]
        seen.append(t)
        return loss(s, t, progress, state)

    method.loss = spy  # type: ignore[method-assign]
    job = Job(adapter, student, method, None, {**adapter.protocol.card["train"], "epochs": 2}, 0, None)
    fit(job)
    steps = adapter.steps_per_epoch(int(job.train["batch_size"]))
    assert seen[:steps] == [None] * steps  # first epoch: one-hot targets
    assert all(t is not None for t in seen[steps:]) and len(seen) == 2 * steps
    assert job.teacher is not None and job.teacher is not student and not job.teacher.training
    assert all(not p.requires_grad for p in job.teacher.parameters())


def test_missing_multi30k_files_are_a_one_line_error(tmp_path: Path, results: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--task", "translation", "--method", "baseline", "--protocol", "multi30k",
                 "--data-root", str(tmp_path), "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "test_2016_flickr" not in err and "train.de.gz is missing" in err
    assert len(err.splitlines()) == 1
