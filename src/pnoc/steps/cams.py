"""Stage ``cams``: multi-scale + flip CAMs of every split, scored over the threshold sweep.

Each image's present classes (from its image-level labels) are written to ``<out_dir>/<id>.npz``,
each map divided by its maximum, float16 at the image's resolution; each split's maps are then
scored against its ground truth at every background threshold.

Under several workers (:mod:`pnoc.engine.distributed`) each rank writes the files of its share
of every split into ``out_dir`` (a folder they share) and the sweeps count every rank's images:
every rank returns the sweeps one worker computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pnoc.cam.export import export_cams
from pnoc.engine import Runtime
from pnoc.engine.inference import DEFAULT_BATCH_SIZE
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
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, ThresholdSweep]:
    """Write the CAMs of every split of ``datasets`` (split name -> reader) into ``out_dir``
    and return each split's threshold sweep (best mIoU and threshold, the whole curve).

    ``batch_size``: images per forward pass (:mod:`pnoc.engine.inference`).
    """
    sweeps: dict[str, ThresholdSweep] = {}
    for split, dataset in datasets.items():
        sweep = export_cams(
            model,
            dataset,
            out_dir,
            runtime,
            scales=scales,
            flip=flip,
            thresholds=thresholds,
            what=f"cams {split}",
            batch_size=batch_size,
        )
        assert sweep is not None  # scored: thresholds were given
        sweeps[split] = sweep
    return sweeps
