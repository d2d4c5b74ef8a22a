"""``pnoc robustness``: does the method's effect hold on data no default was tuned on?

For every generated data set of a datasets file (generator params, ``pipelines/robustness.yaml``
by default) and every seed it runs ``pnoc ablate-cams``'s comparison (the ordinary classifier
once, then each method's generator through the ``train_oc``/``train_cam`` library call, CAMs of
``cams.eval_split`` scored over the threshold sweep) and, for one method (``--refine``, P-NOC
by default), the chain on to the pseudo-masks through the stages' library calls: CAMs of
``pseudo_masks.split``, C²AM-H, saliency, AffinityNet and the random walk; the pseudo-masks'
gain is their mIoU minus the same CAMs' best mIoU on that split (what ``pseudo_masks``
reports as ``gain_over_cams``).

The table (per data set and overall: mean ± std per method, the gaps between consecutive
methods, the pseudo-mask gain) goes to ``reports/robustness.json`` and ``reports/robustness.md``
and to MLflow: a parent run ``robustness`` with the overall figures and the two files, and a
nested run per data set, seed and method.

A data set is written to ``data/robustness/<name>/`` by the ``generate`` stage's generator and
reused while its generator params are unchanged (``generator.json`` beside it). Each (data set,
seed, method) result is kept in ``data/robustness/<name>/results/`` as soon as it is computed,
keyed by the params, seed, method and refinement: a run that was stopped picks up where it
was, and a report over more seeds or methods trains only what is new.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import mlflow
import numpy as np

from pnoc.config import Params, SyntheticParams, parse_params
from pnoc.data.factory import open_dataset
from pnoc.data.synthetic import generate_synthetic
from pnoc.engine import Runtime
from pnoc.errors import ConfigError
from pnoc.io import write_json, write_text
from pnoc.steps import saliency, train_saliency
from pnoc.tune.space import apply_overrides
from pnoc.tune.trial_metrics import pseudo_mask_miou
from pnoc_pipelines import tracking
from pnoc_pipelines.ablate import check_methods, generators, parse_settings
from pnoc_pipelines.cams import score_cams
from pnoc_pipelines.common import mean_std, read_yaml
from pnoc_pipelines.generate import generator_kwargs

DATASETS_FILE = Path("pipelines/robustness.yaml")
DATA_ROOT = Path("data/robustness")
REPORT = Path("reports/robustness.json")
TABLE = Path("reports/robustness.md")
GENERATOR_FILE = "generator.json"
RESULTS_DIR = "results"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KEYS = {"data.image_size"} | {f"data.synthetic.{k}" for k in SyntheticParams.model_fields}


@dataclass(frozen=True)
class DataSpec:
    """One generated data set: its name and the generator params it sets (dotted keys)."""

    name: str
    settings: dict[str, Any]


def read_datasets(path: Path) -> list[DataSpec]:
    """The ``datasets`` of ``path``: ``{name: {set: {dotted key: value}}}``, each key one of
    ``data.image_size`` and ``data.synthetic.*``; anything else is refused, naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: datasets file not found")
    doc = read_yaml(path) or {}
    entries = doc.get("datasets") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: expected a non-empty 'datasets' mapping of name -> {{set: …}}")
    specs = []
    for name, entry in entries.items():
        where = f"{path}: datasets.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: a name is letters, digits, '_', '.' or '-'")
        if not isinstance(entry, dict) or set(entry) - {"set"}:
            raise ConfigError(f"{where}: expected a mapping with one key 'set'")
        settings = entry.get("set") or {}
        if not isinstance(settings, dict):
            raise ConfigError(f"{where}.set: expected a mapping of dotted params keys to values")
        bad = sorted(set(settings) - _KEYS)
        if bad:
            raise ConfigError(
                f"{where}.set: '{bad[0]}' is not a generator param; expected data.image_size "
                f"or data.synthetic.* ({', '.join(sorted(SyntheticParams.model_fields))})"
            )
        specs.append(DataSpec(name, dict(settings)))
    return specs


