"""Every method a small card's task serves can be built on that card with the card's settings,
and a method that distils earlier layers has earlier layers to distil there (a 1-block student
would make GO-LSD or LSSKD the baseline under another name, and USKD's default feature absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdbench.adapters import get_adapter
from kdbench.adapters.base import why_not_served
from kdbench.errors import UsageError
from kdbench.methods import get_method, registry
from kdbench.methods.base import MethodContext, make_config
from kdbench.protocol import load_protocol, task_cards
from kdbench.runner.train import probe_outputs
from tests.datafiles import data_root

SMALL = [(task, name) for task in ("classification", "ood", "translation")
         for name in task_cards(task) if load_protocol(task, name).typed.tier == "small"]


def _failures(task: str, card: str, data: Path | None, refused: dict[str, str]) -> list[str]:
    """Each served method that cannot be built on the card; `refused` (method → the message the
    card's adapter gives in `configure`) are checked to refuse with it instead."""
    protocol = load_protocol(task, card)
    adapter = get_adapter(task)(protocol, data, torch.device("cpu"))
    served = [m for m, cls in registry().items() if why_not_served(type(adapter), cls) is None]
    failures = []
    for name in served:
        cls = get_method(name)
        if name in refused:
            with pytest.raises(UsageError, match=refused[name]):
                adapter.configure(cls.needs | cls.requests)
            continue
        adapter.configure(cls.needs | cls.requests)
        student = adapter.build_model("student", cls.needs)
        teacher = adapter.build_model("teacher", frozenset()).eval() if cls.teacher == "external" else None
        s_out = probe_outputs(adapter, student)
        if "layers" in cls.needs and len(s_out.layers) < 2:
            failures.append(f"{name}: the student has {len(s_out.layers)} layer outputs, no earlier layer to distil")
            continue
        ctx = MethodContext(s_out, probe_outputs(adapter, teacher) if teacher else None, adapter.train_size, 2,
                             adapter.train_classes())
        try:
            cls(make_config(cls.Config, protocol.method_hparams(name)), ctx)
        except (KeyError, ValueError) as e:
            failures.append(f"{name}: {e}")
    return failures


@pytest.mark.slow
@pytest.mark.parametrize(("task", "card"), SMALL)
def test_every_served_method_builds_on_the_small_card(task: str, card: str) -> None:
    failures = _failures(task, card, None, {})
    assert not failures, f"{task}/{card}: " + "; ".join(failures)


@pytest.mark.slow
def test_every_served_method_builds_on_clinc150_and_minilm_is_refused() -> None:
    """The clinc150 teacher is an n-gram bag: no attention for minilm, all else served."""
    failures = _failures("ood", "clinc150", data_root("clinc150"),
                         {"minilm": r"reads attentions .* the teacher \(arch ngram_bag\) has none"})
    assert not failures, "ood/clinc150: " + "; ".join(failures)
