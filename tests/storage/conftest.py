"""A real SeaweedFS S3 server on 127.0.0.1 (with credentials) and tiny DVC projects to push.

``s3_server`` is shared by the session; tests that stop or restart a server start their own
with ``s3_factory``. Every server is stopped (its process group) at teardown.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from pnoc_pipelines.s3_server import S3Server, start_s3
from tests.conftest import REPO, Project, deep_merge, make_project

ACCESS_KEY = "pnoc-test"
SECRET_KEY = "pnoc-test-secret-0123456789"
BUCKETS = ("pnoc-dvc", "pnoc-mlflow")
# the outputs of `dvc repro prepare train_oc` on the tiny params (all cached by DVC)
OUTPUTS = ("data/synthetic", "plots/samples.png", "models/oc.pt")
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "MLFLOW_S3_ENDPOINT_URL",
)


def isolated_aws_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """``env`` without any AWS credentials or endpoint: no ~/.aws files, no instance metadata."""
    out = {k: v for k, v in env.items() if k not in AWS_VARS}
    out["AWS_CONFIG_FILE"] = str(home / "aws-config-absent")
    out["AWS_SHARED_CREDENTIALS_FILE"] = str(home / "aws-credentials-absent")
    out["AWS_EC2_METADATA_DISABLED"] = "true"
    out["DVC_NO_ANALYTICS"] = "1"
    return out


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS S3 on a free loopback port, refusing all but ACCESS_KEY/SECRET_KEY."""
    server = start_s3(
        tmp_path_factory.mktemp("seaweedfs"),
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        buckets=BUCKETS,
    )
    yield server
    server.stop(timeout=5)


@pytest.fixture
def s3_factory(tmp_path: Path) -> Iterator[Callable[..., S3Server]]:
    """Start servers of this test's own (to stop and restart them); all stopped at teardown."""
    servers: list[S3Server] = []

    def start(name: str = "seaweedfs", buckets: tuple[str, ...] = BUCKETS) -> S3Server:
        server = start_s3(
            tmp_path / name, access_key=ACCESS_KEY, secret_key=SECRET_KEY, buckets=buckets
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=5)


@pytest.fixture(scope="session")
def dvc_source(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A tiny project after `dvc repro prepare train_oc`: its outputs are in its DVC cache.

    Tests copy it (``clone_project``) rather than change it.
    """
    params = deep_merge(
        yaml.safe_load((REPO / "params.yaml").read_text()),
        yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text()),
    )
    tmp = tmp_path_factory.mktemp("dvc_source")
    project = make_project(tmp / "project", params, f"sqlite:///{tmp / 'mlflow.db'}")
    project.env = isolated_aws_env(project.env, tmp)
    project.dvc("repro", "prepare", "train_oc")
    return project


@pytest.fixture
def clone_project(tmp_path: Path) -> Callable[..., Project]:
    """Copy a project to ``tmp_path / name``: whole (``with_data``: cache and outputs), or as a
    fresh checkout would have it (dvc.yaml, dvc.lock, params, code, .dvc/config; no data, no
    .dvc/config.local)."""

    def clone(source: Project, name: str, with_data: bool = True) -> Project:
        dest = tmp_path / name
        if with_data:
            shutil.copytree(source.root, dest, symlinks=True)
        else:
            dest.mkdir()
            for item in ("dvc.yaml", "dvc.lock", "params.yaml"):
                shutil.copy2(source.root / item, dest / item)
            for folder in ("src", "pipelines"):
                shutil.copytree(source.root / folder, dest / folder)
            (dest / ".dvc").mkdir()
            shutil.copy2(source.root / ".dvc" / "config", dest / ".dvc" / "config")
        env = isolated_aws_env(dict(source.env), tmp_path)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
        return Project(dest, env)

    return clone
