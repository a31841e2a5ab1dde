"""Contract tests parametrized over the registry (docs/architecture.md, Code rules): for every method the classification
task serves, one tiny step is finite, gradients reach the student only, the teacher stays frozen
in eval mode; and the registry is loud. The adapter contract: hooks and their defaults, batches per
epoch, the batch protocol `shard` relies on, Outputs that hold what `provides` promises, and
needs of three kinds (parts of Outputs, adapter services, runner services), each supplied by its own layer."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kdbench.adapters import TASKS, Adapter, get_adapter
from kdbench.adapters.base import why_not_served
from kdbench.errors import KDBenchError, UsageError
from kdbench.methods import get_method, register, registry
from kdbench.methods.base import (
    ADAPTER_NEEDS,
    NEEDS,
    REQUESTS,
    RUNNER_NEEDS,
    Method,
    MethodContext,
    RunState,
    Stage,
    make_config,
)
from kdbench.outputs import OUTPUT_NEEDS, PARTS
from kdbench.protocol import load_protocol
from kdbench.runner.cache_budget import epoch_rows
from kdbench.runner.distributed import World, shard
from kdbench.runner.ema import EMA
from kdbench.runner.online import OnlineTeacher
from kdbench.runner.train import Job, _terms, fit, fit_stages, probe_outputs

ALL = sorted(registry())
SERVED = [(task, name) for task in TASKS for name in ALL if why_not_served(get_adapter(task), get_method(name)) is None]
_ADAPTERS: dict[str, Adapter] = {}


def _adapter(task: str) -> Adapter:
    if task not in _ADAPTERS:
        _ADAPTERS[task] = get_adapter(task)(load_protocol(task, "smoke"), None, torch.device("cpu"))
    return _ADAPTERS[task]


def test_registry_holds_the_twenty_five_methods() -> None:
    assert set(ALL) == {"baseline", "ls", "kd", "dkd", "nkd", "uskd", "pskd", "taid", "bdkd", "bdkd_online", "dhkd",
                        "nd", "mlkd", "lsskd", "gold", "dwpose", "minilm", "seqkd", "emasd", "tgeokd", "ofakd",
                        "slasd", "gtsd", "first", "mdcs"}


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register(type("Again", (get_method("kd"),), {}))


def test_unknown_method_lists_registered() -> None:
    with pytest.raises(UsageError, match="unknown method 'x'; valid: baseline, bdkd"):
        get_method("x")


@pytest.mark.parametrize("name", ALL)
def test_method_declares_itself(name: str) -> None:
    cls = get_method(name)
    assert cls.name == name and cls.teacher in ("none", "external", "self", "online")
    assert (cls.teacher == "online") == ("online_teacher" in cls.runtime_needs)  # declared on the class
    assert (cls.teacher_loss is not Method.teacher_loss) == (cls.teacher == "online")  # the hook it is served by
    assert cls.paper and cls.__doc__
    assert cls.needs <= set(NEEDS)
    assert dataclasses.is_dataclass(cls.Config)
    cls.Config()  # the paper's defaults build without arguments


def test_make_config_coerces_and_rejects() -> None:
    cfg = make_config(get_method("kd").Config, {"temperature": "2", "ce_weight": 0})
    assert cfg.temperature == 2.0 and isinstance(cfg.ce_weight, float)
    with pytest.raises(UsageError, match="must be float"):
        make_config(get_method("kd").Config, {"temperature": "hot"})


@pytest.mark.parametrize(("task", "name"), SERVED)
def test_one_step_trains_the_student_only(task: str, name: str) -> None:
    adapter = _adapter(task)
    cls: type[Method] = get_method(name)
    adapter.configure(cls.needs | cls.requests)
    torch.manual_seed(0)
    student = adapter.build_model("student", cls.needs)
    teacher = None
    if cls.teacher == "external":
        teacher = adapter.build_model("teacher", frozenset()).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    elif cls.teacher == "online":  # the online_teacher service: trainable, in training mode, its own step
        teacher = adapter.build_model("teacher", frozenset()).train()
    if teacher is not None:
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ctx = MethodContext(probe_outputs(adapter, student, cls),  # the structural needs are in the Outputs
                        probe_outputs(adapter, teacher) if teacher else None, adapter.train_size, 2,
                        adapter.train_classes())
    method = cls(cls.Config(), ctx)
    assert method.runtime_needs <= set(RUNNER_NEEDS), method.runtime_needs  # decided now, from the Outputs
    if "ema_model" in method.runtime_needs:  # the runner's EMA teacher: a frozen copy of the student
        teacher = EMA(student, method.ema_momentum(), None).model
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
    if "teacher_pass" in cls.needs:
        assert teacher is not None
        method.prepare(lambda: adapter.teacher_pass(teacher))
    job = Job(adapter, student, method, teacher, {"batch_size": 16}, 0, None)
    batch = next(iter(adapter.train_batches(16, torch.Generator().manual_seed(0))))
    out = adapter.forward(student, batch)
    raw = adapter.forward(teacher, batch) if teacher is not None else None
    t_out = adapter.align(out, raw) if teacher is not None else None  # with its graph where it is online
    state = RunState(epoch=1, epochs=2, step=5, steps=10)
    terms = _terms(job, out, t_out, state)
    loss = torch.stack(list(terms.values())).sum()
    assert torch.isfinite(loss), terms
    kinds = {head: h.kind for head, h in out.heads.items()}
    on_heads = {k.rsplit("/", 1)[1] for k in terms if not k.startswith("task/") and k.rsplit("/", 1)[-1] in kinds}
    assert all(kinds[head] in cls.accepts for head in on_heads), (terms, kinds)  # only kinds it accepts
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    method.after_step(out.detach(), {k: v.detach() for k, v in terms.items()}, state)
    if teacher is not None:  # the student's loss sends no gradient into any teacher
        assert teacher.training == (cls.teacher == "online")
        assert all(p.grad is None for p in teacher.parameters())
        # a frozen teacher is as it was; an online one keeps its weights (its BatchNorm statistics move
        # in its training-mode forward, as the student's do)
        now = dict(teacher.named_parameters()) if cls.teacher == "online" else teacher.state_dict()
        assert all(torch.equal(before[k], v) for k, v in now.items())
    if cls.teacher == "online":  # and the online teacher's terms train the teacher alone
        assert t_out is not None and teacher is not None
        seen = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
        taught = OnlineTeacher(teacher, adapter.protocol.card["train"], 1, 1).terms(
            adapter, method, out, raw, t_out, state)
        assert any(k.startswith("teacher/task/") for k in taught) and any(
            not k.startswith("teacher/task/") for k in taught), taught
        torch.stack(list(taught.values())).sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher.parameters())
        assert {n: p.grad for n, p in student.named_parameters() if p.grad is not None}.keys() == seen.keys()
        assert all(torch.equal(p.grad, seen[n]) for n, p in student.named_parameters() if p.grad is not None)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_an_adapter_overrides_the_hooks_of_the_services_it_provides(task: str) -> None:
    """`teacher_pass` and `head_stage` are a provided need and a hook whose base default raises:
    a task provides the need exactly when it overrides the hook (the runner reads `provides`)."""
    cls = get_adapter(task)
    for hook in ("teacher_pass", "head_stage"):
        assert (hook in cls.provides) == (getattr(cls, hook) is not getattr(Adapter, hook)), (task, hook)


def test_a_later_stage_on_a_task_without_head_stage_is_refused_before_training() -> None:
    adapter = _adapter("classification")
    assert "head_stage" not in adapter.provides
    method = type("TwoStages", (), {"later_stages": lambda self: (Stage(0.5),), "runtime_needs": frozenset()})()
    job = Job(adapter, adapter.build_model("student", frozenset()), method, None, {"epochs": 1}, 0, None)  # type: ignore[arg-type]
    with pytest.raises(KDBenchError, match="task 'classification' cannot train a head alone"):
        fit_stages(job)


def test_the_base_hook_defaults() -> None:
    adapter = _adapter("classification")
    assert Adapter.teacher_inputs_fixed is False and get_adapter("detection").teacher_inputs_fixed is False
    assert Adapter.evaluation_info(adapter, "test") == {}
    with pytest.raises(KDBenchError, match="cannot train a head alone"):
        Adapter.head_stage(adapter, torch.nn.Linear(1, 1))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_steps_per_epoch_counts_the_batches_of_an_epoch(task: str) -> None:
    adapter = _adapter(task)
    for batch_size in (16, adapter.train_size, adapter.train_size + 1):
        count = sum(1 for _ in adapter.train_batches(batch_size, torch.Generator().manual_seed(0)))
        assert count == adapter.steps_per_epoch(batch_size), (task, batch_size)


CACHED = [task for task in sorted(TASKS) if get_adapter(task).teacher_inputs_fixed]


@pytest.mark.parametrize("task", CACHED)
def test_the_cache_size_estimate_counts_every_position_of_an_epoch(task: str) -> None:
    """Where the teacher's outputs are cached, the rows that size the cache before its first write
    (`epoch_positions`, or train_size × the probe's positions per sample) are the positions the
    teacher's heads hold over that epoch."""
    adapter = _adapter(task)
    teacher = adapter.build_model("teacher", frozenset())
    rows = epoch_rows(adapter, probe_outputs(adapter, teacher), 16, torch.Generator().manual_seed(3))
    seen: dict[str, int] = {}
    with torch.no_grad():
        for batch in adapter.train_batches(16, torch.Generator().manual_seed(3)):
            for name, head in adapter.forward(teacher, batch).heads.items():
                seen[name] = seen.get(name, 0) + math.prod(head.logits.shape[:-1])
    assert rows == seen
    assert CACHED == ["classification", "translation"]


def _rows(value: object) -> list[object]:
    return list(value.unbind(0)) if isinstance(value, torch.Tensor) else list(value)  # type: ignore[call-overload]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_training_batch_shards_along_its_samples(task: str) -> None:
    """The batch protocol in the Adapter docstring, on each task's own Batch: three ranks' shards
    are contiguous, cover the batch, and cut every per-sample field (tensors and lists of B)."""
    adapter = _adapter(task)
    batch = next(iter(adapter.train_batches(10, torch.Generator().manual_seed(0))))
    assert dataclasses.is_dataclass(batch)
    shards = [shard(batch, World(r, 3)) for r in range(3)]
    assert [len(s.ids) for s in shards] == [3, 3, 4]
    for f in dataclasses.fields(batch):
        whole, parts = getattr(batch, f.name), [getattr(s, f.name) for s in shards]
        if whole is None:  # an optional field this run does not fill (classification's strong view)
            assert all(part is None for part in parts), (task, f.name)
            continue
        assert len(whole) == 10, (task, f.name)  # every shipped field is per sample
        joined = [row for part in parts for row in _rows(part)]
        assert len(joined) == 10 and all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
                                         for a, b in zip(joined, _rows(whole), strict=True)), (task, f.name)