def dataset_params(
    base: dict[str, Any], spec: DataSpec, overrides: dict[str, Any], source: str
) -> Params:
    """params.yaml + the data set's generator params + ``--set``, validated (as the embedded
    data set's params: :func:`generated` points them at the data set's own folder)."""
    settings = {**spec.settings, **overrides}
    params = parse_params(apply_overrides(base, settings), source=f"{source}: datasets.{spec.name}")
    if params.data.name != "synthetic":
        raise ConfigError(
            f"{source}: data.name is '{params.data.name}'; robustness runs on generated data "
            "(data.name: synthetic)"
        )
    return params


def generated(params: Params, name: str) -> Params:
    """Write the data set of ``params`` to ``data/robustness/<name>`` unless it is there with
    the same generator params (the generator itself writes atomically), and return ``params``
    reading it (a VOC-layout folder)."""
    root = DATA_ROOT / name
    kwargs = generator_kwargs(params.data)
    wanted = json.loads(json.dumps(kwargs))  # tuples -> lists, as the file holds them
    marker = root / GENERATOR_FILE
    if not (marker.is_file() and json.loads(marker.read_text()) == wanted):
        generate_synthetic(root, **kwargs)
        write_json(marker, wanted)
    data = params.data.model_copy(update={"name": "voc", "root": root})
    return params.model_copy(update={"data": data})


def map_quality(sweep: Any) -> dict[str, float]:
    """At the sweep's best background threshold: ``recall``, the share of object pixels
    labelled with their class (how complete the maps are), and ``precision``, the share of
    pixels labelled with a class that are that class (how little they spill into context)."""
    m = sweep.matrices[sweep.best_index]  # rows: ground truth, columns: prediction
    hits = float(np.trace(m[1:, 1:]))
    return {
        "best_threshold": sweep.best_threshold,
        "recall": hits / max(float(m[1:].sum()), 1.0),
        "precision": hits / max(float(m[:, 1:].sum()), 1.0),
    }


def _summary(values: list[float]) -> dict[str, float]:
    return {**mean_std(values), "n": len(values)}


