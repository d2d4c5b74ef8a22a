"""The project's .gitignore, as git applies it: local state stays out, the contract files in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO

IGNORED = [
    "mlflow.db",
    "mlflow.db-journal",
    "mlflow.db.lock",
    "mlflow-server.db",
    "mlflow-server.db-journal",
    "mlartifacts/1/abc/artifacts/samples.png",
    ".pnoc/checkpoints/train_oc.ckpt",
    "plots/.samples.png.k2j4_x9a.tmp",
    "outputs/.cams.3fa8wq1b.tmp/train_00000.npz",
    "metrics/.dataset.json.abc.tmp",
    "dvc_plots/index.html",
]
KEPT = [
    "params.yaml",
    "dvc.yaml",
    "dvc.lock",
    "metrics/dataset.json",
    "reports/dataset_details.json",
    "plots/cams_threshold/val.csv",
    "pipelines/tracking.py",
]


def test_local_state_and_temporaries_are_ignored(tmp_path: Path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, timeout=30)
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", *IGNORED, *KEPT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert sorted(proc.stdout.split()) == sorted(IGNORED)
