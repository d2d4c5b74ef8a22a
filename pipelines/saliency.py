"""Stage ``saliency``: C²AM-H saliency maps for every split, and their quality.

Outputs ``outputs/saliency/<id>.png`` (8-bit, value = 255 · saliency), ``metrics/saliency.json``
(per split: fg/bg IoU and their mean against the binarised ground truth, saliency ≥
``saliency.threshold`` counted as foreground, 255 ignored; and the best mean IoU over the
thresholds 0.05, 0.10, …, 0.95 with the threshold that gives it, as the authors report saliency)
and an overlay grid.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch
from tqdm import tqdm

from pnoc.data.factory import open_dataset
from pnoc.data.transforms import eval_transform
from pnoc.io import atomic_path, write_json
from pnoc.metrics import iou_from_confusion
from pnoc.models.ccam import CCAMNet
from pnoc.saliency.inference import (
    predict_saliency,
    saliency_confusion,
    saliency_overlay_grid,
    saliency_path,
    saliency_sweep_confusion,
    save_saliency_png,
)
from pnoc_pipelines.common import main, stage

MODEL = Path("models/ccam.pt")
OUT = Path("outputs/saliency")
METRICS = Path("metrics/saliency.json")
GRID = Path("plots/saliency_overlay.png")
SWEEP = np.round(np.arange(1, 20) * 0.05, 2)  # 0.05 … 0.95


def run() -> None:
    with stage("saliency", ["base", "data", "cams.splits", "saliency"]) as ctx:
        p = ctx.params
        model = CCAMNet.from_checkpoint(MODEL).to(ctx.device).eval()
        transform = eval_transform()
        report: dict = {"threshold": p.saliency.threshold}
        shown: tuple[list, list] = ([], [])
        with atomic_path(OUT) as tmp:
            tmp.mkdir()
            for split in p.cams.splits:
                dataset = open_dataset(p.data, split)
                counts = np.zeros((2, 2), dtype=np.int64)
                sweep = np.zeros((len(SWEEP), 2, 2), dtype=np.int64)
                for image_id in tqdm(dataset.ids, desc=split, disable=not p.base.progress):
                    image = dataset.load_image(image_id)
                    x, _ = transform(image, None, np.random.default_rng(0))
                    sal = predict_saliency(
                        model, torch.as_tensor(x).to(ctx.device), flip=p.saliency.flip
                    )
                    save_saliency_png(saliency_path(tmp, image_id), sal)
                    gt = dataset.load_mask(image_id)
                    if gt is not None:
                        counts += saliency_confusion(sal, gt, p.saliency.threshold)
                        sweep += saliency_sweep_confusion(sal, gt, SWEEP)
                    if split == p.cams.eval_split and len(shown[0]) < 6:
                        shown[0].append(image)
                        shown[1].append(sal)
                iou = iou_from_confusion(counts)
                curve = [float(np.nanmean(iou_from_confusion(c))) for c in sweep]
                best = int(np.nanargmax(curve)) if counts.sum() else 0
                report[split] = {
                    "miou": float(np.nanmean(iou)) if counts.sum() else None,
                    "iou": {"background": float(iou[0]), "foreground": float(iou[1])},
                    "best_miou": curve[best] if counts.sum() else None,
                    "best_threshold": float(SWEEP[best]) if counts.sum() else None,
                    "images": len(dataset),
                }
        report["miou"] = report[p.cams.eval_split]["miou"]
        report["best_miou"] = report[p.cams.eval_split]["best_miou"]
        report["best_threshold"] = report[p.cams.eval_split]["best_threshold"]
        write_json(METRICS, report)
        saliency_overlay_grid(shown[0], shown[1], GRID)
        mlflow.log_metrics(
            {
                f"{s}.{k}": report[s][k]
                for s in p.cams.splits
                for k in ("miou", "best_miou", "best_threshold")
                if report[s][k] is not None
            }
        )
        for artifact in (METRICS, GRID):
            mlflow.log_artifact(str(artifact))
        print(
            f"saliency mIoU ({p.cams.eval_split}): {report['miou']} at {p.saliency.threshold}, "
            f"best {report['best_miou']} at {report['best_threshold']}"
        )


if __name__ == "__main__":
    main(run)
