"""Stage ``train_cam``: the CAM generator (``cam.method``: vanilla, puzzle, occse, poc, pnoc).

Outputs ``models/cam.pt`` and ``models/noc.pt`` (the adversarial noc for P-NOC; for the other
methods the ordinary classifier it started from, so the output set is the same for every method)
and ``plots/train_cam_history.csv`` (per-epoch means of the training metrics).
"""

from __future__ import annotations

import mlflow

from pnoc.cam.inference import load_cam_model
from pnoc.data.factory import open_dataset, warn_missing_classes
from pnoc.io import write_csv
from pnoc.models.backbones import save_model
from pnoc.steps import train_cam
from pnoc.steps.training import history_rows
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage


def run() -> None:
    with stage("train_cam") as ctx:
        p = ctx.params
        train = open_dataset(p.data, p.data.train_split)
        warn_missing_classes(train)
        # The OC judges occse/poc, seeds P-NOC's noc, and is models/noc.pt for the other methods.
        oc = load_cam_model(paths.OC_MODEL)
        trained = train_cam.run(
            p.cam, train, ctx.training_runtime("cam"), image_size=p.data.image_size, oc=oc
        )
        if not ctx.world.is_main:  # the other workers trained alongside; rank 0 writes
            return
        meta = {"stage": "train_cam", "method": p.cam.method, "class_names": train.class_names}
        save_model(paths.CAM_MODEL, trained.model, meta)
        noc = trained.noc if trained.noc is not None else oc
        save_model(
            paths.NOC_MODEL, noc, {**meta, "role": "noc" if trained.noc is not None else "oc"}
        )
        write_csv(paths.CAM_HISTORY, history_rows(trained.result))
        mlflow.log_param("checkpoint", str(paths.CAM_MODEL))
        seconds = trained.result.seconds
        print(f"trained the {p.cam.method} generator in {seconds:.0f}s -> {paths.CAM_MODEL}")


if __name__ == "__main__":
    main(run, workers=True)
