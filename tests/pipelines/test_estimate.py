"""``pnoc estimate``: every stage probed through its library call, scaled to the full run,
written to reports/ and MLflow; the probe's measuring pieces on their own."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pnoc.data.synthetic import generate_synthetic
from pnoc.engine.probe import PeakMemory, StepTimer
from pnoc.errors import ConfigError
from pnoc_pipelines import estimate
from tests.pipelines.test_pipeline_dvc import STAGES as DVC_STAGES

#: The stages that run a network (the others only check, generate, prepare or register).
STAGES = [s for s in DVC_STAGES if s not in ("check_params", "generate", "prepare", "register")]


def test_peak_memory_sees_an_allocation_on_cpu():
    with PeakMemory("cpu") as memory:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        time.sleep(0.05)
        del block
    assert memory.peak_mib - memory.start_mib > 150


def test_step_timer_needs_two_steps_and_skips_the_first():
    timer = StepTimer()
    for pause in (0.3, 0.01, 0.01, 0.01):
        time.sleep(pause)
        timer.on_step_end(None, {})  # type: ignore[arg-type]
    assert timer.per_step() < 0.1  # the slow first step only starts the clock
    with pytest.raises(ValueError, match="two or more"):
        StepTimer().per_step()


def test_estimate_probes_every_stage_and_scales_to_the_full_run(
    tmp_path: Path, tiny_params: dict, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
):
    syn = tiny_params["data"]["synthetic"]
    generate_synthetic(
        tmp_path / "data" / "synthetic",
        num_train=syn["train"],
        num_val=syn["val"],
        num_classes=syn["classes"],
        image_size=tiny_params["data"]["image_size"],
        seed=0,
    )
    tiny_params["segmentation"]["batch_size"] = 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params))
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "reports" / "estimate.json"
    rows, table = estimate.run(
        Path("params.yaml"), batch=2, counts=["train=480", "val=120"], report_path=report
    )
    assert [r.stage for r in rows] == STAGES
    by_stage = {r.stage: r for r in rows}
    # Training: whole global batches of the 480 images, times the epochs.
    assert by_stage["train_oc"].images == 480 * tiny_params["oc"]["epochs"]
    assert by_stage["train_segmentation"].images == 480 * tiny_params["segmentation"]["epochs"]
    assert by_stage["cams"].images == 480 + 120  # both cams.splits
    assert by_stage["evaluate"].images == 120
    for r in rows:
        assert r.seconds_per_image > 0 and r.peak_mib > 0
        assert r.seconds == pytest.approx(r.seconds_per_image * r.images)
    assert "train_cam" in table and "total" in table
    assert yaml.safe_load(report.read_text())["stages"][0]["stage"] == "train_oc"
    run = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("pnoc").experiment_id],
        "tags.`pnoc.kind` = 'estimate'",
    )[0]
    assert run.data.metrics["estimate_seconds/train_cam"] == pytest.approx(
        by_stage["train_cam"].seconds
    )
    assert "estimate_total_hours" in run.data.metrics


def test_bad_split_counts_are_refused():
    with pytest.raises(ConfigError, match="SPLIT=N"):
        estimate.parse_counts(["train:10"])
