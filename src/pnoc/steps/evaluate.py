"""Stage ``evaluate``: DeepLabV3+ on a labelled split, with test-time scales and flips (and an
optional dense CRF), against the ground truth."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pnoc.data.transforms import eval_transform
from pnoc.engine import Runtime
from pnoc.engine.inference import (
    DEFAULT_BATCH_SIZE,
    gather_in_order,
    inference_loop,
    per_image,
    sum_over_ranks,
)
from pnoc.errors import DatasetError
from pnoc.metrics import ConfusionMatrix
from pnoc.models.deeplab import DeepLabV3Plus
from pnoc.segmentation.inference import predict_probs

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
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Evaluation:
    """Segment every image of ``dataset`` and count predictions against its ground truth.

    model_name: how errors name the model (e.g. its checkpoint's path). batch_size: images per
    forward pass. Under several workers each rank segments its share; the counts are summed
    and the shown images gathered over the ranks, so every rank returns what one worker
    computes (:mod:`pnoc.engine.inference`).
    """
    if model.num_classes != len(dataset.class_names):
        raise DatasetError(
            dataset.root,
            f"{len(dataset.class_names)} classes, but {model_name} predicts {model.num_classes}",
        )
    device = runtime.torch_device
    model = model.to(device).eval()
    confusion = ConfusionMatrix(len(dataset.class_names))
    shown: list[tuple[int, tuple[np.ndarray, list[np.ndarray]]]] = []
    load = functools.partial(_load_item, dataset)
    with inference_loop(runtime, load, len(dataset), "evaluate", batch_size=batch_size) as groups:
        for group in groups:
            probs = per_image(
                lambda x: predict_probs(model, x, scales, flip).cpu(),
                group,
                device,
                copies=2 if flip else 1,
            )
            for item, p in zip(group, probs, strict=True):
                image, gt = item["image"], item["gt"]
                pred = p.argmax(0).numpy().astype(np.uint8)
                if crf:
                    from pnoc.refine.crf import dense_crf

                    pred = dense_crf(image, p.numpy()).argmax(0).astype("uint8")
                confusion.update(pred, gt)
                if item["index"] < SHOWN:
                    shown.append((item["index"], (image, [gt, pred])))
    out = Evaluation(ConfusionMatrix(len(dataset.class_names)))
    out.confusion.add(sum_over_ranks(confusion.matrix))
    out.shown = gather_in_order(shown)
    return out


def _load_item(dataset: Any, i: int) -> dict[str, Any]:
    """Image ``i`` of ``dataset`` (normalised too) and its ground truth, which it must have
    (runs in a loader worker)."""
    image_id = dataset.ids[i]
    image = dataset.load_image(image_id)
    gt = dataset.load_mask(image_id)
    if gt is None:
        raise DatasetError(dataset.mask_path(image_id), "no ground truth to evaluate")
    x, _ = eval_transform()(image, None, np.random.default_rng(0))
    return {"index": i, "id": image_id, "x": torch.as_tensor(x), "image": image, "gt": gt}
