"""MLflow setup and run context: one run per stage execution, nested under its pipeline run.

Store: ``MLFLOW_TRACKING_URI`` if set, else the SQLite store ``mlflow.db`` at the project root;
a SQLite store keeps its artifacts in ``mlartifacts/`` beside the database file, and a relative
``sqlite:///mlflow.db`` URI is resolved against the project root. The project root is found
wherever DVC runs a stage (:func:`project_root`): ``dvc exp run --temp`` and queued experiments
(``dvc exp run --queue``, ``dvc queue start``) run every stage in a copy of the project under
``<project>/.dvc/tmp/exps/``, which DVC deletes afterwards, so neither the store nor an
experiment's artifact location is ever placed there.

A fresh SQLite store is set up (MLflow's tables, then the experiment) by one process at a time,
under an exclusive lock on ``<db>.lock`` beside it: two stages of parallel experiments would
otherwise both run MLflow's schema migrations, and one fails (``duplicate column name``).

Grouping: all stages of one pipeline execution share a parent run found by the tag
``pnoc.pipeline_id``. ``pnoc repro`` sets ``PNOC_PIPELINE_ID``; a plain ``dvc repro`` is
recognised by the process id and start time of the ``dvc`` process that launched the stage, so
its stages still form one tree. A stage run by hand (``python -m pnoc_pipelines.prepare``) is a
top-level run.

Liveness: a stage run carries the host, pid and process start time of its stage
(``pnoc.host``, ``pnoc.pid``, ``pnoc.pid_started``), a pipeline run those of its owner (the
``pnoc repro`` or ``dvc`` process). Each stage start marks the experiment's RUNNING runs whose
process on this host is gone as KILLED (:func:`end_orphaned_runs`), so a stage killed with
SIGKILL is not shown RUNNING forever; SIGTERM and SIGINT end a stage's run as KILLED at once
(:func:`pnoc_pipelines.common.main`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import psutil
import yaml
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from pnoc_pipelines.store import (
    ARTIFACTS_DIR,
    EXPERIMENT_WORKSPACES,
    STORE_FILE,
    project_root,
    relocate_artifacts,
    sqlite_path,
    store_lock,
    tracking_uri,
)

__all__ = ["STORE_FILE", "project_root", "tracking_uri"]  # re-exported for callers

log = logging.getLogger("pnoc")

EXPERIMENT = os.environ.get("PNOC_EXPERIMENT", "pnoc")
PIPELINE_ENV = "PNOC_PIPELINE_ID"
PIPELINE_TAG = "pnoc.pipeline_id"
PIPELINE_NOTE = (
    "One P-NOC pipeline execution (git {commit}, dataset {dataset}). Each stage's run is nested "
    "below; this run carries all params, every stage's headline metrics (cam_miou_val, "
    "saliency_miou_val, pseudo_mask_miou_train, deeplab_miou_val, ...) and its pictures under "
    "pictures/."
)
HOST_TAG = "pnoc.host"
PID_TAG = "pnoc.pid"
STARTED_TAG = "pnoc.pid_started"
#: MLflow 3's experiment type: the UI opens a model-training experiment on its runs.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"
PARENT_TAG = "mlflow.parentRunId"


def configure(experiment: str = EXPERIMENT, root: Path | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id.

    With a SQLite store, artifacts go to ``mlartifacts/`` beside the database file (for the
    default store: at the project root); a tracking server decides its own artifact location
    (e.g. an S3 bucket). The store's tables and the experiment are created under
    :func:`store_lock`, by one process at a time.
    """
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        db = sqlite_path(uri)
        if db is not None and db.is_file():
            relocate_artifacts(db)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            location = (db.parent / ARTIFACTS_DIR).as_uri() if db is not None else None
            try:
                exp_id = client.create_experiment(
                    experiment, artifact_location=location, tags={KIND_TAG: KIND}
                )
            except mlflow.exceptions.MlflowException:  # a tracking server: created meanwhile
                exp_id = client.get_experiment_by_name(experiment).experiment_id
        else:
            exp_id = exp.experiment_id
            if exp.tags.get(KIND_TAG) != KIND:
                client.set_experiment_tag(exp_id, KIND_TAG, KIND)
            if "/" + "/".join(EXPERIMENT_WORKSPACES) + "/" in exp.artifact_location:
                log.warning(
                    "MLflow experiment '%s' in %s keeps its artifacts in %s, a DVC experiment "
                    "workspace deleted after its run: set PNOC_EXPERIMENT to start a new one",
                    experiment,
                    uri,
                    exp.artifact_location,
                )
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


def _dvc_ancestor() -> psutil.Process | None:
    """The ``dvc`` process (``dvc repro``, an experiment's executor) that launched this stage."""
    try:
        proc = psutil.Process().parent()
        while proc is not None:
            cmd = " ".join(proc.cmdline()[:3])
            if "dvc" in Path(proc.cmdline()[0]).name or " -m dvc" in cmd or "/dvc " in cmd + " ":
                return proc
            proc = proc.parent()
    except (psutil.Error, IndexError):
        return None
    return None


def _dvc_key(proc: psutil.Process) -> str:
    return f"dvc-{proc.pid}-{int(proc.create_time())}"


