"""Stage ``pseudo_masks``: random walk of the CAMs over AffinityNet's affinities.

Outputs ``outputs/pseudo_masks/<id>.png`` (VOC palette) for ``pseudo_masks.split``,
``metrics/pseudo_masks.json`` (mIoU against the ground truth, as WSSS papers report on train,
next to the CAMs' best mIoU on the same split; images that fell back to the CAM argmax) and an
overlay grid (image | ground truth | CAM argmax | pseudo-mask). With
``pseudo_masks.background: saliency`` the C²AM-H saliency (``outputs/saliency``) below
``saliency.threshold`` is background in the pseudo-masks and in their fallback alike.
"""

from __future__ import annotations

import json

import mlflow

from pnoc.data.factory import open_dataset
from pnoc.io import atomic_path, write_json
from pnoc.models.affinity import AffinityNet
from pnoc.steps import pseudo_masks
from pnoc.viz import mask_grid
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import log_artifacts


def cam_miou(split: str) -> float | None:
    if not paths.CAMS_METRICS.exists():
        return None
    report = json.loads(paths.CAMS_METRICS.read_text())
    return (report.get(split) or {}).get("miou")


def run() -> None:
    with stage("pseudo_masks") as ctx:
        p = ctx.params
        cfg = p.pseudo_masks
        dataset = open_dataset(p.data, cfg.split)
        model = AffinityNet.from_checkpoint(
            paths.AFFINITY_MODEL, expected_backbone=p.affinity.backbone
        )
        with atomic_path(paths.PSEUDO_MASKS) as tmp:
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
        cams_best = cam_miou(cfg.split)
        report = {"split": cfg.split, **result.report, "cam_best_miou": cams_best}
        if report["miou"] is not None and cams_best is not None:
            report["gain_over_cams"] = report["miou"] - cams_best
        write_json(paths.PSEUDO_MASKS_METRICS, report)
        mask_grid(
            [s[0] for s in result.shown],
            [s[1] for s in result.shown],
            ["ground truth", "CAM", "pseudo-mask"],
            paths.PSEUDO_MASKS_PLOT,
        )
        logged = {
            f"{cfg.split}.miou": report["miou"],
            "gain_over_cams": report.get("gain_over_cams"),
        }
        mlflow.log_metrics(
            {k: float(v) for k, v in logged.items() if v is not None}
            | {"fallback_images": float(report["fallback_images"])}
        )
        log_artifacts(paths.PSEUDO_MASKS_METRICS, paths.PSEUDO_MASKS_PLOT)
        print(
            f"pseudo-mask mIoU ({cfg.split}): {report['miou']} "
            f"(CAMs best {cams_best}); {report['fallback_images']} fallback image(s)"
        )


if __name__ == "__main__":
    main(run)
