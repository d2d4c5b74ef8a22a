"""``pnoc seeds``: the whole chain for several seeds, and every stage's metric as mean ± std.

For each seed the pipeline runs exactly as ``pnoc repro`` runs it — ``dvc repro`` up to
``evaluate`` — in its own workspace ``runs/seeds/seed-<N>/``: a copy of ``dvc.yaml`` and the code
with this project's ``params.yaml``, ``--set`` changes and ``base.seed: N``. Nothing is
registered (the ``register`` stage is left out), and a rerun reruns only the stages whose code
or params changed, so a stopped report resumes and a new seed adds only its own chain.
``--compare`` trains other CAM methods (e.g. vanilla and P-OC) per seed from that seed's
ordinary classifier through the ``train_cam`` library call and scores them as the ``cams``
stage does: the paper's ordering checked on the same seeds.

The table (per metric: each seed, mean ± std; the derived bars: pseudo-masks over the best
CAMs of their split, DeepLabV3+ over the pseudo-masks) goes to ``reports/seeds.json`` and
``reports/seeds.md``; MLflow gets a parent run ``seeds`` with the means and stds and both files,
and under it each seed's pipeline run with its stages' runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.tracking import MlflowClient

from pnoc.cam.inference import load_cam_model
from pnoc.cam.methods import METHODS
from pnoc.config import Params, flatten, parse_params
from pnoc.data.factory import open_dataset
from pnoc.engine import Runtime
from pnoc.errors import ConfigError
from pnoc.io import write_json, write_text
from pnoc.steps import train_cam
from pnoc.tune.space import apply_overrides
from pnoc_pipelines import paths, tracking
from pnoc_pipelines.ablate import parse_settings
from pnoc_pipelines.cams import score_cams
from pnoc_pipelines.common import mean_std, read_yaml, venv_env

SEEDS_DIR = Path("runs/seeds")
REPORT = Path("reports/seeds.json")
TABLE = Path("reports/seeds.md")
LAST_STAGE = "evaluate"  # the chain without `register`: a seeds report registers nothing
COMPARE_DIR = "compare"  # per workspace: the --compare methods' results, keyed by params
_COPIED_FILES = ("dvc.yaml", ".dvcignore")
_COPIED_DIRS = ("src", "pipelines")

# The headline rows, in the chain's order: (label, metrics file, dotted key).
METRICS: tuple[tuple[str, Path, str], ...] = (
    ("CAMs, train", paths.CAMS_METRICS, "train.miou"),
    ("CAMs, val", paths.CAMS_METRICS, "val.miou"),
    ("saliency, val", paths.SALIENCY_METRICS, "miou"),
    ("affinity labels, confident pixels", paths.AFFINITY_METRICS, "miou"),
    ("pseudo-masks", paths.PSEUDO_MASKS_METRICS, "miou"),
    ("DeepLabV3+, val", paths.SEGMENTATION_METRICS, "miou"),
)


def _dig(data: Any, dotted: str) -> float | None:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return float(data) if isinstance(data, int | float) else None


def seed_metrics(ws: Path, pseudo_split: str) -> dict[str, float]:
    """One workspace's headline metrics (fractions) and the derived ones: the pseudo-masks' gain
    over the best CAMs of their split and DeepLabV3+ over the pseudo-masks."""
    out: dict[str, float] = {}
    for label, file, key in METRICS:
        path = ws / file
        value = _dig(json.loads(path.read_text()), key) if path.is_file() else None
        if value is not None:
            out[label] = value
    cams = out.get(f"CAMs, {pseudo_split}")
    if cams is not None and "pseudo-masks" in out:
        out["pseudo-masks − CAMs"] = out["pseudo-masks"] - cams
    if out.get("pseudo-masks") and "DeepLabV3+, val" in out:
        out["DeepLabV3+ / pseudo-masks"] = out["DeepLabV3+, val"] / out["pseudo-masks"]
    return out


def _copy_code(ws: Path) -> None:
    """This project's dvc.yaml and code into ``ws``, replacing what an earlier run copied (DVC
    hashes contents, so unchanged files leave their stages cached)."""
    ws.mkdir(parents=True, exist_ok=True)
    for name in _COPIED_FILES:
        if Path(name).is_file():
            shutil.copy2(name, ws / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in _COPIED_DIRS:
        shutil.rmtree(ws / name, ignore_errors=True)
        shutil.copytree(name, ws / name, ignore=ignore)


def _dvc(ws: Path, *args: str, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=ws, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise ConfigError(f"{ws}: `dvc {' '.join(args)}` failed:\n{proc.stdout}{proc.stderr}")


def prepare_workspace(seed: int, params: dict[str, Any], env: dict[str, str]) -> Path:
    """``runs/seeds/seed-<seed>/`` ready for ``dvc repro``: the code, ``params`` (already with
    ``base.seed``), and a DVC project of its own sharing this project's cache if it has one."""
    ws = SEEDS_DIR / f"seed-{seed}"
    _copy_code(ws)
    write_text(ws / paths.PARAMS_FILE, yaml.safe_dump(params, sort_keys=False))
    if not (ws / ".dvc").is_dir():
        _dvc(ws, "init", "--no-scm", "-q", env=env)
        _dvc(ws, "config", "core.analytics", "false", env=env)
        if Path(".dvc").is_dir():
            _dvc(ws, "cache", "dir", str(Path(".dvc/cache").resolve()), env=env)
    return ws


