"""kdbench methods as mmengine modules: one loss module per method, and the distiller base class.

`kdbench.KDLoss`, `kdbench.DKDLoss`, ... (one per registered method, `<NAME>Loss`, plus the
generic `kdbench.MethodLoss` with `method="kd"`) hold the very `Method` object `kdbench run`
builds (`kdbench.methods.get_method`), with hyperparameters checked by the method's `Config`
(an unknown key is an error naming the valid ones). They are called on `kdbench.outputs.Outputs`
built from mmdet / mmpose predictions, so a loss computed inside OpenMMLab training goes through
the same code as one computed by kdbench's own runner.

`Distiller` is the mmengine model: a student and an optional frozen teacher, both built from
ordinary OpenMMLab model configs; its `loss` sums the student's own loss terms (re-weighted by
`Method.task_weight`, e.g. KD's `ce_weight`) and the method's named terms. Task subclasses
(`kdbench.integrations.mmdet`, `.mmpose`) say how a model's predictions become `Outputs`.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.registry import MODELS as ROOT_MODELS
from torch import Tensor, nn

from kdbench.cache import sha256_file
from kdbench.errors import UsageError
from kdbench.integrations.registry import MODELS
from kdbench.methods import METHODS, get_method, make_config, registry
from kdbench.methods.base import Method, MethodContext, RunState, refusal
from kdbench.outputs import Outputs
from kdbench.runner.env import count_params


class MethodLoss(nn.Module):
    """A kdbench method as an mmengine loss module: `forward(student, teacher, progress, state)`
    returns the method's named loss terms (`Method.loss`), unchanged.

    Args:
        method: the kdbench method's name; set by the per-method subclasses (`kdbench.KDLoss`).
        **hparams: the method's hyperparameters (its `Config` fields; defaults are the paper's).
    """

    method_name: ClassVar[str] = ""

    def __init__(self, method: str | None = None, **hparams: Any) -> None:
        super().__init__()
        name = method or self.method_name
        if not name:
            raise UsageError("kdbench.MethodLoss needs method=<name>; see `kdbench list methods`")
        self.method_cls = get_method(name)
        self.name = self.method_cls.name  # an alias (a renamed method's earlier name) records under the name now
        self.config = make_config(self.method_cls.Config, hparams)
        self.method: Method | None = None

    @property
    def hparams(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def bind(self, ctx: MethodContext, provides: frozenset[str], where: str) -> None:
        """Build the method, sized from example Outputs, once the models exist."""
        missing = sorted(self.method_cls.needs - provides)
        if missing:
            raise UsageError(f"method {self.name!r} needs {', '.join(missing)}, which {where} does not provide "
                             f"(it provides: {', '.join(sorted(provides))})")
        heads = {name: head.kind for name, head in ctx.student.heads.items()}
        refused = refusal(self.method_cls, where, provides, heads)
        if refused:
            raise UsageError(refused)
        method = self.method_cls(self.config, ctx)
        if method.runtime_needs:  # kdbench's runner serves these; an mmengine loop does not
            raise UsageError(f"method {self.name!r} needs {', '.join(sorted(method.runtime_needs))} from "
                             f"kdbench's runner, which {where} under mmengine does not serve; run it with "
                             "`kdbench run`")
        self.method = method

    def _bound(self) -> Method:
        if self.method is None:
            raise RuntimeError(f"{type(self).__name__} is used before a distiller bound it to its models")
        return self.method

    def task_weight(self, term: str, progress: float) -> float:
        return self._bound().task_weight(term, progress)

    def forward(self, student: Outputs, teacher: Outputs | None, progress: float,
                state: RunState) -> dict[str, Tensor]:
        return self._bound().loss(student, teacher, progress, state)

    def after_step(self, student: Outputs, losses: dict[str, Tensor], state: RunState) -> None:
        self._bound().after_step(student, losses, state)


def loss_class_name(method: str) -> str:
    """`kd` → `KDLoss`, `dwpose` → `DWPOSELoss`: the registry name of a method's loss module."""
    return f"{method.upper()}Loss"


def _register_losses() -> None:
    if "MethodLoss" in MODELS.module_dict:
        return
    MODELS.register_module(name="MethodLoss", module=MethodLoss)
    for name in [*registry(), *METHODS.aliases()]:  # a renamed method's earlier name keeps its loss module
        cls = type(loss_class_name(name), (MethodLoss,), {"method_name": name, "__doc__": MethodLoss.__doc__})
        MODELS.register_module(name=cls.__name__, module=cls)


_register_losses()


def run_state() -> tuple[float, RunState]:
    """(progress in [0, 1], RunState) from mmengine's message hub (RuntimeInfoHook fills it)."""
    hub = MessageHub.get_current_instance()
    step, steps = int(hub.get_info("iter", 0) or 0), int(hub.get_info("max_iters", 0) or 0)
    epoch, epochs = int(hub.get_info("epoch", 0) or 0), int(hub.get_info("max_epochs", 0) or 0)
    progress = min(step / steps, 1.0) if steps else 0.0
    return progress, RunState(epoch=epoch, epochs=max(epochs, 1), step=step, steps=max(steps, 1))


