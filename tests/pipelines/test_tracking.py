"""Stage runs nest under their pipeline run in a real SQLite MLflow store, which is the project's
wherever DVC runs the stage; runs of killed processes do not stay RUNNING."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from subprocess import PIPE

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from pnoc_pipelines import tracking


def _runs(client: MlflowClient) -> list:
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    return client.search_runs([exp.experiment_id])


def test_stage_runs_nest_under_one_pipeline_run(mlflow_store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(tracking.PIPELINE_ENV, "test-pipeline")
    with tracking.stage_run("prepare", {"data.name": "synthetic"}):
        mlflow.log_metric("x", 1.0)
    with tracking.stage_run("train_oc", {"oc.lr": 0.1}):
        pass
    client = MlflowClient()
    runs = _runs(client)
    parents = [r for r in runs if r.data.tags.get("pnoc.kind") == "pipeline"]
    stages = [r for r in runs if r.data.tags.get("pnoc.kind") == "stage"]
    assert len(parents) == 1
    assert sorted(r.info.run_name for r in stages) == ["prepare", "train_oc"]
    for r in stages:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.data.tags["pnoc.dvc_stage"] == r.info.run_name
        assert r.info.status == "FINISHED"
    prepare = next(r for r in stages if r.info.run_name == "prepare")
    assert prepare.data.params["data.name"] == "synthetic"
    assert prepare.data.metrics["x"] == 1.0
    assert mlflow_store.startswith("sqlite:///") and str(tmp_path) in mlflow_store


def test_failed_stage_is_marked_failed(mlflow_store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tracking.PIPELINE_ENV, raising=False)
    try:
        with tracking.stage_run("cams"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    (run,) = _runs(MlflowClient())
    assert run.info.status == "FAILED"
    assert "mlflow.parentRunId" not in run.data.tags  # standalone: no pipeline around it


def test_default_uri_is_sqlite_at_project_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_dataset_hash_from_dvc_lock(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  generate:\n    cmd: x\n    outs:\n"
        "    - path: data/synthetic\n      md5: abc123.dir\n"
    )
    assert tracking.dataset_hash(lock) == "abc123.dir"
    assert tracking.dataset_hash(tmp_path / "none.lock") is None


# -- where the store is, wherever DVC runs a stage -----------------------------------------


def test_project_root_of_experiment_workspaces(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    queued = project / ".dvc" / "tmp" / "exps" / "tmpa1b2c3"
    temp = project / ".dvc" / "tmp" / "exps" / "standalone" / "tmpx9y8" / "sub"
    for workspace in (queued, temp):
        workspace.mkdir(parents=True)
        (workspace / "dvc.yaml").write_text("stages: {}\n")  # the experiment's copy
        assert tracking.project_root(workspace) == project.resolve()
    assert tracking.project_root(project / "sub") == project.resolve()
    assert tracking.project_root(tmp_path) == tmp_path.resolve()  # no dvc.yaml above
    monkeypatch.chdir(queued)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{project.resolve() / 'mlflow.db'}"


def test_relative_sqlite_uri_is_taken_from_the_project_root(tmp_path, monkeypatch):
    project = tmp_path / "project"
    workspace = project / ".dvc" / "tmp" / "exps" / "tmpq"
    workspace.mkdir(parents=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/runs.db?timeout=20")
    assert tracking.tracking_uri(workspace) == (
        f"sqlite:///{project.resolve() / 'stores' / 'runs.db'}?timeout=20"
    )
    absolute = f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", absolute)
    assert tracking.tracking_uri(workspace) == absolute
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(workspace) == "http://127.0.0.1:5000"


def test_a_shared_store_never_gets_a_temporary_artifact_location(tmp_path, monkeypatch):
    db = tmp_path / "shared" / "mlflow.db"
    workspace = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpw"
    workspace.mkdir(parents=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(workspace)  # where DVC runs a queued experiment's stage
    experiment_id = tracking.configure("shared")
    location = MlflowClient().get_experiment(experiment_id).artifact_location
    assert location == (db.parent / "mlartifacts").as_uri()


CONFIGURE = """
import sys, time
from pathlib import Path
from pnoc_pipelines import tracking
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.001)
print(tracking.configure("race"))
"""


def test_processes_set_up_a_fresh_store_at_once(tmp_path):
    """Without the lock one of them dies in MLflow's migrations (duplicate column name)."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    go = tmp_path / "go"
    procs = []
    for i in range(3):
        cmd = [sys.executable, "-c", CONFIGURE, str(tmp_path / f"ready{i}"), str(go)]
        procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=PIPE, stderr=PIPE))
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in range(3)):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    assert len({out.strip() for out, _ in results}) == 1  # one experiment, the same id


# -- runs left RUNNING by killed processes -------------------------------------------------


