"""MLflow setup and run context: one run per stage execution, nested under its pipeline run.

Grouping: all stages of one pipeline execution share a parent run found by the tag
``pnoc.pipeline_id``. ``pnoc repro`` sets ``PNOC_PIPELINE_ID``; a plain ``dvc repro`` is
recognised by the process id and start time of the ``dvc`` process that launched the stage, so
its stages still form one tree. A stage run by hand (``python -m pnoc_pipelines.prepare``) is a
top-level run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import psutil
import yaml
from mlflow.tracking import MlflowClient

EXPERIMENT = os.environ.get("PNOC_EXPERIMENT", "pnoc")
PIPELINE_ENV = "PNOC_PIPELINE_ID"
PIPELINE_TAG = "pnoc.pipeline_id"


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store ``mlflow.db`` at the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = (root or Path.cwd()).resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def configure(experiment: str = EXPERIMENT, root: Path | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id.

    With a local store, artifacts go to ``mlartifacts/`` beside it; a tracking server decides
    its own artifact location (e.g. an S3 bucket).
    """
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        mlflow.set_experiment(experiment_id=exp.experiment_id)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        location = ((root or Path.cwd()).resolve() / "mlartifacts").as_uri()
    try:
        exp_id = client.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        exp_id = client.get_experiment_by_name(experiment).experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def lineage_tags(stage: str | None = None) -> dict[str, str]:
    """Git commit, dirty flag, DVC stage and dataset hash (from dvc.lock) as run tags."""
    tags: dict[str, str] = {}
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags["pnoc.git_dirty"] = str(bool(status)).lower()
    if stage:
        tags["pnoc.dvc_stage"] = stage
    dataset = dataset_hash()
    if dataset:
        tags["pnoc.dataset_hash"] = dataset
    return tags


def dataset_hash(lock: Path = Path("dvc.lock")) -> str | None:
    """md5 of the dataset folder as recorded by DVC for the stage that produced or checked it."""
    if not lock.exists():
        return None
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError:
        return None
    for stage_name in ("generate", "prepare"):
        stage = (data.get("stages") or {}).get(stage_name) or {}
        for entry in list(stage.get("outs") or []) + list(stage.get("deps") or []):
            if str(entry.get("path", "")).startswith("data/") and entry.get("md5"):
                return str(entry["md5"])
    return None


def _dvc_ancestor_key() -> str | None:
    """Identify the ``dvc repro`` process that launched this stage, if any."""
    try:
        proc = psutil.Process().parent()
        while proc is not None:
            cmd = " ".join(proc.cmdline()[:3])
            if "dvc" in Path(proc.cmdline()[0]).name or " -m dvc" in cmd or "/dvc " in cmd + " ":
                return f"dvc-{proc.pid}-{int(proc.create_time())}"
            proc = proc.parent()
    except (psutil.Error, IndexError):
        return None
    return None


def pipeline_key() -> str | None:
    return os.environ.get(PIPELINE_ENV) or _dvc_ancestor_key()


def find_or_create_pipeline_run(key: str, experiment_id: str, run_name: str = "pipeline") -> str:
    """The parent run of the pipeline execution identified by ``key``."""
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    tags = {PIPELINE_TAG: key, "pnoc.kind": "pipeline", **lineage_tags()}
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    return run.info.run_id


@contextlib.contextmanager
def stage_run(
    stage: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Open the MLflow run of one stage execution, nested under its pipeline run if any."""
    experiment_id = configure()
    key = pipeline_key()
    parent = find_or_create_pipeline_run(key, experiment_id) if key else None
    all_tags = {"pnoc.kind": "stage", **lineage_tags(stage), **(tags or {})}
    status = "FAILED"
    try:
        with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=all_tags) as run:
            if params:
                mlflow.log_params(dict(params))
            yield run
            status = "FINISHED"
    finally:
        if parent and not os.environ.get(PIPELINE_ENV):
            # No wrapper owns the parent: each stage leaves it terminated with its own status.
            MlflowClient().set_terminated(parent, status=status)


def log_artifacts(*files: Path) -> None:
    """Attach a stage's metrics files and pictures to its MLflow run."""
    for file in files:
        mlflow.log_artifact(str(file))


class MlflowLogger:
    """Engine callback: step metrics every ``every`` steps, epoch means at each epoch end."""

    def __init__(self, prefix: str = "", every: int = 10) -> None:
        self.prefix = prefix
        self.every = max(1, every)

    def _log(self, metrics: Mapping[str, float], step: int, scope: str) -> None:
        clean = {f"{self.prefix}{scope}{k}": float(v) for k, v in metrics.items()}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def on_step_end(self, ctx: Any, metrics: Mapping[str, float]) -> None:
        if ctx.step % self.every == 0:
            self._log(metrics, ctx.step, "")

    def on_epoch_end(self, ctx: Any, metrics: Mapping[str, float]) -> None:
        self._log(metrics, ctx.epoch, "epoch/")

    def on_train_end(self, ctx: Any) -> None:
        return None
