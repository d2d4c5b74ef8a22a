"""Stage `register`: log the trained segmenter as an MLflow model and register a new version.

The version is tagged with its metric value (from ``metrics/segmentation.json``), the git
commit, the dataset hash and the pipeline run; it always becomes the ``challenger`` and becomes
the ``champion`` only when its metric is strictly higher than the champion's. The decision is
written to ``reports/registry.json`` and printed; the stage run records the compared value as
``registered_<metric>``, and the version and whether it was promoted as headline metrics
(``registered_version``, ``registered_promoted``: 1 or 0).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from pnoc.errors import PnocError
from pnoc.io import write_json
from pnoc_pipelines import paths
from pnoc_pipelines.common import main, stage
from pnoc_pipelines.tracking import PARENT_TAG, log_headline


def read_metric(path: Path, key: str) -> float | None:
    """The number at ``key`` in a JSON metrics file; a dotted key (``val.miou``) reads nested.

    ``null`` (no valid pixel was scored) gives None: the version is registered, never promoted.
    """
    if not path.is_file():
        raise PnocError(f"{path}: metrics file not found (run the evaluate stage first)")
    try:
        data: Any = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PnocError(f"{path}: not valid JSON ({exc})") from None
    node = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            known = sorted(data) if isinstance(data, dict) else []
            raise PnocError(f"{path}: no metric '{key}' (register.metric); top-level keys: {known}")
        node = node[part]
    if node is None:
        return None
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise PnocError(f"{path}: metric '{key}' is {node!r}, not a number")
    return float(node)


def registered_metric_name(key: str) -> str:
    """The stage run's name for the value the registry compared: ``registered_<key>`` with the
    dots of a nested key as underscores (``miou`` -> ``registered_miou``)."""
    return "registered_" + key.replace(".", "_")


def version_tags(run_id: str) -> dict[str, str]:
    """Lineage of the new version: git commit, dataset hash, stage and pipeline runs."""
    from pnoc_pipelines.tracking import lineage_tags

    lineage = lineage_tags("register")
    run_tags = MlflowClient().get_run(run_id).data.tags
    tags = {
        "pnoc.git_commit": lineage.get("mlflow.source.git.commit"),
        "pnoc.git_dirty": lineage.get("pnoc.git_dirty"),
        "pnoc.dataset_hash": lineage.get("pnoc.dataset_hash"),
        "pnoc.pipeline_run_id": run_tags.get(PARENT_TAG),
        "pnoc.stage_run_id": run_id,
    }
    return {k: v for k, v in tags.items() if v}


def format_decision(record: dict[str, Any]) -> str:
    value = record["value"]
    shown = f"{value:.4f}" if value is not None else "n/a"
    verdict = "promoted to champion" if record["promoted"] else "not promoted"
    return (
        f"{record['model_name']} v{record['version']} ({record['metric']}={shown}): {verdict}; "
        f"{record['reason']}. champion: v{record['champion']}, challenger: "
        f"v{record['challenger']}"
    )


def run() -> None:
    from pnoc_pipelines.serving import log_segmenter, register

    with stage("register") as ctx:
        p = ctx.params.register
        seg = ctx.params.segmentation
        value = read_metric(paths.SEGMENTATION_METRICS, p.metric)
        run_id = mlflow.active_run().info.run_id
        if value is not None and math.isfinite(value):
            mlflow.log_metric(registered_metric_name(p.metric), value)
        info = log_segmenter(paths.DEEPLAB_MODEL, scales=seg.tta_scales, flip=seg.tta_flip)
        record = register(
            info.model_uri,
            p.model_name,
            metric_name=p.metric,
            metric_value=value,
            tags=version_tags(run_id),
        )
        mlflow.set_tags(
            {"pnoc.registered_version": str(record["version"]), "pnoc.promoted": record["promoted"]}
        )
        log_headline(
            {
                "registered_version": record["version"],
                "registered_promoted": float(bool(record["promoted"])),
            }
        )
        write_json(paths.REGISTRY_REPORT, record)
        print(format_decision(record))


if __name__ == "__main__":
    main(run)
