"""Stage ``train_segmentation``: DeepLabV3+ trained on the pseudo-masks.

Outputs ``models/deeplab.pt`` (its meta records the class names, which serving returns) and
``plots/train_segmentation_history.csv`` (per-epoch means of the training metrics).
"""

from __future__ import annotations

import mlflow

from pnoc.data.factory import open_dataset
from pnoc.io import write_csv
from pnoc.models.backbones import save_model
from pnoc.steps import train_segmentation
from pnoc.steps.training import history_rows
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage


def run() -> None:
    with stage("train_segmentation") as ctx:
        p = ctx.params
        train = open_dataset(p.data, p.pseudo_masks.split)
        trained = train_segmentation.run(
            p.segmentation,
            train,
            paths.PSEUDO_MASKS,
            ctx.training_runtime("segmentation"),
            image_size=p.data.image_size,
        )
        if not ctx.world.is_main:  # the other workers trained alongside; rank 0 writes
            return
        meta = {"stage": "train_segmentation", "class_names": train.class_names}
        save_model(paths.DEEPLAB_MODEL, trained.model, meta)
        write_csv(paths.DEEPLAB_HISTORY, history_rows(trained.result))
        mlflow.log_param("checkpoint", str(paths.DEEPLAB_MODEL))
        print(f"trained DeepLabV3+ in {trained.result.seconds:.0f}s -> {paths.DEEPLAB_MODEL}")


if __name__ == "__main__":
    main(run, workers=True)
