"""What a saliency-sweep trial measures after each epoch, with the stages' own library calls.

:func:`proxy_metrics` (cheap) scores the saliency through the mask it gives the pseudo-masks
(CAM argmax inside the saliency, :func:`cam_saliency_mask`) and the affinity labels it yields;
:func:`pseudo_mask_miou` (the real target) runs the ``train_affinity`` and ``pseudo_masks``
steps on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pnoc.cam.export import cam_path
from pnoc.cam.inference import load_cam_npz
from pnoc.config import Params
from pnoc.engine import Runtime
from pnoc.errors import DatasetError
from pnoc.metrics import ConfusionMatrix, iou_from_confusion
from pnoc.saliency.inference import load_saliency_png, saliency_confusion, saliency_path
from pnoc.steps import pseudo_masks, train_affinity

__all__ = ["cam_saliency_mask", "proxy_metrics", "pseudo_mask_miou"]


def cam_saliency_mask(cams: np.ndarray, classes: np.ndarray, sal: np.ndarray, threshold: float):
    """The proxy pseudo-mask: CAM argmax where saliency ≥ ``threshold``, background elsewhere."""
    mask = np.zeros(sal.shape, dtype=np.uint8)
    if len(classes):
        lut = np.asarray(classes, dtype=np.uint8)
        fg = sal >= threshold
        mask[fg] = lut[np.asarray(cams, dtype=np.float32).argmax(axis=0)][fg]
    return mask


def proxy_metrics(
    dataset: Any, cam_dir: str | Path, saliency_dir: str | Path, params: Params
) -> dict[str, float]:
    """:data:`PROXY_METRICS` of the saliency PNGs in ``saliency_dir`` with the CAMs of
    ``cam_dir``; the affinity-label figures are the ``train_affinity`` stage's own."""
    threshold = params.saliency.threshold
    proxy = ConfusionMatrix(len(dataset.class_names))
    sal_counts = np.zeros((2, 2), dtype=np.int64)
    for image_id in dataset.ids:
        gt = dataset.load_mask(image_id)
        if gt is None:
            raise DatasetError(dataset.mask_path(image_id), "no ground truth to score the sweep")
        cams, classes = load_cam_npz(cam_path(cam_dir, image_id))
        sal = load_saliency_png(saliency_path(saliency_dir, image_id), expected_size=gt.shape)
        proxy.update(cam_saliency_mask(cams, classes, sal, threshold), gt)
        sal_counts += saliency_confusion(sal, gt, threshold)
    labels = train_affinity.affinity_labels(
        dataset, cam_dir, saliency_dir, params.affinity, out_dir=None
    )
    return {
        "cam_saliency_miou": proxy.miou(),
        "saliency_miou": float(np.nanmean(iou_from_confusion(sal_counts))),
        "affinity_label_miou": float(labels["label_miou"] or 0.0),
        "affinity_precision": labels["precision"],
        "affinity_confident_share": labels["confident_share"],
    }


def pseudo_mask_miou(
    params: Params,
    train: Any,
    dataset: Any,
    cam_dir: str | Path,
    saliency_dir: str | Path,
    runtime: Runtime,
    *,
    work_dir: str | Path,
) -> float | None:
    """The full objective: the ``train_affinity`` and ``pseudo_masks`` stages on the trial's
    saliency (AffinityNet on the affinity labels of ``train``, then the walk of ``dataset``'s
    CAMs), returning the pseudo-masks' mIoU against ``dataset``'s ground truth."""
    label_dir = Path(work_dir) / "affinity_labels"
    trained = train_affinity.run(
        params.affinity,
        train,
        cam_dir,
        saliency_dir,
        label_dir,
        runtime,
        image_size=params.data.image_size,
    )
    if dataset.split != train.split:  # the walk reads the labels of its own images
        train_affinity.affinity_labels(dataset, cam_dir, saliency_dir, params.affinity, label_dir)
    result = pseudo_masks.run(
        trained.model,
        dataset,
        Path(work_dir) / "pseudo_masks",
        runtime,
        cfg=params.pseudo_masks,
        cam_dir=cam_dir,
        label_dir=label_dir,
        saliency_dir=saliency_dir,
        saliency_threshold=params.saliency.threshold,
    )
    return result.report["miou"]
