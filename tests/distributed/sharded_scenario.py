"""The four inference steps on a tiny dataset of two image sizes, as one worker (run as a script).

    python tests/distributed/sharded_scenario.py WORK OUT BATCH_SIZE LOADER_WORKERS

WORK holds what :func:`build` made (the dataset, four random-init networks, affinity labels).
The script runs ``pnoc.steps.cams``, ``saliency``, ``pseudo_masks`` and ``evaluate`` as the stages
do, their per-image folders written through ``shared_atomic_dir`` into OUT (``cams``,
``saliency``, ``pseudo_masks``), then the saliency of the ``broken`` split, whose image at
position 1 is not a JPEG (rank 1's share under two workers). It writes
``OUT/result-<rank>.pkl``: every step's result, the error the broken split raised and the
progress lines this process logged.

With RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in the environment the process first joins a
gloo group; without them it is the single-worker reference.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pnoc.config import PseudoMaskParams
from pnoc.data.files import write_mask_png
from pnoc.data.synthetic import generate_synthetic
from pnoc.data.voc import VOCDataset
from pnoc.engine import Runtime
from pnoc.engine.distributed import init_from_env, shared_atomic_dir, world
from pnoc.models.affinity import AffinityNet
from pnoc.models.cam import CAMNet
from pnoc.models.ccam import CCAMNet
from pnoc.models.deeplab import DeepLabV3Plus
from pnoc.steps import cams, evaluate, pseudo_masks, saliency

BACKBONE = "efficientnet_lite0"
CLASSES = 3
SPLITS = ("train", "val")
PSEUDO = PseudoMaskParams(exp_times=2)


def build(work: Path) -> None:
    """The dataset (``WORK/data``), the networks (``WORK/models.pt``: random weights, BatchNorm
    statistics of random images) and the affinity labels (``WORK/labels``) of the scenario.

    Images: 10 train and 6 val of 32 px, 3 train and 3 val of 40 px (ids ``b_…``), in a shuffled
    order: batches mix sizes, a batch of 16 holds more than 8 images of one size (more than 15
    network images with the flip) and two shards differ by one image. Split ``broken``: a good
    image and, at position 1, a file that is not a JPEG. Affinity labels: the ground truth, but
    all ignored for every third image (a fallback to the CAM argmax).
    """
    generate_synthetic(
        work / "data", num_train=10, num_val=6, num_classes=CLASSES, image_size=32, seed=0
    )
    generate_synthetic(
        work / "other", num_train=3, num_val=3, num_classes=CLASSES, image_size=40, seed=1
    )
    root, other = work / "data", work / "other"
    for split in SPLITS:
        lists = [r / "ImageSets" / "Segmentation" / f"{split}.txt" for r in (root, other)]
        ours, theirs = (p.read_text().split() for p in lists)
        for image_id in theirs:
            for folder, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png")):
                shutil.copy(
                    other / folder / f"{image_id}.{ext}", root / folder / f"b_{image_id}.{ext}"
                )
            shutil.copy(
                other / "Annotations" / f"{image_id}.xml",
                root / "Annotations" / f"b_{image_id}.xml",
            )
        mixed = ours + [f"b_{i}" for i in theirs]
        mixed = [mixed[k] for k in np.random.default_rng(3).permutation(len(mixed))]
        lists[0].write_text("".join(f"{i}\n" for i in mixed))
    shutil.rmtree(other)
    (root / "JPEGImages" / "broken.jpg").write_bytes(b"not a jpeg")
    first = sorted((root / "JPEGImages").glob("train_*.jpg"))[0].stem
    (root / "ImageSets" / "Segmentation" / "broken.txt").write_text(f"{first}\nbroken\n")

    torch.manual_seed(0)
    models = _networks()
    for model in models.values():  # BatchNorm statistics of real activations: at their
        for m in model.modules():  # initial ones the maps of random weights vanish (~1e-10)
            if isinstance(m, torch.nn.BatchNorm2d):  # and any two kernels agree on them
                m.momentum = None
        with torch.no_grad():
            model.train()(torch.randn(16, 3, 32, 32))
    torch.save({k: m.state_dict() for k, m in models.items()}, work / "models.pt")

    train = VOCDataset(root, "train")
    (work / "labels").mkdir()
    for k, image_id in enumerate(train.ids):
        mask = train.load_mask(image_id)
        assert mask is not None
        write_mask_png(work / "labels" / f"{image_id}.png", mask if k % 3 else mask * 0 + 255)


def _networks() -> dict[str, torch.nn.Module]:
    return {
        "cam": CAMNet(BACKBONE, CLASSES),
        "ccam": CCAMNet(BACKBONE, features="low"),
        "affinity": AffinityNet(BACKBONE, dim=32),
        "deeplab": DeepLabV3Plus(BACKBONE, CLASSES + 1, aspp_channels=32),
    }


def load_models(work: Path) -> dict[str, torch.nn.Module]:
    """The networks :func:`build` saved, in eval mode."""
    states = torch.load(work / "models.pt", weights_only=True)
    models = _networks()
    for name, model in models.items():
        model.load_state_dict(states[name])
        model.eval()
    return models


def run_steps(
    work: Path, out: Path, runtime: Runtime, *, batch_size: int, sweep: bool = True
) -> dict[str, Any]:
    """The four steps as the stages run them; their results (``sweep``: the CAMs' too)."""
    models = load_models(work)
    data = {split: VOCDataset(work / "data", split) for split in SPLITS}
    result: dict[str, Any] = {}
    with shared_atomic_dir(out / "cams") as tmp:
        sweeps = cams.run(
            models["cam"],
            data,
            tmp,
            runtime,
            scales=(1.0, 0.5),
            flip=True,
            thresholds=np.round(np.arange(1, 16) * 0.05, 6),
            batch_size=batch_size,
        )
    if sweep:
        result["cams"] = {s: (w.matrices, w.miou, w.best_index) for s, w in sweeps.items()}
    with shared_atomic_dir(out / "saliency") as tmp:
        sal = saliency.run(
            models["ccam"],
            data,
            tmp,
            runtime,
            threshold=0.5,
            flip=True,
            eval_split="val",
            batch_size=batch_size,
        )
    result["saliency"] = (sal.report, sal.shown)
    with shared_atomic_dir(out / "pseudo_masks") as tmp:
        walked = pseudo_masks.run(
            models["affinity"],
            data["train"],
            tmp,
            runtime,
            cfg=PSEUDO,
            cam_dir=out / "cams",
            label_dir=work / "labels",
            saliency_dir=out / "saliency",
            saliency_threshold=0.5,
            batch_size=batch_size,
        )
    result["pseudo_masks"] = (walked.report, walked.shown)
    scored = evaluate.run(
        models["deeplab"],
        data["val"],
        runtime,
        scales=(1.0, 0.75),
        flip=False,
        crf=False,
        batch_size=batch_size,
    )
    result["evaluate"] = (scored.confusion.matrix, scored.shown)
    return result


def run_broken(work: Path, out: Path, runtime: Runtime) -> tuple[str, str]:
    """The saliency of the ``broken`` split: (type, message) of the error it raises."""
    model = load_models(work)["ccam"]
    try:
        with shared_atomic_dir(out / "broken") as tmp:
            saliency.run(
                model,
                {"broken": VOCDataset(work / "data", "broken")},
                tmp,
                runtime,
                threshold=0.5,
                flip=True,
                eval_split="broken",
            )
    except Exception as exc:  # noqa: BLE001 (recorded for the test)
        return type(exc).__name__, str(exc)
    return "", ""


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main(argv: list[str]) -> None:
    work, out, batch_size, loader_workers = Path(argv[0]), Path(argv[1]), int(argv[2]), int(argv[3])
    torch.set_num_threads(1)
    init_from_env(torch.device("cpu"), timeout_s=60)
    lines = Lines()
    logger = logging.getLogger("pnoc.engine.progress")
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    runtime = Runtime(num_workers=loader_workers, progress=False)
    result = run_steps(work, out, runtime, batch_size=batch_size)
    result["broken"] = run_broken(work, out, runtime)
    result["progress"] = lines.lines
    result["world"] = str(world())
    (out / f"result-{world().rank}.pkl").write_bytes(pickle.dumps(result))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
