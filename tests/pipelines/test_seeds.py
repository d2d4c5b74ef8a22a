"""`pnoc seeds` on the tiny config: the whole chain per seed in its own workspace, the same
results as `dvc repro` for the same seed, the table, the report and the MLflow runs."""

from __future__ import annotations

import json
from statistics import mean, stdev

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pnoc.errors import ConfigError
from pnoc_pipelines.seeds import format_table, seeds_report, summarise
from tests.conftest import make_project


@pytest.mark.slow
def test_seeds_report_runs_the_chain_per_seed(reproduced, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = yaml.safe_load((reproduced.root / "params.yaml").read_text())
    project = make_project(tmp_path / "project", params, uri)
    monkeypatch.chdir(project.root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as `reproduced`'s stages: same float rounding
    monkeypatch.delenv("PNOC_PIPELINE_ID", raising=False)

    report = seeds_report(project.root / "params.yaml", [0, 1], compare=["vanilla"])

    summary = report["summary"]
    for label in (
        "CAMs, train",
        "CAMs, val",
        "saliency, val",
        "affinity labels, confident pixels",
        "pseudo-masks",
        "DeepLabV3+, val",
        "pseudo-masks − CAMs",
        "DeepLabV3+ / pseudo-masks",
        "vanilla CAMs, val",
    ):
        assert set(summary[label]["per_seed"]) == {"0", "1"}, label
        values = list(summary[label]["per_seed"].values())
        assert summary[label]["mean"] == pytest.approx(mean(values))
        assert summary[label]["std"] == pytest.approx(stdev(values))

    # Each seed ran in its own workspace with its own base.seed; the figures are its files'.
    for seed in (0, 1):
        ws = project.root / "runs" / "seeds" / f"seed-{seed}"
        assert yaml.safe_load((ws / "params.yaml").read_text())["base"]["seed"] == seed
        cams = json.loads((ws / "metrics" / "cams.json").read_text())
        assert summary["CAMs, val"]["per_seed"][str(seed)] == cams["val"]["miou"]
        seg = json.loads((ws / "metrics" / "segmentation.json").read_text())
        assert summary["DeepLabV3+, val"]["per_seed"][str(seed)] == seg["miou"]
        assert not (ws / "reports" / "registry.json").exists()  # nothing registered
    # One recipe, one result: seed 0 of the report is `dvc repro` of the same params.
    for name in ("cams", "saliency", "pseudo_masks", "segmentation"):
        staged = json.loads((reproduced.root / "metrics" / f"{name}.json").read_text())
        seeded = json.loads(
            (project.root / "runs/seeds/seed-0/metrics" / f"{name}.json").read_text()
        )
        assert seeded == staged, name
    assert summary["CAMs, val"]["per_seed"]["0"] != summary["CAMs, val"]["per_seed"]["1"]

    saved = json.loads((project.root / "reports" / "seeds.json").read_text())
    assert saved["summary"] == summary
    table = (project.root / "reports" / "seeds.md").read_text()
    assert "| DeepLabV3+, val |" in table and "| vanilla CAMs, val |" in table

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("pnoc").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    parent = by_name["seeds"]
    assert parent.data.metrics["deeplabv3.val.mean"] == pytest.approx(
        summary["DeepLabV3+, val"]["mean"]
    )
    assert {"seeds.json", "seeds.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    for seed in (0, 1):
        seed_run = by_name[f"seed {seed}"]
        assert seed_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert seed_run.info.status == "FINISHED"
        assert seed_run.data.params["base.seed"] == str(seed)
    stage_parents = {
        r.data.tags.get("mlflow.parentRunId") for r in runs if r.info.run_name == "evaluate"
    }
    assert stage_parents == {by_name["seed 0"].info.run_id, by_name["seed 1"].info.run_id}
    assert client.search_registered_models() == []

    # A rerun reruns nothing: every stage is cached and the compared method's result kept.
    again = seeds_report(project.root / "params.yaml", [0, 1], compare=["vanilla"])
    assert again["summary"] == summary


def test_bad_requests_are_refused_before_any_work(tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    with pytest.raises(ConfigError, match="no dvc.yaml"):
        seeds_report(params_file, [0, 1])
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(ConfigError, match="distinct seeds"):
        seeds_report(params_file, [0, 0])
    with pytest.raises(ConfigError, match="magic"):
        seeds_report(params_file, [0], compare=["magic"])
    with pytest.raises(ConfigError, match="--seed"):
        seeds_report(params_file, [0], settings=["base.seed=3"])
    with pytest.raises(ConfigError, match=r"cam\.output_stride"):
        seeds_report(params_file, [0], settings=["cam.output_stride=12"])
    assert not (tmp_path / "runs").exists()


def test_table_and_summary():
    per_seed = {
        0: {"CAMs, val": 0.40, "pseudo-masks − CAMs": 0.05, "DeepLabV3+ / pseudo-masks": 0.95},
        1: {"CAMs, val": 0.44, "pseudo-masks − CAMs": 0.07, "DeepLabV3+ / pseudo-masks": 0.91},
    }
    summary = summarise(per_seed)
    assert summary["CAMs, val"]["mean"] == pytest.approx(0.42)
    assert summary["CAMs, val"]["std"] == pytest.approx(stdev([0.40, 0.44]))
    table = format_table(
        {"seeds": [0, 1], "set_note": "", "pseudo_split": "train", "summary": summary}
    )
    assert "| CAMs, val | 40.0 | 44.0 | 42.0 ± 2.8 |" in table
    assert "| pseudo-masks − CAMs | +5.0 | +7.0 | +6.0 ± 1.4 |" in table
    assert "| DeepLabV3+ / pseudo-masks | 0.95× | 0.91× | 0.93× ± 0.03 |" in table
