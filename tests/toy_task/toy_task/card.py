"""The toy task's typed card: its data and its two models, on top of the shared sections."""

from __future__ import annotations

from dataclasses import dataclass

from kdbench.cards.sections import Card
from kdbench.cards.tasks import TeacherOf
from kdbench.cards.typed import bounded


@dataclass(frozen=True, kw_only=True)
class ToyData:
    n_train: int = bounded(64, ge=2)
    n_val: int = bounded(32, ge=2)
    n_test: int = bounded(32, ge=2)
    dim: int = bounded(4, ge=1)
    seed: int = bounded(0, ge=0)


@dataclass(frozen=True, kw_only=True)
class ToyModel:
    arch: str = "mlp"
    hidden: int = bounded(8, ge=1)


@dataclass(frozen=True, kw_only=True)
class ToyTeacher(ToyModel, TeacherOf):
    pass


@dataclass(frozen=True, kw_only=True)
class ToyCard(Card):
    data: ToyData
    student: ToyModel
    teacher: ToyTeacher
