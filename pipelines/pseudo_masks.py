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
from pathlib import Path

import mlflow
import numpy as np
from tqdm import tqdm

from pnoc.cam.export import cam_path
from pnoc.cam.inference import load_cam_npz
from pnoc.data.factory import open_dataset
from pnoc.data.voc import read_mask, write_mask_png
from pnoc.errors import PnocError
from pnoc.io import atomic_path, write_json
from pnoc.metrics import ConfusionMatrix
from pnoc.models.affinity import AffinityNet
from pnoc.refine.affinity_labels import IGNORE
from pnoc.refine.pseudo_masks import cam_fallback_mask, saliency_gate, walk_pseudo_mask
from pnoc.saliency.inference import load_saliency_png, saliency_path
from pnoc.viz import mask_grid
from pnoc_pipelines.common import main, stage

CAMS = Path("outputs/cams")
LABELS = Path("outputs/affinity_labels")
SALIENCY = Path("outputs/saliency")
MODEL = Path("models/affinity.pt")
CAM_METRICS = Path("metrics/cams.json")
OUT = Path("outputs/pseudo_masks")
METRICS = Path("metrics/pseudo_masks.json")
GRID = Path("plots/pseudo_masks_overlay.png")


def cam_miou(split: str) -> float | None:
    if not CAM_METRICS.exists():
        return None
    report = json.loads(CAM_METRICS.read_text())
    return (report.get(split) or {}).get("miou")


def run() -> None:
    params = ["base", "data", "affinity.backbone", "saliency.threshold", "pseudo_masks"]
    with stage("pseudo_masks", params) as ctx:
        p = ctx.params
        cfg = p.pseudo_masks
        dataset = open_dataset(p.data, cfg.split)
        model = AffinityNet.from_checkpoint(MODEL, expected_backbone=p.affinity.backbone)
        model = model.to(ctx.device).eval()
        walked_cm = ConfusionMatrix(len(dataset.class_names))
        cam_cm = ConfusionMatrix(len(dataset.class_names))
        fallback: list[str] = []
        shown = []
        with atomic_path(OUT) as tmp:
            tmp.mkdir()
            for image_id in tqdm(dataset.ids, desc="pseudo-masks", disable=not p.base.progress):
                cams, classes = load_cam_npz(cam_path(CAMS, image_id))
                image = dataset.load_image(image_id)
                labels_file = LABELS / f"{image_id}.png"
                if not labels_file.exists():
                    raise PnocError(
                        f"{labels_file}: affinity labels missing (rerun train_affinity)"
                    )
                sal = None
                if cfg.background == "saliency":
                    sal = load_saliency_png(
                        saliency_path(SALIENCY, image_id), expected_size=cams.shape[1:]
                    )
                cam_mask = cam_fallback_mask(cams, classes, cfg.bg_threshold)
                if not (read_mask(labels_file) != IGNORE).any():
                    mask = saliency_gate(cam_mask, sal, p.saliency.threshold)
                    fallback.append(image_id)
                else:
                    mask = walk_pseudo_mask(
                        model,
                        image,
                        cams,
                        classes,
                        cfg,
                        device=ctx.device,
                        saliency=sal,
                        saliency_threshold=p.saliency.threshold,
                    )
                write_mask_png(tmp / f"{image_id}.png", mask)
                gt = dataset.load_mask(image_id)
                if gt is not None:
                    walked_cm.update(np.where(mask == IGNORE, 0, mask), gt)
                    cam_cm.update(cam_mask, gt)
                if len(shown) < 6:
                    shown.append((image, [gt, cam_mask, mask]))
        cams_best = cam_miou(cfg.split)
        report = {
            "split": cfg.split,
            "miou": walked_cm.miou() if walked_cm.matrix.sum() else None,
            "cam_miou_at_bg_threshold": cam_cm.miou() if cam_cm.matrix.sum() else None,
            "cam_best_miou": cams_best,
            "images": len(dataset),
            "fallback_images": len(fallback),
            "fallback_ids": fallback[:50],
            "per_class": walked_cm.to_dict(dataset.class_names),
        }
        if report["miou"] is not None and cams_best is not None:
            report["gain_over_cams"] = report["miou"] - cams_best
        write_json(METRICS, report)
        mask_grid(
            [s[0] for s in shown],
            [s[1] for s in shown],
            ["ground truth", "CAM", "pseudo-mask"],
            GRID,
        )
        logged = {
            f"{cfg.split}.miou": report["miou"],
            "gain_over_cams": report.get("gain_over_cams"),
        }
        mlflow.log_metrics(
            {k: float(v) for k, v in logged.items() if v is not None}
            | {"fallback_images": float(len(fallback))}
        )
        for artifact in (METRICS, GRID):
            mlflow.log_artifact(str(artifact))
        print(
            f"pseudo-mask mIoU ({cfg.split}): {report['miou']} "
            f"(CAMs best {cams_best}); {len(fallback)} fallback image(s)"
        )


if __name__ == "__main__":
    main(run)