def owner_tags(proc: psutil.Process | None = None) -> dict[str, str]:
    """Host, pid and start time of ``proc`` (default: this process), as run tags."""
    proc = proc or psutil.Process()
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(proc.pid),
        STARTED_TAG: repr(proc.create_time()),
    }


def owner_gone(tags: Mapping[str, str]) -> bool:
    """True when the process named by :func:`owner_tags` ran on this host and has ended (a
    pid reused by another process counts as ended); False when it lives, ran elsewhere, or the
    tags name no process."""
    if tags.get(HOST_TAG) != socket.gethostname():
        return False
    try:
        pid, started = int(tags[PID_TAG]), float(tags[STARTED_TAG])
    except (KeyError, ValueError):
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # not ours to inspect: assume it lives
        return False


def end_orphaned_runs(experiment_id: str, client: MlflowClient | None = None) -> list[str]:
    """Mark the experiment's RUNNING runs whose process on this host is gone as KILLED.

    Stage runs name their stage process, pipeline runs their owner (:func:`owner_tags`); runs
    of other hosts and runs without these tags are left alone. Returns the ids marked.
    """
    client = client or MlflowClient()
    host = socket.gethostname().replace("'", "")
    running = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    killed = []
    for run in running:
        if not owner_gone(run.data.tags):
            continue
        # The process is gone, so the run can no longer change: still RUNNING means orphaned.
        if client.get_run(run.info.run_id).info.status != "RUNNING":
            continue
        client.set_terminated(run.info.run_id, status="KILLED")
        killed.append(run.info.run_id)
        log.warning(
            "MLflow run %s (%s) was left RUNNING by process %s, which is gone: marked KILLED",
            run.info.run_id,
            run.info.run_name,
            run.data.tags.get(PID_TAG),
        )
    return killed


def find_or_create_pipeline_run(
    key: str,
    experiment_id: str,
    run_name: str = "pipeline",
    owner: psutil.Process | None = None,
    params: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """The parent run of the pipeline execution identified by ``key``.

    A new one is tagged with its ``owner`` (default: this process, e.g. ``pnoc repro``), whose
    end without ending the run makes the run orphaned (:func:`end_orphaned_runs`), carries a
    description and logs ``params`` (all of params.yaml, flat); ``parent_run_id`` nests it
    (``pnoc seeds``: each seed's pipeline under the report's run).
    """
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    tags = {PIPELINE_TAG: key, "pnoc.kind": "pipeline", **lineage_tags(), **owner_tags(owner)}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    tags[NOTE_TAG] = PIPELINE_NOTE.format(
        commit=tags.get("mlflow.source.git.commit", "unknown")[:10],
        dataset=tags.get("pnoc.dataset_hash", "unknown"),
    )
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    if params:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    pipeline_params: Mapping[str, Any] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Open the MLflow run of one stage execution, nested under its pipeline run if any.

    The run ends FINISHED, FAILED on an exception, or KILLED on KeyboardInterrupt (SIGINT, and
    SIGTERM as :func:`pnoc_pipelines.common.main` maps it). Runs orphaned by killed processes
    are marked KILLED first (:func:`end_orphaned_runs`).
    """
    experiment_id = configure()
    end_orphaned_runs(experiment_id)
    owned_by_wrapper = bool(os.environ.get(PIPELINE_ENV))
    ancestor = _dvc_ancestor()
    key = os.environ.get(PIPELINE_ENV) or (_dvc_key(ancestor) if ancestor is not None else None)
    parent = None
    if key:
        # The parent's owner: the dvc process, else whatever launched this stage.
        owner = ancestor or psutil.Process().parent()
        parent = find_or_create_pipeline_run(
            key, experiment_id, owner=owner, params=pipeline_params
        )
    all_tags = {"pnoc.kind": "stage", **lineage_tags(stage), **owner_tags(), **(tags or {})}
    run = mlflow.start_run(run_name=stage, parent_run_id=parent, tags=all_tags)
    status = "FAILED"
    try:
        if params:
            mlflow.log_params(dict(params))
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status)
        if parent and not owned_by_wrapper:
            # No wrapper owns the parent: each stage leaves it terminated with its own status.
            MlflowClient().set_terminated(parent, status=status)


def log_artifacts(*files: Path) -> None:
    """Attach a stage's metrics files and pictures to its MLflow run."""
    for file in files:
        mlflow.log_artifact(str(file))


def _parent_run_id() -> str | None:
    run = mlflow.active_run()
    return run.data.tags.get(PARENT_TAG) if run is not None else None


def log_headline(metrics: Mapping[str, float | None]) -> None:
    """Log a stage's headline numbers to its run and to its pipeline's parent run, where the
    runs table shows every stage's side by side. Names are unique across stages and say what
    they measure and on which split (``cam_miou_val``, ``deeplab_miou_val``); None is skipped."""
    clean = {k: float(v) for k, v in metrics.items() if v is not None}
    if not clean:
        return
    mlflow.log_metrics(clean)
    parent = _parent_run_id()
    if parent:
        client = MlflowClient()
        for key, value in clean.items():
            client.log_metric(parent, key, value)


def log_pictures(*files: Path) -> None:
    """Attach pictures to the stage's run and, under ``pictures/``, to its parent run."""
    log_artifacts(*files)
    parent = _parent_run_id()
    if parent:
        client = MlflowClient()
        for file in files:
            client.log_artifact(parent, str(file), "pictures")


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
