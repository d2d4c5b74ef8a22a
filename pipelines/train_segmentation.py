"""Stage ``train_segmentation``: DeepLabV3+ trained on the pseudo-masks.

Output ``models/deeplab.pt`` (its meta records the class names, which serving returns).
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from pnoc.data.factory import open_dataset
from pnoc.models.backbones import save_model
from pnoc.segmentation.training import train_segmentation
from pnoc_pipelines.common import checkpoint_config, main, stage
from pnoc_pipelines.tracking import MlflowLogger

MASKS = Path("outputs/pseudo_masks")
OUT = Path("models/deeplab.pt")


def run() -> None:
    with stage("train_segmentation", ["base", "data", "segmentation"]) as ctx:
        p = ctx.params
        train = open_dataset(p.data, p.pseudo_masks.split)
        model, result = train_segmentation(
            p.segmentation,
            train,
            MASKS,
            image_size=p.data.image_size,
            seed=p.base.seed,
            device=ctx.device,
            amp=p.base.amp,
            num_workers=p.base.num_workers,
            checkpoint=checkpoint_config("train_segmentation", p.base, p.data, p.segmentation),
            callbacks=[MlflowLogger()],
            progress=p.base.progress,
        )
        meta = {"stage": "train_segmentation", "class_names": train.class_names}
        save_model(OUT, model, meta)
        mlflow.log_param("checkpoint", str(OUT))
        print(f"trained DeepLabV3+ in {result.seconds:.0f}s -> {OUT}")


if __name__ == "__main__":
    main(run)
