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


def test_bench_cam_step_builds_methods_from_a_params_file(tmp_path: Path, monkeypatch) -> None:
    """``--params``: the methods as train_cam builds them from the file's cam section, and for a
    model torchvision does not have, timm's as the bare reference."""
    import yaml

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_cam_step", None)
    import bench_cam_step

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"cam": {"output_stride": 32, "pnoc": {"noc_bn": "frozen"}}}))
    built = {}
    real = bench_cam_step.method_from_params

    def spy(cfg, model, oc):
        built[cfg.method] = cfg
        return real(cfg, model, oc)

    monkeypatch.setattr(bench_cam_step, "method_from_params", spy)
    results = bench_cam_step.main(
        [
            "--backbone", "efficientnet_lite0", "--batch-size", "2", "--size", "64",
            "--num-classes", "3", "--iters", "1", "--warmup", "0", "--methods", "pnoc",
            "--params", str(params), "--no-inference",
        ]
    )  # fmt: skip
    assert set(results["steps"]) == {"bare fwd+bwd (timm, OS 32)", "pnoc"}
    assert results["config"]["output_stride"] == 32  # from the file
    assert built["pnoc"].pnoc.noc_bn == "frozen" and built["pnoc"].method == "pnoc"
