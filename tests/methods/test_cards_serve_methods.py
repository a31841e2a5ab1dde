"""Every method a small card's task serves can be built on that card with the card's settings,
and a method that distils earlier layers has earlier layers to distil there (a 1-block student
would make GO-LSD or LSSKD the baseline under another name, and USKD's default feature absent)."""

from __future__ import annotations

import pytest
import torch

from kdbench.adapters import get_adapter
from kdbench.adapters.base import why_not_served
from kdbench.methods import get_method, registry
from kdbench.methods.base import MethodContext, make_config
from kdbench.protocol import load_protocol, task_cards
from kdbench.runner.train import probe_outputs

SMALL = [(task, name) for task in ("classification", "ood", "translation")
         for name in task_cards(task) if load_protocol(task, name).typed.tier == "small"]


@pytest.mark.slow
@pytest.mark.parametrize(("task", "card"), SMALL)
def test_every_served_method_builds_on_the_small_card(task: str, card: str) -> None:
    protocol = load_protocol(task, card)
    adapter = get_adapter(task)(protocol, None, torch.device("cpu"))
    served = [m for m, cls in registry().items() if why_not_served(type(adapter), cls) is None]
    failures = []
    for name in served:
        cls = get_method(name)
        adapter.configure(cls.needs | cls.requests)
        student = adapter.build_model("student", cls.needs)
        teacher = adapter.build_model("teacher", frozenset()).eval() if cls.teacher == "external" else None
        s_out = probe_outputs(adapter, student)
        if "layers" in cls.needs and len(s_out.layers) < 2:
            failures.append(f"{name}: the student has {len(s_out.layers)} layer outputs, no earlier layer to distil")
            continue
        ctx = MethodContext(s_out, probe_outputs(adapter, teacher) if teacher else None, adapter.train_size, 2)
        try:
            cls(make_config(cls.Config, protocol.method_hparams(name)), ctx)
        except (KeyError, ValueError) as e:
            failures.append(f"{name}: {e}")
    assert not failures, f"{task}/{card}: " + "; ".join(failures)