def _compare_path(ws: Path, params: Params, method: str) -> Path:
    key = {"params": params.model_dump(mode="json"), "method": method}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return ws / COMPARE_DIR / f"{method}-{digest}.json"


def compare_methods(ws: Path, params: Params, methods: list[str]) -> dict[str, float]:
    """Each method's CAM mIoU on ``cams.eval_split`` for the workspace's seed: the generator
    trained from the workspace's ordinary classifier (``models/oc.pt``) by the ``train_cam``
    library call, its CAMs scored as the ``cams`` stage scores them. Kept per params."""
    split = params.cams.eval_split
    kept = {m: _compare_path(ws, params, m).resolve() for m in methods}
    out = {m: json.loads(p.read_text())["miou"] for m, p in kept.items() if p.is_file()}
    todo = [m for m in methods if m not in out]
    if not todo:
        return out
    runtime = Runtime.from_params(params.base)
    with contextlib.chdir(ws):  # the data and models where the workspace's stages put them
        train = open_dataset(params.data, params.data.train_split)
        evaluation = open_dataset(params.data, split)
        for method in todo:
            cfg = params.cam.model_copy(update={"method": method})
            oc = load_cam_model(paths.OC_MODEL)  # fresh per method, as the stage loads it
            trained = train_cam.run(cfg, train, runtime, image_size=params.data.image_size, oc=oc)
            with tempfile.TemporaryDirectory(prefix="pnoc-seeds-") as cam_dir:
                sweep = score_cams(params, trained.model, {split: evaluation}, cam_dir, runtime)
            out[method] = sweep[split].best_miou
            write_json(kept[method], {"method": method, "miou": out[method]})
            print(
                f"seed {params.base.seed} {method:8s} CAM mIoU {100 * out[method]:.2f}", flush=True
            )
    return out


