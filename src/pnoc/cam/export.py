"""CAMs for a whole split: multi-scale inference to compact ``.npz`` files, and their evaluation."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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
from pnoc.engine.inference import (
    DEFAULT_BATCH_SIZE,
    inference_loop,
    per_image,
    sum_over_ranks,
)
from pnoc.engine.runtime import Runtime
from pnoc.errors import DatasetError
from pnoc.metrics import CamRecord, CamSweepCounts, ThresholdSweep, cam_threshold_sweep
from pnoc.models.cam import CAMNet


def cam_path(cam_dir: str | Path, image_id: str) -> Path:
    return Path(cam_dir) / f"{image_id}.npz"


def export_cams(
    model: CAMNet,
    dataset,
    out_dir: str | Path,
    runtime: Runtime,
    *,
    scales: Sequence[float],
    flip: bool = True,
    thresholds: Sequence[float] | np.ndarray | None = None,
    what: str = "cams",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ThresholdSweep | None:
    """Write one ``<id>.npz`` per image of ``dataset`` into ``out_dir``; with ``thresholds``,
    also score the maps written against the ground truth (as :func:`evaluate_cams` would).

    Each file holds the image's present classes only (from its image-level labels), each map
    normalised by its maximum, as float16 at the image's full resolution. The images go through
    :func:`pnoc.engine.inference.inference_loop`: this rank's share of them, ``batch_size``
    same-size images per forward, decoded in ``runtime.num_workers`` DataLoader workers, a bar
    on a terminal (``runtime.progress``) and the summary line logged at the end named ``what``.
    The threshold sweep is over the whole split, the same on every rank (its counts are summed
    over the ranks); None without ``thresholds``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = runtime.torch_device
    model = model.to(device).eval()
    scored = thresholds is not None
    counts = CamSweepCounts(len(dataset.class_names), thresholds) if scored else None
    load = functools.partial(_load_cam_item, dataset, out_dir, scored)
    with inference_loop(runtime, load, len(dataset), what, batch_size=batch_size) as groups:
        for group in groups:
            raw = per_image(
                lambda x: multiscale_cams(model, x, scales=scales, flip=flip).cpu(),
                group,
                device,
                copies=2 if flip else 1,
            )
            for item, maps in zip(group, raw, strict=True):
                labels = torch.as_tensor(item["labels"])
                maps = normalize_cams(maps.unsqueeze(0), labels.unsqueeze(0))[0]
                record, classes = cams_to_record(maps, labels)
                save_cam_npz(cam_path(out_dir, item["id"]), record, classes)
                if counts is not None:
                    rec = CamRecord(record.astype(np.float32), classes, item["target"])
                    counts.add(rec, item["index"])
    if counts is None:
        return None
    total = sum_over_ranks(np.append(counts.hist, counts.labelled))
    counts.hist, counts.labelled = total[:-1], int(total[-1])
    return counts.sweep()


def _load_cam_item(dataset, cam_dir: Path, scored: bool, i: int) -> dict[str, Any]:
    """Image ``i`` of ``dataset`` for :func:`export_cams` (runs in a loader worker)."""
    sample = dataset.get(i, mask=False)
    x, _ = eval_transform()(sample.image, None, np.random.default_rng(0))
    item = {"index": i, "id": sample.id, "x": torch.as_tensor(x), "labels": sample.labels}
    if scored:
        target = dataset.load_mask(sample.id)
        if target is None:
            raise DatasetError(
                dataset.mask_path(sample.id), "no ground-truth mask to evaluate CAMs"
            )
        h, w = sample.image.shape[:2]
        if (h, w) != target.shape:
            raise DatasetError(
                cam_path(cam_dir, sample.id),
                f"CAM size {w}x{h} differs from the mask size {target.shape[1]}x{target.shape[0]}",
            )
        item["target"] = target
    return item


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
