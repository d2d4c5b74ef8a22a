"""Stage ``prepare``: check the dataset named by ``data`` and report its statistics.

Reads the embedded dataset or a real VOC / COCO 2014 folder through the same readers the
training stages use, decodes every image and mask (so a corrupt file fails here, naming it),
and writes ``metrics/dataset.json`` plus a sample grid with masks overlaid.
"""

from __future__ import annotations

import mlflow

from pnoc.io import write_json
from pnoc.steps import prepare
from pnoc.viz import sample_grid
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import log_artifacts


def run() -> None:
    with stage("prepare") as ctx:
        data = ctx.params.data
        report, train = prepare.run(data)
        write_json(paths.DATASET_METRICS, report)
        sample_grid(
            [train[i] for i in range(min(8, len(train)))], train.class_names, paths.SAMPLES_PLOT
        )
        log_artifacts(paths.SAMPLES_PLOT)
        mlflow.log_dict(report, "dataset.json")
        for split in (data.train_split, data.val_split):
            mlflow.log_metric(f"{split}.images", report[split]["images"])
        print(
            f"dataset {data.name} at {data.root}: "
            + ", ".join(
                f"{s} {report[s]['images']} images" for s in (data.train_split, data.val_split)
            )
            + f", {len(report['classes']) - 1} classes"
        )


if __name__ == "__main__":
    main(run)
