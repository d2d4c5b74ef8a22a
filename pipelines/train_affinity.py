"""Stage ``train_affinity``: affinity labels from CAMs + saliency, then AffinityNet on them.

Outputs ``outputs/affinity_labels/<id>.png`` (0 background, c class, 255 ignore),
``models/affinity.pt``, ``metrics/affinity_labels.json`` (mIoU and precision of the confident
pixels against the ground truth where it exists, and their share of all pixels),
``reports/affinity_labels_details.json`` (adds the images with no confident pixel) and
``plots/train_affinity_history.csv`` (per-epoch means of the training metrics).
"""

from __future__ import annotations

from typing import Any

import mlflow

from pnoc.data.factory import open_dataset
from pnoc.io import atomic_path, write_csv, write_json
from pnoc.models.backbones import save_model
from pnoc.steps import train_affinity
from pnoc.steps.training import history_rows
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, scratch_dir, stage
from pnoc_pipelines.tracking import log_artifacts, log_headline


def headline(stats: dict[str, Any], split: str) -> dict[str, Any]:
    """``metrics/affinity_labels.json``: the labels' split, their mIoU over the confident
    pixels, the precision of those pixels and their share of all pixels."""
    return {
        "split": split,
        "miou": stats["label_miou"],
        "precision": stats["precision"],
        "confident_share": stats["confident_share"],
    }


def run() -> None:
    with stage("train_affinity") as ctx:
        p = ctx.params
        train = open_dataset(p.data, p.data.train_split)
        # Every worker derives the labels it trains on; rank 0 alone publishes them.
        labels = atomic_path if ctx.world.is_main else scratch_dir
        with labels(paths.AFFINITY_LABELS) as tmp:
            trained = train_affinity.run(
                p.affinity,
                train,
                paths.CAMS,
                paths.SALIENCY,
                tmp,
                ctx.training_runtime("affinity"),
                image_size=p.data.image_size,
            )
        if not ctx.world.is_main:  # the other workers trained alongside; rank 0 writes
            return
        stats = trained.labels
        write_json(paths.AFFINITY_METRICS, headline(stats, p.data.train_split))
        write_json(paths.AFFINITY_REPORT, stats)
        write_csv(paths.AFFINITY_HISTORY, history_rows(trained.result))
        log_headline(
            {
                "affinity_label_miou": stats["label_miou"],
                "affinity_precision": stats["precision"],
                "affinity_confident_share": stats["confident_share"],
            }
        )
        mlflow.log_metric(
            "affinity_images_without_confident_pixels", stats["images_without_confident_pixels"]
        )
        print(
            f"affinity labels: {stats['confident_share']:.1%} confident pixels, "
            f"precision {stats['precision']:.1%}, "
            f"{stats['images_without_confident_pixels']} image(s) without any"
        )
        save_model(
            paths.AFFINITY_MODEL,
            trained.model,
            {"stage": "train_affinity", "radius": p.affinity.radius},
        )
        log_artifacts(paths.AFFINITY_METRICS, paths.AFFINITY_REPORT)
        print(f"trained AffinityNet in {trained.result.seconds:.0f}s -> {paths.AFFINITY_MODEL}")


if __name__ == "__main__":
    main(run, workers=True)
