"""A killed stage leaves nothing behind: no temporary files, no MLflow run stuck in RUNNING.

Real stage processes (``generate``, writing a dataset large enough to be caught in the middle)
are killed with SIGKILL under a real `dvc repro`, or stopped with SIGTERM / SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import Project, make_project

pytestmark = pytest.mark.slow

BIG = 20000  # images: minutes of generation, so the stage is caught while writing
DEADLINE_S = 90


def temporaries(root: Path) -> list[Path]:
    return list((root / "data").glob(".synthetic.*.tmp"))


def wait_for_temporary(root: Path, proc: subprocess.Popen) -> None:
    """Until the stage writes its output's temporary sibling (it is mid-run then)."""
    deadline = time.monotonic() + DEADLINE_S
    while not any(t.is_dir() and any(t.rglob("*.jpg")) for t in temporaries(root)):
        assert proc.poll() is None, f"the stage ended early ({proc.returncode})"
        assert time.monotonic() < deadline, "the stage never started writing"
        time.sleep(0.1)


def all_runs(uri: str) -> list[Any]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pnoc")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])


def with_images(params: dict[str, Any], train: int) -> dict[str, Any]:
    params["data"]["synthetic"]["train"] = train
    return params


@pytest.fixture
def big_project(tmp_path: Path, tiny_params: dict[str, Any], mlflow_store: str) -> Project:
    return make_project(tmp_path / "project", with_images(tiny_params, BIG), mlflow_store)


def test_sigkilled_stage_is_cleaned_up_by_the_next_run(big_project, tiny_params, mlflow_store):
    root = big_project.root
    repro = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "generate"],
        cwd=root,
        env=big_project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_temporary(root, repro)
        running = [r for r in all_runs(mlflow_store) if r.info.status == "RUNNING"]
        (killed,) = [r for r in running if r.data.tags["pnoc.kind"] == "stage"]
        assert killed.info.run_name == "generate"
        pid = int(killed.data.tags["pnoc.pid"])
        assert killed.data.tags["pnoc.pid_started"] and killed.data.tags["pnoc.host"]
        os.kill(pid, signal.SIGKILL)  # the stage, a child of dvc
        assert repro.wait(DEADLINE_S) != 0
    finally:
        if repro.poll() is None:
            repro.kill()
            repro.wait(10)
    assert temporaries(root), "SIGKILL leaves the temporary (nothing can remove it then)"
    left = {r.info.run_id: r for r in all_runs(mlflow_store)}
    assert left[killed.info.run_id].info.status == "RUNNING"
    parent_id = killed.data.tags["mlflow.parentRunId"]
    assert left[parent_id].info.status == "RUNNING"  # dvc created it and is gone too

    big_project.write_params(with_images(tiny_params, 12))
    big_project.dvc("repro", "generate", timeout=DEADLINE_S)

    assert not temporaries(root)
    assert len(list((root / "data" / "synthetic" / "JPEGImages").glob("*.jpg"))) == 12 + 8
    runs = {r.info.run_id: r for r in all_runs(mlflow_store)}
    assert runs[killed.info.run_id].info.status == "KILLED"
    assert runs[parent_id].info.status == "KILLED"
    new = [r for i, r in runs.items() if i not in left and r.data.tags["pnoc.kind"] == "stage"]
    assert [(r.info.run_name, r.info.status) for r in new] == [("generate", "FINISHED")]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_terminated_stage_ends_its_run_killed(big_project, mlflow_store, signum, status):
    root = big_project.root
    stage = subprocess.Popen(
        [sys.executable, "-m", "pnoc_pipelines.generate"],
        cwd=root,
        env=big_project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_temporary(root, stage)
        sent = time.monotonic()
        stage.send_signal(signum)
        _, err = stage.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if stage.poll() is None:
            stage.kill()
            stage.wait(10)
    assert stage.returncode == status, err
    assert f"stopped by {signal.Signals(signum).name}" in err
    assert took < 10, f"the stage took {took:.1f}s to stop"
    (run,) = all_runs(mlflow_store)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    assert int(run.data.tags["pnoc.pid"]) == stage.pid
    assert not temporaries(root) and not (root / "data" / "synthetic").exists()
