"""Stage ``prepare``: check the dataset named by ``data`` and report its statistics.

Reads the embedded dataset or a real VOC / COCO 2014 folder through the same readers the
training stages use, decodes every image and mask (so a corrupt file fails here, naming it),
and writes ``metrics/dataset.json`` plus a sample grid with masks overlaid.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

from pnoc.data.factory import open_dataset, warn_missing_classes
from pnoc.data.synthetic import sample_grid
from pnoc.io import write_json
from pnoc_pipelines.common import main, stage

METRICS = Path("metrics/dataset.json")
GRID = Path("plots/samples.png")


def split_stats(dataset) -> dict:
    labels = np.asarray(dataset.label_matrix())
    per_class = labels.sum(axis=0).astype(int)
    return {
        "images": len(dataset),
        "checked": dataset.validate(),
        "skipped": len(dataset.skipped),
        "labels_per_image": float(labels.sum(axis=1).mean()) if len(labels) else 0.0,
        "images_per_class": {
            name: int(n) for name, n in zip(dataset.class_names[1:], per_class, strict=True)
        },
        "classes_without_images": warn_missing_classes(dataset),
    }


def run() -> None:
    with stage("prepare", ["data"]) as ctx:
        data = ctx.params.data
        report: dict = {"dataset": data.name, "root": str(data.root)}
        train = None
        for split in (data.train_split, data.val_split):
            dataset = open_dataset(data, split)
            report[split] = split_stats(dataset)
            report["classes"] = dataset.class_names
            train = train or dataset
        write_json(METRICS, report)
        sample_grid([train[i] for i in range(min(8, len(train)))], train.class_names, GRID)
        mlflow.log_artifact(str(GRID))
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
