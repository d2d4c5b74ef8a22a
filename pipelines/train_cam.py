"""Stage ``train_cam``: the CAM generator (``cam.method``: vanilla, puzzle, occse, poc, pnoc).

Outputs ``models/cam.pt`` and ``models/noc.pt`` (the adversarial noc for P-NOC; for the other
methods the ordinary classifier it started from, so the output set is the same for every method).
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from pnoc.cam.training import load_cam_model, train_cam_classifier
from pnoc.data.factory import open_dataset, warn_missing_classes
from pnoc.models.backbones import save_model
from pnoc_pipelines.common import checkpoint_config, main, stage
from pnoc_pipelines.tracking import MlflowLogger

OC = Path("models/oc.pt")
OUT = Path("models/cam.pt")
NOC = Path("models/noc.pt")


def run() -> None:
    with stage("train_cam", ["base", "data", "cam"]) as ctx:
        p = ctx.params
        train = open_dataset(p.data, p.data.train_split)
        warn_missing_classes(train)
        # The OC judges occse/poc, seeds P-NOC's noc, and is models/noc.pt for the other methods.
        oc = load_cam_model(OC)
        trained = train_cam_classifier(
            p.cam,
            train,
            image_size=p.data.image_size,
            seed=p.base.seed,
            oc=oc,
            device=ctx.device,
            amp=p.base.amp,
            num_workers=p.base.num_workers,
            checkpoint=checkpoint_config("train_cam", p.base, p.data, p.cam),
            callbacks=[MlflowLogger()],
            progress=p.base.progress,
        )
        meta = {"stage": "train_cam", "method": p.cam.method, "class_names": train.class_names}
        save_model(OUT, trained.model, meta)
        noc = trained.noc if trained.noc is not None else oc
        save_model(NOC, noc, {**meta, "role": "noc" if trained.noc is not None else "oc"})
        mlflow.log_param("checkpoint", str(OUT))
        print(f"trained the {p.cam.method} generator in {trained.result.seconds:.0f}s -> {OUT}")


if __name__ == "__main__":
    main(run)
