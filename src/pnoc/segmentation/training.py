"""DeepLabV3+ on pseudo-masks, on the shared engine: cross-entropy with label smoothing,
255 ignored, SGD momentum 0.9 with poly LR (backbone × 1, decoder × 10)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pnoc.config import SegmentationParams
from pnoc.data.transforms import segmentation_train_transform
from pnoc.data.voc import SegmentationSet, collate
from pnoc.engine import CheckpointConfig, FitResult, build_sgd, fit
from pnoc.models.deeplab import DeepLabV3Plus

IGNORE = 255


class SegmentationMethod:
    """Engine method: one forward, ``CE(logits, mask)`` with smoothing, pixels at 255 ignored."""

    name = "deeplab"

    def __init__(self, model: DeepLabV3Plus, label_smoothing: float = 0.0) -> None:
        self.model = model
        self.label_smoothing = label_smoothing

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"deeplab": self.model}

    def train_step(self, batch: dict[str, Any], ctx: Any) -> dict[str, float]:
        target = batch["mask"]
        with ctx.autocast():
            logits = self.model(batch["image"])
        if bool((target == IGNORE).all()):
            loss = logits.float().sum() * 0.0  # nothing labelled in this batch
        else:
            loss = F.cross_entropy(
                logits.float(),
                target,
                ignore_index=IGNORE,
                label_smoothing=self.label_smoothing,
            )
        ctx.update("deeplab", loss, {"ce": loss})
        return {"loss": float(loss.detach())}


def train_segmentation(
    cfg: SegmentationParams,
    dataset,
    mask_dir: str | Path,
    *,
    image_size: int,
    seed: int,
    device: str = "cpu",
    amp: bool = False,
    num_workers: int = 0,
    checkpoint: CheckpointConfig | None = None,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
) -> tuple[DeepLabV3Plus, FitResult]:
    """Train DeepLabV3+ on ``<mask_dir>/<id>.png`` for every image of ``dataset``."""
    transform = segmentation_train_transform(image_size, tuple(cfg.scale_range))
    train_set = SegmentationSet(dataset, transform, mask_dir=mask_dir)
    model = DeepLabV3Plus(
        cfg.backbone,
        len(dataset.class_names),
        weights=cfg.weights,
        output_stride=cfg.output_stride,
    )
    method = SegmentationMethod(model, cfg.label_smoothing)
    optimizer = build_sgd(model.param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    result = fit(
        method,
        train_set,
        optimizers={"deeplab": optimizer},
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        seed=seed,
        checkpoint=checkpoint,
        device=device,
        amp=amp,
        num_workers=num_workers,
        collate_fn=collate,
        callbacks=callbacks,
        progress=progress,
        max_steps_per_epoch=cfg.max_steps_per_epoch,
    )
    model.eval()
    return model, result
