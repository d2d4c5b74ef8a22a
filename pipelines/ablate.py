"""``pnoc ablate-cams``: vanilla vs P-OC vs P-NOC on the same data, CAM mIoU per seed.

The paper's central claim, checked on the configured dataset: for each seed the ordinary
classifier is trained once, then each method's generator from the same params (only
``cam.method`` differs); CAMs of the evaluation split are scored over the threshold sweep.
One MLflow parent run, a nested run per (method, seed). ``--set KEY=VALUE`` changes params for
the ablation only (e.g. ``--set cam.output_stride=8``), as ``dvc exp run -S`` does.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import yaml

from pnoc.cam.methods import METHODS
from pnoc.config import Params, flatten
from pnoc.data.factory import open_dataset
from pnoc.engine import Runtime
from pnoc.errors import ConfigError
from pnoc.io import write_json
from pnoc.steps import train_cam
from pnoc_pipelines import paths, tracking
from pnoc_pipelines.cams import score_cams
from pnoc_pipelines.common import load_params, mean_std


def generators(
    params: Params, methods: list[str], seed: int, train: Any
) -> Iterator[tuple[str, train_cam.TrainedCAM]]:
    """The ordinary classifier trained once with ``seed``, then each method's generator from it:
    the ``train_oc`` and ``train_cam`` stages' library call, with the same params and seed."""
    runtime = Runtime.from_params(params.base, seed=seed)
    image_size = params.data.image_size
    oc = train_cam.run(params.oc, train, runtime, image_size=image_size).model
    for method in methods:
        cfg = params.cam.model_copy(update={"method": method})
        yield method, train_cam.run(cfg, train, runtime, image_size=image_size, oc=oc)


def check_methods(command: str, methods: list[str], seeds: list[int]) -> None:
    """At least one method, each a known one, and at least one seed; else a ConfigError."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or not seeds:
        raise ConfigError(
            f"{command}: methods must be among {sorted(METHODS)} and at least one seed given "
            f"(got methods={methods}, seeds={seeds})"
        )


def ablate_cams(
    params: Params,
    methods: list[str],
    seeds: list[int],
    report_path: Path = paths.ABLATION_REPORT,
    overrides: dict[str, Any] | None = None,
) -> dict:
    check_methods("ablate-cams", methods, seeds)
    train = open_dataset(params.data, params.data.train_split)
    split = params.cams.eval_split
    evaluation = open_dataset(params.data, split)
    results: dict[str, dict[int, float]] = {m: {} for m in methods}
    experiment_id = tracking.configure()
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name="ablate-cams",
        tags={"pnoc.kind": "ablation", **tracking.lineage_tags()},
    ):
        mlflow.log_params({"methods": ",".join(methods), "seeds": ",".join(map(str, seeds))})
        if overrides:
            mlflow.log_params({f"set.{k}": v for k, v in overrides.items()})
        for seed in seeds:
            runtime = Runtime.from_params(params.base, seed=seed)
            for method, trained in generators(params, methods, seed, train):
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory() as cam_dir:
                    sweep = score_cams(
                        params, trained.model, {split: evaluation}, cam_dir, runtime
                    )[split]
                seconds = trained.result.seconds + time.perf_counter() - t0
                cam_cfg = params.cam.model_copy(update={"method": method})
                with mlflow.start_run(run_name=f"{method}-seed{seed}", nested=True):
                    mlflow.log_params(flatten(cam_cfg) | {"seed": seed})
                    mlflow.log_metrics(
                        {
                            "miou": sweep.best_miou,
                            "best_threshold": sweep.best_threshold,
                            "seconds": seconds,
                        }
                    )
                results[method][seed] = sweep.best_miou
                print(f"seed {seed} {method:8s} CAM mIoU {100 * sweep.best_miou:.2f}", flush=True)
        summary = {
            m: {
                "per_seed": {str(s): v for s, v in r.items()},
                **mean_std(r.values()),
            }
            for m, r in results.items()
        }
        for m, s in summary.items():
            mlflow.log_metric(f"{m}.mean_miou", s["mean"])
        report = {"split": split, "overrides": overrides or {}, "methods": summary}
        write_json(report_path, report)
        mlflow.log_dict(report, "ablation_cams.json")
    return report


def format_table(report: dict) -> str:
    lines = [
        f"CAM mIoU on '{report['split']}' (mean ± std over seeds, %)",
        f"{'method':10s} {'mean':>7s} {'std':>6s}  per seed",
    ]
    for m, s in report["methods"].items():
        per = ", ".join(f"{100 * v:.2f}" for v in s["per_seed"].values())
        lines.append(f"{m:10s} {100 * s['mean']:7.2f} {100 * s['std']:6.2f}  {per}")
    return "\n".join(lines)


def parse_settings(settings: list[str], *, ablation: bool = True) -> dict[str, Any]:
    """``["cam.output_stride=8", ...]`` -> ``{"cam.output_stride": 8}`` (values read as YAML).
    ``ablation``: refuse generator params (an ablation trains on the data already generated)."""
    out: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. cam.output_stride=8")
        key = key.strip()
        if ablation and (key == "data.synthetic" or key.startswith("data.synthetic.")):
            raise ConfigError(
                f"--set {item!r}: the ablation trains on the dataset already generated in "
                "data/synthetic; change data.synthetic in params.yaml and run "
                "`pnoc repro prepare` first"
            )
        out[key] = yaml.safe_load(value)
    return out


def run(
    methods: list[str],
    seeds: list[int],
    params_file: Path = Path("params.yaml"),
    settings: list[str] | None = None,
) -> dict:
    overrides = parse_settings(settings or [])
    params = load_params(params_file, overrides)
    return ablate_cams(params, methods, seeds, overrides=overrides)
