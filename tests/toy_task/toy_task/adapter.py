"""The toy task's pipeline: data, models, forward, task loss and evaluation (kdbench.adapters.base)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.adapters.base import Adapter, Role
from kdbench.adapters.splits import check_split
from kdbench.outputs import Head, HeadKind, Outputs
from kdbench.protocol import Protocol
from toy_task.metrics import toy_metrics


@dataclass
class Batch:
    x: Tensor  # (B, D)
    y: Tensor  # (B,)
    ids: Tensor  # (B,)


class Logits(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class ToyAdapter(Adapter[Batch, Outputs]):
    """Two classes: N(−1, 1) and N(+1, 1) in each of `dim` dimensions."""

    task = "toy"
    provides = frozenset({"ids"})
    head_kinds: ClassVar[dict[str, HeadKind]] = {"cls": "categorical"}
    evaluation_version = 1

    def __init__(self, protocol: Protocol, data_root: Path | None, device: torch.device) -> None:
        super().__init__(protocol, data_root, device)
        data = protocol.card["data"]
        gen = torch.Generator().manual_seed(int(data["seed"]))
        self.splits = {split: self._draw(int(data[f"n_{split}"]), int(data["dim"]), gen)
                       for split in ("train", "val", "test")}

    @staticmethod
    def _draw(n: int, dim: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        y = torch.arange(n) % 2
        return (2.0 * y[:, None] - 1.0) + torch.randn(n, dim, generator=gen), y

    @property
    def train_size(self) -> int:
        return len(self.splits["train"][1])

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        x, y = self.splits["train"]
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            yield Batch(x[idx].to(self.device), y[idx].to(self.device), idx.to(self.device))

    def build_model(self, role: Role, needs: frozenset[str]) -> nn.Module:
        return Logits(int(self.protocol.card["data"]["dim"]), int(self.protocol.card[role]["hidden"]))

    def forward(self, model: nn.Module, batch: Batch) -> Outputs:
        return Outputs(heads={"cls": Head(model(batch.x), batch.y, kind="categorical")}, ids=batch.ids)

    def task_loss(self, outputs: Outputs) -> dict[str, Tensor]:
        head = outputs.heads["cls"]
        assert head.target is not None
        return {"cls": F.cross_entropy(head.logits, head.target)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        x, y = self.splits[check_split(split, tuple(self.splits), self.task)]
        was_training = model.training
        model.eval()
        logits = model(x.to(self.device)).float().cpu()
        model.train(was_training)
        return toy_metrics(logits.numpy(), y.numpy())

    def example_input(self) -> Any:
        return self.splits["test"][0][:1].to(self.device)
