"""Data-parallel training on CPU with gloo: 2 workers train what 1 worker trains.

The reference is one process; the others are 2 processes started by the two real launchers
(``torch.distributed.run`` and a local Ray Train ``TorchTrainer``). The run is P-NOC (the
generator and the noc, each under its own DDP and optimizer), BatchNorm-free and in float64:
in float32 the rounding of a half batch differs from the whole batch's, and P-NOC's max
normalisation and hard erasing turn such 1e-7 differences into other decisions within a few
steps (measured: vanilla CAM stays within 2e-7 after 20 steps in float32, P-NOC drifts to 1e-2),
so float64 is what isolates the engine's data parallelism.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.slow  # real launchers, several processes
HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "ddp_train.py"
SRC = HERE.parents[1] / "src"
STEPS = 20
RTOL = 1e-5


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")


def _config(tmp: Path, data: Path, name: str, **extra: Any) -> Path:
    config = {
        "data": str(data),
        "out": str(tmp / name),
        "method": "pnoc",
        "steps": STEPS,
        "batch_size": 8,
        "image_size": 32,
        "float64": True,
        **extra,
    }
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


def _torchrun(config: Path, workers: int = 2) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={workers}", str(SCRIPT), str(config)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def _one_process(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(config)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return torch.load(out / "final.pt", weights_only=True)


def assert_same_weights(a: Path, b: Path, rtol: float = RTOL) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() == {"generator", "noc"}
    for module in wa:
        for name, ref in wa[module].items():
            got = wb[module][name]
            scale = ref.abs().max().clamp(min=1e-12)
            rel = float((got - ref).abs().max() / scale)
            assert rel <= rtol, f"{module}.{name}: relative difference {rel:.2e} > {rtol:g}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pnoc.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("ddp") / "data"
    generate_synthetic(root, num_train=160, num_val=4, num_classes=3, image_size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One worker, no launcher: the run the others must reproduce."""
    tmp = tmp_path_factory.mktemp("ref")
    proc = _one_process(_config(tmp, data, "one"))
    assert proc.returncode == 0, proc.stderr
    return tmp / "one"


def test_torchrun_two_workers_equal_one_worker(data: Path, reference: Path, tmp_path: Path):
    proc = _torchrun(_config(tmp_path, data, "two"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "two" / "result.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    assert_same_weights(reference, tmp_path / "two")
    # The logged metrics are the mean over the two workers: the single worker's, to rounding.
    ref = json.loads((reference / "result.json").read_text())["steps_metrics"]
    for mine, theirs in zip(summary["steps_metrics"], ref, strict=True):
        for key in ("loss", "oc", "noc"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6)


def test_ray_train_two_workers_equal_one_worker(data: Path, reference: Path, tmp_path: Path):
    ray = pytest.importorskip("ray")
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = json.loads(_config(tmp_path, data, "ray").read_text())
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": f"{HERE}:{SRC}", "OMP_NUM_THREADS": "1"}},
    )
    try:
        trainer = TorchTrainer(
            _ddp_train_module().train,
            train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
            run_config=RunConfig(name="ddp-test", storage_path=str(tmp_path / "ray")),
        )
        trainer.fit()
    finally:
        ray.shutdown()
    summary = json.loads((tmp_path / "ray" / "result.json").read_text())
    assert summary["world_size"] == 2
    assert_same_weights(reference, tmp_path / "ray")


def _ddp_train_module() -> Any:
    """ddp_train imported as a top-level module, which the Ray workers import by name (their
    PYTHONPATH holds tests/distributed) when they unpickle the training function."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import ddp_train

    return ddp_train


def test_killed_two_worker_run_resumes_to_the_same_weights(data: Path, tmp_path: Path):
    """SIGKILL of rank 0 at step 7 of 10 (the last checkpoint holds 6 steps): torchrun ends the
    other worker and fails; the same command again resumes and ends with the weights of an
    uninterrupted 2-worker run."""
    short = {"steps": 10}
    full = _torchrun(_config(tmp_path, data, "full", checkpoint=str(tmp_path / "f.ckpt"), **short))
    assert full.returncode == 0, full.stderr

    ckpt = tmp_path / "killed.ckpt"
    killed = _torchrun(_config(tmp_path, data, "killed", checkpoint=str(ckpt), kill_at=7, **short))
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr or f"-{signal.SIGKILL}" in killed.stderr, killed.stderr
    assert ckpt.exists() and not (tmp_path / "killed" / "final.pt").exists()

    again = _torchrun(_config(tmp_path, data, "killed", checkpoint=str(ckpt), **short))
    assert again.returncode == 0, again.stderr
    summary = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert summary["resumed_from_step"] == 6 and summary["steps"] == 10
    assert not ckpt.exists()
    assert_same_weights(tmp_path / "full", tmp_path / "killed", rtol=0.0)


def test_checkpoint_of_two_workers_resumes_with_one(data: Path, reference: Path, tmp_path: Path):
    """A checkpoint's world size does not bind the rerun: same global batch, same order."""
    ckpt = tmp_path / "w.ckpt"
    killed = _torchrun(_config(tmp_path, data, "w", checkpoint=str(ckpt), kill_at=9))
    assert killed.returncode != 0 and ckpt.exists()
    proc = _one_process(_config(tmp_path, data, "w", checkpoint=str(ckpt)))
    assert proc.returncode == 0, proc.stderr
    assert "saved by 2 worker(s) and resumes with 1" in proc.stderr
    assert json.loads((tmp_path / "w" / "result.json").read_text())["resumed_from_step"] == 8
    assert_same_weights(reference, tmp_path / "w")
