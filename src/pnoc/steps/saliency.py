"""Stage ``saliency``: C²AM-H saliency maps of every split, and their quality.

Each image's map is written as ``<out_dir>/<id>.png`` (8-bit, value = round(255 · saliency)).
Quality per split, against the ground truth binarised (any class = foreground, 255 ignored):
fg/bg IoU and their mean with saliency ≥ ``threshold`` as foreground, and the best mean IoU over
the thresholds 0.05, 0.10, …, 0.95 with the threshold that gives it (as the authors report
saliency).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pnoc.data.transforms import eval_transform
from pnoc.engine import Runtime
from pnoc.engine.inference import (
    DEFAULT_BATCH_SIZE,
    gather_in_order,
    inference_loop,
    per_image,
    sum_over_ranks,
)
from pnoc.metrics import iou_from_confusion
from pnoc.models.ccam import CCAMNet
from pnoc.saliency.inference import (
    predict_saliency_batch,
    saliency_confusion,
    saliency_path,
    saliency_sweep_confusion,
    save_saliency_png,
)

SWEEP = np.round(np.arange(1, 20) * 0.05, 2)  # 0.05 … 0.95
SHOWN = 6  # images of the evaluation split kept for the overlay grid


@dataclass
class SaliencyResult:
    """report: per split ``miou``, ``iou`` (background/foreground), ``best_miou``,
    ``best_threshold``, ``images`` (None where no ground truth), plus ``threshold`` and the
    evaluation split's ``miou``/``best_miou``/``best_threshold`` at the top level.
    shown: up to six (image, saliency) pairs of the evaluation split."""

    report: dict[str, Any]
    shown: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def run(
    model: CCAMNet,
    datasets: Mapping[str, Any],
    out_dir: str | Path,
    runtime: Runtime,
    *,
    threshold: float,
    flip: bool,
    eval_split: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> SaliencyResult:
    """Predict, write and score the saliency of every split of ``datasets`` (name -> reader).

    ``batch_size``: images per forward pass. Under several workers each rank writes the maps of
    its share of every split into ``out_dir`` (a folder they share); the counts are summed and
    the shown images gathered over the ranks, so every rank returns what one worker computes
    (:mod:`pnoc.engine.inference`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = runtime.torch_device
    model = model.to(device).eval()
    result = SaliencyResult(report={"threshold": threshold})
    for split, dataset in datasets.items():
        counts = np.zeros((2, 2), dtype=np.int64)
        sweep = np.zeros((len(SWEEP), 2, 2), dtype=np.int64)
        shown: list[tuple[int, tuple[np.ndarray, np.ndarray]]] = []
        keep = SHOWN if split == eval_split else 0
        load = functools.partial(_load_item, dataset, keep)
        what = f"saliency {split}"
        with inference_loop(runtime, load, len(dataset), what, batch_size=batch_size) as groups:
            for group in groups:
                sals = per_image(
                    lambda x: predict_saliency_batch(model, x, flip=flip),
                    group,
                    device,
                    copies=2 if flip else 1,
                )
                for item, sal in zip(group, sals, strict=True):
                    save_saliency_png(saliency_path(out_dir, item["id"]), sal)
                    gt = item["gt"]
                    if gt is not None:
                        counts += saliency_confusion(sal, gt, threshold)
                        sweep += saliency_sweep_confusion(sal, gt, SWEEP)
                    if item["index"] < keep:
                        shown.append((item["index"], (item["image"], sal)))
        totals = sum_over_ranks(np.concatenate([counts.reshape(-1), sweep.reshape(-1)]))
        counts, sweep = totals[:4].reshape(2, 2), totals[4:].reshape(sweep.shape)
        if keep:
            result.shown = gather_in_order(shown)
        iou = iou_from_confusion(counts)
        curve = [float(np.nanmean(iou_from_confusion(c))) for c in sweep]
        best = int(np.nanargmax(curve)) if counts.sum() else 0
        scored = bool(counts.sum())
        result.report[split] = {
            "miou": float(np.nanmean(iou)) if scored else None,
            "iou": {"background": float(iou[0]), "foreground": float(iou[1])},
            "best_miou": curve[best] if scored else None,
            "best_threshold": float(SWEEP[best]) if scored else None,
            "images": len(dataset),
        }
    for key in ("miou", "best_miou", "best_threshold"):
        result.report[key] = result.report[eval_split][key]
    return result


def _load_item(dataset: Any, keep: int, i: int) -> dict[str, Any]:
    """Image ``i`` of ``dataset`` and its mask (None without one), normalised; the image
    itself only when it is among the ``keep`` shown (runs in a loader worker)."""
    image_id = dataset.ids[i]
    image = dataset.load_image(image_id)
    x, _ = eval_transform()(image, None, np.random.default_rng(0))
    return {
        "index": i,
        "id": image_id,
        "x": torch.as_tensor(x),
        "gt": dataset.load_mask(image_id),
        "image": image if i < keep else None,
    }
