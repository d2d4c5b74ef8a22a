"""Stage ``evaluate``: DeepLabV3+ on the val split against the ground truth.

Outputs ``metrics/segmentation.json`` (mIoU, pixel accuracy, per-class IoU, confusion counts),
``plots/confusion.png`` (row-normalised) and ``plots/segmentation_overlay.png``
(image | ground truth | prediction), all logged to MLflow.
"""

from __future__ import annotations

import mlflow

from pnoc.data.factory import open_dataset
from pnoc.io import write_json
from pnoc.models.deeplab import DeepLabV3Plus
from pnoc.steps import evaluate
from pnoc.viz import confusion_png, mask_grid
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import log_artifacts


def run() -> None:
    with stage("evaluate") as ctx:
        p = ctx.params
        s = p.segmentation
        dataset = open_dataset(p.data, p.data.val_split)
        result = evaluate.run(
            DeepLabV3Plus.from_checkpoint(paths.DEEPLAB_MODEL),
            dataset,
            ctx.runtime(),
            scales=s.tta_scales,
            flip=s.tta_flip,
            crf=s.crf,
            model_name=str(paths.DEEPLAB_MODEL),
        )
        cm = result.confusion
        report = {
            "split": p.data.val_split,
            "images": len(dataset),
            **cm.to_dict(dataset.class_names),
            "confusion": cm.matrix.tolist(),
        }
        write_json(paths.SEGMENTATION_METRICS, report)
        confusion_png(cm.matrix, dataset.class_names, paths.CONFUSION_PLOT)
        mask_grid(
            [r[0] for r in result.shown],
            [r[1] for r in result.shown],
            ["ground truth", "prediction"],
            paths.SEGMENTATION_PLOT,
        )
        mlflow.log_metrics(
            {"val.miou": report["miou"] or 0.0, "val.pixel_acc": report["pixel_acc"] or 0.0}
            | {f"val.iou.{k}": v for k, v in report["iou"].items() if v is not None}
        )
        log_artifacts(paths.SEGMENTATION_METRICS, paths.CONFUSION_PLOT, paths.SEGMENTATION_PLOT)
        print(f"DeepLabV3+ val mIoU: {report['miou']}")


if __name__ == "__main__":
    main(run)
