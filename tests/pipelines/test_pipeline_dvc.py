"""The real `dvc repro` on the tiny configuration, in a throw-away project."""

from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pnoc.cam.inference import load_cam_npz
from pnoc.data.files import read_mask
from pnoc.saliency.inference import load_saliency_png

pytestmark = pytest.mark.slow

STAGES = (
    "check_params",
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

# What `dvc metrics show` lists, and the longest line it may print on the tiny project.
METRICS_FILES = ("dataset", "cams", "saliency", "affinity_labels", "pseudo_masks", "segmentation")
MAX_METRICS_LINE = 200
# The pictures `dvc plots show` gathers and the pipeline's MLflow run holds under pictures/.
PICTURES = {
    "samples.png",
    "cams_overlay.png",
    "saliency_overlay.png",
    "pseudo_masks_overlay.png",
    "confusion.png",
    "segmentation_overlay.png",
}
# Training stage -> its params section: each writes plots/<stage>_history.csv, one row an epoch.
TRAINING = {
    "train_oc": "oc",
    "train_cam": "cam",
    "train_saliency": "saliency",
    "train_affinity": "affinity",
    "train_segmentation": "segmentation",
}
# Each stage's headline numbers, logged to its run and to the pipeline's parent run.
HEADLINES = {
    "prepare": {"dataset_classes", "dataset_images_train", "dataset_images_val"},
    "cams": {"cam_miou_train", "cam_miou_val", "cam_threshold_val"},
    "saliency": {"saliency_miou_val"},
    "train_affinity": {"affinity_label_miou", "affinity_precision", "affinity_confident_share"},
    "pseudo_masks": {"pseudo_mask_miou_train", "pseudo_mask_fallback_images"},
    "evaluate": {"deeplab_miou_val", "deeplab_pixel_acc_val"},
    "register": {"registered_version", "registered_promoted"},
}


def test_repro_runs_every_stage(reproduced):
    for name in STAGES:
        assert f"Running stage '{name}'" in reproduced.first_repro.stdout
    report = json.loads((reproduced.root / "metrics" / "dataset.json").read_text())
    assert report == {"classes": 3, "train": {"images": 12}, "val": {"images": 8}}
    details = json.loads((reproduced.root / "reports" / "dataset_details.json").read_text())
    assert details["train"]["checked"] == 12 and details["train"]["images"] == 12
    assert set(details["val"]["images_per_class"]) == {"circle", "square", "triangle"}
    assert (reproduced.root / "plots" / "samples.png").stat().st_size > 0
    dag = reproduced.dvc("dag").stdout
    for name in STAGES:
        assert name in dag


def test_training_stages_log_one_line_per_epoch_without_a_terminal(reproduced):
    """`dvc repro` with its output captured (no terminal): every training stage logs its epochs,
    and no inference bar writes carriage returns into the log."""
    log = reproduced.first_repro.stdout + reproduced.first_repro.stderr
    epochs = re.findall(r"epoch (\d+)/(\d+) done: step \d+/\d+ \| .* images/s \| elapsed", log)
    assert len(epochs) >= 5, log[-3000:]  # train_oc, train_cam, saliency, affinity, segmentation
    assert "\r" not in log


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
    assert metrics.keys() == {"split", "threshold", "train", "val"} and metrics["split"] == "val"
    assert 0.0 <= metrics["val"]["miou"] <= 1.0 and 0.05 <= metrics["threshold"] <= 0.80
    details = json.loads((root / "reports" / "cams_details.json").read_text())
    assert details["val"]["miou"] == metrics["val"]["miou"]
    assert details["val"]["best_threshold"] == metrics["threshold"]
    assert details["train"]["miou"] == metrics["train"]["miou"]
    assert set(details["val"]["iou"]) == {"background", "circle", "square", "triangle"}
    for split in ("train", "val"):
        rows = list(csv.DictReader((root / "plots" / "cams_threshold" / f"{split}.csv").open()))
        assert len(rows) == 16 and set(rows[0]) == {"threshold", "miou"}
        best = max(rows, key=lambda r: float(r["miou"]))
        assert float(best["miou"]) == pytest.approx(details[split]["miou"])
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
    assert sal_report == {"split": "val", "miou": sal_report["miou"], "threshold": 0.8}
    assert 0.0 <= sal_report["miou"] <= 1.0
    sal_details = json.loads((root / "reports" / "saliency_details.json").read_text())
    assert sal_details["val"]["miou"] == sal_report["miou"]
    assert 0.0 <= sal_details["train"]["miou"] <= 1.0
    assert set(sal_details["val"]["iou"]) == {"background", "foreground"}
    labels = sorted((root / "outputs" / "affinity_labels").glob("*.png"))
    assert len(labels) == 12
    assert set(np.unique(read_mask(labels[0]))) <= {0, 1, 2, 3, 255}
    aff = json.loads((root / "metrics" / "affinity_labels.json").read_text())
    assert aff.keys() == {"split", "miou", "precision", "confident_share"}
    assert 0.0 <= aff["confident_share"] <= 1.0 and aff["split"] == "train"
    aff_details = json.loads((root / "reports" / "affinity_labels_details.json").read_text())
    assert aff_details["images"] == 12 and aff_details["label_miou"] == aff["miou"]
    masks = sorted((root / "outputs" / "pseudo_masks").glob("*.png"))
    assert [m.stem for m in masks] == [c.stem for c in labels]
    mask = read_mask(masks[0])
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 1, 2, 3, 255}
    headline = json.loads((root / "metrics" / "pseudo_masks.json").read_text())
    assert headline.keys() == {"split", "miou", "fallback_images"}
    report = json.loads((root / "reports" / "pseudo_masks_details.json").read_text())
    assert report["split"] == "train" and report["images"] == 12
    assert 0.0 <= report["miou"] <= 1.0 and report["miou"] == headline["miou"]
    cams = json.loads((root / "metrics" / "cams.json").read_text())
    assert report["cam_best_miou"] == cams["train"]["miou"]
    assert report["gain_over_cams"] == pytest.approx(report["miou"] - cams["train"]["miou"])
    assert 0 <= report["fallback_images"] == headline["fallback_images"] <= 12
    for plot in ("saliency_overlay.png", "pseudo_masks_overlay.png"):
        assert (root / "plots" / plot).stat().st_size > 0


