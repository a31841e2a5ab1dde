"""Optimisers and schedules come from their registries (kdbench.runner.optim), with the card's
values, and the schedule factors follow their formulas (hand-computed values)."""

from __future__ import annotations

import math
import typing
from typing import Any

import pytest
import torch

from kdbench.cards.sections import Optimizer, Schedule
from kdbench.errors import UsageError
from kdbench.runner.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule, lr_factor


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(3))]


def test_a_card_can_name_exactly_the_registered_optimizers_and_schedules() -> None:
    hints = typing.get_type_hints(Optimizer), typing.get_type_hints(Schedule)
    assert sorted(typing.get_args(hints[0]["name"])) == OPTIMIZERS.names() == ["adam", "adamw", "sgd"]
    assert sorted(typing.get_args(hints[1]["name"])) == SCHEDULES.names() == ["constant", "cosine", "multistep"]


@pytest.mark.parametrize(("cfg", "cls", "expect"), [
    ({"name": "sgd", "lr": 0.1, "momentum": 0.5, "weight_decay": 1e-4, "nesterov": True}, torch.optim.SGD,
     {"lr": 0.1, "momentum": 0.5, "weight_decay": 1e-4, "nesterov": True}),
    ({"lr": 0.2}, torch.optim.SGD, {"lr": 0.2, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False}),
    ({"name": "adam", "lr": 1e-3, "betas": [0.8, 0.99]}, torch.optim.Adam,
     {"lr": 1e-3, "weight_decay": 0.0, "betas": (0.8, 0.99), "foreach": True}),
    ({"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}, torch.optim.AdamW,
     {"lr": 1e-3, "weight_decay": 0.05, "betas": (0.9, 0.999), "foreach": True}),
])
def test_each_optimizer_gets_the_cards_values(cfg: dict[str, Any], cls: type, expect: dict[str, Any]) -> None:
    opt = build_optimizer(cfg, _params())
    assert type(opt) is cls
    assert {k: opt.defaults[k] for k in expect} == expect


def test_schedule_factors_follow_their_formulas() -> None:
    # 4 steps per epoch, 5 epochs: 20 steps; warm-up 1 epoch = 4 steps: factors 1/4, 2/4, 3/4, 4/4
    warm = {"warmup_epochs": 1}
    for name in ("cosine", "multistep", "constant"):
        assert [lr_factor({"name": name, **warm}, s, 4, 5) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # cosine after warm-up: floor + (1 − floor)·½(1 + cos(π·(s − 4)/16)); at s = 12 half-way: ½(1 + 0.1) = 0.55
    cosine = {"name": "cosine", "min_factor": 0.1, **warm}
    assert lr_factor(cosine, 4, 4, 5) == pytest.approx(1.0)
    assert lr_factor(cosine, 12, 4, 5) == pytest.approx(0.55)
    assert lr_factor(cosine, 20, 4, 5) == pytest.approx(0.1) == lr_factor(cosine, 40, 4, 5)
    assert lr_factor({}, 5, 4, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 20)))  # default: cosine
    # multistep: ×0.5 from epoch 2 (step 8) and again from epoch 3 (step 12)
    multi = {"name": "multistep", "milestones": [2, 3], "gamma": 0.5}
    assert [lr_factor(multi, s, 4, 5) for s in (7, 8, 11, 12, 19)] == [1.0, 0.5, 0.5, 0.25, 0.25]
    assert lr_factor({"name": "constant"}, 17, 4, 5) == 1.0


def test_an_unknown_name_is_one_line_before_training() -> None:
    with pytest.raises(UsageError, match=r"^unknown optimizer 'lamb'; valid: adam, adamw, sgd$"):
        build_optimizer({"name": "lamb", "lr": 1.0}, _params())
    opt = build_optimizer({"lr": 0.1}, _params())
    with pytest.raises(UsageError, match=r"^unknown schedule 'poly'; valid: constant, cosine, multistep$"):
        build_schedule(opt, {"name": "poly", "warmup_epochs": 2}, 4, 5)  # refused during warm-up too
