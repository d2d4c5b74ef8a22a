"""bench_cam_voc.py runs the cams stage's export on a tiny setting and reports images/s."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bench_cam_voc_reports_images_per_second(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_cam_voc", None)
    import bench_cam_voc

    out = tmp_path / "bench.json"
    results = bench_cam_voc.main(
        [
            "--backbone", "resnet18", "--num-classes", "3", "--size", "30", "40",
            "--scales", "0.5", "1", "--images", "2", "--warmup", "0", "--json", str(out),
        ]
    )  # fmt: skip
    assert results["images_per_s"] > 0
    assert abs(results["seconds_per_image"] * results["images_per_s"] - 1) < 1e-9
    assert json.loads(out.read_text())["config"]["size"] == [30, 40]
