"""`pnoc dev s3`: a foreground SeaweedFS with buckets, printing what to export and run."""

from __future__ import annotations

import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 180) -> str:
    """stdout of ``proc`` up to the line holding ``marker``."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError(f"no {marker!r} in the output:\n{''.join(lines)}")


def test_pnoc_dev_s3_serves_buckets_and_prints_setup(tmp_path: Path):
    data = tmp_path / "s3"
    cmd = [
        sys.executable,
        "-m",
        "pnoc_pipelines.cli",
        "dev",
        "s3",
        "--dir",
        str(data),
        "--port",
        "0",
    ]
    cmd += ["--bucket", "team-dvc", "--bucket", "team-mlflow"]
    # stderr to a file: an undrained pipe would block the CLI once 64 KiB of logs pile up
    err = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
    try:
        out = read_until(proc, "Ctrl-C stops the server")
        env = dict(re.findall(r"^export (\w+)=(\S+)$", out, re.MULTILINE))
        endpoint = env["AWS_ENDPOINT_URL"]
        assert env["MLFLOW_S3_ENDPOINT_URL"] == endpoint
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", endpoint)
        assert "dvc remote add -d storage s3://team-dvc/store" in out
        assert f"dvc remote modify storage endpointurl {endpoint}" in out
        assert "--artifacts-destination s3://team-mlflow/artifacts" in out
        # generated keys, kept in DIR/s3.json for the next start
        assert env["AWS_SECRET_ACCESS_KEY"] in (data / "s3.json").read_text()
        assert stat.S_IMODE(data.stat().st_mode) == 0o700  # objects and keys: the owner's only

        # the printed credentials work and the buckets are there
        s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        assert {"team-dvc", "team-mlflow"} <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
        code = proc.wait(60)
        err.close()
    assert code == 0, (tmp_path / "stderr.txt").read_text()
    # the CLI stopped its server: nothing listens on the port any more
    port = int(endpoint.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
