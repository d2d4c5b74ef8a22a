"""A throw-away project with real tiny CAMs (`dvc repro cams`), shared by the sweep tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Project, deep_merge, make_project

SWEEP_SETTINGS = {
    "defaults": {
        "num_samples": 3,
        "max_concurrent": 2,
        "resources": {"cpu": 1, "gpu": 0},
        "seed": 0,
        "asha": {"grace_period": 1, "reduction_factor": 2},
    },
    "saliency": {
        "metric": "cam_saliency_miou",
        "epochs": 2,
        "space": [
            {"param": "saliency.delta_fg", "low": 0.3, "high": 0.7},
            {"param": "saliency.lambda_h", "low": 0.1, "high": 10.0, "log": True},
            # A weight file that does not exist: trials drawing it crash (on purpose).
            {"param": "saliency.weights", "choices": [None, "/nonexistent/ccam.pth"]},
        ],
    },
    "adversarial": {
        "metric": "cam_miou",
        "epochs": 1,
        "overrides": {"cam.method": "pnoc"},
        "space": [
            {"param": "cam.pnoc.ow.end", "low": 0.25, "high": 4.0, "log": True},
            {"param": "cam.pnoc.mask_threshold", "low": 0.1, "high": 0.5},
        ],
    },
}


@pytest.fixture
def sweep_settings() -> dict[str, Any]:
    return copy.deepcopy(SWEEP_SETTINGS)


@pytest.fixture(scope="module")
def cams_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """Tiny data, OC and CAMs from the real stages (vanilla generator: the fastest)."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(base, yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text()))
    params = deep_merge(params, {"cam": {"method": "vanilla"}, "cams": {"scales": [1.0]}})
    tmp = tmp_path_factory.mktemp("sweep")
    project = make_project(tmp / "p", params, f"sqlite:///{tmp / 'mlflow.db'}")
    project.env["PYTHONUNBUFFERED"] = "1"
    project.dvc("repro", "cams")
    (project.root / "sweep.yaml").write_text(yaml.safe_dump(SWEEP_SETTINGS, sort_keys=False))
    return project
