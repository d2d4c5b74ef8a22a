"""The real-data recipes end to end in smoke form: every stage of `dvc repro` with the
``voc12`` and ``coco14`` settings (ResNet-50 from timm at 512 / 640 px crops, the authors' SGD,
ramps, thresholds, random walk and CRF) on generated VOC-size stand-ins: 500×375 images in the
VOC layout with an SBD folder, and 640×480 images in the COCO 2014 layout with crowd regions."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from pnoc_pipelines import recipe
from tests.conftest import REPO, make_project
from tests.pipelines.test_pipeline_dvc import STAGES

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("name", "train_split", "classes"),
    [("voc12-smoke", "train_aug", 20), ("coco14-smoke", "train", 20)],
)
def test_recipe_runs_every_stage(tmp_path, name, train_split, classes):
    project = make_project(
        tmp_path / "project",
        yaml.safe_load((REPO / "params.yaml").read_text()),
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    changes = recipe.apply(name, project.root / "params.yaml")
    assert changes
    done = project.dvc("repro", timeout=1800)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in done.stdout
    dataset = json.loads((project.root / "metrics" / "dataset.json").read_text())
    assert dataset["classes"] == classes
    assert dataset[train_split]["images"] > 0
    cams = json.loads((project.root / "metrics" / "cams.json").read_text())
    assert 0.0 <= cams["val"]["miou"] <= 1.0
    seg = json.loads((project.root / "metrics" / "segmentation.json").read_text())
    assert 0.0 <= seg["miou"] <= 1.0
    # The recipe's settings reached the stages: the checkpoints hold timm's ResNet-50.
    meta = project.run(
        sys.executable,
        "-c",
        "import torch, json; print(json.dumps(torch.load('models/cam.pt', weights_only=True)"
        "['meta']))",
    )
    assert json.loads(meta.stdout)["backbone"] == "resnet50"
