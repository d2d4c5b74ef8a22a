"""A real `mlflow server` whose artifacts go to S3 (SeaweedFS): runs, models, the registry.

The client holds no S3 credentials: artifacts travel through the server
(``mlflow-artifacts:/`` URIs, ``--artifacts-destination``), which alone talks to the bucket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pnoc_pipelines.s3_server import S3Server, free_ports
from tests.storage.conftest import AWS_VARS

pytestmark = pytest.mark.slow

BUCKET = "pnoc-mlflow"
MODEL = "pnoc-echo"


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited ({proc.returncode}):\n{log.read_text()}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            if r.status == 200:
                return
        time.sleep(1)
    raise AssertionError(f"mlflow server not healthy after {timeout}s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def mlflow_server(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free loopback port: SQLite backend, artifacts in s3://pnoc-mlflow."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARS and k != "MLFLOW_TRACKING_URI"}
    env |= s3_server.env() | {"AWS_EC2_METADATA_DISABLED": "true"}
    cmd = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}"),
        *("--artifacts-destination", f"s3://{BUCKET}/artifacts"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    log = tmp / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def tracking(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process talks to the server only: no S3 credentials or endpoint of its own."""
    for key in AWS_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = getattr(tracking_utils, "_tracking_uri", None)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(previous)  # None unsets it; monkeypatch restores the env after


def bucket_keys(server: S3Server, prefix: str = "artifacts/") -> dict[str, int]:
    client = server.client()
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out |= {obj["Key"]: obj["Size"] for obj in page.get("Contents", [])}
    return out


def test_runs_and_registered_models_live_in_s3(tracking, s3_server):
    class Echo(mlflow.pyfunc.PythonModel):
        """Returns its input; the type hints give MLflow the signature."""

        def predict(self, model_input: list[str], params=None) -> list[str]:
            return model_input

    client = MlflowClient()
    experiment_id = client.create_experiment("team-s3")  # no global active experiment left behind
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_param("backbone", "resnet50")
        mlflow.log_metric("miou", 0.5)
        mlflow.log_text("hello from the team", "notes/hello.txt")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Echo(), pip_requirements=["mlflow"]
        )
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server

    version = mlflow.register_model(info.model_uri, MODEL)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    assert client.get_model_version_by_alias(MODEL, "champion").version == version.version

    # the files are in the bucket, where the artifact URIs say
    keys = bucket_keys(s3_server)
    note = f"artifacts/{experiment_id}/{run.info.run_id}/artifacts/notes/hello.txt"
    assert note in keys
    body = s3_server.client().get_object(Bucket=BUCKET, Key=note)["Body"].read()
    assert body == b"hello from the team"
    model_loc = mlflow.get_logged_model(info.model_id).artifact_location
    assert model_loc.startswith("mlflow-artifacts:/")
    model_prefix = "artifacts/" + model_loc.removeprefix("mlflow-artifacts:/").strip("/") + "/"
    model_files = {k.removeprefix(model_prefix) for k in keys if k.startswith(model_prefix)}
    assert {"MLmodel", "python_model.pkl", "requirements.txt"} <= model_files
    assert all(keys[model_prefix + name] > 0 for name in ("MLmodel", "python_model.pkl"))

    # the champion, loaded back through the server, answers
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert loaded.metadata.model_id == info.model_id
    assert loaded.predict(["circle", "square"]) == ["circle", "square"]
