"""Registering segmenter versions in a real SQLite MLflow store: aliases follow the metric."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pnoc.errors import PnocError
from pnoc_pipelines import serving, tracking
from tests.conftest import REPO

NAME = "pnoc-segmenter-test"


def save_tiny_checkpoint(path: Path) -> Path:
    import torch

    from pnoc.models.backbones import save_model
    from pnoc.models.deeplab import DeepLabV3Plus

    torch.manual_seed(0)
    save_model(path, DeepLabV3Plus("resnet18", 3), {"class_names": ["background", "a", "b"]})
    return path


@pytest.fixture
def logged(mlflow_store, tmp_path, monkeypatch) -> str:
    """The URI of one logged tiny segmenter (random weights)."""
    monkeypatch.chdir(tmp_path)
    tracking.configure()
    ckpt = save_tiny_checkpoint(tmp_path / "deeplab.pt")
    with mlflow.start_run():
        info = serving.log_segmenter(ckpt, scales=[1.0], flip=False)
    return info.model_uri


def _aliases(client: MlflowClient) -> dict[str, int]:
    return {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def test_champion_moves_only_on_a_strictly_better_metric(logged):
    client = MlflowClient()

    def reg(value):
        return serving.register(
            logged,
            NAME,
            metric_name="miou",
            metric_value=value,
            tags={"pnoc.git_commit": "abc123", "pnoc.pipeline_run_id": "run42"},
        )

    first = reg(0.5)
    assert first["version"] == 1 and first["promoted"] and first["champion_before"] is None
    assert _aliases(client) == {"champion": 1, "challenger": 1}

    worse = reg(0.4)
    assert (worse["version"], worse["promoted"], worse["champion"]) == (2, False, 1)
    assert worse["champion_before"] == {"version": 1, "value": 0.5}
    assert _aliases(client) == {"champion": 1, "challenger": 2}

    better = reg(0.6)
    assert better["promoted"] and better["champion"] == 3
    assert _aliases(client) == {"champion": 3, "challenger": 3}

    tie = reg(0.6)
    assert not tie["promoted"] and "tie" in tie["reason"]
    assert _aliases(client) == {"champion": 3, "challenger": 4}

    nan = reg(float("nan"))
    assert not nan["promoted"] and nan["value"] is None
    assert _aliases(client) == {"champion": 3, "challenger": 5}

    tags = client.get_model_version(NAME, "2").tags
    assert tags[serving.METRIC_TAG] == "miou" and float(tags[serving.VALUE_TAG]) == 0.4
    assert tags["pnoc.git_commit"] == "abc123" and tags["pnoc.pipeline_run_id"] == "run42"
    json.dumps(nan, allow_nan=False)  # the record is strict JSON


def test_a_champion_ranked_by_another_metric_is_replaced_with_a_reason(logged):
    serving.register(logged, NAME, metric_name="pixel_acc", metric_value=0.9)
    rec = serving.register(logged, NAME, metric_name="miou", metric_value=0.2)
    assert rec["promoted"] and rec["champion_before"] == {"version": 1, "value": None}
    assert "records no 'miou'" in rec["reason"] and "pixel_acc" in rec["reason"]


# -- the DVC stage -----------------------------------------------------------------------


@pytest.fixture
def stage_dir(mlflow_store, tmp_path, monkeypatch, tiny_params):
    """A project folder with dvc.yaml, params.yaml, models/deeplab.pt and
    metrics/segmentation.json."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.setenv(tracking.PIPELINE_ENV, "test-pipeline")
    tiny_params["register"] = {"model_name": NAME, "metric": "miou"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    (tmp_path / "models").mkdir()
    save_tiny_checkpoint(tmp_path / "models" / "deeplab.pt")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "segmentation.json").write_text(json.dumps({"miou": 0.42}))
    return tmp_path


def test_register_stage_writes_the_decision(stage_dir, capsys):
    from pnoc_pipelines import register

    register.run()
    record = json.loads((stage_dir / "reports" / "registry.json").read_text())
    assert record["model_name"] == NAME and record["version"] == 1
    assert record["promoted"] and record["champion"] == 1 and record["value"] == 0.42
    assert f"{NAME} v1 (miou=0.4200): promoted to champion" in capsys.readouterr().out

    client = MlflowClient()
    tags = client.get_model_version(NAME, "1").tags
    stage_run = client.get_run(tags["pnoc.stage_run_id"])
    assert stage_run.info.run_name == "register"
    assert tags["pnoc.pipeline_run_id"] == stage_run.data.tags["mlflow.parentRunId"]
    assert stage_run.data.params["register.metric"] == "miou"
    assert stage_run.data.params["segmentation.tta_flip"] == "True"
    assert stage_run.data.metrics["registered_miou"] == 0.42
    assert stage_run.data.metrics["registered_version"] == 1.0
    assert stage_run.data.metrics["registered_promoted"] == 1.0
    info = mlflow.models.get_model_info(f"models:/{NAME}@champion")
    assert info.signature is not None and info.saved_input_example_info is not None


def test_register_stage_names_a_missing_metric(stage_dir):
    from pnoc_pipelines import register

    (stage_dir / "metrics" / "segmentation.json").write_text(json.dumps({"pixel_acc": 0.9}))
    with pytest.raises(PnocError, match=r"segmentation.json: no metric 'miou'.*pixel_acc"):
        register.run()


def test_read_metric(tmp_path):
    from pnoc_pipelines.register import read_metric

    path = tmp_path / "m.json"
    path.write_text(json.dumps({"miou": None, "val": {"miou": 0.3}, "name": "x"}))
    assert read_metric(path, "val.miou") == 0.3
    assert read_metric(path, "miou") is None  # registered, never promoted
    with pytest.raises(PnocError, match="'name' is 'x', not a number"):
        read_metric(path, "name")
    with pytest.raises(PnocError, match="not found"):
        read_metric(tmp_path / "none.json", "miou")
