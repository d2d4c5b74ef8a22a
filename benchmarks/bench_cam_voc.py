"""Images per second of the ``cams`` stage's CAM inference at VOC size on this CPU.

    PYTHONPATH=src python benchmarks/bench_cam_voc.py [--backbone resnet50] [--size 375 500]
        [--scales 0.5 1 1.5 2] [--no-flip] [--images 3] [--warmup 1] [--batch-size 8]
        [--threads N] [--json FILE]

What the ``cams`` stage runs per split (:func:`pnoc.cam.export.export_cams`, the code path of
:mod:`pnoc.steps.cams`): each image decoded and normalised (``eval_transform``), the
multi-scale + flip CAMs of a ``CAMNet`` (:func:`pnoc.cam.inference.multiscale_cams`, through
:func:`pnoc.engine.inference.per_image`'s CPU batching), normalised, the present classes kept
and written as a float16 ``.npz``. Images: ``--images`` random H×W RGB images (VOC's typical
500×375 by default) with one to three of ``--num-classes`` present; network: a randomly
initialised CAMNet built through its public constructor (``CAMNet(backbone, num_classes,
output_stride=...)``; the time does not depend on the weights). ``--warmup`` images go through
the same call first (first-call allocations, oneDNN kernel selection), then the timed call
exports ``--images`` images; images/s is their number over its wall time. Also printed: the
process's peak RSS (``ru_maxrss``) and the torch threads used.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pnoc.cam.export import export_cams
from pnoc.cam.inference import DEFAULT_SCALES
from pnoc.data.base import Sample
from pnoc.engine import Runtime
from pnoc.engine.inference import DEFAULT_BATCH_SIZE
from pnoc.models.cam import CAMNet

MB = 1024**2


class RandomImages:
    """The reader interface ``export_cams`` uses (``len``, ``get``) over random RGB images."""

    def __init__(self, n: int, h: int, w: int, num_classes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.samples = []
        for i in range(n):
            labels = np.zeros(num_classes, dtype=np.float32)
            labels[rng.choice(num_classes, size=min(num_classes, 1 + i % 3), replace=False)] = 1
            image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            self.samples.append(Sample(id=f"img{seed}_{i:04d}", image=image, labels=labels))
        self.class_names = ["background"] + [f"class{k}" for k in range(num_classes)]

    def __len__(self) -> int:
        return len(self.samples)

    def get(self, i: int, mask: bool = True) -> Sample:
        return self.samples[i]


def ru_maxrss() -> int:
    """Lifetime peak RSS of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--output-stride", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"))
    p.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES))
    p.add_argument("--no-flip", action="store_true", help="without the mirrored copies")
    p.add_argument("--images", type=int, default=3, help="images timed")
    p.add_argument("--warmup", type=int, default=1, help="images exported before the timing")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="stage batch")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = args.size
    flip = not args.no_flip
    torch.manual_seed(0)
    model = CAMNet(args.backbone, args.num_classes, output_stride=args.output_stride).eval()
    runtime = Runtime(device="cpu", progress=False)
    scales = ", ".join(f"{s:g}" for s in args.scales)
    print(
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}; CAMNet({args.backbone}, {args.num_classes} classes, output "
        f"stride {args.output_stride}), {w}×{h} images, scales {scales}"
        f"{' + flip' if flip else ''}, stage batch {args.batch_size}; {args.warmup} warm-up "
        f"image(s), then {args.images} timed"
    )
    logging.getLogger("pnoc").setLevel(logging.WARNING)  # the loop's summary line
    kw = {"scales": args.scales, "flip": flip, "thresholds": None, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        if args.warmup:
            warm = RandomImages(args.warmup, h, w, args.num_classes, seed=1)
            export_cams(model, warm, Path(tmp) / "warmup", runtime, what="warm-up", **kw)
        data = RandomImages(args.images, h, w, args.num_classes)
        t0 = time.perf_counter()
        export_cams(model, data, Path(tmp) / "cams", runtime, what="cams", **kw)
        seconds = time.perf_counter() - t0
        written = sorted(f.name for f in (Path(tmp) / "cams").glob("*.npz"))
    assert len(written) == args.images, written
    per_image = seconds / args.images
    print(
        f"\n{args.images} images in {seconds:.2f} s: {per_image:.2f} s/image, "
        f"{1 / per_image:.3f} images/s; peak RSS (ru_maxrss) {ru_maxrss() / MB:.0f} MB"
    )
    results = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "seconds": seconds,
        "seconds_per_image": per_image,
        "images_per_s": 1 / per_image,
        "ru_maxrss_mb": ru_maxrss() / MB,
    }
    if args.json:
        from pnoc.io import write_json

        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
