"""The `online_teacher` runner service (kdbench.methods.base.RUNNER_NEEDS; docs/architecture.md, Runner):
a second trainable model in every step of the student's training, with its own optimiser and schedule,
checkpointed with the student and named in the record as trained online.

A method of teacher kind "online" (BD-KD's online variant, `bdkd_online`) gets, instead of the card's
cached teacher, the card's teacher architecture built fresh by the adapter under
`online_teacher_seed(seed)`; no cached teacher is looked up, trained or loaded. `train.fit` wraps it in an
`OnlineTeacher` and, on every batch, runs it in training mode after the student, computes its terms
(its task loss at weight 1, named `teacher/task/<term>`, and the method's `teacher_loss`, named
`teacher/<term>`) and steps it: zero its gradients, back-propagate the sum of its terms into it alone,
average its gradients over ranks, clip them at the card's `grad_clip` and step its optimiser and schedule.
The student's terms see the teacher's outputs detached and the teacher's terms see the student's
detached, so each objective trains only its own model. Optimiser, schedule and clipping are the card's
`train` section, as the student's (the two models take the same steps on the same batches); the card's
`train.ema` averages the student only, and the teacher's own `teacher.train` section, which trains the
card's offline teacher, does not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdbench.adapters.base import Adapter
from kdbench.methods.base import Method, RunState
from kdbench.outputs import Outputs
from kdbench.runner import checkpoint
from kdbench.runner.distributed import World
from kdbench.runner.env import count_flops, count_params
from kdbench.runner.optim import build_optimizer, build_schedule

#: The record's `teacher.source` of a teacher trained online (beside "trained by kdbench" and "given").
ONLINE_SOURCE = "trained online"
#: The file the online teacher's final weights are saved to, beside the student's `student.pt`.
ONLINE_FILE = "online-teacher.pt"


def online_teacher_seed(seed: int) -> int:
    """The seed the online teacher of a run with seed `seed` is initialised under: derived from the
    run's seed alone (so a rerun builds the same teacher), within [0, 2**32) as the record's seeds
    are, and not the run's own seed, so the teacher's initialisation is not the student's stream."""
    return (seed * 1_000_037 + 52_361) % 2**32


def build_online_teacher(adapter: Adapter, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """The card's teacher architecture, built fresh under `online_teacher_seed(seed)` and trainable, and
    its record entry so far (arch, params, FLOPs, source "trained online", the seed; no checkpoint
    until `finish_online_teacher`)."""
    init = online_teacher_seed(seed)
    torch.manual_seed(init)
    model = adapter.build_model("teacher", frozenset()).to(adapter.device)
    info: dict[str, Any] = {"arch": adapter.arch_name("teacher"), "params": count_params(model),
                            "flops": count_flops(model, adapter.example_input()), "checkpoint_sha256": None,
                            "source": ONLINE_SOURCE, "seed": init}
    return model, info


def finish_online_teacher(adapter: Adapter, model: nn.Module, info: dict[str, Any],
                          folder: Path, save: bool = True) -> dict[str, Any]:
    """The record's teacher entry once training ended: the final weights saved as `online-teacher.pt`
    in `folder` (their sha256; rank 0 only, `save`) and scored on val and test (its `metrics`)."""
    model.eval()
    sha = checkpoint.save(folder / ONLINE_FILE, {"arch": info["arch"], "state_dict": model.state_dict()}) \
        if save else None
    metrics = {"val": adapter.evaluate(model, "val"), "test": adapter.evaluate(model, "test")}
    return {**info, "checkpoint_sha256": sha, "metrics": metrics}


class OnlineTeacher:
    """The online teacher's training state: the model, its optimiser and its schedule, which `fit`
    saves in every checkpoint (`state_dict`) and restores on resume (`load_state_dict`)."""

    def __init__(self, model: nn.Module, train: dict[str, Any], steps_per_epoch: int, epochs: int) -> None:
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(train["optimizer"], self.params)
        self.schedule = build_schedule(self.optimizer, train.get("schedule", {}), steps_per_epoch, epochs)
        self.clip = train.get("grad_clip")

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])

    def terms(self, adapter: Adapter, method: Method, student: Outputs, raw: Any, aligned: Outputs,
              state: RunState) -> dict[str, Tensor]:
        """This step's teacher terms: its task loss on its own outputs (`raw`, weight 1) and the method's
        `teacher_loss` on the student's outputs, detached, and its own aligned to them (`aligned`)."""
        progress = state.step / max(state.steps, 1)
        terms = {f"teacher/task/{name}": value for name, value in adapter.task_loss(raw).items()}
        terms.update({f"teacher/{name}": value
                      for name, value in method.teacher_loss(student.detach(), aligned, progress, state).items()})
        if not terms:
            raise RuntimeError("no teacher terms: the online teacher has nothing to optimise")
        return terms

    def step(self, loss: Tensor, world: World) -> None:
        """Back-propagate the teacher's loss into the teacher alone and take its optimiser step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        world.average_gradients(self.params)
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, float(self.clip))
        self.optimizer.step()
        self.schedule.step()
