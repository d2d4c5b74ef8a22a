"""Stage ``prepare``: prepare and check the dataset named by ``data``; report its statistics.

Writes what is derived from the dataset to ``data/prepared`` (VOC: ``SegmentationClassAug`` and
``train_aug.txt`` built from ``<root>/SBD``; COCO 2014: class masks and labels, resumably; see
:mod:`pnoc.steps.prepare`), in ``PNOC_PREPARE_WORKERS`` processes (default: the CPUs, at most
8). Then reads the dataset through the same readers the training stages use, decodes every image
and mask (so a corrupt file fails here, naming it), and writes ``metrics/dataset.json``
(foreground classes, images per split),
``reports/dataset_details.json`` (files checked and skipped, labels per image, images per class)
and a sample grid with masks overlaid.
"""

from __future__ import annotations

from typing import Any

import mlflow

from pnoc.config import DataParams
from pnoc.data.prepared import default_workers
from pnoc.io import write_json
from pnoc.steps import prepare
from pnoc.viz import sample_grid
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import log_artifacts, log_headline, log_pictures


def headline(report: dict[str, Any], data: DataParams) -> dict[str, Any]:
    """``metrics/dataset.json``: foreground classes and images per split."""
    splits = (data.train_split, data.val_split)
    return {
        "classes": len(report["classes"]) - 1,
        **{split: {"images": report[split]["images"]} for split in splits},
    }


def run() -> None:
    with stage("prepare") as ctx:
        data = ctx.params.data
        report, train = prepare.run(data, paths.PREPARED_DATA, num_workers=default_workers())
        metrics = headline(report, data)
        write_json(paths.DATASET_METRICS, metrics)
        write_json(paths.DATASET_REPORT, report)
        sample_grid(
            [train[i] for i in range(min(8, len(train)))], train.class_names, paths.SAMPLES_PLOT
        )
        splits = (data.train_split, data.val_split)
        log_headline(
            {"dataset_classes": metrics["classes"]}
            | {f"dataset_images_{s}": report[s]["images"] for s in splits}
        )
        mlflow.log_metrics({f"dataset_skipped_images_{s}": report[s]["skipped"] for s in splits})
        log_artifacts(paths.DATASET_METRICS, paths.DATASET_REPORT)
        log_pictures(paths.SAMPLES_PLOT)
        print(
            f"dataset {data.name} at {data.root}: "
            + ", ".join(f"{s} {report[s]['images']} images" for s in splits)
            + f", {metrics['classes']} classes; prepared files in {paths.PREPARED_DATA}"
        )


if __name__ == "__main__":
    main(run)
