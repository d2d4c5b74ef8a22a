"""The trial: a Ray Tune function trainable that trains with one point of the search space."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnoc.config import parse_params
from pnoc.errors import ConfigError
from pnoc.tune import Sweep, apply_overrides
from pnoc_pipelines.paths import CAMS, OC_MODEL


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a sweep shares; travels to the workers through Ray's object store."""

    kind: str
    objective: str
    base_params: dict[str, Any]
    root: str  # the project root: the trial's working directory
    cpus: float
    gpus: float


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """Params = base + ``config`` (dotted keys), then train, reporting after every epoch.

    Paths in params.yaml are relative to the project root, so the trial works from there (the
    project must sit at the same absolute path on every node of a cluster). A trial with GPUs
    trains on CUDA, one without on the CPU with as many threads as CPUs. The training step
    seeds itself from ``base.seed``.
    """
    import torch
    from ray import tune

    from pnoc.cam.inference import load_cam_model
    from pnoc.tune.objectives import adversarial_objective, saliency_objective

    os.chdir(spec.root)
    params = parse_params(apply_overrides(spec.base_params, config), source="sweep trial")
    torch.set_num_threads(max(1, int(spec.cpus)))
    device = "cuda" if spec.gpus > 0 else "cpu"
    if spec.kind == "saliency":
        saliency_objective(
            params,
            Path(spec.root) / CAMS,
            report=tune.report,
            objective=spec.objective,
            device=device,
        )
    else:
        oc = load_cam_model(Path(spec.root) / OC_MODEL, device)
        adversarial_objective(params, oc, report=tune.report, device=device)


def trainable(sweep: Sweep, root: Path) -> Any:
    """``run_trial`` with the sweep's shared spec and per-trial resources, as Tuner takes it
    (and ``Tuner.restore`` takes it again)."""
    from ray import tune

    res = sweep.settings.resources
    spec = TrialSpec(sweep.kind, sweep.objective, sweep.base_params, str(root), res.cpu, res.gpu)
    return tune.with_resources(
        tune.with_parameters(run_trial, spec=spec), {"cpu": res.cpu, "gpu": res.gpu}
    )


def check_inputs(sweep: Sweep, root: Path) -> None:
    """The data a trial needs exists: CAMs of the splits used, or the ordinary classifier."""
    params = parse_params(sweep.base_params)
    if sweep.kind == "adversarial":
        if not (root / OC_MODEL).is_file():
            raise ConfigError(f"{OC_MODEL}: not found; run `dvc repro train_oc` first")
        return
    from pnoc.data.factory import open_dataset
    from pnoc.tune.objectives import check_cams

    if not (root / CAMS).is_dir():
        raise ConfigError(f"{CAMS}: not found; run `dvc repro cams` first")
    for split in {params.data.train_split, params.pseudo_masks.split}:
        check_cams(open_dataset(params.data, split), root / CAMS)
