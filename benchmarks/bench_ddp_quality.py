"""CAM quality with N data-parallel workers against one worker's seed-to-seed spread.

Runs ``dvc repro cams`` (generate, train_oc, train_cam, cams) on the embedded data set with the
default backbone, shortened to ``--epochs`` per training stage, once per (workers, seed): one
worker with each seed, and ``--workers`` workers with each seed, each in its own throw-away
project. Prints the val (and train) CAM mIoU of every run, the 1-worker spread over the seeds
and whether the N-worker runs fall inside it.

    .venv/bin/python benchmarks/bench_ddp_quality.py --workers 2 --seeds 0 1 --epochs 4

On a CPU every worker runs ``cores / workers`` threads, the 1-worker runs all cores' threads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def _scaling() -> Any:
    """benchmarks/bench_scaling.py, for its throw-away project and its environment."""
    spec = importlib.util.spec_from_file_location(
        "bench_scaling", REPO / "benchmarks/bench_scaling.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["bench_scaling"] = module
    spec.loader.exec_module(module)
    return module


def run_one(work: Path, params: dict[str, Any], workers: int, seed: int) -> dict[str, Any]:
    bench = _scaling()
    name = f"w{workers}_s{seed}"
    project = work / name
    p = json.loads(json.dumps(params))
    p["base"].update(workers=workers, seed=seed, device="cpu", progress=False)
    env = bench.stage_env(work / f"{name}_env", project)
    env.pop("OMP_NUM_THREADS", None)  # 1 worker: all cores; N workers: the launcher divides
    bench.make_project(project, p, env)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "cams"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SystemExit(f"{name}: dvc repro cams failed:\n{tail}")
    metrics = json.loads((project / "metrics" / "cams.json").read_text())
    return {
        "workers": workers,
        "seed": seed,
        "val": 100 * metrics["val"]["miou"],
        "train": 100 * metrics["train"]["miou"],
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=4, help="epochs of train_oc and train_cam")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="global batch of train_oc and train_cam"
    )
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["oc"]["epochs"] = params["cam"]["epochs"] = args.epochs
    if args.batch_size:
        params["oc"]["batch_size"] = params["cam"]["batch_size"] = args.batch_size
    work = args.work or Path(tempfile.mkdtemp(prefix="pnoc-ddp-quality-"))
    rows = [
        run_one(work, params, workers, seed) for workers in (1, args.workers) for seed in args.seeds
    ]
    print(
        f"machine: {os.cpu_count()} CPU cores; embedded data, default backbone, "
        f"{args.epochs} epochs of train_oc and train_cam, global batch "
        f"{params['cam']['batch_size']}"
    )
    print(f"{'workers':>7} {'seed':>4} {'val mIoU':>9} {'train mIoU':>10} {'wall s':>7}")
    for r in rows:
        print(
            f"{r['workers']:>7} {r['seed']:>4} {r['val']:>9.1f} {r['train']:>10.1f} "
            f"{r['seconds']:>7.0f}"
        )
    one = [r["val"] for r in rows if r["workers"] == 1]
    low, high = min(one), max(one)
    many = [r["val"] for r in rows if r["workers"] == args.workers]
    inside = all(low - 1e-9 <= v <= high + 1e-9 for v in many)
    print(
        f"1-worker val mIoU over seeds {args.seeds}: {low:.1f} .. {high:.1f} "
        f"(spread {high - low:.1f}); {args.workers} workers: "
        f"{', '.join(f'{v:.1f}' for v in many)} -> {'inside' if inside else 'OUTSIDE'}"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "inside": inside}, indent=2))


if __name__ == "__main__":
    main()
