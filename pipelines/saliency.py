"""Stage ``saliency``: C²AM-H saliency maps for every split, and their quality.

Outputs ``outputs/saliency/<id>.png`` (8-bit, value = 255 · saliency), ``metrics/saliency.json``
(per split: fg/bg IoU and their mean against the binarised ground truth, saliency ≥
``saliency.threshold`` counted as foreground, 255 ignored; and the best mean IoU over the
thresholds 0.05, 0.10, …, 0.95 with the threshold that gives it, as the authors report saliency)
and an overlay grid.
"""

from __future__ import annotations

import mlflow

from pnoc.data.factory import open_dataset
from pnoc.io import atomic_path, write_json
from pnoc.models.ccam import CCAMNet
from pnoc.saliency.inference import saliency_overlay_grid
from pnoc.steps import saliency
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import log_artifacts


def run() -> None:
    with stage("saliency") as ctx:
        p = ctx.params
        datasets = {split: open_dataset(p.data, split) for split in p.cams.splits}
        with atomic_path(paths.SALIENCY) as tmp:
            result = saliency.run(
                CCAMNet.from_checkpoint(paths.CCAM_MODEL),
                datasets,
                tmp,
                ctx.runtime(),
                threshold=p.saliency.threshold,
                flip=p.saliency.flip,
                eval_split=p.cams.eval_split,
            )
        report = result.report
        write_json(paths.SALIENCY_METRICS, report)
        saliency_overlay_grid(
            [s[0] for s in result.shown], [s[1] for s in result.shown], paths.SALIENCY_PLOT
        )
        mlflow.log_metrics(
            {
                f"{s}.{k}": report[s][k]
                for s in p.cams.splits
                for k in ("miou", "best_miou", "best_threshold")
                if report[s][k] is not None
            }
        )
        log_artifacts(paths.SALIENCY_METRICS, paths.SALIENCY_PLOT)
        print(
            f"saliency mIoU ({p.cams.eval_split}): {report['miou']} at {p.saliency.threshold}, "
            f"best {report['best_miou']} at {report['best_threshold']}"
        )


if __name__ == "__main__":
    main(run)