def _scaled(value: Any, weight: float) -> Any:
    """An mm loss entry (a tensor or a list of per-level tensors) times `weight`."""
    if weight == 1.0:
        return value
    if isinstance(value, list | tuple):
        return [v * weight for v in value]
    return value * weight


class Distiller(BaseModel):
    """Student + frozen teacher + a kdbench method, as one mmengine model.

    Args:
        student: the student's model config (an ordinary mmdet / mmpose `model` dict).
        distill_loss: a kdbench loss module config, e.g. `dict(type="kdbench.KDLoss", temperature=4)`.
        teacher: the teacher's model config; required by methods with an external teacher.
        teacher_ckpt: the teacher's checkpoint (an mmengine checkpoint of the teacher model, or of
            a kdbench distiller, whose `student.` weights are taken); loaded in `init_weights`.
        probe_shape: (B, C, H, W) of the zero batch that sizes the method (its projectors or
            auxiliary heads) when the models are built, before the optimizer exists.
        epochs: training length the method may size itself from (`MethodContext.epochs`).
        data_preprocessor: defaults to the student config's.
    """

    task: ClassVar[str]
    #: The method needs it supplies, as an adapter's `provides`: OUTPUT_NEEDS and ADAPTER_NEEDS
    #: (kdbench.methods.base), never a RUNNER_NEEDS.
    provides: ClassVar[frozenset[str]]
    #: mm loss key → the kdbench task-loss term it is (`Method.task_weight` re-weights those).
    task_terms: ClassVar[dict[str, str]] = {}
    student: Any  # the OpenMMLab models: their parts (backbone, heads) are looked up by name
    teacher: Any

    def __init__(self, student: dict[str, Any], distill_loss: dict[str, Any], teacher: dict[str, Any] | None = None,
                 teacher_ckpt: str | None = None, probe_shape: tuple[int, ...] = (2, 3, 128, 128),
                 epochs: int = 1, data_preprocessor: dict[str, Any] | None = None,
                 init_cfg: dict[str, Any] | None = None) -> None:
        student = copy.deepcopy(dict(student))
        super().__init__(data_preprocessor=data_preprocessor or student.get("data_preprocessor"),
                         init_cfg=init_cfg)
        self.student_cfg, self.teacher_cfg = student, copy.deepcopy(dict(teacher)) if teacher else None
        self.student = self.build_model(student)
        self.distill_loss = self._build_loss(distill_loss)
        kind = self.distill_loss.method_cls.teacher
        if kind == "external" and teacher is None:
            raise UsageError(f"method {self.distill_loss.name!r} needs a teacher: set the distiller's teacher=")
        if kind != "external" and teacher is not None:
            raise UsageError(f"method {self.distill_loss.name!r} has teacher kind {kind!r}; remove teacher=")
        if teacher_ckpt and not Path(teacher_ckpt).is_file():
            raise UsageError(f"teacher_ckpt {teacher_ckpt} is not a file: give the teacher's mmengine checkpoint")
        self.teacher_ckpt = teacher_ckpt
        self.teacher = self.build_model(self.teacher_cfg) if self.teacher_cfg else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        self.distill_loss.bind(self._probe(probe_shape, epochs), self.provides, type(self).__name__)
        self._last: tuple[Outputs, dict[str, Tensor]] | None = None

    @staticmethod
    def _build_loss(cfg: dict[str, Any]) -> MethodLoss:
        kind = str(dict(cfg).get("type", ""))
        if not kind.startswith("kdbench."):
            names = ", ".join(f"kdbench.{n}" for n in sorted(MODELS.module_dict) if n.endswith("Loss"))
            raise UsageError(f"distill_loss type {kind!r} is not a kdbench loss; valid: {names}")
        loss = ROOT_MODELS.build(cfg)
        assert isinstance(loss, MethodLoss)
        return loss

    @abstractmethod
    def build_model(self, cfg: dict[str, Any]) -> Any:
        """A student or teacher from its config, through the task library's registry."""

    @abstractmethod
    def outputs(self, model: Any, inputs: Tensor, samples: list[Any] | None) -> tuple[Outputs, Any]:
        """(Outputs, raw predictions) of `model`; targets and masks come from `samples`, and are None
        when `samples` is None (the sizing probe)."""

    @abstractmethod
    def task_losses(self, raw: Any, samples: list[Any]) -> dict[str, Any]:
        """The student's own mm loss dict from its raw predictions."""

    @torch.no_grad()
    def _probe(self, shape: tuple[int, ...], epochs: int) -> MethodContext:
        models = [m for m in (self.student, self.teacher) if m is not None]
        modes = [m.training for m in models]
        for m in models:
            m.eval()  # no BatchNorm statistics from the zero batch
        x = torch.zeros(*shape)
        s = self.outputs(self.student, x, None)[0].detach()
        t = self.outputs(self.teacher, x, None)[0].detach() if self.teacher is not None else None
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
        return MethodContext(s, t, train_size=0, epochs=epochs)

    def init_weights(self) -> None:
        super().init_weights()
        if self.teacher is not None and self.teacher_ckpt:
            self.teacher.load_state_dict(load_weights(self.teacher_ckpt), strict=True)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: eval mode whatever the runner asks
        return self

    def forward(self, inputs: Tensor, data_samples: list[Any] | None = None, mode: str = "tensor") -> Any:
        if mode == "loss":
            assert data_samples is not None
            return self.loss(inputs, data_samples)
        return self.student(inputs, data_samples, mode=mode)

    def loss(self, inputs: Tensor, data_samples: list[Any]) -> dict[str, Any]:
        progress, state = run_state()
        student, raw = self.outputs(self.student, inputs, data_samples)
        teacher = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher = self.outputs(self.teacher, inputs, data_samples)[0].detach()
        losses: dict[str, Any] = {}
        for key, value in self.task_losses(raw, data_samples).items():
            weight = self.distill_loss.task_weight(self.task_terms.get(key, key), progress) if "loss" in key else 1.0
            losses[key] = _scaled(value, weight)
        terms = self.distill_loss(student, teacher, progress, state)
        for name, value in terms.items():
            losses[f"loss_{name.replace('/', '_')}"] = value  # mmengine sums the keys holding "loss"
        self._last = (student.detach(), {k: v.detach() for k, v in terms.items()})
        return losses

    def train_step(self, data: Any, optim_wrapper: Any) -> dict[str, Tensor]:
        log_vars = super().train_step(data, optim_wrapper)
        if self._last is not None:
            self.distill_loss.after_step(*self._last, run_state()[1])
            self._last = None
        return log_vars  # type: ignore[no-any-return]

    def record_info(self) -> dict[str, Any]:
        """What a kdbench record says about this run's method and models (RecordHook)."""
        teacher = None
        if self.teacher is not None:
            teacher = {"arch": arch_name(self.teacher_cfg or {}), "params": count_params(self.teacher), "flops": None,
                       "checkpoint_sha256": sha256_file(self.teacher_ckpt) if self.teacher_ckpt else None}
            if self.teacher_ckpt:
                teacher["source"] = str(self.teacher_ckpt)
        return {"method": {"name": self.distill_loss.name, "teacher": self.distill_loss.method_cls.teacher,
                           "hparams": self.distill_loss.hparams},
                "export": self.export(), "student_arch": arch_name(self.student_cfg), "teacher": teacher}

    def export(self) -> nn.Module:
        """The trained model a record's student checkpoint holds (the student by default)."""
        return self.student


