"""Stage ``pseudo_masks``: random walk of the CAMs over AffinityNet's affinities.

Per image (:func:`~pnoc.refine.pseudo_masks.walk_pseudo_mask`): the walk, the background
threshold (optional dense CRF) and, with ``background: saliency``, the saliency gate. An image
whose affinity labels hold no confident pixel keeps its CAM argmax, gated alike, and is counted
as a fallback. Masks go to ``<out_dir>/<id>.png``; the report scores them (and the CAM argmax at
the same background threshold) against the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pnoc.cam.export import cam_path
from pnoc.cam.inference import load_cam_npz
from pnoc.config import PseudoMaskParams
from pnoc.data.base import IGNORE_INDEX
from pnoc.data.files import read_mask, write_mask_png
from pnoc.engine import Runtime
from pnoc.errors import PnocError
from pnoc.metrics import ConfusionMatrix
from pnoc.models.affinity import AffinityNet
from pnoc.refine.pseudo_masks import cam_fallback_mask, saliency_gate, walk_pseudo_mask
from pnoc.saliency.inference import load_saliency_png, saliency_path

SHOWN = 6  # images kept for the overlay grid


@dataclass
class PseudoMaskResult:
    """report: ``miou`` of the pseudo-masks, ``cam_miou_at_bg_threshold``, ``images``,
    ``fallback_images``, the first 50 ``fallback_ids`` and ``per_class`` IoU (None where no
    ground truth). shown: up to six (image, [ground truth, CAM argmax, pseudo-mask])."""

    report: dict[str, Any]
    shown: list[tuple[np.ndarray, list[Any]]] = field(default_factory=list)


def run(
    model: AffinityNet,
    dataset: Any,
    out_dir: str | Path,
    runtime: Runtime,
    *,
    cfg: PseudoMaskParams,
    cam_dir: str | Path,
    label_dir: str | Path,
    saliency_dir: str | Path,
    saliency_threshold: float,
) -> PseudoMaskResult:
    """Write the pseudo-mask of every image of ``dataset`` into ``out_dir`` and score them.

    ``label_dir`` holds the affinity labels (``train_affinity``) of these images;
    ``saliency_dir`` the saliency PNGs, read only with ``cfg.background == "saliency"``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = runtime.torch_device
    model = model.to(device).eval()
    walked_cm = ConfusionMatrix(len(dataset.class_names))
    cam_cm = ConfusionMatrix(len(dataset.class_names))
    fallback: list[str] = []
    result = PseudoMaskResult(report={})
    for image_id in runtime.track(dataset.ids, "pseudo-masks"):
        cams, classes = load_cam_npz(cam_path(cam_dir, image_id))
        image = dataset.load_image(image_id)
        labels_file = Path(label_dir) / f"{image_id}.png"
        if not labels_file.exists():
            raise PnocError(f"{labels_file}: affinity labels missing (rerun train_affinity)")
        sal = None
        if cfg.background == "saliency":
            sal = load_saliency_png(
                saliency_path(saliency_dir, image_id), expected_size=cams.shape[1:]
            )
        cam_mask = cam_fallback_mask(cams, classes, cfg.bg_threshold)
        if not (read_mask(labels_file) != IGNORE_INDEX).any():
            mask = saliency_gate(cam_mask, sal, saliency_threshold)
            fallback.append(image_id)
        else:
            mask = walk_pseudo_mask(
                model,
                image,
                cams,
                classes,
                cfg,
                device=device,
                saliency=sal,
                saliency_threshold=saliency_threshold,
            )
        write_mask_png(out_dir / f"{image_id}.png", mask)
        gt = dataset.load_mask(image_id)
        if gt is not None:
            walked_cm.update(np.where(mask == IGNORE_INDEX, 0, mask), gt)
            cam_cm.update(cam_mask, gt)
        if len(result.shown) < SHOWN:
            result.shown.append((image, [gt, cam_mask, mask]))
    result.report = {
        "miou": walked_cm.miou() if walked_cm.matrix.sum() else None,
        "cam_miou_at_bg_threshold": cam_cm.miou() if cam_cm.matrix.sum() else None,
        "images": len(dataset),
        "fallback_images": len(fallback),
        "fallback_ids": fallback[:50],
        "per_class": walked_cm.to_dict(dataset.class_names),
    }
    return result
