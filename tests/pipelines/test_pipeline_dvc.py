"""The real `dvc repro` on the tiny configuration, in a throw-away project."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pnoc.cam.inference import load_cam_npz
from pnoc.data.files import read_mask
from pnoc.saliency.inference import load_saliency_png

pytestmark = pytest.mark.slow

STAGES = (
    "generate",
    "prepare",
    "train_oc",
    "train_cam",
    "cams",
    "train_saliency",
    "saliency",
    "train_affinity",
    "pseudo_masks",
    "train_segmentation",
    "evaluate",
    "register",
)


def test_repro_runs_every_stage(reproduced):
    for name in STAGES:
        assert f"Running stage '{name}'" in reproduced.first_repro.stdout
    report = json.loads((reproduced.root / "metrics" / "dataset.json").read_text())
    assert report["train"]["images"] == 12 and report["val"]["images"] == 8
    assert report["train"]["checked"] == 12
    assert (reproduced.root / "plots" / "samples.png").stat().st_size > 0
    dag = reproduced.dvc("dag").stdout
    for name in STAGES:
        assert name in dag


def test_cam_outputs_and_metrics(reproduced):
    root = reproduced.root
    for name in ("oc.pt", "cam.pt", "noc.pt"):
        assert (root / "models" / name).stat().st_size > 0
    cams = sorted((root / "outputs" / "cams").glob("*.npz"))
    assert len(cams) == 12 + 8
    record, classes = load_cam_npz(cams[0])
    assert record.dtype.name == "float16" and record.shape[0] == len(classes) >= 1
    assert record.shape[1:] == (64, 64)
    metrics = json.loads((root / "metrics" / "cams.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0
    assert metrics["miou"] == metrics["val"]["miou"]
    assert 0.05 <= metrics["best_threshold"] <= 0.80
    assert set(metrics["val"]["iou"]) == {"background", "circle", "square", "triangle"}
    rows = list(csv.DictReader((root / "plots" / "cams_threshold.csv").open()))
    assert len(rows) == 2 * 16
    shown = reproduced.dvc("metrics", "show", "--json").stdout
    assert "cams.json" in shown


def test_saliency_affinity_and_pseudo_mask_outputs(reproduced):
    root = reproduced.root
    for name in ("ccam.pt", "affinity.pt"):
        assert (root / "models" / name).stat().st_size > 0
    saliency = sorted((root / "outputs" / "saliency").glob("*.png"))
    assert len(saliency) == 12 + 8
    assert load_saliency_png(saliency[0], expected_size=(64, 64)).max() <= 1.0
    sal_report = json.loads((root / "metrics" / "saliency.json").read_text())
    assert 0.0 <= sal_report["miou"] <= 1.0 and sal_report["miou"] == sal_report["val"]["miou"]
    labels = sorted((root / "outputs" / "affinity_labels").glob("*.png"))
    assert len(labels) == 12
    assert set(np.unique(read_mask(labels[0]))) <= {0, 1, 2, 3, 255}
    aff = json.loads((root / "metrics" / "affinity_labels.json").read_text())
    assert 0.0 <= aff["confident_share"] <= 1.0 and aff["images"] == 12
    masks = sorted((root / "outputs" / "pseudo_masks").glob("*.png"))
    assert [m.stem for m in masks] == [c.stem for c in labels]
    mask = read_mask(masks[0])
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 1, 2, 3, 255}
    report = json.loads((root / "metrics" / "pseudo_masks.json").read_text())
    assert report["split"] == "train" and report["images"] == 12
    assert 0.0 <= report["miou"] <= 1.0
    cams = json.loads((root / "metrics" / "cams.json").read_text())
    assert report["cam_best_miou"] == cams["train"]["miou"]
    assert report["gain_over_cams"] == pytest.approx(report["miou"] - cams["train"]["miou"])
    assert 0 <= report["fallback_images"] <= 12
    for plot in ("saliency_overlay.png", "pseudo_masks_overlay.png"):
        assert (root / "plots" / plot).stat().st_size > 0


def test_segmentation_outputs(reproduced):
    root = reproduced.root
    assert (root / "models" / "deeplab.pt").stat().st_size > 0
    report = json.loads((root / "metrics" / "segmentation.json").read_text())
    assert report["split"] == "val" and report["images"] == 8
    assert 0.0 <= report["miou"] <= 1.0
    assert set(report["iou"]) == {"background", "circle", "square", "triangle"}
    assert np.asarray(report["confusion"]).sum() > 0
    for plot in ("confusion.png", "segmentation_overlay.png"):
        assert (root / "plots" / plot).stat().st_size > 0


def test_second_repro_is_a_noop(reproduced):
    second = reproduced.dvc("repro")
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout


def test_stages_of_one_repro_form_one_mlflow_tree(reproduced):
    client = MlflowClient(tracking_uri=reproduced.env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("pnoc")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("pnoc.kind") == "pipeline"]
    stages = {r.info.run_name: r for r in runs if r.data.tags.get("pnoc.kind") == "stage"}
    assert len(parents) == 1, [r.info.run_name for r in runs]
    assert set(STAGES) <= set(stages)
    for run in stages.values():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(stages["prepare"].info.run_id)]
    assert "samples.png" in artifacts
    cams_run = stages["cams"]
    assert "val.miou" in cams_run.data.metrics
    assert cams_run.data.params["cams.flip"] == "True"
    assert "train.miou" in stages["pseudo_masks"].data.metrics
    pm_artifacts = [a.path for a in client.list_artifacts(stages["pseudo_masks"].info.run_id)]
    assert "pseudo_masks_overlay.png" in pm_artifacts
    train_cam = stages["train_cam"]
    assert train_cam.data.params["cam.method"] == "pnoc"
    history = client.get_metric_history(train_cam.info.run_id, "loss")
    assert history, "step losses are logged"


def test_bad_params_stop_before_any_work(tiny_project, tiny_params):
    tiny_params["cam"]["pnoc"]["mask_threshold"] = 2.0
    tiny_project.write_params(tiny_params)
    proc = tiny_project.run("pnoc", "repro", check=False)
    assert proc.returncode == 1
    assert "cam.pnoc.mask_threshold" in proc.stderr
    assert not (tiny_project.root / "data" / "synthetic").exists()
