"""Stage ``evaluate``: DeepLabV3+ on the val split against the ground truth.

Outputs ``metrics/segmentation.json`` (split, mIoU, pixel accuracy),
``reports/segmentation_details.json`` (adds the images, per-class IoU and the confusion counts,
rows = ground truth), ``plots/confusion.png`` (row-normalised) and
``plots/segmentation_overlay.png`` (image | ground truth | prediction), all logged to MLflow.

Under several workers (``base.workers``) every rank segments its share of the images; rank 0
alone writes the metrics, report, plots and MLflow entries.
"""

from __future__ import annotations

from typing import Any

import mlflow

from pnoc.data.factory import open_dataset
from pnoc.io import write_json
from pnoc.models.deeplab import DeepLabV3Plus
from pnoc.steps import evaluate
from pnoc.viz import confusion_png, mask_grid
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import log_artifacts, log_headline, log_pictures


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """``metrics/segmentation.json``: the split, mIoU and pixel accuracy (``register.metric``
    names one of these keys)."""
    return {k: report[k] for k in ("split", "miou", "pixel_acc")}


def run() -> None:
    with stage("evaluate") as ctx:
        p = ctx.params
        s = p.segmentation
        split = p.data.val_split
        dataset = open_dataset(p.data, split)
        result = evaluate.run(
            DeepLabV3Plus.from_checkpoint(paths.DEEPLAB_MODEL),
            dataset,
            ctx.runtime(),
            scales=s.tta_scales,
            flip=s.tta_flip,
            crf=s.crf,
            model_name=str(paths.DEEPLAB_MODEL),
        )
        if not ctx.world.is_main:
            return
        cm = result.confusion
        report = {
            "split": split,
            "images": len(dataset),
            **cm.to_dict(dataset.class_names),
            "classes": list(dataset.class_names),
            "confusion": cm.matrix.tolist(),
        }
        write_json(paths.SEGMENTATION_METRICS, headline(report))
        write_json(paths.SEGMENTATION_REPORT, report)
        confusion_png(cm.matrix, dataset.class_names, paths.CONFUSION_PLOT)
        mask_grid(
            [r[0] for r in result.shown],
            [r[1] for r in result.shown],
            ["ground truth", "prediction"],
            paths.SEGMENTATION_PLOT,
            class_names=dataset.class_names,
        )
        log_headline(
            {
                f"deeplab_miou_{split}": report["miou"],
                f"deeplab_pixel_acc_{split}": report["pixel_acc"],
            }
        )
        mlflow.log_metrics(
            {f"deeplab_iou_{split}/{k}": v for k, v in report["iou"].items() if v is not None}
        )
        log_artifacts(paths.SEGMENTATION_METRICS, paths.SEGMENTATION_REPORT)
        log_pictures(paths.CONFUSION_PLOT, paths.SEGMENTATION_PLOT)
        print(f"DeepLabV3+ {split} mIoU: {report['miou']}")


if __name__ == "__main__":
    main(run, workers=True)
