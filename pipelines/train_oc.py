"""Stage ``train_oc``: the ordinary classifier (vanilla CAM + RandAugment + label smoothing).

Output ``models/oc.pt``: the frozen judge of OC-CSE / P-OC and the initial noc of P-NOC.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from pnoc.cam.training import train_cam_classifier
from pnoc.data.factory import open_dataset, warn_missing_classes
from pnoc.models.backbones import save_model
from pnoc_pipelines.common import checkpoint_config, main, stage
from pnoc_pipelines.tracking import MlflowLogger

OUT = Path("models/oc.pt")


def run() -> None:
    with stage("train_oc", ["base", "data", "oc"]) as ctx:
        p = ctx.params
        train = open_dataset(p.data, p.data.train_split)
        warn_missing_classes(train)
        trained = train_cam_classifier(
            p.oc,
            train,
            image_size=p.data.image_size,
            seed=p.base.seed,
            device=ctx.device,
            amp=p.base.amp,
            num_workers=p.base.num_workers,
            checkpoint=checkpoint_config("train_oc", p.base, p.data, p.oc),
            callbacks=[MlflowLogger()],
            progress=p.base.progress,
        )
        save_model(OUT, trained.model, {"stage": "train_oc", "class_names": train.class_names})
        mlflow.log_param("checkpoint", str(OUT))
        print(f"trained the ordinary classifier in {trained.result.seconds:.0f}s -> {OUT}")


if __name__ == "__main__":
    main(run)
