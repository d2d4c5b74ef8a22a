"""Request latency of the registered segmenter behind the real MLflow scoring server.

    python benchmarks/bench_serving.py [--checkpoint models/deeplab.pt] [--classes 21]
        [--size 128] [--requests 50] [--warmup 3] [--payload png|array] [--scales 1.0]
        [--no-flip]

Registers the model as ``@champion`` in a throw-away SQLite store (a random-weight DeepLabV3+
ResNet-18 unless ``--checkpoint`` is given), starts ``pnoc serve`` (one worker) on it, and
posts one ``--size`` px image ``--requests`` times, one at a time, as a base64 PNG
(``dataframe_split``) or a pixel array (``inputs``). Latency is the client-side time of each
request (JSON encoding, HTTP, parsing, schema enforcement, decoding, the network with
its test-time augmentation, the JSON mask back), after ``--warmup`` requests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

from pnoc.serving import encode_image_b64
from pnoc_pipelines import serving, tracking

NAME = "pnoc-segmenter-bench"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") if Path("/proc/cpuinfo").exists() else open(os.devnull) as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs (load average {load}), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), mlflow {mlflow.__version__}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="a DeepLabV3+ checkpoint (models/deeplab.pt)")
    ap.add_argument("--classes", type=int, default=21, help="classes of the random model")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--payload", choices=["png", "array"], default="png")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0])
    ap.add_argument("--no-flip", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ.pop(tracking.PIPELINE_ENV, None)
        os.chdir(tmp)  # artifacts under tmp/mlartifacts
        tracking.configure("bench-serving")
        checkpoint = args.checkpoint
        if checkpoint is None:
            from pnoc.models.backbones import save_model
            from pnoc.models.deeplab import DeepLabV3Plus

            torch.manual_seed(0)
            checkpoint = tmp / "deeplab.pt"
            save_model(checkpoint, DeepLabV3Plus("resnet18", args.classes), {})
        checkpoint = checkpoint.resolve()
        with mlflow.start_run():
            info = serving.log_segmenter(checkpoint, scales=args.scales, flip=not args.no_flip)
        serving.register(info.model_uri, NAME, metric_name="miou", metric_value=0.0)

        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
        if args.payload == "png":
            payload = {
                "dataframe_split": {"columns": ["image"], "data": [[encode_image_b64(image)]]}
            }
        else:
            payload = {"inputs": image.tolist()}
        body = json.dumps(payload).encode()

        t0 = time.perf_counter()
        with serving.scoring_server(f"models:/{NAME}@champion") as server:
            startup = time.perf_counter() - t0
            times = []
            for i in range(args.warmup + args.requests):
                t = time.perf_counter()
                status, answer = serving.post_json(server.url + "/invocations", body)
                elapsed = time.perf_counter() - t
                if status != 200:
                    raise SystemExit(f"request {i}: HTTP {status}: {answer}")
                if i >= args.warmup:
                    times.append(elapsed * 1000)
        mask = np.asarray(answer["predictions"][0]["mask"])
        assert mask.shape == (args.size, args.size)

    q = statistics.quantiles(times, n=10)
    flip = "off" if args.no_flip else "on"
    print(f"machine: {machine()}")
    print(
        f"model: {'random DeepLabV3+ resnet18' if args.checkpoint is None else args.checkpoint}, "
        f"TTA scales {args.scales}, flip {flip}; payload {args.payload} "
        f"({len(body) / 1024:.0f} KiB request), {args.size}×{args.size} px"
    )
    print(f"server start to first /ping: {startup:.1f} s")
    print(
        f"latency over {len(times)} requests: median {statistics.median(times):.1f} ms, "
        f"p90 {q[8]:.1f} ms, min {min(times):.1f} ms, max {max(times):.1f} ms"
    )


if __name__ == "__main__":
    main()
