"""Stage ``pseudo_masks``: random walk of the CAMs over AffinityNet's affinities.

Per image (:func:`~pnoc.refine.pseudo_masks.walk_pseudo_mask`): the walk, the background
threshold (optional dense CRF) and, with ``background: saliency``, the saliency gate. An image
whose affinity labels hold no confident pixel keeps its CAM argmax, gated alike, and is counted
as a fallback. Masks go to ``<out_dir>/<id>.png``; the report scores them (and the CAM argmax at
the same background threshold) against the ground truth.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pnoc.cam.export import cam_path
from pnoc.cam.inference import load_cam_npz
from pnoc.config import PseudoMaskParams
from pnoc.data.base import IGNORE_INDEX
from pnoc.data.files import read_mask, write_mask_png
from pnoc.data.transforms import eval_transform
from pnoc.engine import Runtime
from pnoc.engine.inference import (
    DEFAULT_BATCH_SIZE,
    gather_in_order,
    inference_loop,
    per_image,
    sum_over_ranks,
)
from pnoc.errors import PnocError
from pnoc.metrics import ConfusionMatrix
from pnoc.models.affinity import AffinityNet
from pnoc.refine.pseudo_masks import (
    affinity_features,
    cam_fallback_mask,
    features_pseudo_mask,
    saliency_gate,
)
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
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PseudoMaskResult:
    """Write the pseudo-mask of every image of ``dataset`` into ``out_dir`` and score them.

    ``label_dir`` holds the affinity labels (``train_affinity``) of these images;
    ``saliency_dir`` the saliency PNGs, read only with ``cfg.background == "saliency"``.
    ``batch_size``: images per AffinityNet forward (the walk runs image by image). Under
    several workers each rank writes the masks of its share into ``out_dir`` (a folder they
    share); counts, fallback ids and shown images are combined over the ranks in the dataset's
    order, so every rank returns what one worker computes (:mod:`pnoc.engine.inference`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = runtime.torch_device
    model = model.to(device).eval()
    num_classes = len(dataset.class_names)
    walked_cm = ConfusionMatrix(num_classes)
    cam_cm = ConfusionMatrix(num_classes)
    fallback: list[tuple[int, str]] = []
    shown: list[tuple[int, tuple[np.ndarray, list[Any]]]] = []
    load = functools.partial(
        _load_item,
        dataset,
        Path(cam_dir),
        Path(label_dir),
        Path(saliency_dir) if cfg.background == "saliency" else None,
    )
    with inference_loop(
        runtime, load, len(dataset), "pseudo-masks", batch_size=batch_size
    ) as groups:
        for group in groups:
            walked = [item for item in group if item["confident"]]
            feats = per_image(
                lambda x: affinity_features(model, x, flip=cfg.flip).cpu(),
                walked,
                device,
                copies=2 if cfg.flip else 1,
            )
            for item in group:
                cams, classes, sal = item["cams"], item["classes"], item["saliency"]
                cam_mask = cam_fallback_mask(cams, classes, cfg.bg_threshold)
                if not item["confident"]:
                    mask = saliency_gate(cam_mask, sal, saliency_threshold)
                    fallback.append((item["index"], item["id"]))
                else:
                    mask = features_pseudo_mask(
                        item["image"],
                        cams,
                        classes,
                        feats.pop(0),
                        cfg,
                        saliency=sal,
                        saliency_threshold=saliency_threshold,
                    )
                write_mask_png(out_dir / f"{item['id']}.png", mask)
                gt = item["gt"]
                if gt is not None:
                    walked_cm.update(np.where(mask == IGNORE_INDEX, 0, mask), gt)
                    cam_cm.update(cam_mask, gt)
                if item["index"] < SHOWN:
                    shown.append((item["index"], (item["image"], [gt, cam_mask, mask])))
    matrices = sum_over_ranks(np.stack([walked_cm.matrix, cam_cm.matrix]))
    walked_cm.reset()
    cam_cm.reset()
    walked_cm.add(matrices[0])
    cam_cm.add(matrices[1])
    fallback_ids = gather_in_order(fallback)
    result = PseudoMaskResult(report={}, shown=gather_in_order(shown))
    result.report = {
        "miou": walked_cm.miou() if walked_cm.matrix.sum() else None,
        "cam_miou_at_bg_threshold": cam_cm.miou() if cam_cm.matrix.sum() else None,
        "images": len(dataset),
        "fallback_images": len(fallback_ids),
        "fallback_ids": fallback_ids[:50],
        "per_class": walked_cm.to_dict(dataset.class_names),
    }
    return result


def _load_item(
    dataset: Any, cam_dir: Path, label_dir: Path, saliency_dir: Path | None, i: int
) -> dict[str, Any]:
    """What the walk of image ``i`` reads: its CAMs, image (normalised too), whether its
    affinity labels hold a confident pixel, its saliency (with ``saliency_dir``) and ground
    truth (runs in a loader worker)."""
    image_id = dataset.ids[i]
    cams, classes = load_cam_npz(cam_path(cam_dir, image_id))
    image = dataset.load_image(image_id)
    labels_file = label_dir / f"{image_id}.png"
    if not labels_file.exists():
        raise PnocError(f"{labels_file}: affinity labels missing (rerun train_affinity)")
    sal = None
    if saliency_dir is not None:
        sal = load_saliency_png(saliency_path(saliency_dir, image_id), expected_size=cams.shape[1:])
    x, _ = eval_transform()(image, None, np.random.default_rng(0))
    return {
        "index": i,
        "id": image_id,
        "x": torch.as_tensor(x),
        "image": image,
        "cams": cams,
        "classes": classes,
        "saliency": sal,
        "confident": bool((read_mask(labels_file) != IGNORE_INDEX).any()),
        "gt": dataset.load_mask(image_id),
    }