def _mm_safe_globals() -> list[Any]:
    """The classes an mmengine checkpoint's `meta` holds besides tensors (its message hub's
    history buffers, numpy arrays and scalars) and `getattr` (a history buffer pickles its
    statistics methods as `getattr(HistoryBuffer, "min")`; the weights-only loader calls only
    allowed callables, so what `getattr` returns is never called): nothing else."""
    import numpy as np

    allowed: list[Any] = [np.ndarray, np.dtype, *{type(np.dtype(t)) for t in np.typecodes["All"] if t not in "OM"}]
    try:
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[attr-defined]
    except ImportError:  # numpy 2 moved them
        from numpy._core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    allowed += [_reconstruct, scalar, getattr]
    try:
        from mmengine.logging.history_buffer import HistoryBuffer

        allowed.append(HistoryBuffer)
    except ImportError:
        pass
    return allowed


def load_weights(path: str | Path) -> dict[str, Tensor]:
    """A model state dict from an mmengine checkpoint; from a distiller's, its `student.` part.
    Loaded weights-only (mmengine's history buffers and numpy values allowed besides tensors):
    a checkpoint that would import anything else is refused, not run."""
    from kdbench.runner.checkpoint import CheckpointError, describe

    try:
        with torch.serialization.safe_globals(_mm_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a loadable mmengine checkpoint: {describe(Path(path), e)}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint")
    state: dict[str, Tensor] = ckpt.get("state_dict", ckpt)
    if state and all(k.startswith(("student.", "teacher.", "distill_loss.", "data_preprocessor."))
                     for k in state):
        state = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    return state


def arch_name(cfg: dict[str, Any]) -> str:
    """e.g. "RetinaNet/ResNet-18/FPN/RetinaHead": the model type and its parts' types."""
    parts = [str(cfg.get("type", "?"))]
    for key in ("backbone", "neck", "bbox_head", "head"):
        part = cfg.get(key)
        if isinstance(part, dict):
            name = str(part.get("type", "?"))
            if "depth" in part:
                name += f"-{part['depth']}"
            for size in ("base_channels", "widen_factor", "deepen_factor", "out_channels", "feat_channels"):
                if size in part:
                    name += f"-{size}{part[size]}"
            parts.append(name)
    return "/".join(parts)