def test_segmentation_outputs(reproduced):
    root = reproduced.root
    assert (root / "models" / "deeplab.pt").stat().st_size > 0
    headline = json.loads((root / "metrics" / "segmentation.json").read_text())
    assert headline.keys() == {"split", "miou", "pixel_acc"} and headline["split"] == "val"
    assert 0.0 <= headline["miou"] <= 1.0
    report = json.loads((root / "reports" / "segmentation_details.json").read_text())
    assert report["images"] == 8 and report["miou"] == headline["miou"]
    assert set(report["iou"]) == {"background", "circle", "square", "triangle"}
    assert report["classes"] == ["background", "circle", "square", "triangle"]
    confusion = np.asarray(report["confusion"])
    assert confusion.shape == (4, 4) and 0 < confusion.sum() <= 8 * 64 * 64
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
    assert set(STAGES) - {"check_params"} <= set(stages)  # it validates params, no run
    for run in stages.values():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(stages["prepare"].info.run_id)]
    assert "samples.png" in artifacts
    cams_run = stages["cams"]
    assert {"cam_miou_val", "cam_threshold_val", "cam_iou_val/circle"} <= set(cams_run.data.metrics)
    assert cams_run.data.params["cams.flip"] == "True"
    assert "pseudo_mask_miou_train" in stages["pseudo_masks"].data.metrics
    pm_artifacts = [a.path for a in client.list_artifacts(stages["pseudo_masks"].info.run_id)]
    assert "pseudo_masks_overlay.png" in pm_artifacts
    train_cam = stages["train_cam"]
    assert train_cam.data.params["cam.method"] == "pnoc"
    history = client.get_metric_history(train_cam.info.run_id, "loss")
    assert history, "step losses are logged"


def test_metrics_show_prints_the_headline_numbers_in_short_lines(reproduced):
    out = reproduced.dvc("metrics", "show").stdout
    lines = out.splitlines()
    widest = max(lines, key=len)
    assert len(widest) <= MAX_METRICS_LINE, f"{len(widest)} characters: {widest}"
    rows = {line.split()[0] for line in lines[1:] if line.strip()}
    assert rows == {f"metrics/{name}.json" for name in METRICS_FILES}
    for detail in ("circle", "foreground", "confusion", "images_per_class"):  # in reports/
        assert detail not in out