def test_shard_keeps_what_is_not_per_sample_and_rebuilds_dataclasses() -> None:
    @dataclasses.dataclass
    class Toy:
        x: torch.Tensor  # (B, 2): sets B
        per_sample: list[int]
        table: torch.Tensor  # (3,): another length, kept
        scale: torch.Tensor  # 0-d, kept
        nested: tuple[torch.Tensor, torch.Tensor]  # not of length B: cut item by item

        def __post_init__(self) -> None:
            self.total = float(self.x.sum())

    toy = Toy(torch.arange(10.0).view(5, 2), [0, 1, 2, 3, 4], torch.ones(3), torch.tensor(2.0),
              (torch.arange(5), torch.zeros(5, 4)))
    part = shard(toy, World(1, 2))  # rows [2, 5)
    assert torch.equal(part.x, toy.x[2:]) and part.per_sample == [2, 3, 4]
    assert torch.equal(part.table, toy.table) and torch.equal(part.scale, toy.scale)
    assert torch.equal(part.nested[0], torch.arange(2, 5)) and part.nested[1].shape == (3, 4)
    assert part.total == float(toy.x[2:].sum())  # __post_init__ ran again on the shard
    assert shard([7, 8, 9, 10], World(0, 2)) == [7, 8] and torch.equal(shard(torch.arange(4), World(1, 2)),
                                                                         torch.arange(2, 4))
    with pytest.raises(TypeError, match="cannot shard a batch of type int"):
        shard(3, World(0, 2))


