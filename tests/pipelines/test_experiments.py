"""Queued DVC experiments keep their MLflow runs and models.

`dvc queue start` runs each queued experiment's stages in a temporary copy of the project under
``.dvc/tmp/exps/`` and deletes it afterwards: the runs, their artifacts and the registered
models must land in the project's store, not there. The project is a git copy of the session's
``reproduced`` pipeline, so each experiment reruns only the stages its param change touches.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, Project

pytestmark = pytest.mark.slow

# The stages a change of segmentation's test-time augmentation reruns (check_params too, which
# opens no MLflow run): train_segmentation reads the whole section.
RERUN = ("train_segmentation", "evaluate", "register")
CHANGES = {"segmentation.tta_flip": "false", "segmentation.tta_scales": "[1.0,0.75]"}
EVALUATE_ARTIFACTS = {
    "segmentation.json",
    "segmentation_details.json",
    "confusion.png",
    "segmentation_overlay.png",
}
QUEUE_DEADLINE_S = 420


def git_project(source: Project, dest: Path, env: dict[str, str]) -> Project:
    """A git repository holding a copy of ``source``: code, params, dvc.lock, outputs and its DVC
    cache (hard links: cache files are never written in place), everything committed."""
    shutil.copytree(source.root, dest, symlinks=True, ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copytree(source.root / ".dvc" / "cache", dest / ".dvc" / "cache", copy_function=os.link)
    shutil.copy(REPO / ".gitignore", dest / ".gitignore")
    project = Project(dest, env)
    project.dvc("config", "--unset", "core.no_scm")
    project.run("git", "init", "-q")
    project.dvc("commit", "-f", "-q")  # writes the .gitignore entries of the DVC outputs
    project.run("git", "add", "-A")
    project.run("git", "commit", "-q", "-m", "baseline")
    return project


def queue_states(project: Project) -> list[str]:
    """The status column of `dvc queue status`, one entry per experiment task."""
    out = project.dvc("queue", "status").stdout
    states = []
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[-1] in {"Queued", "Running", "Success", "Failed", "Unknown"}:
            states.append(cells[-1])
    return states


def stop_queue(project: Project) -> None:
    """Stop the queue's workers and any experiment process left, by the pids DVC recorded."""
    project.dvc("queue", "stop", check=False, timeout=60)
    for pidfile in (project.root / ".dvc" / "tmp" / "exps").rglob("*.pid"):
        try:
            proc = psutil.Process(int(pidfile.read_text().strip()))
            if "dvc" not in " ".join(proc.cmdline()):
                continue
            procs = [proc, *proc.children(recursive=True)]
        except (ValueError, OSError, psutil.Error):
            continue
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()


def queue_logs(project: Project, lines: int = 40) -> str:
    """The last lines of every log the queue's workers and experiments wrote."""
    out = []
    for log in sorted((project.root / ".dvc" / "tmp" / "exps").rglob("*.out")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"== {log.name}\n" + "\n".join(tail))
    return "\n".join(out)


def workspaces(project: Project) -> list[Path]:
    """The experiments' temporary workspaces DVC has not removed (yet)."""
    exps = project.root / ".dvc" / "tmp" / "exps"
    found = list(exps.glob("tmp*")) + list((exps / "standalone").glob("tmp*"))
    return [p for p in found if p.is_dir()]


@pytest.mark.parametrize("store", ["default", "outside"])
def test_queued_experiments_keep_runs_artifacts_and_models(reproduced, tmp_path, store):
    env = dict(reproduced.env)
    env.update(
        GIT_AUTHOR_NAME="pnoc tests",
        GIT_AUTHOR_EMAIL="tests@pnoc.invalid",
        GIT_COMMITTER_NAME="pnoc tests",
        GIT_COMMITTER_EMAIL="tests@pnoc.invalid",
    )
    if store == "default":
        env.pop("MLFLOW_TRACKING_URI")
        db = tmp_path / "project" / "mlflow.db"
    else:
        db = tmp_path / "elsewhere" / "mlflow.db"
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    project = git_project(reproduced, tmp_path / "project", env)
    for key, value in CHANGES.items():  # one experiment each
        project.dvc("exp", "run", "--queue", "-S", f"{key}={value}")
    try:
        # Not through pipes: the workers it spawns would hold them open until they exit.
        with (tmp_path / "queue-start.log").open("w") as log:
            subprocess.run(
                [sys.executable, "-m", "dvc", "queue", "start", "-j", "2"],
                cwd=project.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=True,
            )
        deadline = time.monotonic() + QUEUE_DEADLINE_S
        states = queue_states(project)
        while set(states) - {"Success", "Failed"} and time.monotonic() < deadline:
            time.sleep(2)
            states = queue_states(project)
        assert states == ["Success", "Success"], f"queue: {states}\n{queue_logs(project)}"
        while workspaces(project) and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        stop_queue(project)
    assert not workspaces(project), "DVC did not remove the experiments' workspaces"

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("pnoc")
    assert Path(urlparse(experiment.artifact_location).path) == db.parent / "mlartifacts"
    runs = client.search_runs([experiment.experiment_id])
    stages = [r for r in runs if r.data.tags.get("pnoc.kind") == "stage"]
    parents = {r.info.run_id for r in runs if r.data.tags.get("pnoc.kind") == "pipeline"}
    assert sorted(r.info.run_name for r in stages) == sorted(RERUN * 2)
    tta = sorted(
        (r.data.params["segmentation.tta_flip"], r.data.params["segmentation.tta_scales"])
        for r in stages
        if r.info.run_name == "evaluate"
    )
    assert tta == [("False", "[1.0]"), ("True", "[1.0, 0.75]")]
    assert {r.data.tags["mlflow.parentRunId"] for r in stages} == parents and len(parents) == 2
    for run in stages:
        assert run.info.status == "FINISHED"
        folder = Path(urlparse(run.info.artifact_uri).path)
        assert db.parent / "mlartifacts" in folder.parents
        if run.info.run_name == "evaluate":
            assert {p.name for p in folder.iterdir()} == EVALUATE_ARTIFACTS
            assert all(p.stat().st_size > 0 for p in folder.iterdir())

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    try:
        versions = client.search_model_versions("name = 'pnoc-segmenter'")
        assert sorted(int(v.version) for v in versions) == [1, 2]
        for version in versions:
            model = mlflow.pyfunc.load_model(f"models:/pnoc-segmenter/{version.version}")
            assert model.metadata is not None
    finally:
        mlflow.set_tracking_uri(None)
