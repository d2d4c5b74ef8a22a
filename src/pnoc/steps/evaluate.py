"""Stage ``evaluate``: DeepLabV3+ on a labelled split, with test-time scales and flips (and an
optional dense CRF), against the ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pnoc.engine import Runtime
from pnoc.errors import DatasetError
from pnoc.metrics import ConfusionMatrix
from pnoc.models.deeplab import DeepLabV3Plus
from pnoc.segmentation.inference import segment_image

SHOWN = 6  # images kept for the overlay grid


@dataclass
class Evaluation:
    """confusion: counts over the split; shown: up to six (image, [ground truth, prediction])."""

    confusion: ConfusionMatrix
    shown: list[tuple[np.ndarray, list[np.ndarray]]] = field(default_factory=list)


def run(
    model: DeepLabV3Plus,
    dataset: Any,
    runtime: Runtime,
    *,
    scales: Sequence[float],
    flip: bool,
    crf: bool,
    model_name: str = "the model",
) -> Evaluation:
    """Segment every image of ``dataset`` and count predictions against its ground truth.

    model_name: how errors name the model (e.g. its checkpoint's path).
    """
    if model.num_classes != len(dataset.class_names):
        raise DatasetError(
            dataset.root,
            f"{len(dataset.class_names)} classes, but {model_name} predicts {model.num_classes}",
        )
    device = runtime.torch_device
    model = model.to(device).eval()
    out = Evaluation(ConfusionMatrix(len(dataset.class_names)))
    for image_id in runtime.track(dataset.ids, "evaluate"):
        image = dataset.load_image(image_id)
        gt = dataset.load_mask(image_id)
        if gt is None:
            raise DatasetError(dataset.mask_path(image_id), "no ground truth to evaluate")
        pred, probs = segment_image(model, image, scales=scales, flip=flip, device=device)
        if crf:
            from pnoc.refine.crf import dense_crf

            pred = dense_crf(image, probs).argmax(0).astype("uint8")
        out.confusion.update(pred, gt)
        if len(out.shown) < SHOWN:
            out.shown.append((image, [gt, pred]))
    return out
