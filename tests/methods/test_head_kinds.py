"""Head kinds in the Outputs contract (issue #16, item 1): every head declares the distribution
its logits carry, every method the kinds it distils, and one rule (kdbench.methods.base.refusal)
decides which tasks serve which methods, for `kdbench run`, sweeps, `kdbench list`, the site and
these tests alike. A softmax-family method is never applied to a binary (sigmoid) head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kdbench.adapters import TASKS, get_adapter
from kdbench.adapters.base import why_not_served
from kdbench.cli import main
from kdbench.errors import KDBenchError
from kdbench.listing import list_methods, servable
from kdbench.methods import get_method, registry
from kdbench.methods.base import Method, MethodContext, RunState, head_refusals, paired_heads
from kdbench.outputs import HEAD_KINDS, Head, Outputs, Rebin
from kdbench.protocol import load_protocol
from kdbench.runner.sweep import make_plan
from kdbench.runner.train import probe_outputs
from kdbench.site.catalog import generate, load_catalog
from kdbench.site.data import serves

ALL = sorted(registry())
PAIRS = [(task, name) for task in TASKS for name in ALL]
SOFTMAX = [name for name in ALL if "binary" not in get_method(name).accepts]


def test_every_task_declares_a_known_kind_for_every_head() -> None:
    for task in TASKS:
        adapter = get_adapter(task)
        assert adapter.head_kinds and set(adapter.head_kinds.values()) <= set(HEAD_KINDS), task
        assert adapter.relative_heads <= {h for h, k in adapter.head_kinds.items() if k == "binned"}, task
    assert get_adapter("detection").head_kinds == {"cls": "binary", "box": "binned"}
    assert get_adapter("pose").head_kinds == {"simcc_x": "binned", "simcc_y": "binned"}
    for task in ("classification", "ood", "translation"):
        assert set(get_adapter(task).head_kinds.values()) == {"categorical"}, task


@pytest.mark.parametrize(("task", "name"), PAIRS)
def test_a_served_pair_passes_the_head_kind_check(task: str, name: str) -> None:
    adapter, cls = get_adapter(task), get_method(name)
    assert cls.accepts <= set(HEAD_KINDS)
    why = head_refusals(cls, adapter.head_kinds, adapter.relative_heads)
    served = why_not_served(adapter, cls) is None
    if served and cls.accepts:
        assert any(not reason for reason in why.values()), (task, name, why)  # some head it distils
    for head, kind in adapter.head_kinds.items():
        if kind == "binary" and name in SOFTMAX:
            assert why[head], (task, name, head)  # never a softmax over sigmoid logits
    assert load_catalog()["methods"][name]["refused"].get(task) == why_not_served(adapter, cls)


def test_only_kd_and_emasd_distil_a_binary_head_and_the_registry_serves_what_it_did_elsewhere() -> None:
    # kd with BCKD's per-class binary loss; emasd's squared error on logits reads no distribution
    assert [n for n in ALL if "binary" in get_method(n).accepts] == ["emasd", "kd"]
    served = {t: {n for n in ALL if why_not_served(get_adapter(t), get_method(n)) is None} for t in TASKS}
    # classification, OOD, pose, translation: what the needs alone served before head kinds
    for task in ("classification", "ood", "pose", "translation"):
        assert served[task] == {n for n in ALL if get_method(n).needs <= get_adapter(task).provides}, task
    assert served["detection"] == {"baseline", "kd", "dkd", "taid", "mlkd", "lsskd", "gold", "emasd"}


def _detection_like(rebin: bool = False) -> tuple[Outputs, Outputs]:
    gen = torch.Generator().manual_seed(0)
    cls = Head(torch.randn(2, 3, 4, generator=gen), torch.zeros(2, 3, dtype=torch.long), kind="binary")
    box = Head(torch.randn(2, 3, 4, 5, generator=gen), torch.zeros(2, 3, 4, dtype=torch.long), kind="binned")
    cat = Head(torch.randn(2, 3, 6, generator=gen), torch.zeros(2, 3, dtype=torch.long), kind="categorical")
    student = Outputs(heads={"cls": cls, "box": box, "cat": cat}, features={"f": torch.zeros(2, 3),
                                                                             "g": torch.ones(2, 3)})
    return student, student.detach()


@pytest.mark.parametrize("name", [n for n in SOFTMAX if get_method(n).teacher == "external"
                                  and not get_method(n).needs - {"features"}])
def test_a_softmax_family_method_computes_nothing_on_a_binary_head(name: str) -> None:
    cls = get_method(name)
    student, teacher = _detection_like()
    method = cls(cls.Config(), MethodContext(student, teacher, 2, 1))
    assert "cls" not in method.head_names
    assert "cls" not in {n for n, _, _ in method.paired(student, teacher)}
    terms = method.loss(student, teacher, 0.0, RunState(0, 1, 0, 1))
    assert not any(k.endswith("/cls") for k in terms), terms
    assert any(k.endswith("/cat") for k in terms), terms  # the categorical head is distilled


def test_paired_heads_refuses_a_kind_mismatch() -> None:
    student, teacher = _detection_like()
    teacher.heads["cls"] = Head(teacher.heads["cls"].logits, kind="categorical")
    with pytest.raises(ValueError, match="head 'cls': the student's is binary, the teacher's categorical"):
        list(paired_heads(student, teacher))


def test_head_checks_its_kind_and_rebin() -> None:
    with pytest.raises(ValueError, match=r"Head\.kind 'sigmoid' is not one of categorical, binary, binned"):
        Head(torch.zeros(2, 3), kind="sigmoid")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Head(torch.zeros(2, 3))  # type: ignore[call-arg]  # no default: every adapter says
    rebin = Rebin(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), torch.zeros(2, 3), 3)
    assert Head(torch.zeros(2, 3), kind="binned", rebin=rebin).rebin is rebin
    with pytest.raises(ValueError, match=r"Head\.rebin is for binned heads"):
        Head(torch.zeros(2, 3), kind="categorical", rebin=rebin)


@dataclass
class _Config:
    temperature: float = 1.0


class _ReverseKL(Method):
    """A new softmax-family method written by following the README (not registered)."""

    name = "reverse_kl"
    paper = "—"
    teacher = "external"
    Config = _Config

    def loss(self, student: Outputs, teacher: Outputs | None, progress: float,
             state: RunState) -> dict[str, torch.Tensor]:
        return {}


def test_a_new_softmax_method_is_refused_on_detection_with_one_clear_reason() -> None:
    why = why_not_served(get_adapter("detection"), _ReverseKL)
    assert why == (
        "task 'detection' cannot serve method 'reverse_kl': it distils binned and categorical heads, and no head of "
        "this task is one it can distil: cls is binary (an independent sigmoid per class, C yes/no decisions per "
        "position and not one distribution); box is binned with bins relative to each model's own reference, "
        "which reverse_kl does not re-express on the student's bins (Method.rebins)")
    for task in ("classification", "ood", "pose", "translation"):
        assert why_not_served(get_adapter(task), _ReverseKL) is None


@pytest.mark.parametrize("method", ["bdkd", "nkd"])
def test_run_refuses_before_training_and_every_surface_says_the_same(
    method: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    reason = why_not_served(get_adapter("detection"), get_method(method))
    assert reason is not None and "cls is binary" in reason and f"which {method} does not re-express" in reason
    assert main(["run", "--task", "detection", "--method", method, "--protocol", "smoke",
                 "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert reason in err and not list(tmp_path.rglob("*.json"))  # no record, nothing trained
    plan = make_plan("detection", "all", "0", "smoke", {}, tmp_path, None)
    assert (("detection", method, reason.split(": ", 1)[1]) in plan.not_served)
    assert "detection" not in servable(load_catalog(), method)
    assert serves(method, "detection") == (False, reason)
    row = next(line for line in list_methods().splitlines() if line.startswith(f"{method} "))
    assert "binned, categorical" in row and "detection" not in row


def test_list_methods_shows_the_kinds_each_method_distils() -> None:
    rows = {line.split()[0]: line for line in list_methods().splitlines()[1:]}
    assert "binary, binned, categorical" in rows["kd"]
    assert " binned " in rows["dwpose"] and "categorical" not in rows["dwpose"]


def test_the_catalog_records_kinds_and_refusals() -> None:
    cat = generate()
    assert cat["tasks"]["detection"]["heads"] == {"cls": "binary", "box": "binned"}
    assert cat["tasks"]["detection"]["relative_heads"] == ["box"]
    assert cat["methods"]["kd"]["accepts"] == ["binary", "binned", "categorical"] and cat["methods"]["kd"]["rebins"]
    assert cat["methods"]["minilm"]["accepts"] == []


def test_a_stale_head_kinds_fails_at_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = get_adapter("classification")(load_protocol("classification", "smoke"), None, torch.device("cpu"))
    monkeypatch.setattr(type(adapter), "head_kinds", {"cls": "binary"})
    with pytest.raises(KDBenchError, match=r"task 'classification' declares the heads cls \(binary\) \(head_kinds\), "
                                           r"but its forward returned cls \(categorical\)"):
        probe_outputs(adapter, adapter.build_model("student", frozenset()), get_method("kd"))
