"""Stage ``cams``: multi-scale + flip CAMs of every split, scored over the threshold sweep.

Each image's present classes (from its image-level labels) are written to ``<out_dir>/<id>.npz``,
each map divided by its maximum, float16 at the image's resolution; each split's maps are then
scored against its ground truth at every background threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pnoc.cam.export import evaluate_cams, export_cams
from pnoc.engine import Runtime
from pnoc.metrics import ThresholdSweep
from pnoc.models.cam import CAMNet


def run(
    model: CAMNet,
    datasets: Mapping[str, Any],
    out_dir: str | Path,
    runtime: Runtime,
    *,
    scales: Sequence[float],
    flip: bool,
    thresholds: Sequence[float],
) -> dict[str, ThresholdSweep]:
    """Write the CAMs of every split of ``datasets`` (split name -> reader) into ``out_dir``
    and return each split's threshold sweep (best mIoU and threshold, the whole curve)."""
    for split, dataset in datasets.items():
        export_cams(
            model,
            dataset,
            out_dir,
            scales=scales,
            flip=flip,
            device=runtime.torch_device,
            progress=runtime.progress,
            what=f"cams {split}",
        )
    return {
        split: evaluate_cams(dataset, out_dir, thresholds) for split, dataset in datasets.items()
    }
