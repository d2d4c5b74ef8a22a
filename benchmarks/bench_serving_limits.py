"""What one request, and many at once, cost the scoring server: peak memory and latency.

    python benchmarks/bench_serving_limits.py [--side 4096] [--concurrent 8] [--requests 200]
        [--clients 8] [--size 96] [--classes 6] [--backbone efficientnet_lite0]

Registers a random-weight DeepLabV3+ (the embedded default's architecture unless told) in a
throw-away SQLite store and, for ``pnoc serve`` and for plain ``mlflow models serve`` side by
side on the same machine, measures:

1. one ``--side``² PNG (a smooth gradient, as a photo compresses): HTTP status, seconds, the
   server's peak resident memory (its process tree, sampled every 20 ms);
2. ``--concurrent`` such requests at once: statuses, peak memory, whether the server still
   answers ``/ping``;
3. ``--requests`` valid ``--size`` px requests from ``--clients`` threads: median and p95 latency.

The server's limits are the defaults of :class:`pnoc.serving.ServingLimits`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_serving import machine  # noqa: E402

from pnoc.serving import encode_image_b64  # noqa: E402
from pnoc_pipelines import serving, tracking  # noqa: E402

NAME = "pnoc-segmenter-limits"


def gradient_png(side: int) -> dict:
    y, x = np.mgrid[0:side, 0:side]
    image = np.stack([x * 255 // side, y * 255 // side, (x + y) * 127 // side], -1)
    return {"dataframe_split": {"columns": ["image"], "data": [[encode_image_b64(image)]]}}


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def measure(command: str, args: argparse.Namespace) -> None:
    big = gradient_png(args.side)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    valid = {"dataframe_split": {"columns": ["image"], "data": [[encode_image_b64(small)]]}}
    with serving.scoring_server(f"models:/{NAME}@champion", command=command) as server:
        inv = server.url + "/invocations"
        serving.post_json(inv, valid)  # warm up
        base = serving.PeakRss(server.proc.pid).rss()
        with serving.PeakRss(server.proc.pid) as mem:
            t = time.perf_counter()
            status, body = serving.post_json(inv, big, timeout=600)
            took = time.perf_counter() - t
        shape = np.asarray(body["predictions"][0]["mask"]).shape if status == 200 else body
        print(
            f"  one {args.side}² PNG ({len(big['dataframe_split']['data'][0][0]) // 1024} KiB): "
            f"HTTP {status} in {took:.1f} s, mask {shape}; RSS idle {gib(base)}, "
            f"peak {gib(mem.peak)}"
        )
        with serving.PeakRss(server.proc.pid) as mem, ThreadPoolExecutor(args.concurrent) as pool:
            t = time.perf_counter()
            answers = list(
                pool.map(lambda _: serving.post_json(inv, big, 600)[0], range(args.concurrent))
            )
            took = time.perf_counter() - t
        alive = server.alive() and serving.post_json(inv, valid)[0] == 200
        print(
            f"  {args.concurrent} at once: HTTP {sorted(answers)} in {took:.1f} s; "
            f"peak {gib(mem.peak)}; server alive: {alive}"
        )

        def timed(_: int) -> tuple[int, float]:
            t = time.perf_counter()
            status, _body = serving.post_json(inv, valid)
            return status, time.perf_counter() - t

        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(timed, range(args.requests)))
        times = [t for _, t in results]
        ok = sum(s == 200 for s, _ in results)
        q = statistics.quantiles(times, n=20)
        print(
            f"  {args.requests} × {args.size}² from {args.clients} clients: {ok} OK, median "
            f"{statistics.median(times):.2f} s, p95 {q[18]:.2f} s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--servers", nargs="+", default=["pnoc", "mlflow"])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ.pop(tracking.PIPELINE_ENV, None)
        os.chdir(tmp)
        tracking.configure("bench-serving-limits")
        from pnoc.models.backbones import save_model
        from pnoc.models.deeplab import DeepLabV3Plus

        torch.manual_seed(0)
        checkpoint = tmp / "deeplab.pt"
        save_model(checkpoint, DeepLabV3Plus(args.backbone, args.classes), {})
        with mlflow.start_run():
            info = serving.log_segmenter(checkpoint, scales=[1.0], flip=True)
        serving.register(info.model_uri, NAME, metric_name="miou", metric_value=0.0)
        print(f"machine: {machine()}")
        print(f"model: random DeepLabV3+ {args.backbone}, {args.classes} classes, flip TTA")
        for command in args.servers:
            print(f"{'pnoc serve' if command == 'pnoc' else 'mlflow models serve'}:")
            measure(command, args)


if __name__ == "__main__":
    main()
