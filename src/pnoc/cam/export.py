"""CAMs for a whole split: multi-scale inference to compact ``.npz`` files, and their evaluation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from pnoc.cam.inference import (
    cams_to_record,
    load_cam_npz,
    multiscale_cams,
    normalize_cams,
    save_cam_npz,
)
from pnoc.data.transforms import eval_transform
from pnoc.engine.progress import track
from pnoc.errors import DatasetError
from pnoc.metrics import CamRecord, ThresholdSweep, cam_threshold_sweep
from pnoc.models.cam import CAMNet


def cam_path(cam_dir: str | Path, image_id: str) -> Path:
    return Path(cam_dir) / f"{image_id}.npz"


def export_cams(
    model: CAMNet,
    dataset,
    out_dir: str | Path,
    *,
    scales: Sequence[float],
    flip: bool = True,
    device: str = "cpu",
    progress: bool = True,
    what: str = "cams",
) -> int:
    """Write one ``<id>.npz`` per image of ``dataset`` into ``out_dir``; return the count.

    Each file holds the image's present classes only (from its image-level labels), each map
    normalised by its maximum, as float16 at the image's full resolution. ``progress``: a bar
    on a terminal; ``what`` names the loop in it and in the summary line logged at the end
    (:func:`pnoc.engine.progress.track`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    transform = eval_transform()
    model = model.to(device).eval()
    for i in track(range(len(dataset)), what, enabled=progress):
        sample = dataset.get(i, mask=False)
        image, _ = transform(sample.image, None, np.random.default_rng(0))
        x = torch.as_tensor(image).unsqueeze(0).to(device)
        labels = torch.as_tensor(sample.labels)
        cams = multiscale_cams(model, x, scales=scales, flip=flip)[0].cpu()
        cams = normalize_cams(cams.unsqueeze(0), labels.unsqueeze(0))[0]
        record, classes = cams_to_record(cams, labels)
        save_cam_npz(cam_path(out_dir, sample.id), record, classes)
    return len(dataset)


def iter_cam_records(dataset, cam_dir: str | Path) -> Iterator[CamRecord]:
    """Yield (cams, classes, ground truth) per image; a missing or corrupt file raises, named."""
    for i in range(len(dataset)):
        image_id = dataset.ids[i]
        cams, classes = load_cam_npz(cam_path(cam_dir, image_id))
        target = dataset.load_mask(image_id)
        if target is None:
            raise DatasetError(dataset.mask_path(image_id), "no ground-truth mask to evaluate CAMs")
        if cams.shape[1:] != target.shape:
            raise DatasetError(
                cam_path(cam_dir, image_id),
                f"CAM size {cams.shape[2]}x{cams.shape[1]} differs from the mask size "
                f"{target.shape[1]}x{target.shape[0]}",
            )
        yield CamRecord(cams.astype(np.float32), classes, target)


def evaluate_cams(dataset, cam_dir: str | Path, thresholds: Sequence[float]) -> ThresholdSweep:
    """mIoU of the saved CAMs over the background-threshold sweep (255 ignored)."""
    return cam_threshold_sweep(
        iter_cam_records(dataset, cam_dir), len(dataset.class_names), thresholds
    )