def _ended_process() -> psutil.Process:
    """A real process that has exited (its pid and create time as a run would record them)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc = psutil.Process(child.pid)
    proc.create_time()  # cached before it goes
    child.kill()
    child.wait()
    return proc


def test_orphaned_pipeline_and_stage_runs_are_marked_killed(mlflow_store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    experiment_id = tracking.configure()
    client = MlflowClient()
    gone = _ended_process()
    orphan_parent = tracking.find_or_create_pipeline_run("gone", experiment_id, owner=gone)
    live_parent = tracking.find_or_create_pipeline_run("alive", experiment_id)  # this process
    tags = {"pnoc.kind": "stage", **tracking.owner_tags(gone)}
    orphan_stage = client.create_run(experiment_id, run_name="cams", tags=tags).info.run_id
    elsewhere = {**tags, tracking.HOST_TAG: "another-host"}
    remote = client.create_run(experiment_id, run_name="cams", tags=elsewhere).info.run_id
    untagged = client.create_run(experiment_id, run_name="sweep").info.run_id
    finished = client.create_run(experiment_id, run_name="prepare", tags=tags).info.run_id
    client.set_terminated(finished, status="FINISHED")

    killed = tracking.end_orphaned_runs(experiment_id)

    assert sorted(killed) == sorted([orphan_parent, orphan_stage])
    status = {i: client.get_run(i).info.status for i in (*killed, live_parent, remote, untagged)}
    assert status[orphan_parent] == status[orphan_stage] == "KILLED"
    assert status[live_parent] == status[remote] == status[untagged] == "RUNNING"
    assert client.get_run(finished).info.status == "FINISHED"


def test_a_stage_run_records_its_process(mlflow_store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with tracking.stage_run("prepare") as run:
        run_id = run.info.run_id
    tags = MlflowClient().get_run(run_id).data.tags
    me = psutil.Process()
    assert tags["pnoc.host"] == socket.gethostname() and tags["pnoc.pid"] == str(me.pid)
    assert float(tags["pnoc.pid_started"]) == me.create_time()


def test_keyboard_interrupt_ends_the_stage_run_killed(mlflow_store, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(tracking.PIPELINE_ENV, raising=False)
    with pytest.raises(KeyboardInterrupt), tracking.stage_run("cams"):
        raise KeyboardInterrupt
    (run,) = _runs(MlflowClient())
    assert run.info.status == "KILLED"


def test_parent_run_carries_params_description_headline_and_pictures(
    mlflow_store, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(tracking.PIPELINE_ENV, "glance")
    picture = tmp_path / "overlay.png"
    picture.write_bytes(b"\x89PNG fake")
    everything = {"data.name": "synthetic", "cam.method": "pnoc"}
    with tracking.stage_run("cams", {"cam.method": "pnoc"}, pipeline_params=everything):
        tracking.log_headline({"cam_miou_val": 0.42, "cam_miou_train": None})
        tracking.log_pictures(picture)
    with tracking.stage_run("evaluate", pipeline_params=everything):
        tracking.log_headline({"deeplab_miou_val": 0.58})
    client = MlflowClient()
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    assert exp.tags[tracking.KIND_TAG] == "custom_model_development"  # opens on its runs
    (parent,) = [r for r in _runs(client) if r.data.tags.get("pnoc.kind") == "pipeline"]
    assert parent.data.params == everything
    assert parent.data.metrics == {"cam_miou_val": 0.42, "deeplab_miou_val": 0.58}
    assert "headline metrics" in parent.data.tags[tracking.NOTE_TAG]
    pictures = [a.path for a in client.list_artifacts(parent.info.run_id, "pictures")]
    assert pictures == ["pictures/overlay.png"]


def test_a_copied_project_reads_and_writes_its_own_artifacts(monkeypatch, tmp_path):
    """MLflow records absolute artifact paths; a project copied with its store and
    mlartifacts/ uses the copy's, and its registered model loads after the original is gone."""
    import shutil

    import torch

    from pnoc.models.backbones import save_model
    from pnoc.models.deeplab import DeepLabV3Plus
    from pnoc_pipelines import serving

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.PIPELINE_ENV, raising=False)
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    (original / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(original)
    torch.manual_seed(0)
    save_model(original / "deeplab.pt", DeepLabV3Plus("resnet18", 3), {})
    tracking.configure()
    with mlflow.start_run() as run:
        mlflow.log_text("hello", "note.txt")
        info = serving.log_segmenter(original / "deeplab.pt", scales=[1.0], flip=False)
    serving.register(info.model_uri, "copied", metric_name="miou", metric_value=0.5)

    shutil.copytree(original, copy)
    shutil.rmtree(original)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # set_tracking_uri exported it
    tracking.configure()
    client = MlflowClient()
    assert client.get_run(run.info.run_id).info.artifact_uri.startswith(copy.resolve().as_uri())
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/note.txt") == "hello"
    with serving.load_verified("models:/copied@champion") as model:
        assert model.get_raw_model().num_classes == 3
    assert not original.exists()  # nothing was written back to the old place
