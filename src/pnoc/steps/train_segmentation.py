"""Stage ``train_segmentation``: DeepLabV3+ trained on the pseudo-masks (cross-entropy with
label smoothing, 255 ignored, SGD with poly LR: backbone × 1, decoder × 10)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnoc.config import SegmentationParams
from pnoc.data.torch_sets import SegmentationSet
from pnoc.data.transforms import segmentation_train_transform
from pnoc.engine import FitResult, Runtime, fit
from pnoc.models.deeplab import DeepLabV3Plus
from pnoc.segmentation.training import SegmentationMethod
from pnoc.steps.training import sgd, train_data


@dataclass
class TrainedSegmenter:
    model: DeepLabV3Plus
    result: FitResult


def run(
    cfg: SegmentationParams,
    dataset: Any,
    mask_dir: str | Path,
    runtime: Runtime,
    *,
    image_size: int,
) -> TrainedSegmenter:
    """Train DeepLabV3+ on ``<mask_dir>/<id>.png`` for every image of ``dataset``."""
    runtime.seed_all()
    transform = segmentation_train_transform(image_size, tuple(cfg.scale_range))
    train_set = SegmentationSet(dataset, transform, mask_dir=mask_dir)
    model = DeepLabV3Plus(
        cfg.backbone,
        len(dataset.class_names),
        weights=cfg.weights,
        output_stride=cfg.output_stride,
    )
    method = SegmentationMethod(model, cfg.label_smoothing)
    optimizers = {"deeplab": sgd(model, cfg)}
    result = fit(method, train_data(train_set, cfg), optimizers, runtime)
    model.eval()
    return TrainedSegmenter(model=model, result=result)
