"""Stage ``train_affinity``: affinity labels from CAMs + saliency, then AffinityNet on them.

Outputs ``outputs/affinity_labels/<id>.png`` (0 background, c class, 255 ignore),
``models/affinity.pt`` and ``metrics/affinity_labels.json`` (confident share, precision of the
confident pixels against the ground truth where it exists, images with no confident pixel).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

from pnoc.cam.export import cam_path
from pnoc.cam.inference import load_cam_npz
from pnoc.data.factory import open_dataset
from pnoc.data.voc import write_mask_png
from pnoc.io import atomic_path, write_json
from pnoc.models.backbones import save_model
from pnoc.refine.affinity import train_affinity
from pnoc.refine.affinity_labels import IGNORE, make_affinity_labels
from pnoc.saliency.inference import load_saliency_png, saliency_path
from pnoc_pipelines.common import checkpoint_config, main, stage
from pnoc_pipelines.tracking import MlflowLogger

CAMS = Path("outputs/cams")
SALIENCY = Path("outputs/saliency")
LABELS = Path("outputs/affinity_labels")
OUT = Path("models/affinity.pt")
METRICS = Path("metrics/affinity_labels.json")


def write_labels(dataset, cfg, out_dir: Path) -> dict:
    confident, correct, total, empty = 0, 0, 0, []
    for image_id in dataset.ids:
        cams, classes = load_cam_npz(cam_path(CAMS, image_id))
        sal = load_saliency_png(saliency_path(SALIENCY, image_id), expected_size=cams.shape[1:])
        labels = make_affinity_labels(
            cams,
            classes,
            sal,
            fg_threshold=cfg.fg_threshold,
            bg_threshold=cfg.bg_threshold,
            fg_saliency=cfg.fg_saliency,
        )
        write_mask_png(out_dir / f"{image_id}.png", labels)
        known = labels != IGNORE
        total += labels.size
        confident += int(known.sum())
        if not known.any():
            empty.append(image_id)
        gt = dataset.load_mask(image_id)
        if gt is not None:
            scored = known & (gt != IGNORE)
            correct += int((labels[scored] == gt[scored]).sum())
    return {
        "confident_share": confident / max(total, 1),
        "precision": correct / max(confident, 1),
        "images": len(dataset),
        "images_without_confident_pixels": len(empty),
        "empty_ids": empty[:50],
    }


def run() -> None:
    with stage("train_affinity", ["base", "data", "affinity"]) as ctx:
        p = ctx.params
        train = open_dataset(p.data, p.data.train_split)
        with atomic_path(LABELS) as tmp:
            tmp.mkdir()
            stats = write_labels(train, p.affinity, tmp)
        write_json(METRICS, stats)
        mlflow.log_metrics({k: float(v) for k, v in stats.items() if np.isscalar(v)})
        print(
            f"affinity labels: {stats['confident_share']:.1%} confident pixels, "
            f"precision {stats['precision']:.1%}, "
            f"{stats['images_without_confident_pixels']} image(s) without any"
        )
        model, result = train_affinity(
            p.affinity,
            train,
            LABELS,
            image_size=p.data.image_size,
            seed=p.base.seed,
            device=ctx.device,
            amp=p.base.amp,
            num_workers=p.base.num_workers,
            checkpoint=checkpoint_config("train_affinity", p.base, p.data, p.affinity),
            callbacks=[MlflowLogger()],
            progress=p.base.progress,
        )
        save_model(OUT, model, {"stage": "train_affinity", "radius": p.affinity.radius})
        mlflow.log_artifact(str(METRICS))
        print(f"trained AffinityNet in {result.seconds:.0f}s -> {OUT}")


if __name__ == "__main__":
    main(run)
