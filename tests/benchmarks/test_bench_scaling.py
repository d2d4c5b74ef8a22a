"""bench_scaling.py reads the engine's log lines and tabulates them; gpu_check.sh skips cleanly
where there is no GPU and builds its CUDA plan (dry run)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"

# Captured from real stage runs (`benchmarks/bench_scaling.py --train-images 48 --val-images 8
# --epochs 1 --steps 3` on a 2-core CPU): the logs of train_oc, cams and train_affinity with
# 1 worker and with 2 (torchrun, gloo), and the tail of train_saliency failing under 2 workers.
TRAIN_OC_1W = """\
INFO pnoc.engine.progress: training: 1 epoch(s) x 3 step(s) of 16 image(s) on cpu, float32 (AMP applies to CUDA only, off on cpu)
INFO pnoc.engine.progress: epoch 1/1 done: step 3/3 | loss 0.7238, cls 0.7238 | 18.4 images/s | elapsed 3s, ETA 0s
trained the ordinary classifier in 3s -> models/oc.pt
"""  # noqa: E501
TRAIN_OC_2W = """\
INFO pnoc: starting 2 workers: -m torch.distributed.run --nproc-per-node=2 --standalone --max-restarts=0 -m pnoc_pipelines.train_oc
INFO pnoc.engine.progress: training: 1 epoch(s) x 3 step(s) of 16 image(s) on 2 workers (gloo, DDP, 8 images each per micro-batch), cpu, float32 (AMP applies to CUDA only, off on cpu)
INFO pnoc.engine.progress: epoch 1/1 done: step 3/3 | cls 0.7214, loss 0.7214 | 23.1 images/s | elapsed 2s, ETA 0s
trained the ordinary classifier in 2s -> models/oc.pt
"""  # noqa: E501
CAMS_1W = """\
INFO pnoc.engine.progress: cams train: 48 images in 6.1 s (7.93 images/s)
INFO pnoc.engine.progress: cams val: 8 images in 1.0 s (7.66 images/s)
wrote CAMs of 48 train images
wrote CAMs of 8 val images
CAM mIoU (val): 0.18351643868004888
"""
CAMS_2W = """\
INFO pnoc: starting 2 workers: -m torch.distributed.run --nproc-per-node=2 --standalone --max-restarts=0 -m pnoc_pipelines.cams
INFO pnoc.engine.progress: cams train: 48 images in 4.5 s (10.6 images/s)
INFO pnoc.engine.progress: cams val: 8 images in 0.7 s (11.8 images/s)
wrote CAMs of 48 train images
wrote CAMs of 8 val images
CAM mIoU (val): 0.18351643868004888
"""  # noqa: E501
TRAIN_AFFINITY_1W = """\
INFO pnoc.engine.progress: affinity labels: 48 images in 0.1 s (403.7 images/s)
INFO pnoc.engine.progress: training: 1 epoch(s) x 3 step(s) of 16 image(s) on cpu, float32 (AMP applies to CUDA only, off on cpu)
INFO pnoc.engine.progress: epoch 1/1 done: step 3/3 | loss 0.8943, bg 0.2113, fg 0.205, neg 1.58, pairs 1.714e+04 | 14.7 images/s | elapsed 3s, ETA 0s
affinity labels: 20.8% confident pixels, precision 33.9%, 0 image(s) without any
trained AffinityNet in 3s -> models/affinity.pt
"""  # noqa: E501
TRAIN_SALIENCY_2W_FAILED = """\
INFO pnoc: starting 2 workers: -m torch.distributed.run --nproc-per-node=2 --standalone --max-restarts=0 -m pnoc_pipelines.train_saliency
INFO pnoc.engine.progress: training: 1 epoch(s) x 3 step(s) of 16 image(s) on 2 workers (gloo, DDP, 8 images each per micro-batch), cpu, float32 (AMP applies to CUDA only, off on cpu)
[rank0]:     if torch.is_grad_enabled() and self.reducer._rebuild_buckets():
[rank0]:                                    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
[rank0]: RuntimeError: Expected to have finished reduction in the prior iteration before starting a new one.
[rank0]: making sure all `forward` function outputs participate in calculating loss.
  exitcode  : 1 (pid: 30835)
  error_file: <N/A>
