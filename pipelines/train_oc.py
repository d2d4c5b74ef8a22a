"""Stage ``train_oc``: the ordinary classifier (vanilla CAM + RandAugment + label smoothing).

Outputs ``models/oc.pt``, the frozen judge of OC-CSE / P-OC and the initial noc of P-NOC, and
``plots/train_oc_history.csv`` (per-epoch means of the training metrics).
"""

from __future__ import annotations

import mlflow

from pnoc.data.factory import open_dataset, warn_missing_classes
from pnoc.io import write_csv
from pnoc.models.backbones import save_model
from pnoc.steps import train_cam
from pnoc.steps.training import history_rows
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage


def run() -> None:
    with stage("train_oc") as ctx:
        p = ctx.params
        train = open_dataset(p.data, p.data.train_split)
        warn_missing_classes(train)
        trained = train_cam.run(
            p.oc, train, ctx.training_runtime("oc"), image_size=p.data.image_size
        )
        if not ctx.world.is_main:  # the other workers trained alongside; rank 0 writes
            return
        save_model(
            paths.OC_MODEL, trained.model, {"stage": "train_oc", "class_names": train.class_names}
        )
        write_csv(paths.OC_HISTORY, history_rows(trained.result))
        mlflow.log_param("checkpoint", str(paths.OC_MODEL))
        print(
            f"trained the ordinary classifier in {trained.result.seconds:.0f}s -> {paths.OC_MODEL}"
        )


if __name__ == "__main__":
    main(run, workers=True)
