"""The step-cost benchmark runs end to end on a tiny setting and reports consistent figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bench_cam_step_reports_every_method(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_cam_step", None)
    import bench_cam_step

    out = tmp_path / "bench.json"
    results = bench_cam_step.main(
        [
            "--backbone", "resnet18", "--batch-size", "2", "--size", "64", "--num-classes", "3",
            "--iters", "1", "--warmup", "0", "--methods", "vanilla,pnoc",
            "--oc-output-stride", "32", "--frozen-stages", "2", "--json", str(out),
        ]
    )  # fmt: skip
    steps = results["steps"]
    assert set(steps) == {"bare fwd+bwd (torchvision, OS 32)", "vanilla", "pnoc"}
    bare = steps["bare fwd+bwd (torchvision, OS 32)"]["seconds"]
    for figures in steps.values():
        assert figures["seconds"] > 0
        assert abs(figures["ratio_to_bare"] - figures["seconds"] / bare) < 1e-9
        assert abs(figures["images_per_s"] - 2 / figures["seconds"]) < 1e-9
    assert results["inference"]["images_per_s"] > 0
    assert json.loads(out.read_text())["config"]["frozen_stages"] == 2
