"""What the training steps share: a section's batches and epochs, its SGD, its history."""

from __future__ import annotations

from typing import Any

import torch

from pnoc.data.torch_sets import collate
from pnoc.engine import FitResult, TrainData, build_sgd


def train_data(dataset: Any, cfg: Any) -> TrainData:
    """``dataset`` batched by the readers' collate, for a params section's ``epochs``,
    ``batch_size`` and ``max_steps_per_epoch``."""
    return TrainData(
        dataset,
        cfg.epochs,
        cfg.batch_size,
        collate_fn=collate,
        max_steps_per_epoch=cfg.max_steps_per_epoch,
    )


def sgd(model: Any, cfg: Any, *, lr: float | None = None) -> torch.optim.SGD:
    """SGD over ``model.param_groups()`` at a section's ``lr`` (or ``lr``), weight decay,
    ``momentum`` and ``nesterov``."""
    return build_sgd(
        model.param_groups(),
        lr=cfg.lr if lr is None else lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )


def history_rows(result: FitResult) -> list[dict[str, float]]:
    """The per-epoch means of a run's training metrics, one row per epoch numbered from 1 in
    ``epoch`` (the x of the stages' history plots)."""
    return [{"epoch": epoch, **means} for epoch, means in enumerate(result.history, start=1)]
