"""Stage runs nest under their pipeline run in a real SQLite MLflow store."""

from __future__ import annotations

import mlflow
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