def summarise(records: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per data set and overall: mean ± std of each method's CAM mIoU, the gaps between
    consecutive methods (in the order given), and the refined method's pseudo-mask figures."""

    def block(rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"methods": {}, "gaps": {}}
        for m in methods:
            mine = [r for r in rows if r["method"] == m]
            if mine:
                out["methods"][m] = _summary([r["cam_miou"] for r in mine])
                for key in ("recall", "precision"):
                    if all(key in r for r in mine):
                        out["methods"][m][key] = mean(r[key] for r in mine)
        means = {m: s["mean"] for m, s in out["methods"].items()}
        for a, b in zip(methods, methods[1:], strict=False):
            if a in means and b in means:
                out["gaps"][f"{b}-{a}"] = means[b] - means[a]
        refined = [r for r in rows if "pseudo_miou" in r]
        if refined:
            out["pseudo_masks"] = {
                "method": refined[0]["method"],
                "split": refined[0]["pseudo_split"],
                "miou": _summary([r["pseudo_miou"] for r in refined]),
                "cam_miou": _summary([r["cam_miou_pseudo_split"] for r in refined]),
                "gain": _summary([r["pseudo_miou"] - r["cam_miou_pseudo_split"] for r in refined]),
            }
        return out

    names = list(dict.fromkeys(r["dataset"] for r in records))
    return {
        "datasets": {n: block([r for r in records if r["dataset"] == n]) for n in names},
        "overall": block(records),
    }


def _pct(s: dict[str, float]) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table: one row per data set and one overall."""
    methods = report["methods"]
    summary = report["summary"]
    head = ["data set", *methods, *summary["overall"]["gaps"]]
    refined = "pseudo_masks" in summary["overall"]
    if refined:
        head += ["pseudo-masks", "gain"]
    lines = [
        f"CAM mIoU on '{report['split']}' (mean ± std over seeds {report['seeds']}, %); "
        + (
            f"pseudo-masks of {summary['overall']['pseudo_masks']['method']} on "
            f"'{summary['overall']['pseudo_masks']['split']}' and their gain over those CAMs"
            if refined
            else "no pseudo-masks"
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    rows = [*summary["datasets"].items(), ("**overall**", summary["overall"])]
    for name, block in rows:
        cells = [name]
        cells += [_pct(block["methods"][m]) if m in block["methods"] else "–" for m in methods]
        cells += [f"{100 * g:+.1f}" for g in block["gaps"].values()]
        if refined:
            pm = block.get("pseudo_masks")
            cells += [_pct(pm["miou"]), _pct(pm["gain"])] if pm else ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    quality = {m: s for m, s in summary["overall"]["methods"].items() if "recall" in s}
    if quality:
        lines += [
            "",
            "At the best background threshold, over all data sets and seeds (%): object pixels "
            "labelled with their class (recall) and class pixels that are that class (precision)",
            "",
            "| method | recall | precision |",
            "|---|---|---|",
        ]
        lines += [
            f"| {m} | {100 * s['recall']:.1f} | {100 * s['precision']:.1f} |"
            for m, s in quality.items()
        ]
    return "\n".join(lines)


def _refine(
    params: Params, model: Any, train: Any, runtime: Runtime, work: Path
) -> dict[str, float]:
    """From a trained generator to pseudo-masks on ``pseudo_masks.split``, the stages' library
    calls in a scratch folder: CAMs, C²AM-H, saliency, AffinityNet, random walk."""
    split = params.pseudo_masks.split
    dataset = train if split == train.split else open_dataset(params.data, split)
    cam_dir, saliency_dir = work / "cams", work / "saliency"
    splits = {train.split: train, dataset.split: dataset}
    sweeps = score_cams(params, model, splits, cam_dir, runtime)
    ccam = train_saliency.run(
        params.saliency, train, cam_dir, runtime, image_size=params.data.image_size
    ).model
    saliency.run(
        ccam,
        splits,
        saliency_dir,
        runtime,
        threshold=params.saliency.threshold,
        flip=params.saliency.flip,
        eval_split=dataset.split,
    )
    miou = pseudo_mask_miou(
        params, train, dataset, cam_dir, saliency_dir, runtime, work_dir=work / "walk"
    )
    return {
        "pseudo_split": split,
        "cam_miou_pseudo_split": sweeps[dataset.split].best_miou,
        "pseudo_miou": float(miou) if miou is not None else float("nan"),
    }


def result_path(params: Params, name: str, seed: int, method: str, refined: bool) -> Path:
    """Where one (data set, seed, method) result is kept, keyed by everything that decides it:
    the params (data set included), the seed, the method and whether it was refined."""
    key = {
        "params": params.model_dump(mode="json"),
        "seed": seed,
        "method": method,
        "refined": refined,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return DATA_ROOT / name / RESULTS_DIR / f"seed{seed}-{method}-{digest}.json"


def _seed_rows(
    params: Params,
    name: str,
    seed: int,
    methods: list[str],
    refine: str | None,
    train: Any,
    evaluation: Any,
) -> list[dict[str, Any]]:
    """One seed's results on one data set, in the order of ``methods``: those kept from an
    earlier run with the same params are reused; the others are trained (the ordinary
    classifier once, then each missing method's generator) and kept as they finish."""
    split = evaluation.split
    where = {m: result_path(params, name, seed, m, m == refine) for m in methods}
    rows = {
        m: json.loads(p.read_text()) | {"reused": True} for m, p in where.items() if p.is_file()
    }
    missing = [m for m in methods if m not in rows]
    runtime = Runtime.from_params(params.base, seed=seed)
    trained_all = generators(params, missing, seed, train) if missing else iter(())
    for method, trained in trained_all:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="pnoc-robustness-") as work:
            sweep = score_cams(params, trained.model, {split: evaluation}, Path(work), runtime)
            row: dict[str, Any] = {
                "dataset": name,
                "seed": seed,
                "method": method,
                "cam_miou": sweep[split].best_miou,
                **map_quality(sweep[split]),
            }
            if method == refine:
                row |= _refine(params, trained.model, train, runtime, Path(work))
        row["seconds"] = trained.result.seconds + time.perf_counter() - t0
        write_json(where[method], row)
        rows[method] = row
        extra = (
            f", pseudo-masks {100 * row['pseudo_miou']:.2f} "
            f"({row['pseudo_split']} CAMs {100 * row['cam_miou_pseudo_split']:.2f})"
            if "pseudo_miou" in row
            else ""
        )
        print(
            f"{name} seed {seed} {method:8s} CAM mIoU {100 * row['cam_miou']:.2f}{extra}",
            flush=True,
        )
    return [rows[m] for m in methods]


def robustness(
    params_file: Path,
    datasets_file: Path,
    methods: list[str],
    seeds: list[int],
    *,
    settings: list[str] | None = None,
    refine: str | None = "pnoc",
) -> dict[str, Any]:
    check_methods("robustness", methods, seeds)
    if refine is not None and refine not in methods:
        raise ConfigError(f"robustness: --refine '{refine}' is not among the methods {methods}")
    for item in settings or []:
        if item.split("=", 1)[0].strip() in _KEYS:
            raise ConfigError(
                f"--set {item!r}: generator params differ per data set; set them in {datasets_file}"
            )
    overrides = parse_settings(settings or [])
    base = read_yaml(params_file) or {}
    specs = read_datasets(datasets_file)
    by_name = {s.name: s.settings for s in specs}
    # Every data set's params are checked before any work.
    all_params = {s.name: dataset_params(base, s, overrides, str(params_file)) for s in specs}
    split = next(iter(all_params.values())).cams.eval_split
    records: list[dict[str, Any]] = []
    experiment_id = tracking.configure()
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name="robustness",
        tags={"pnoc.kind": "robustness", **tracking.lineage_tags()},
    ):
        mlflow.log_params(
            {
                "methods": ",".join(methods),
                "seeds": ",".join(map(str, seeds)),
                "datasets": ",".join(all_params),
                "datasets_file": str(datasets_file),
                "refine": refine or "none",
            }
            | {f"set.{k}": v for k, v in overrides.items()}
        )
        for name, params in all_params.items():
            params = generated(params, name)
            train = open_dataset(params.data, params.data.train_split)
            evaluation = open_dataset(params.data, split)
            for seed in seeds:
                for row in _seed_rows(params, name, seed, methods, refine, train, evaluation):
                    records.append(row)
                    with mlflow.start_run(
                        run_name=f"{name}-{row['method']}-seed{seed}", nested=True
                    ):
                        mlflow.log_params({"dataset": name, "method": row["method"], "seed": seed})
                        mlflow.log_params({f"set.{k}": v for k, v in by_name[name].items()})
                        mlflow.set_tag("pnoc.reused", str(row.get("reused", False)).lower())
                        mlflow.log_metrics(
                            {k: float(v) for k, v in row.items() if type(v) in (int, float)}
                        )
        report = {
            "split": split,
            "methods": methods,
            "seeds": seeds,
            "datasets": by_name,
            "overrides": overrides,
            "records": records,
            "summary": summarise(records, methods),
        }
        write_json(REPORT, report)
        write_text(TABLE, format_table(report) + "\n")
        overall = report["summary"]["overall"]
        metrics = {f"{m}.mean_miou": s["mean"] for m, s in overall["methods"].items()}
        metrics |= {f"gap.{k}": v for k, v in overall["gaps"].items()}
        if "pseudo_masks" in overall:
            metrics["pseudo_masks.mean_gain"] = overall["pseudo_masks"]["gain"]["mean"]
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(REPORT))
        mlflow.log_artifact(str(TABLE))
    return report


def run(
    methods: list[str],
    seeds: list[int],
    params_file: Path = Path("params.yaml"),
    datasets_file: Path | None = None,
    settings: list[str] | None = None,
    refine: str | None = "pnoc",
) -> dict[str, Any]:
    """``datasets_file``: default :data:`DATASETS_FILE`."""
    return robustness(
        params_file,
        datasets_file or DATASETS_FILE,
        methods,
        seeds,
        settings=settings,
        refine=refine,
    )


__all__ = ["DataSpec", "format_table", "read_datasets", "robustness", "run", "summarise"]
