"""Stage ``cams``: multi-scale + flip CAMs for every split, and their threshold-sweep mIoU.

Outputs ``outputs/cams/<id>.npz`` (present classes only, float16), ``metrics/cams.json`` (best
background threshold and mIoU on ``cams.eval_split``, plus the train split as WSSS papers
report), ``plots/cams_threshold.csv`` and an overlay grid.
"""

from __future__ import annotations

import csv
import io

import mlflow

from pnoc.cam.inference import cam_overlay_grid, load_cam_model, load_cam_npz
from pnoc.data.factory import open_dataset
from pnoc.io import atomic_path, write_json, write_text
from pnoc.steps import cams
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import log_artifacts


def run() -> None:
    with stage("cams") as ctx:
        p = ctx.params
        runtime = ctx.runtime()
        model = load_cam_model(paths.CAM_MODEL, runtime.torch_device)
        datasets = {split: open_dataset(p.data, split) for split in p.cams.splits}
        with atomic_path(paths.CAMS) as tmp:
            sweeps = cams.run(
                model,
                datasets,
                tmp,
                runtime,
                scales=p.cams.scales,
                flip=p.cams.flip,
                thresholds=p.cams.thresholds.values(),
            )
        report: dict = {}
        rows = []
        for split, sweep in sweeps.items():
            print(f"wrote CAMs of {len(datasets[split])} {split} images")
            report[split] = sweep.to_dict(datasets[split].class_names)
            mlflow.log_metrics(
                {f"{split}.miou": sweep.best_miou, f"{split}.best_threshold": sweep.best_threshold}
            )
            rows += [{"split": split, **r} for r in sweep.to_rows()]
        report["miou"] = report[p.cams.eval_split]["miou"]
        report["best_threshold"] = report[p.cams.eval_split]["best_threshold"]
        write_json(paths.CAMS_METRICS, report)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["split", "threshold", "miou"])
        writer.writeheader()
        writer.writerows(rows)
        write_text(paths.CAMS_CURVE, buf.getvalue())

        shown = datasets[p.cams.eval_split]
        images, maps, classes = [], [], []
        for image_id in shown.ids[:6]:
            record, cls = load_cam_npz(paths.CAMS / f"{image_id}.npz")
            images.append(shown.load_image(image_id))
            maps.append(record.astype("float32"))
            classes.append(cls)
        cam_overlay_grid(images, maps, classes, shown.class_names, paths.CAMS_PLOT)
        log_artifacts(paths.CAMS_METRICS, paths.CAMS_CURVE, paths.CAMS_PLOT)
        print(f"CAM mIoU ({p.cams.eval_split}): {report.get('miou')}")


if __name__ == "__main__":
    main(run)
