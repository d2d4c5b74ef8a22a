"""`pnoc ablate-cams` on the tiny data: a table, a report and nested MLflow runs."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.ablate import ablate_cams, format_table, parse_settings, run
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
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    report = run(["vanilla", "pnoc"], [0], params_file, ["cam.output_stride=8"])
    assert set(report["methods"]) == {"vanilla", "pnoc"}
    for summary in report["methods"].values():
        assert 0.0 <= summary["mean"] <= 1.0
    assert report["overrides"] == {"cam.output_stride": 8}
    assert json.loads((tmp_path / "reports" / "ablation_cams.json").read_text()) == report
    table = format_table(report)
    assert "vanilla" in table and "pnoc" in table
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("pnoc").experiment_id])
    names = {r.info.run_name: r for r in runs}
    assert {"ablate-cams", "vanilla-seed0", "pnoc-seed0"} <= set(names)
    assert names["ablate-cams"].data.params["set.cam.output_stride"] == "8"
    assert names["pnoc-seed0"].data.params["output_stride"] == "8"


def test_settings_are_parsed_as_yaml_and_checked():
    assert parse_settings(["cam.output_stride=8", "cam.pnoc.ow.end=1.5", "cam.weights=null"]) == {
        "cam.output_stride": 8,
        "cam.pnoc.ow.end": 1.5,
        "cam.weights": None,
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_settings(["cam.output_stride"])


def test_a_bad_setting_names_the_key(tiny_params, tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    with pytest.raises(ConfigError, match=r"cam\.output_stride") as err:
        run(["vanilla"], [0], params_file, ["cam.output_stride=12"])
    assert "--set cam.output_stride=12" in str(err.value)


def test_unknown_method_is_refused_before_training(tiny_params):
    with pytest.raises(ConfigError, match="magic"):
        ablate_cams(parse_params(tiny_params), ["vanilla", "magic"], [0])
