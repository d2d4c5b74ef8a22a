"""Stage ``pseudo_masks``: random walk of the CAMs over AffinityNet's affinities.

Outputs ``outputs/pseudo_masks/<id>.png`` (VOC palette) for ``pseudo_masks.split``;
``metrics/pseudo_masks.json``: their mIoU against the ground truth (as WSSS papers report on
train; ``metrics/cams.json`` holds the CAMs' best mIoU on the same split) and the images that
fell back to the CAM argmax; ``reports/pseudo_masks_details.json``: per-class IoU, the CAMs'
best mIoU and the gain over it, the CAM argmax's mIoU at the same background threshold and the
fallback image ids; and an overlay grid (image | ground truth | CAM argmax | pseudo-mask). With
``pseudo_masks.background: saliency`` the C²AM-H saliency (``outputs/saliency``) below
``saliency.threshold`` is background in the pseudo-masks and in their fallback alike.

Under several workers (``base.workers``) every rank writes the masks of its share of the images
into the same folder, published by rank 0 once all are done; rank 0 alone writes the metrics,
report, plot and MLflow entries.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow

from pnoc.data.factory import open_dataset
from pnoc.engine.distributed import shared_atomic_dir
from pnoc.io import write_json
from pnoc.models.affinity import AffinityNet
from pnoc.steps import pseudo_masks
from pnoc.viz import mask_grid
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import log_artifacts, log_headline, log_pictures


def cam_miou(split: str) -> float | None:
    """The CAMs' best mIoU on ``split`` from ``metrics/cams.json`` (None: not computed)."""
    if not paths.CAMS_METRICS.exists():
        return None
    report = json.loads(paths.CAMS_METRICS.read_text())
    return (report.get(split) or {}).get("miou")


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """``metrics/pseudo_masks.json``: the split, the pseudo-masks' mIoU, the fallback images."""
    return {k: report[k] for k in ("split", "miou", "fallback_images")}


def run() -> None:
    with stage("pseudo_masks") as ctx:
        p = ctx.params
        cfg = p.pseudo_masks
        dataset = open_dataset(p.data, cfg.split)
        model = AffinityNet.from_checkpoint(
            paths.AFFINITY_MODEL, expected_backbone=p.affinity.backbone
        )
        with shared_atomic_dir(paths.PSEUDO_MASKS) as tmp:
            result = pseudo_masks.run(
                model,
                dataset,
                tmp,
                ctx.runtime(),
                cfg=cfg,
                cam_dir=paths.CAMS,
                label_dir=paths.AFFINITY_LABELS,
                saliency_dir=paths.SALIENCY,
                saliency_threshold=p.saliency.threshold,
            )
        if not ctx.world.is_main:
            return
        cams_best = cam_miou(cfg.split)
        report = {"split": cfg.split, **result.report, "cam_best_miou": cams_best}
        if report["miou"] is not None and cams_best is not None:
            report["gain_over_cams"] = report["miou"] - cams_best
        write_json(paths.PSEUDO_MASKS_METRICS, headline(report))
        write_json(paths.PSEUDO_MASKS_REPORT, report)
        mask_grid(
            [s[0] for s in result.shown],
            [s[1] for s in result.shown],
            ["ground truth", "CAM", "pseudo-mask"],
            paths.PSEUDO_MASKS_PLOT,
            class_names=dataset.class_names,
        )
        split = cfg.split
        log_headline(
            {
                f"pseudo_mask_miou_{split}": report["miou"],
                "pseudo_mask_fallback_images": report["fallback_images"],
            }
        )
        detail = {
            f"pseudo_mask_gain_over_cams_{split}": report.get("gain_over_cams"),
            f"pseudo_mask_cam_argmax_miou_{split}": report["cam_miou_at_bg_threshold"],
        } | {f"pseudo_mask_iou_{split}/{k}": v for k, v in report["per_class"]["iou"].items()}
        mlflow.log_metrics({k: float(v) for k, v in detail.items() if v is not None})
        log_artifacts(paths.PSEUDO_MASKS_METRICS, paths.PSEUDO_MASKS_REPORT)
        log_pictures(paths.PSEUDO_MASKS_PLOT)
        print(
            f"pseudo-mask mIoU ({split}): {report['miou']} "
            f"(CAMs best {cams_best}); {report['fallback_images']} fallback image(s)"
        )


if __name__ == "__main__":
    main(run, workers=True)
