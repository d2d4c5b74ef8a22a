"""Stage ``cams``: multi-scale + flip CAMs for every split, and their threshold-sweep mIoU.

Outputs ``outputs/cams/<id>.npz`` (present classes only, float16); ``metrics/cams.json``: every
split's best mIoU (the train split's is what WSSS papers report) and the best background
threshold on ``cams.eval_split``; ``reports/cams_details.json``: per split the
best threshold, its mIoU and per-class IoU; ``plots/cams_threshold/<split>.csv``: mIoU at every
threshold, one file per split (dvc.yaml's ``cams_threshold`` plot draws them as one line each);
and an overlay grid.

Under several workers (``base.workers``) every rank writes the CAMs of its share of the images
into the same folder, published by rank 0 once all are done; rank 0 alone writes the metrics,
reports, plots and MLflow entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow

from pnoc.cam.inference import cam_overlay_grid, load_cam_model, load_cam_npz
from pnoc.config import Params
from pnoc.data.factory import open_dataset
from pnoc.engine import Runtime
from pnoc.engine.distributed import shared_atomic_dir
from pnoc.io import atomic_path, write_csv, write_json
from pnoc.metrics import ThresholdSweep
from pnoc.steps import cams
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import log_artifacts, log_headline, log_pictures


def score_cams(
    params: Params, model: Any, datasets: dict[str, Any], out_dir: str | Path, runtime: Runtime
) -> dict[str, ThresholdSweep]:
    """The stage's library call on ``datasets`` (split -> reader) with the params' scales, flip
    and thresholds: CAM files into ``out_dir`` and each split's threshold sweep. ``pnoc
    ablate-cams`` and ``pnoc robustness`` score their generators through it too."""
    return cams.run(
        model,
        datasets,
        out_dir,
        runtime,
        scales=params.cams.scales,
        flip=params.cams.flip,
        thresholds=params.cams.thresholds.values(),
    )


def headline(sweeps: dict[str, ThresholdSweep], eval_split: str) -> dict:
    """``metrics/cams.json``: each split's best mIoU under the split's name (``train.miou``,
    ``val.miou``: no other metrics file uses these keys, so `dvc exp show` names them so too),
    and the evaluation split with its best background threshold."""
    return {
        "split": eval_split,
        "threshold": sweeps[eval_split].best_threshold,
        **{split: {"miou": sweep.to_dict()["miou"]} for split, sweep in sweeps.items()},
    }


def run() -> None:
    with stage("cams") as ctx:
        p = ctx.params
        eval_split = p.cams.eval_split
        runtime = ctx.runtime()
        model = load_cam_model(paths.CAM_MODEL, runtime.torch_device)
        datasets = {split: open_dataset(p.data, split) for split in p.cams.splits}
        with shared_atomic_dir(paths.CAMS) as tmp:
            sweeps = score_cams(p, model, datasets, tmp, runtime)
        if not ctx.world.is_main:
            return
        details = {
            "eval_split": eval_split,
            **{s: sweep.to_dict(datasets[s].class_names) for s, sweep in sweeps.items()},
        }
        write_json(paths.CAMS_METRICS, headline(sweeps, eval_split))
        write_json(paths.CAMS_REPORT, details)
        with atomic_path(paths.CAMS_CURVES) as tmp:
            for split, sweep in sweeps.items():
                write_csv(tmp / f"{split}.csv", sweep.to_rows())
        for split in sweeps:
            print(f"wrote CAMs of {len(datasets[split])} {split} images")
        log_headline(
            {f"cam_miou_{s}": details[s]["miou"] for s in sweeps}
            | {f"cam_threshold_{eval_split}": details[eval_split]["best_threshold"]}
        )
        mlflow.log_metrics(
            {f"cam_threshold_{s}": details[s]["best_threshold"] for s in sweeps if s != eval_split}
            | {
                f"cam_iou_{s}/{name}": iou
                for s in sweeps
                for name, iou in details[s]["iou"].items()
                if iou is not None
            }
        )

        shown = datasets[eval_split]
        images, maps, classes = [], [], []
        for image_id in shown.ids[:6]:
            record, cls = load_cam_npz(paths.CAMS / f"{image_id}.npz")
            images.append(shown.load_image(image_id))
            maps.append(record.astype("float32"))
            classes.append(cls)
        cam_overlay_grid(images, maps, classes, shown.class_names, paths.CAMS_PLOT)
        log_artifacts(paths.CAMS_METRICS, paths.CAMS_REPORT)
        log_pictures(paths.CAMS_PLOT)
        print(f"CAM mIoU ({eval_split}): {details[eval_split]['miou']}")


if __name__ == "__main__":
    main(run, workers=True)