def summarise(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per metric: each seed's value, mean and std (sample std; 0 for one seed)."""
    labels = list(dict.fromkeys(k for m in per_seed.values() for k in m))
    out = {}
    for label in labels:
        values = {s: m[label] for s, m in per_seed.items() if label in m}
        out[label] = {
            "per_seed": {str(s): v for s, v in values.items()},
            **mean_std(values.values()),
        }
    return out


def _cell(label: str, value: float) -> str:
    if label.endswith(" / pseudo-masks"):
        return f"{value:.2f}×"
    if label.endswith(" − CAMs"):
        return f"{100 * value:+.1f}"
    return f"{100 * value:.1f}"


def format_table(report: dict[str, Any]) -> str:
    seeds = report["seeds"]
    head = ["metric", *(f"seed {s}" for s in seeds), "mean ± std"]
    lines = [
        f"Every stage's metric per seed (mIoU %, params.yaml{report['set_note']}); "
        f"pseudo-masks on '{report['pseudo_split']}'",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, s in report["summary"].items():
        cells = [label] + [
            _cell(label, s["per_seed"][str(seed)]) if str(seed) in s["per_seed"] else "–"
            for seed in seeds
        ]
        if label.endswith(" / pseudo-masks"):
            cells.append(f"{s['mean']:.2f}× ± {s['std']:.2f}")
        elif label.endswith(" − CAMs"):
            cells.append(f"{100 * s['mean']:+.1f} ± {100 * s['std']:.1f}")
        else:
            cells.append(f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _metric_key(label: str) -> str:
    for old, new in (
        (", ", "."),
        (" − ", "_minus_"),
        (" / ", "_over_"),
        ("+", ""),
        (" ", "_"),
        ("²", "2"),
    ):
        label = label.replace(old, new)
    return label.lower()


def seeds_report(
    params_file: Path,
    seeds: list[int],
    *,
    compare: list[str] | None = None,
    settings: list[str] | None = None,
) -> dict[str, Any]:
    compare = list(compare or [])
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"seeds: expected distinct seeds >= 0, got {seeds}")
    unknown = sorted(set(compare) - set(METHODS))
    if unknown:
        raise ConfigError(f"seeds: --compare '{unknown[0]}' is not a method {sorted(METHODS)}")
    if not Path(paths.DVC_FILE).is_file():
        raise ConfigError(f"seeds: no {paths.DVC_FILE} here; run it from the project's root")
    overrides = parse_settings(settings or [], ablation=False)
    if "base.seed" in overrides:
        raise ConfigError("seeds: the seeds are given by --seed, not --set base.seed")
    base = read_yaml(params_file) or {}
    per_seed_params = {
        s: apply_overrides(base, {**overrides, "base.seed": s}) for s in seeds
    }  # checked before any work:
    typed = {
        s: parse_params(p, source=f"{params_file} (seed {s})") for s, p in per_seed_params.items()
    }
    first = typed[seeds[0]]
    pseudo_split = first.pseudo_masks.split
    experiment_id = tracking.configure()
    env = {
        **venv_env(),
        "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
    }
    per_seed: dict[int, dict[str, float]] = {}
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name="seeds",
        tags={"pnoc.kind": "seeds", **tracking.lineage_tags()},
    ) as parent:
        mlflow.log_params(
            {"seeds": ",".join(map(str, seeds)), "compare": ",".join(compare) or "none"}
            | {f"set.{k}": v for k, v in overrides.items()}
        )
        for seed in seeds:
            ws = prepare_workspace(seed, per_seed_params[seed], env)
            key = f"seeds-{uuid.uuid4().hex[:12]}-seed{seed}"
            run_id = tracking.find_or_create_pipeline_run(
                key,
                experiment_id,
                run_name=f"seed {seed}",
                params=flatten(typed[seed]),
                parent_run_id=parent.info.run_id,
            )
            print(f"== seed {seed}: dvc repro {LAST_STAGE} in {ws}", flush=True)
            code = subprocess.call(
                [sys.executable, "-m", "dvc", "repro", LAST_STAGE],
                cwd=ws,
                env=env | {tracking.PIPELINE_ENV: key},
            )
            MlflowClient().set_terminated(run_id, status="FINISHED" if code == 0 else "FAILED")
            if code != 0:
                raise ConfigError(f"seeds: the chain of seed {seed} failed (dvc repro in {ws})")
            metrics = seed_metrics(ws, pseudo_split)
            for method, miou in compare_methods(ws, typed[seed], compare).items():
                metrics[f"{method} CAMs, {first.cams.eval_split}"] = miou
            per_seed[seed] = metrics
        summary = summarise(per_seed)
        report = {
            "seeds": seeds,
            "overrides": overrides,
            "set_note": "".join(f", {k}={v}" for k, v in overrides.items()),
            "pseudo_split": pseudo_split,
            "compare": compare,
            "summary": summary,
        }
        write_json(REPORT, report)
        write_text(TABLE, format_table(report) + "\n")
        flat = {}
        for label, s in summary.items():
            flat[f"{_metric_key(label)}.mean"] = s["mean"]
            flat[f"{_metric_key(label)}.std"] = s["std"]
        mlflow.log_metrics(flat)
        mlflow.log_artifact(str(REPORT))
        mlflow.log_artifact(str(TABLE))
    return report


def run(
    seeds: list[int],
    params_file: Path = paths.PARAMS_FILE,
    compare: list[str] | None = None,
    settings: list[str] | None = None,
) -> dict[str, Any]:
    return seeds_report(params_file, seeds, compare=compare, settings=settings)


__all__ = ["format_table", "run", "seed_metrics", "seeds_report", "summarise"]
