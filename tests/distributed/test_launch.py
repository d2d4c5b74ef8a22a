"""``base.workers`` > 1: a stage re-launches itself through torchrun or Ray Train, unchanged
dvc.yaml; rank 0 alone writes outputs and the stage's MLflow run; bad launch settings fail fast
with the endpoint named."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import deep_merge, make_project

pytestmark = pytest.mark.slow  # real launchers, several processes


def _stage_runs(uri: str, name: str) -> list[Any]:
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    runs = []
    for exp in client.search_experiments():
        runs += client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{name}'")
    return runs


def test_two_workers_through_torchrun_then_ray(
    tmp_path: Path, tiny_params: dict[str, Any], mlflow_store: str
) -> None:
    params = deep_merge(tiny_params, {"base": {"workers": 2}})
    project = make_project(tmp_path / "project", params, mlflow_store)

    proc = project.dvc("repro", "cams")
    log = proc.stdout + proc.stderr
    assert "starting 2 workers" in log
    assert "2 workers (gloo, DDP, 2 images each per micro-batch)" in log
    for out in ("models/oc.pt", "models/cam.pt", "metrics/cams.json"):
        assert (project.root / out).is_file(), out
    assert any((project.root / "outputs" / "cams").glob("*.npz"))
    for stage in ("train_oc", "train_cam", "cams"):
        runs = _stage_runs(mlflow_store, stage)
        assert [r.info.status for r in runs] == ["FINISHED"], stage  # one run: rank 0's

    ray_params = deep_merge(params, {"base": {"launcher": "ray"}})
    project.write_params(ray_params)
    proc = project.dvc("repro", "-s", "train_oc")
    log = proc.stdout + proc.stderr
    assert "starting 2 Ray Train workers" in log
    assert (project.root / "models" / "oc.pt").is_file()
    assert [r.info.status for r in _stage_runs(mlflow_store, "train_oc")] == ["FINISHED"] * 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("base", "env", "named"),
    [
        ({"nodes": 2, "rdzv_endpoint": "192.0.2.1:29400"}, {}, "192.0.2.1:29400"),
        ({"launcher": "ray"}, {"RAY_ADDRESS": "127.0.0.1:{port}"}, "127.0.0.1:{port}"),
        ({"nodes": 2}, {}, "base.rdzv_endpoint"),
    ],
    ids=["unreachable-rendezvous", "unreachable-ray", "no-rendezvous"],
)
def test_launch_settings_that_cannot_work_fail_fast_and_name_the_endpoint(
    tmp_path: Path,
    tiny_params: dict[str, Any],
    mlflow_store: str,
    base: dict[str, Any],
    env: dict[str, str],
    named: str,
) -> None:
    port = str(_free_port())
    params = deep_merge(tiny_params, {"base": {"workers": 2, **base}})
    project = make_project(tmp_path / "project", params, mlflow_store)
    project.env.update({k: v.replace("{port}", port) for k, v in env.items()})
    project.env["PNOC_DIST_TIMEOUT_S"] = "3"
    (project.root / "models").mkdir()
    t0 = time.monotonic()
    proc = project.run("python", "-m", "pnoc_pipelines.train_oc", check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert named.replace("{port}", port) in proc.stderr
    assert time.monotonic() - t0 < 60
    assert not (project.root / "models" / "oc.pt").exists()
