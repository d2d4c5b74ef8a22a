"""bench_random_walk.py runs end to end on a tiny map: old and new side by side, same output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bench_random_walk_old_and_new_agree(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_random_walk", None)
    import bench_random_walk

    out = tmp_path / "bench.json"
    results = bench_random_walk.main(
        [
            "--channels", "8", "--size", "13", "11", "--radius", "3", "--exp-times", "3",
            "--reps", "1", "--warmup", "0", "--compare-csr", "--dense-check",
            "--dense-size", "8", "8", "--keep-malloc", "--json", str(out),
        ]
    )  # fmt: skip
    phases = results["phases"]
    assert set(phases) >= {"affinities", "random walk", "image (affinities + walk)"}
    for phase in ("affinities", "random walk", "image (affinities + walk)"):
        for impl in ("old", "new"):
            assert phases[phase][impl]["seconds"] > 0
            assert phases[phase][impl]["peak_rss_increase_mb"] >= 0
    assert phases["random walk, CSR spmm (alt.)"]["new"]["seconds"] > 0
    diffs = results["new_vs_old"]
    assert diffs["walk_bitwise_equal"] and diffs["valid_equal"]
    assert diffs["affinities_max_abs"] < 1e-6 and diffs["image_max_abs"] < 1e-5
    assert results["dense_check"]["max_abs_diff_sparse_vs_dense64"] < 1e-4
    assert json.loads(out.read_text())["config"]["exp_times"] == 3


def test_old_walk_in_the_benchmark_equals_the_library_walk(monkeypatch) -> None:
    """The benchmark's copy of the previous walk gives the library's result bit for bit."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_random_walk", None)
    import bench_random_walk

    from pnoc.refine.random_walk import feature_affinities, neighbour_offsets, random_walk

    g = torch.Generator().manual_seed(3)
    feats, x = torch.randn(12, 9, 14, generator=g), torch.rand(3, 9, 14, generator=g)
    aff, valid = feature_affinities(feats, 5)
    old_aff, old_valid = bench_random_walk.old_feature_affinities(feats, 5)
    assert torch.equal(valid, old_valid) and torch.allclose(aff, old_aff, rtol=1e-6, atol=1e-7)
    offs = neighbour_offsets(5)
    for exp_times in (0, 1, 4):
        new = random_walk(x, aff, valid, offs, beta=10, exp_times=exp_times)
        old = bench_random_walk.old_random_walk(x, aff, valid, offs, beta=10, exp_times=exp_times)
        assert torch.equal(new, old)
