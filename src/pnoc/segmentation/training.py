"""DeepLabV3+'s engine Method: cross-entropy with label smoothing, the ignore label left out.
The recipe (data, SGD, poly LR) is the ``train_segmentation`` step."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pnoc.config import SegmentationParams
from pnoc.data.base import IGNORE_INDEX
from pnoc.models.deeplab import DeepLabV3Plus

SMOOTHING = SegmentationParams().label_smoothing  # params.yaml's (pnoc.config's defaults)


class SegmentationMethod:
    """Engine method: one forward, ``CE(logits, mask)`` with smoothing, pixels at 255 ignored."""

    name = "deeplab"

    def __init__(
        self, model: DeepLabV3Plus, label_smoothing: float = SegmentationParams().label_smoothing
    ) -> None:
        self.model = model
        self._net: torch.nn.Module = model
        self.label_smoothing = label_smoothing

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"deeplab": self.model}

    def use_modules(self, modules: dict[str, torch.nn.Module]) -> None:
        """Where ``train_step``'s forward passes go: under data parallelism ``fit`` hands
        the modules' ``DistributedDataParallel`` wrappers here, and the modules again after."""
        self._net = modules["deeplab"]

    def train_step(self, batch: dict[str, Any], ctx: Any) -> dict[str, float]:
        target = batch["mask"]
        with ctx.autocast():
            logits = self._net(batch["image"])
        if bool((target == IGNORE_INDEX).all()):
            loss = logits.float().sum() * 0.0  # nothing labelled in this batch
        else:
            loss = F.cross_entropy(
                logits.float(),
                target,
                ignore_index=IGNORE_INDEX,
                label_smoothing=self.label_smoothing,
            )
        ctx.update("deeplab", loss, {"ce": loss})
        return {"loss": float(loss.detach())}