def test_a_stale_provides_fails_at_the_probe_naming_method_parts_and_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task whose `provides` promises a part of Outputs its forward does not fill is served by
    `resolve`; the student's probe refuses it before training."""
    adapter = _adapter("classification")
    monkeypatch.setattr(type(adapter), "provides", adapter.provides | {"attentions"})
    minilm = get_method("minilm")
    assert minilm.needs <= adapter.provides  # so resolve() would serve it
    adapter.configure(minilm.needs | minilm.requests)
    student = adapter.build_model("student", minilm.needs)
    with pytest.raises(KDBenchError, match=r"method 'minilm' needs attentions from the student's Outputs, which task "
                       r"'classification' declares in its provides, but its forward returned Outputs that provide "
                       r"only features, heads, ids"):
        probe_outputs(adapter, student, minilm)
    probe_outputs(adapter, student)  # without a method: no check (teacher probes)


def test_a_student_without_earlier_layers_fails_a_layers_need() -> None:
    adapter = _adapter("classification")
    gold = get_method("gold")
    adapter.configure(gold.needs | gold.requests)
    with pytest.raises(KDBenchError, match=r"method 'gold' needs layers .* provide only features, heads, ids"):
        probe_outputs(adapter, adapter.build_model("student", frozenset()), gold)  # no auxiliary heads asked for
    assert "layers" in probe_outputs(adapter, adapter.build_model("student", gold.needs), gold).provides


