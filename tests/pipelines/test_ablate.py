"""`pnoc ablate-cams` on the tiny data: a table, a report and nested MLflow runs."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from pipelines.ablate import ablate_cams, format_table
from pnoc.config import parse_params
from pnoc.errors import ConfigError


@pytest.mark.slow
def test_ablation_reports_each_method(tiny_params, mlflow_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from pnoc.data.synthetic import generate_synthetic

    syn = tiny_params["data"]["synthetic"]
    generate_synthetic(
        tmp_path / "data" / "synthetic",
        num_train=syn["train"],
        num_val=syn["val"],
        num_classes=syn["classes"],
        image_size=tiny_params["data"]["image_size"],
        seed=0,
    )
    params = parse_params(tiny_params)
    report = ablate_cams(params, ["vanilla", "pnoc"], [0], tmp_path / "ablation.json")
    assert set(report["methods"]) == {"vanilla", "pnoc"}
    for summary in report["methods"].values():
        assert 0.0 <= summary["mean"] <= 1.0
    assert json.loads((tmp_path / "ablation.json").read_text()) == report
    table = format_table(report)
    assert "vanilla" in table and "pnoc" in table
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("pnoc").experiment_id])
    names = {r.info.run_name for r in runs}
    assert {"ablate-cams", "vanilla-seed0", "pnoc-seed0"} <= names


def test_unknown_method_is_refused_before_training(tiny_params):
    with pytest.raises(ConfigError, match="magic"):
        ablate_cams(parse_params(tiny_params), ["vanilla", "magic"], [0])
