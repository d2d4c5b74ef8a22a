"""Stage ``saliency``: C²AM-H saliency maps for every split, and their quality.

Outputs ``outputs/saliency/<id>.png`` (8-bit, value = 255 · saliency); ``metrics/saliency.json``:
the fg/bg mean IoU against the binarised ground truth (saliency ≥ ``saliency.threshold``
counted as foreground, 255 ignored) on ``cams.eval_split``, and that threshold;
``reports/saliency_details.json``: per split that mean IoU, the fg and bg IoU, and the best
mean IoU over the thresholds 0.05, 0.10, …, 0.95 with the threshold that gives it (as the
authors report saliency); and an overlay grid.

Under several workers (``base.workers``) every rank writes the maps of its share of the images
into the same folder, published by rank 0 once all are done; rank 0 alone writes the metrics,
report, plot and MLflow entries.
"""

from __future__ import annotations

import math
from typing import Any

import mlflow

from pnoc.data.factory import open_dataset
from pnoc.engine.distributed import shared_atomic_dir
from pnoc.io import write_json
from pnoc.models.ccam import CCAMNet
from pnoc.saliency.inference import saliency_overlay_grid
from pnoc.steps import saliency
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import log_artifacts, log_headline, log_pictures


def headline(report: dict[str, Any], eval_split: str) -> dict[str, Any]:
    """``metrics/saliency.json``: the evaluation split, its mean IoU at the configured
    threshold, and the threshold."""
    return {
        "split": eval_split,
        "miou": report[eval_split]["miou"],
        "threshold": report["threshold"],
    }


def run() -> None:
    with stage("saliency") as ctx:
        p = ctx.params
        splits, eval_split = list(p.cams.splits), p.cams.eval_split
        datasets = {split: open_dataset(p.data, split) for split in splits}
        with shared_atomic_dir(paths.SALIENCY) as tmp:
            result = saliency.run(
                CCAMNet.from_checkpoint(paths.CCAM_MODEL),
                datasets,
                tmp,
                ctx.runtime(),
                threshold=p.saliency.threshold,
                flip=p.saliency.flip,
                eval_split=eval_split,
            )
        if not ctx.world.is_main:
            return
        report = result.report
        write_json(paths.SALIENCY_METRICS, headline(report, eval_split))
        write_json(paths.SALIENCY_REPORT, report)
        saliency_overlay_grid(
            [s[0] for s in result.shown], [s[1] for s in result.shown], paths.SALIENCY_PLOT
        )
        log_headline({f"saliency_miou_{eval_split}": report[eval_split]["miou"]})
        detail = {
            f"saliency_{key}_{s}": report[s][key]
            for s in splits
            for key in ("miou", "best_miou", "best_threshold")
            if (s, key) != (eval_split, "miou")
        } | {f"saliency_iou_{s}/{part}": v for s in splits for part, v in report[s]["iou"].items()}
        mlflow.log_metrics(
            {k: float(v) for k, v in detail.items() if v is not None and math.isfinite(v)}
        )
        log_artifacts(paths.SALIENCY_METRICS, paths.SALIENCY_REPORT)
        log_pictures(paths.SALIENCY_PLOT)
        print(
            f"saliency mIoU ({eval_split}): {report['miou']} at {p.saliency.threshold}, "
            f"best {report['best_miou']} at {report['best_threshold']}"
        )


if __name__ == "__main__":
    main(run, workers=True)