def test_plots_show_draws_every_curve_and_picture(reproduced, tmp_path):
    out = reproduced.dvc("plots", "show", "--json", "-o", str(tmp_path / "plots")).stdout
    shown = json.loads(out)
    assert "errors" not in shown, shown["errors"]
    plots = shown["data"]
    images = {Path(k).name for k, v in plots.items() if v[0]["type"] == "image"}
    assert images == PICTURES
    (curve,) = plots["cams_threshold"]
    rows = curve["content"]["data"]["values"]
    assert len(rows) == 2 * 16 and {r["filename"] for r in rows} == {"train.csv", "val.csv"}
    params = yaml.safe_load((reproduced.root / "params.yaml").read_text())
    for stage, section in TRAINING.items():
        (history,) = plots[f"plots/{stage}_history.csv"]
        rows = history["content"]["data"]["values"]
        assert [int(r["epoch"]) for r in rows] == list(range(1, params[section]["epochs"] + 1))
        assert all(float(r["loss"]) > 0 for r in rows)
    assert not (reproduced.root / "dvc_plots").exists()


def test_the_pipeline_run_holds_every_stage_headline_and_picture(reproduced):
    client = MlflowClient(tracking_uri=reproduced.env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("pnoc")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("pnoc.kind") == "pipeline"]
    stages = {r.info.run_name: r for r in runs if r.data.tags.get("pnoc.kind") == "stage"}
    assert set(parent.data.metrics) == set().union(*HEADLINES.values())
    for name, headline in HEADLINES.items():
        assert headline <= set(stages[name].data.metrics), name
        for other, run in stages.items():  # one name, one meaning: no other stage logs it
            assert other == name or not headline & set(run.data.metrics), (name, other)
    metrics = parent.data.metrics
    assert metrics["dataset_images_train"] == 12 and metrics["dataset_images_val"] == 8
    root = reproduced.root
    cams = json.loads((root / "metrics" / "cams.json").read_text())
    assert metrics["cam_miou_val"] == cams["val"]["miou"]
    assert metrics["cam_threshold_val"] == cams["threshold"]
    seg = json.loads((root / "metrics" / "segmentation.json").read_text())
    assert metrics["deeplab_miou_val"] == seg["miou"]
    assert metrics["registered_version"] == 1 and metrics["registered_promoted"] == 1
    pictures = client.list_artifacts(parent.info.run_id, "pictures")
    assert {Path(a.path).name for a in pictures} == PICTURES
    evaluate = stages["evaluate"].data.metrics
    assert {f"deeplab_iou_val/{c}" for c in ("circle", "square", "triangle")} <= set(evaluate)


def test_bad_params_stop_before_any_work(tiny_project, tiny_params):
    tiny_params["cam"]["pnoc"]["mask_threshold"] = 2.0
    tiny_project.write_params(tiny_params)
    proc = tiny_project.run("pnoc", "repro", check=False)
    assert proc.returncode == 1
    assert "cam.pnoc.mask_threshold" in proc.stderr
    assert not (tiny_project.root / "data" / "synthetic").exists()


def test_plain_dvc_repro_with_a_bad_data_root_keeps_outputs(tiny_project, tiny_params, tmp_path):
    """DVC deletes a stage's outputs before it finds a missing ``${data.root}`` dependency:
    check_params, upstream of every stage, stops `dvc repro` first with our one-line error."""
    tiny_project.dvc("repro", "prepare")
    kept = ("metrics/dataset.json", "plots/samples.png", "data/synthetic/ImageSets/Segmentation")
    before = {p: _snapshot(tiny_project.root / p) for p in kept}

    for name, root in (("voc", str(tmp_path / "VOC2012")), ("synthetic", "data/elsewhere")):
        bad = copy.deepcopy(tiny_params)
        bad["data"].update(name=name, root=root)
        tiny_project.write_params(bad)
        for targets in ((), ("prepare",)):
            proc = tiny_project.dvc("repro", *targets, check=False)
            assert proc.returncode != 0
            out = proc.stdout + proc.stderr
            assert "error: params.yaml: data.root: " in out and f"'{root}'" in out, out
            assert "Running stage 'prepare'" not in out
            assert {p: _snapshot(tiny_project.root / p) for p in kept} == before

    tiny_project.write_params(tiny_params)
    again = tiny_project.dvc("repro", "prepare")
    assert "Running stage 'prepare'" not in again.stdout  # as it was: nothing to redo
    assert "Stage 'prepare' didn't change" in again.stdout


def _snapshot(path: Path) -> dict[str, bytes]:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(f.relative_to(path.parent)): f.read_bytes() for f in files if f.is_file()}
