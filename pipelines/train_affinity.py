"""Stage ``train_affinity``: affinity labels from CAMs + saliency, then AffinityNet on them.

Outputs ``outputs/affinity_labels/<id>.png`` (0 background, c class, 255 ignore),
``models/affinity.pt`` and ``metrics/affinity_labels.json`` (confident share, precision and mIoU
of the confident pixels against the ground truth where it exists, images with no confident
pixel).
"""

from __future__ import annotations

import mlflow
import numpy as np

from pnoc.data.factory import open_dataset
from pnoc.io import atomic_path, write_json
from pnoc.models.backbones import save_model
from pnoc.steps import train_affinity
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import log_artifacts


def run() -> None:
    with stage("train_affinity") as ctx:
        p = ctx.params
        train = open_dataset(p.data, p.data.train_split)
        with atomic_path(paths.AFFINITY_LABELS) as tmp:
            trained = train_affinity.run(
                p.affinity,
                train,
                paths.CAMS,
                paths.SALIENCY,
                tmp,
                ctx.training_runtime("affinity"),
                image_size=p.data.image_size,
            )
        stats = trained.labels
        write_json(paths.AFFINITY_METRICS, stats)
        mlflow.log_metrics({k: float(v) for k, v in stats.items() if np.isscalar(v)})
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
        log_artifacts(paths.AFFINITY_METRICS)
        print(f"trained AffinityNet in {trained.result.seconds:.0f}s -> {paths.AFFINITY_MODEL}")


if __name__ == "__main__":
    main(run)
