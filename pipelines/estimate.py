"""``pnoc estimate``: what the current params will cost, measured before the long run.

Every stage runs briefly, in order, at its real resolution and on this machine's device, through
the same library call the stage makes: each training stage takes a few optimizer steps at two
batch sizes (``--probe-batch`` and half of it, capped by the stage's own), each inference stage
processes a few images per split, and the later stages
consume what the earlier probes wrote (untrained networks: time and memory do not depend on the
weights). The figures are scaled to the full run:

- training: seconds per image (the median step, after the first, divided by the probe batch)
  × images per epoch (the split's size, cut to whole global batches, or
  ``max_steps_per_epoch`` batches) × epochs, divided over ``base.workers`` (ideal scaling);
  peak memory at the per-worker batch, extrapolated linearly from the two probe batches;
- inference: seconds per image × the split's images (split over ``base.workers``); the peak
  as measured (one image at a time per forward group does not grow with the split).

Peak memory is the process's resident memory on CPU (the interpreter's own share included) and
the allocator's peak on CUDA. The table is printed, written to ``reports/estimate.json`` and
logged to MLflow (run ``estimate``: one metric per stage, the table as an artifact).
``--images SPLIT=N`` scales to another split size than the dataset's own (e.g. the real VOC
2012 counts while probing on the generated stand-in).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch

from pnoc.config import Params, flatten
from pnoc.data.factory import open_dataset
from pnoc.engine import Runtime
from pnoc.engine.probe import PeakMemory, StepTimer
from pnoc.errors import ConfigError
from pnoc.io import write_json
from pnoc_pipelines import paths, tracking

#: Optimizer steps of each training probe (the first is not timed).
PROBE_STEPS = 3


@dataclass
class StageEstimate:
    stage: str
    probe: str  # what ran, e.g. "3 steps at batch 1 and 2"
    seconds_per_image: float
    images: int  # images the full stage processes (training: over all epochs)
    seconds: float  # estimated wall time of the full stage
    peak_mib: float  # estimated peak memory of the full stage (per worker)
    probe_seconds: float  # wall time of the probe itself


def _first(dataset: Any, n: int) -> Any:
    """The reader restricted to its first ``n`` ids (a shallow copy)."""
    sub = copy.copy(dataset)
    sub.ids = list(dataset.ids[:n])
    return sub


class _Estimator:
    def __init__(
        self, params: Params, work: Path, *, batch: int, counts: Mapping[str, int]
    ) -> None:
        self.p = params
        self.work = work
        self.batch = batch
        self.images = batch * PROBE_STEPS
        self.counts = dict(counts)
        self.runtime = Runtime.from_params(params.base).replace(progress=False, checkpoint=None)
        self.device = self.runtime.torch_device
        self.workers = params.base.workers * params.base.nodes
        self.rows: list[StageEstimate] = []
        self._full: dict[str, Any] = {}
        self._base_mib = 0.0
        with PeakMemory(self.device) as m:
            pass
        self._base_mib = 0.0 if m.on_cuda else m.start_mib

    # -- data ---------------------------------------------------------------------------------
    def dataset(self, split: str) -> Any:
        if split not in self._full:
            self._full[split] = open_dataset(self.p.data, split)
        return self._full[split]

    def split_size(self, split: str) -> int:
        """Images of ``split`` in the full run (``--images`` or the dataset's own count)."""
        return self.counts[split] if split in self.counts else len(self.dataset(split))

    def subset(self, split: str) -> Any:
        return _first(self.dataset(split), self.images)

    # -- probes -------------------------------------------------------------------------------
    def train(self, stage: str, cfg: Any, split: str, call: Callable[[Any, Runtime], Any]) -> Any:
        """Probe a training stage at two batch sizes; ``call(cfg, runtime)`` runs the library
        step. Returns what the larger probe returned (the next probes' input)."""
        per_worker = max(1, cfg.batch_size // self.workers)
        available = len(self.subset(split))  # a small dataset caps the probe batch
        big = max(1, min(per_worker, self.batch, available // PROBE_STEPS))
        small = max(1, big // 2)
        measured: dict[int, tuple[float, float]] = {}
        result = None
        start = time.perf_counter()
        for batch in sorted({small, big}):
            probe_cfg = cfg.model_copy(
                update={"epochs": 1, "batch_size": batch, "max_steps_per_epoch": PROBE_STEPS}
            )
            timer = StepTimer()
            with PeakMemory(self.device) as memory:
                result = call(probe_cfg, self.runtime.replace(callbacks=[timer]))
            measured[batch] = (timer.per_step() / batch, memory.peak_mib - memory.start_mib)
        per_image, grown = measured[big]
        if small != big:
            slope = (measured[big][1] - measured[small][1]) / (big - small)
            grown += max(slope, 0.0) * (per_worker - big)
        # As fit lays out an epoch: whole global batches, or one smaller batch if fewer images.
        n = self.split_size(split)
        steps = max(1, n // cfg.batch_size)
        if cfg.max_steps_per_epoch is not None:
            steps = min(steps, cfg.max_steps_per_epoch)
        images = steps * min(n, cfg.batch_size) * cfg.epochs
        batches = " and ".join(map(str, sorted(measured)))
        self._add(stage, f"{PROBE_STEPS} steps at batch {batches}", per_image, images, grown, start)
        return result

    def infer(self, stage: str, splits: list[str], call: Callable[[], Any]) -> Any:
        """Probe an inference stage over the first images of each of ``splits``."""
        start = time.perf_counter()
        with PeakMemory(self.device) as memory:
            result = call()
        probed = sum(min(self.images, len(self.dataset(s))) for s in splits)
        per_image = (time.perf_counter() - start) / probed
        images = sum(self.split_size(s) for s in splits)
        grown = memory.peak_mib - memory.start_mib
        self._add(stage, f"{probed} images ({', '.join(splits)})", per_image, images, grown, start)
        return result

    def _add(
        self, stage: str, probe: str, per_image: float, images: int, grown: float, start: float
    ) -> None:
        """A row: ``per_image`` seconds × ``images`` over the workers; the memory the probe
        grew (``grown`` MiB) on top of the interpreter's."""
        self.rows.append(
            StageEstimate(
                stage=stage,
                probe=probe,
                seconds_per_image=per_image,
                images=images,
                seconds=per_image * images / self.workers,
                peak_mib=self._base_mib + grown,
                probe_seconds=time.perf_counter() - start,
            )
        )

    # -- the chain ----------------------------------------------------------------------------
    def run(self) -> list[StageEstimate]:
        from pnoc.steps import (
            cams,
            evaluate,
            pseudo_masks,
            saliency,
            train_affinity,
            train_cam,
            train_saliency,
            train_segmentation,
        )

        p, work, size = self.p, self.work, self.p.data.image_size
        train_split = p.data.train_split
        train = self.subset(train_split)
        oc = self.train(
            "train_oc",
            p.oc,
            train_split,
            lambda cfg, rt: train_cam.run(cfg, train, rt, image_size=size).model,
        )
        cam = self.train(
            "train_cam",
            p.cam,
            train_split,
            lambda cfg, rt: train_cam.run(cfg, train, rt, image_size=size, oc=oc).model,
        )
        splits = list(p.cams.splits)
        probe_sets = {s: self.subset(s) for s in splits}
        cam_dir = work / "cams"
        self.infer(
            "cams",
            splits,
            lambda: cams.run(
                cam,
                probe_sets,
                cam_dir,
                self.runtime,
                scales=p.cams.scales,
                flip=p.cams.flip,
                thresholds=p.cams.thresholds.values(),
            ),
        )
        ccam = self.train(
            "train_saliency",
            p.saliency,
            train_split,
            lambda cfg, rt: train_saliency.run(cfg, train, cam_dir, rt, image_size=size).model,
        )
        sal_dir = work / "saliency"
        self.infer(
            "saliency",
            splits,
            lambda: saliency.run(
                ccam,
                probe_sets,
                sal_dir,
                self.runtime,
                threshold=p.saliency.threshold,
                flip=p.saliency.flip,
                eval_split=p.cams.eval_split,
            ),
        )
        label_dir = work / "affinity_labels"
        affinity = self.train(
            "train_affinity",
            p.affinity,
            train_split,
            lambda cfg, rt: (
                train_affinity.run(
                    cfg, train, cam_dir, sal_dir, label_dir, rt, image_size=size
                ).model
            ),
        )
        pm_split = p.pseudo_masks.split
        pm_set = self.subset(pm_split)
        mask_dir = work / "pseudo_masks"
        self.infer(
            "pseudo_masks",
            [pm_split],
            lambda: pseudo_masks.run(
                affinity,
                pm_set,
                mask_dir,
                self.runtime,
                cfg=p.pseudo_masks,
                cam_dir=cam_dir,
                label_dir=label_dir,
                saliency_dir=sal_dir,
                saliency_threshold=p.saliency.threshold,
            ),
        )
        deeplab = self.train(
            "train_segmentation",
            p.segmentation,
            pm_split,
            lambda cfg, rt: (
                train_segmentation.run(cfg, pm_set, mask_dir, rt, image_size=size).model
            ),
        )
        val_split = p.data.val_split
        val = self.subset(val_split)
        self.infer(
            "evaluate",
            [val_split],
            lambda: evaluate.run(
                deeplab,
                val,
                self.runtime,
                scales=p.segmentation.tta_scales,
                flip=p.segmentation.tta_flip,
                crf=p.segmentation.crf,
            ),
        )
        return self.rows


def estimate(
    params: Params, *, batch: int = 4, counts: Mapping[str, int] | None = None
) -> list[StageEstimate]:
    """Probe every stage of the chain with ``params`` and scale to the full run.

    batch: the larger probe batch of the training stages (capped by the per-worker batch; the
    smaller one is half of it); every probe reads ``batch ×`` :data:`PROBE_STEPS` images per
    split. counts: split sizes to scale to instead of the dataset's own.
    """
    if batch < 1:
        raise ConfigError(f"estimate: --probe-batch must be >= 1, got {batch}")
    with tempfile.TemporaryDirectory(prefix="pnoc-estimate-") as tmp:
        return _Estimator(params, Path(tmp), batch=batch, counts=counts or {}).run()


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_table(rows: list[StageEstimate], device: str) -> str:
    head = f"{'stage':<20}{'s/image':>9}{'images':>10}{'estimate':>11}{'peak memory':>13}  probe"
    lines = [f"estimate on {device}", head]
    for r in rows:
        lines.append(
            f"{r.stage:<20}{r.seconds_per_image:>9.3f}{r.images:>10}"
            f"{format_duration(r.seconds):>11}{r.peak_mib / 1024:>10.1f} GiB  {r.probe}"
        )
    total = sum(r.seconds for r in rows)
    peak = max((r.peak_mib for r in rows), default=0.0)
    lines.append(f"{'total':<39}{format_duration(total):>11}{peak / 1024:>10.1f} GiB")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    import psutil

    cpu = platform.processor() or platform.machine()
    cores = psutil.cpu_count(logical=True)
    return f"CPU ({cpu}, {cores} logical cores, {torch.get_num_threads()} threads)"


def parse_counts(items: list[str]) -> dict[str, int]:
    counts = {}
    for item in items:
        split, sep, value = item.partition("=")
        if not sep or not value.isdigit() or int(value) < 1:
            raise ConfigError(f"estimate: --images expects SPLIT=N with N >= 1, got '{item}'")
        counts[split] = int(value)
    return counts


def run(
    params_path: Path,
    *,
    batch: int = 4,
    counts: list[str] | None = None,
    report_path: Path = paths.ESTIMATE_REPORT,
) -> tuple[list[StageEstimate], str]:
    """``pnoc estimate``: probe, print, write ``reports/estimate.json`` and an MLflow run."""
    from pnoc_pipelines.common import load_params

    params = load_params(params_path)
    runtime = Runtime.from_params(params.base)
    device = device_name(runtime.torch_device)
    rows = estimate(params, batch=batch, counts=parse_counts(counts or []))
    table = format_table(rows, device)
    report = {
        "device": device,
        "workers": params.base.workers * params.base.nodes,
        "total_seconds": sum(r.seconds for r in rows),
        "stages": [asdict(r) for r in rows],
    }
    write_json(report_path, report)
    tracking.configure()
    with mlflow.start_run(run_name="estimate", tags={"pnoc.kind": "estimate"}):
        mlflow.log_params(flatten(params))
        mlflow.log_metrics({f"estimate_seconds/{r.stage}": r.seconds for r in rows})
        mlflow.log_metrics({f"estimate_peak_mib/{r.stage}": r.peak_mib for r in rows})
        mlflow.log_metric("estimate_total_hours", report["total_seconds"] / 3600)
        mlflow.log_table(
            {k: [asdict(r)[k] for r in rows] for k in asdict(rows[0])}, "estimate_table.json"
        )
        mlflow.log_dict(report, "estimate.json")
    return rows, table + f"\n\nwritten to {report_path} and MLflow run 'estimate'"


__all__ = ["StageEstimate", "estimate", "format_table", "run"]
