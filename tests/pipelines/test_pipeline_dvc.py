"""The real `dvc repro` on the tiny configuration, in a throw-away project."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_repro_runs_stages_and_second_repro_is_a_noop(tiny_project):
    first = tiny_project.dvc("repro")
    assert "Running stage 'generate'" in first.stdout
    assert "Running stage 'prepare'" in first.stdout
    report = json.loads((tiny_project.root / "metrics" / "dataset.json").read_text())
    assert report["train"]["images"] == 12 and report["val"]["images"] == 8
    assert report["train"]["checked"] == 12
    assert (tiny_project.root / "plots" / "samples.png").stat().st_size > 0

    second = tiny_project.dvc("repro")
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout

    dag = tiny_project.dvc("dag").stdout
    assert "generate" in dag and "prepare" in dag


def test_stages_of_one_repro_form_one_mlflow_tree(tiny_project):
    tiny_project.dvc("repro")
    client = MlflowClient(tracking_uri=tiny_project.env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("pnoc")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pnoc.kind") == "pipeline"]
    stages = {r.info.run_name: r for r in runs if r.data.tags.get("pnoc.kind") == "stage"}
    assert len(parents) == 1, [r.info.run_name for r in runs]
    assert {"generate", "prepare"} <= set(stages)
    for run in stages.values():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    artifacts = [a.path for a in client.list_artifacts(stages["prepare"].info.run_id)]
    assert "samples.png" in artifacts


def test_bad_params_stop_before_any_work(tiny_project, tiny_params):
    tiny_params["cam"]["pnoc"]["mask_threshold"] = 2.0
    tiny_project.write_params(tiny_params)
    proc = tiny_project.run("pnoc", "repro", check=False)
    assert proc.returncode == 1
    assert "cam.pnoc.mask_threshold" in proc.stderr
    assert not (tiny_project.root / "data" / "synthetic").exists()
