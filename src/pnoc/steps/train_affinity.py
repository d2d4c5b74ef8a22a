"""Stage ``train_affinity``: affinity labels from the CAMs and the saliency, then AffinityNet.

Labels (:func:`~pnoc.refine.affinity_labels.make_affinity_labels`): the CAM argmax where the
best CAM is ≥ ``fg_threshold`` and the saliency ≥ ``fg_saliency``, background where the saliency
is ≤ ``bg_threshold``, 255 elsewhere and where the cues disagree; written as
``<label_dir>/<id>.png``. AffinityNet then learns from pairs of confident pixels within
``radius`` (:class:`~pnoc.refine.affinity.AffinityMethod`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnoc.cam.export import cam_path
from pnoc.cam.inference import load_cam_npz
from pnoc.config import AffinityParams
from pnoc.data.base import IGNORE_INDEX
from pnoc.data.files import write_mask_png
from pnoc.data.torch_sets import SegmentationSet
from pnoc.data.transforms import segmentation_train_transform
from pnoc.engine import FitResult, Runtime, fit
from pnoc.engine.progress import track
from pnoc.metrics import ConfusionMatrix
from pnoc.models.affinity import AffinityNet
from pnoc.refine.affinity import AffinityMethod
from pnoc.refine.affinity_labels import make_affinity_labels
from pnoc.saliency.inference import load_saliency_png, saliency_path
from pnoc.steps.training import sgd, train_data


@dataclass
class TrainedAffinity:
    """model: AffinityNet (eval mode); labels: :func:`affinity_labels`' statistics."""

    model: AffinityNet
    result: FitResult
    labels: dict[str, Any]


def affinity_labels(
    dataset: Any,
    cam_dir: str | Path,
    saliency_dir: str | Path,
    cfg: AffinityParams,
    out_dir: str | Path | None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Affinity labels of every image of ``dataset``, written to ``out_dir`` (None: not written).

    Returns ``confident_share`` (labelled pixels / all), ``precision`` (labelled pixels that
    agree with the ground truth, where it exists), ``label_miou`` (of the labelled pixels
    against the ground truth; None without any), ``images``,
    ``images_without_confident_pixels`` and the first 50 such ``empty_ids``. ``progress``: a
    bar on a terminal; the summary line is logged either way.
    """
    confident, correct, total, empty = 0, 0, 0, []
    cm = ConfusionMatrix(len(dataset.class_names))
    for image_id in track(dataset.ids, "affinity labels", enabled=progress):
        cams, classes = load_cam_npz(cam_path(cam_dir, image_id))
        sal = load_saliency_png(saliency_path(saliency_dir, image_id), expected_size=cams.shape[1:])
        labels = make_affinity_labels(
            cams,
            classes,
            sal,
            fg_threshold=cfg.fg_threshold,
            bg_threshold=cfg.bg_threshold,
            fg_saliency=cfg.fg_saliency,
        )
        if out_dir is not None:
            write_mask_png(Path(out_dir) / f"{image_id}.png", labels)
        known = labels != IGNORE_INDEX
        total += labels.size
        confident += int(known.sum())
        if not known.any():
            empty.append(image_id)
        gt = dataset.load_mask(image_id)
        if gt is not None:
            scored = known & (gt != IGNORE_INDEX)
            correct += int((labels[scored] == gt[scored]).sum())
            cm.update(labels[scored], gt[scored])
    return {
        "confident_share": confident / max(total, 1),
        "precision": correct / max(confident, 1),
        "label_miou": cm.miou() if cm.matrix.sum() else None,
        "images": len(dataset),
        "images_without_confident_pixels": len(empty),
        "empty_ids": empty[:50],
    }


def run(
    cfg: AffinityParams,
    dataset: Any,
    cam_dir: str | Path,
    saliency_dir: str | Path,
    label_dir: str | Path,
    runtime: Runtime,
    *,
    image_size: int,
) -> TrainedAffinity:
    """Write the affinity labels of ``dataset`` into ``label_dir`` and train AffinityNet on them."""
    runtime.seed_all()
    Path(label_dir).mkdir(parents=True, exist_ok=True)
    stats = affinity_labels(
        dataset, cam_dir, saliency_dir, cfg, label_dir, progress=runtime.progress
    )
    transform = segmentation_train_transform(image_size, tuple(cfg.scale_range))
    train_set = SegmentationSet(dataset, transform, mask_dir=label_dir)
    model = AffinityNet(cfg.backbone, weights=cfg.weights, output_stride=cfg.output_stride)
    method = AffinityMethod(model, cfg.radius)
    optimizers = {"affinity": sgd(model, cfg)}
    result = fit(method, train_data(train_set, cfg), optimizers, runtime)
    model.eval()
    return TrainedAffinity(model=model, result=result, labels=stats)


__all__ = ["TrainedAffinity", "affinity_labels", "run"]
