"""Stage ``evaluate``: DeepLabV3+ on the val split against the ground truth.

Outputs ``metrics/segmentation.json`` (mIoU, pixel accuracy, per-class IoU, confusion counts),
``plots/confusion.png`` (row-normalised) and ``plots/segmentation_overlay.png``
(image | ground truth | prediction), all logged to MLflow.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from tqdm import tqdm

from pnoc.data.factory import open_dataset
from pnoc.errors import DatasetError
from pnoc.io import write_json
from pnoc.metrics import ConfusionMatrix
from pnoc.models.deeplab import DeepLabV3Plus
from pnoc.segmentation.inference import segment_image
from pnoc.viz import confusion_png, mask_grid
from pnoc_pipelines.common import main, stage

MODEL = Path("models/deeplab.pt")
METRICS = Path("metrics/segmentation.json")
CONFUSION = Path("plots/confusion.png")
GRID = Path("plots/segmentation_overlay.png")


def run() -> None:
    with stage(
        "evaluate",
        ["base", "data", "segmentation.tta_scales", "segmentation.tta_flip", "segmentation.crf"],
    ) as ctx:
        p = ctx.params
        s = p.segmentation
        dataset = open_dataset(p.data, p.data.val_split)
        model = DeepLabV3Plus.from_checkpoint(MODEL).to(ctx.device).eval()
        if model.num_classes != len(dataset.class_names):
            raise DatasetError(
                dataset.root,
                f"{len(dataset.class_names)} classes, but {MODEL} predicts {model.num_classes}",
            )
        cm = ConfusionMatrix(len(dataset.class_names))
        shown = []
        for image_id in tqdm(dataset.ids, desc="evaluate", disable=not p.base.progress):
            image = dataset.load_image(image_id)
            gt = dataset.load_mask(image_id)
            if gt is None:
                raise DatasetError(dataset.mask_path(image_id), "no ground truth to evaluate")
            pred, probs = segment_image(
                model, image, scales=s.tta_scales, flip=s.tta_flip, device=ctx.device
            )
            if s.crf:
                from pnoc.refine.crf import dense_crf

                pred = dense_crf(image, probs).argmax(0).astype("uint8")
            cm.update(pred, gt)
            if len(shown) < 6:
                shown.append((image, [gt, pred]))
        report = {
            "split": p.data.val_split,
            "images": len(dataset),
            **cm.to_dict(dataset.class_names),
            "confusion": cm.matrix.tolist(),
        }
        write_json(METRICS, report)
        confusion_png(cm.matrix, dataset.class_names, CONFUSION)
        mask_grid(
            [r[0] for r in shown], [r[1] for r in shown], ["ground truth", "prediction"], GRID
        )
        mlflow.log_metrics(
            {"val.miou": report["miou"] or 0.0, "val.pixel_acc": report["pixel_acc"] or 0.0}
            | {f"val.iou.{k}": v for k, v in report["iou"].items() if v is not None}
        )
        for artifact in (METRICS, CONFUSION, GRID):
            mlflow.log_artifact(str(artifact))
        print(f"DeepLabV3+ val mIoU: {report['miou']}")


if __name__ == "__main__":
    main(run)
