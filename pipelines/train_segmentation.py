"""Stage ``train_segmentation``: DeepLabV3+ trained on the pseudo-masks.

Output ``models/deeplab.pt`` (its meta records the class names, which serving returns).
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from pnoc.data.factory import open_dataset
from pnoc.models.backbones import save_model
from pnoc.steps import train_segmentation
from pnoc_pipelines.common import main, stage

MASKS = Path("outputs/pseudo_masks")
OUT = Path("models/deeplab.pt")


def run() -> None:
    with stage("train_segmentation") as ctx:
        p = ctx.params
        train = open_dataset(p.data, p.pseudo_masks.split)
        runtime = ctx.training_runtime("segmentation")
        trained = train_segmentation.run(
            p.segmentation, train, MASKS, runtime, image_size=p.data.image_size
        )
        meta = {"stage": "train_segmentation", "class_names": train.class_names}
        save_model(OUT, trained.model, meta)
        mlflow.log_param("checkpoint", str(OUT))
        print(f"trained DeepLabV3+ in {trained.result.seconds:.0f}s -> {OUT}")


if __name__ == "__main__":
    main(run)
