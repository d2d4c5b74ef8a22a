"""A minimal stand-in for the engine's TrainContext, recording gradients at each update."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn


def has_grad(module: nn.Module) -> bool:
    """True when any parameter of ``module`` holds a non-zero gradient."""
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())


@dataclass
class Update:
    optimizer: str
    loss: float
    terms: dict[str, float]
    grads_before: dict[str, bool]
    grads_after: dict[str, bool]


@dataclass
class FakeContext:
    modules: dict[str, nn.Module]
    progress: float = 0.5
    lr: float = 0.01
    device: torch.device = torch.device("cpu")
    amp: bool = False
    epoch: int = 0
    step: int = 0
    total_steps: int = 10
    updates: list[Update] = field(default_factory=list)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, module in self.modules.items():
            self.optimizers[name] = torch.optim.SGD(module.parameters(), lr=self.lr)

    def autocast(self) -> Any:
        return contextlib.nullcontext()

    def update(self, optimizer: str, loss: Tensor, terms: dict[str, Tensor] | None = None) -> None:
        before = {n: has_grad(m) for n, m in self.modules.items()}
        loss.backward()
        after = {n: has_grad(m) for n, m in self.modules.items()}
        self.updates.append(
            Update(
                optimizer,
                float(loss.detach()),
                {k: float(v.detach()) for k, v in (terms or {}).items()},
                before,
                after,
            )
        )
        opt = self.optimizers[optimizer]
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.step += 1


@pytest.fixture
def fake_context():
    return FakeContext
