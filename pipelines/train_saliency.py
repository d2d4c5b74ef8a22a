"""Stage ``train_saliency``: C²AM-H, CCAM's fg/bg bi-partition trained with the CAMs as hints.

Output ``models/ccam.pt``; its ``inverted`` flag (the bi-partition's orientation, fixed with the
hints after training) travels inside the checkpoint. ``plots/train_saliency_history.csv``: the
per-epoch means of the training metrics.
"""

from __future__ import annotations

from dataclasses import asdict

import mlflow

from pnoc.data.factory import open_dataset
from pnoc.io import write_csv
from pnoc.models.backbones import save_model
from pnoc.steps import train_saliency
from pnoc.steps.training import history_rows
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage


def run() -> None:
    with stage("train_saliency") as ctx:
        p = ctx.params
        train = open_dataset(p.data, p.data.train_split)
        trained = train_saliency.run(
            p.saliency,
            train,
            paths.CAMS,
            ctx.training_runtime("saliency"),
            image_size=p.data.image_size,
        )
        if not ctx.world.is_main:  # the other workers trained alongside; rank 0 writes
            return
        check = asdict(trained.orientation)
        save_model(
            paths.CCAM_MODEL, trained.model, {"stage": "train_saliency", "orientation": check}
        )
        write_csv(paths.CCAM_HISTORY, history_rows(trained.result))
        mlflow.log_metrics(
            {
                "orientation.fg_mean": check["fg_mean"],
                "orientation.bg_mean": check["bg_mean"],
                "orientation.flipped": float(check["flipped"]),
            }
        )
        print(
            f"trained C²AM-H in {trained.result.seconds:.0f}s -> {paths.CCAM_MODEL} "
            f"(bi-partition {'inverted' if check['inverted'] else 'upright'})"
        )


if __name__ == "__main__":
    main(run, workers=True)