============================================================
error: a worker of pnoc_pipelines.train_saliency failed (torchrun exit status 1); its rank and error are above. Nothing was published; a rerun resumes from the last checkpoint.
"""  # noqa: E501


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_scaling", None)
    import bench_scaling

    return bench_scaling


def test_parses_training_and_inference_logs(bench) -> None:
    fit = bench.parse_stage_log(TRAIN_OC_2W).fits
    assert len(fit) == 1
    assert (fit[0].epochs, fit[0].steps_per_epoch, fit[0].images_per_step) == (1, 3, 16)
    assert fit[0].where.startswith("2 workers (gloo, DDP, 8 images each")
    assert fit[0].images_per_s == 23.1 and fit[0].steps_done == 3

    cams = bench.parse_stage_log(CAMS_2W)
    assert [(lp.what, lp.count, lp.seconds) for lp in cams.loops] == [
        ("cams train", 48, 4.5),
        ("cams val", 8, 0.7),
    ]
    assert cams.fits == [] and cams.loop_images_per_s == pytest.approx(56 / 5.2)

    # A training stage with an inference loop in it: its rate is the fit's, not the loop's.
    affinity = bench.run_from_log("train_affinity", "1w", TRAIN_AFFINITY_1W, status="ok")
    assert affinity.images_per_s == pytest.approx(14.7)
    assert affinity.loops[0]["what"] == "affinity labels"


def test_parses_the_lines_the_engine_writes_now(bench, caplog: pytest.LogCaptureFixture) -> None:
    """The regexes against pnoc.engine.progress itself, so a format change fails here."""
    from pnoc.engine.progress import TrainingProgress, track

    caplog.set_level(logging.INFO, logger="pnoc.engine.progress")
    progress = TrainingProgress(epochs=2, steps_per_epoch=3, images_per_step=8, enabled=False)
    progress.start("2 workers (gloo, DDP, 4 images each per micro-batch), cpu, float32")
    for epoch in range(2):
        for step in range(3):
            progress.step(epoch, epoch * 3 + step + 1, {"loss": 1.0})
        progress.end_epoch(epoch, (epoch + 1) * 3, {"loss": 1.0, "lr/net": 0.01})
    list(track(range(5), "saliency val", enabled=False))
    text = "\n".join(f"INFO {r.name}: {r.getMessage()}" for r in caplog.records)

    log = bench.parse_stage_log(text)
    assert len(log.fits) == 1
    fit = log.fits[0]
    assert (fit.epochs, fit.steps_per_epoch, fit.images_per_step, fit.steps_done) == (2, 3, 8, 6)
    assert fit.where.startswith("2 workers")
    assert fit.images_per_s is not None and fit.images_per_s > 0
    assert [(lp.what, lp.count) for lp in log.loops] == [("saliency val", 5)]


def test_table_and_failures(bench) -> None:
    order, base, par, ref = bench.configs_for("cpu", 2)
    assert [c.key for c in order] == ["2w", "1w2t", "1w"]  # the baseline last
    results = {
        "train_oc": {
            "1w": bench.run_from_log("train_oc", "1w", TRAIN_OC_1W, status="ok", wall_s=11.1),
            "2w": bench.run_from_log("train_oc", "2w", TRAIN_OC_2W, status="ok", wall_s=19.2),
        },
        "train_saliency": {
            "2w": bench.run_from_log(
                "train_saliency", "2w", TRAIN_SALIENCY_2W_FAILED, status="failed", wall_s=20.0
            ),
        },
        "cams": {
            "1w": bench.run_from_log("cams", "1w", CAMS_1W, status="ok", wall_s=13.6),
            "2w": bench.run_from_log("cams", "2w", CAMS_2W, status="ok", wall_s=19.8),
        },
    }
    figures = bench.summarize(results["train_oc"], base, par, ref)
    assert figures["efficiency"] == pytest.approx(23.1 / (2 * 18.4))
    assert figures["speedup_wall"] == pytest.approx(11.1 / 19.2)
    assert figures["vs_serial_all_cores"] is None  # no 1-worker × 2-threads run here
    assert bench.summarize(results["train_saliency"], base, par, ref)["efficiency"] is None

    table = bench.format_table(results, base, par, ref).splitlines()
    assert table[0].split()[:4] == ["stage", "kind", "1w", "img/s"]
    rows = {line.split()[0]: line.split() for line in table[2:5]}
    assert rows["train_oc"][1:5] == ["train", "18.40", "23.10", f"{23.1 / 36.8:.2f}"]
    assert rows["train_saliency"][3] == "FAIL"
    assert rows["cams"][1] == "infer"

    errors = bench.error_lines(TRAIN_SALIENCY_2W_FAILED)
    assert any("RuntimeError: Expected to have finished reduction" in e for e in errors)
    assert errors[-1].startswith("error: a worker of pnoc_pipelines.train_saliency failed")


def test_cuda_configs_skip_the_multi_gpu_pass_with_one_gpu(bench) -> None:
    order, base, par, ref = bench.configs_for("cuda", 1)
    assert [c.key for c in order] == ["1gpu"] and par is None and ref is None
    order, _, par, _ = bench.configs_for("cuda", 4)
    assert [c.key for c in order] == ["4gpu", "1gpu"] and par.workers == 4


def test_overrides(bench) -> None:
    out = bench.main(
        [
            "--dry-run", "--device", "cpu", "--backbone", "resnet50", "--epochs", "1",
            "--steps", "2", "--image-size", "128", "--train-images", "32",
            "--set", "cams.scales=[1.0]", "--set", "oc.batch_size=8",
        ]
    )  # fmt: skip
    p = out["params"]
    assert p["data"]["image_size"] == 128 and p["data"]["synthetic"]["train"] == 32
    assert p["cams"]["scales"] == [1.0] and p["oc"]["batch_size"] == 8
    for sec in ("oc", "cam", "saliency", "affinity", "segmentation"):
        assert p[sec]["backbone"] == "resnet50" and p[sec]["weights"] is None
        assert p[sec]["epochs"] == 1 and p[sec]["max_steps_per_epoch"] == 2
    with pytest.raises(SystemExit, match="does not divide across 3 workers"):
        bench.main(["--dry-run", "--device", "cpu", "--workers", "3"])


def _gpu_check(*args: str, out: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # the no-GPU path, on any machine
    if out is not None:
        env["GPU_CHECK_OUT"] = str(out)
    return subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gpu_check_skips_without_a_gpu() -> None:
    proc = _gpu_check()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: skipped: no CUDA GPU visible")


def test_gpu_check_dry_run_builds_the_cuda_plan(tmp_path: Path) -> None:
    proc = _gpu_check("--dry-run", out=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "--device cuda --amp --image-size 512 --backbone resnet50 --weights null" in out
    assert "256 train / 64 val images of 512 px" in out
    assert "cam: resnet50 (weights None), 10 epoch(s)" in out
    assert "multi-GPU pass skipped: only 1 GPU visible" in out
    assert "python -m pnoc_pipelines.evaluate" in out