def test_every_output_part_is_a_need_or_the_heads() -> None:
    assert PARTS - {"heads"} <= set(NEEDS)


#: The three kinds of needs, by who supplies them (kdbench.methods.base).
KINDS = {"outputs": OUTPUT_NEEDS, "adapter": ADAPTER_NEEDS, "runner": RUNNER_NEEDS}


def test_the_three_kinds_of_needs_are_disjoint_and_make_up_needs() -> None:
    assert [n for table in KINDS.values() for n in table] == list(NEEDS)  # no need in two kinds, none left out
    assert all(NEEDS[n] == meaning for table in KINDS.values() for n, meaning in table.items())
    assert set(OUTPUT_NEEDS) == PARTS - {"heads"}  # what Outputs.provides reports beside the heads


@pytest.mark.parametrize("name", ALL)
def test_every_need_a_method_declares_is_of_exactly_one_kind(name: str) -> None:
    """`needs` (what a task provides) are parts of Outputs or adapter services; runner services are
    `runtime_needs`; `requests` are REQUESTS."""
    cls = get_method(name)
    for need in cls.needs | cls.runtime_needs:
        assert [kind for kind, table in KINDS.items() if need in table] in (["outputs"], ["adapter"], ["runner"])
    assert not cls.needs & set(RUNNER_NEEDS), cls.needs
    assert cls.runtime_needs <= set(RUNNER_NEEDS) and cls.requests <= set(REQUESTS)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_no_adapter_provides_a_runner_service(task: str) -> None:
    provides = get_adapter(task).provides
    assert provides <= set(OUTPUT_NEEDS) | set(ADAPTER_NEEDS), provides
    assert not provides & set(RUNNER_NEEDS)


def test_every_request_is_one_some_task_honours() -> None:
    """An adapter honours only REQUESTS (applied on a method's request: detection's union matching,
    tests/detection/test_pipeline.py), and each request is honoured somewhere."""
    assert {r for task in TASKS for r in get_adapter(task).honours} == set(REQUESTS)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_outputs_parts_an_adapter_provides_are_those_its_smoke_outputs_carry(task: str) -> None:
    """The parts of Outputs in `provides` are exactly what the student's Outputs hold on the smoke
    card (asked for: a student with auxiliary heads, attention inputs turned on), and the promises
    about its heads agree with the heads it returns: `sample_heads` exactly when every final head
    is (B, K) categorical, `ce_heads` with class-index targets, `label_heads` with targets of the
    positions' or the logits' shape, `token_heads` with (B, T, V) categorical heads masked over
    (B, T)."""
    cls = get_adapter(task)
    adapter = cls(load_protocol(task, "smoke"), None, torch.device("cpu"))
    parts = cls.provides & set(OUTPUT_NEEDS)
    adapter.configure(parts)
    torch.manual_seed(0)
    out = probe_outputs(adapter, adapter.build_model("student", parts))
    assert out.provides == parts | {"heads"}, (task, out.provides)
    heads = list(out.heads.values())
    assert ("sample_heads" in cls.provides) == all(h.kind == "categorical" and h.logits.dim() == 2 for h in heads)
    for head in heads:
        positions = head.logits.shape[:-1]
        if cls.provides & {"ce_heads", "label_heads"}:
            assert head.target is not None, task
            assert head.target.shape in (positions, head.logits.shape), task
        if "ce_heads" in cls.provides:
            assert head.target is not None and head.target.shape == positions
            assert not head.target.is_floating_point(), task
        if "token_heads" in cls.provides:
            assert head.kind == "categorical" and head.logits.dim() == 3, task
            assert head.mask is not None and head.mask.shape == positions and not bool(head.mask.all()), task


def test_a_runtime_need_the_runner_does_not_serve_fails_before_training() -> None:
    adapter = _adapter("classification")
    baseline = get_method("baseline")
    student = adapter.build_model("student", frozenset())
    method = baseline(baseline.Config(), MethodContext(probe_outputs(adapter, student), None, adapter.train_size, 1))
    method.runtime_needs = frozenset({"future_model"})
    job = Job(adapter, student, method, None, adapter.protocol.card["train"], 0, None)
    with pytest.raises(KDBenchError, match=r"method 'baseline' has runtime_needs future_model, which the runner does "
                                           r"not serve \(it serves past_model, ema_model"):
        fit(job)
