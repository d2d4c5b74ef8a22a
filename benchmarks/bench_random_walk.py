"""Seconds and memory per image of the sparse AffinityNet/IRN random walk at VOC size.

    PYTHONPATH=src python benchmarks/bench_random_walk.py [--channels 448] [--size 128 128]
        [--radius 5] [--beta 10] [--exp-times 8] [--classes 3] [--reps 3] [--dense-check]
        [--compare-csr]

Per image: :func:`~pnoc.refine.random_walk.feature_affinities` of random features (C, H, W)
and :func:`~pnoc.refine.random_walk.random_walk` of ``--classes`` random CAM channels, timed
separately (median of ``--reps`` after ``--warmup``). Memory: the process's resident set size
sampled every millisecond by a thread (psutil) during one run of each phase, reported above
the RSS just before it (the first, cold image shows the real need: later runs reuse memory the
allocator kept), and ``ru_maxrss`` (the process's lifetime peak) before and after.
``--dense-check`` compares the walk with IRN's dense walk (float64, and float32 like IRN) at
``--dense-size``; ``--compare-csr`` also times the same walk as repeated ``torch.sparse.mm``
with the CSR transition matrix (the alternative implementation), with ``--walk-threads`` threads.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import torch
from torch import Tensor

from pnoc.refine.random_walk import (
    dense_random_walk,
    feature_affinities,
    neighbour_offsets,
    random_walk,
    transition_matrix,
)

MB = 1024**2


class PeakRSS:
    """Context manager sampling this process's RSS; ``peak`` and ``before`` in bytes."""

    def __init__(self, interval: float = 0.001) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self.before = self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def increase(self) -> int:
        return self.peak - self.before


def ru_maxrss() -> int:
    """Lifetime peak RSS of this process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn: Callable[[], Any], reps: int, warmup: int) -> tuple[float, int, Any]:
    """(median seconds, RSS increase in bytes, result) of ``fn()``.

    The memory is that of one extra run under :class:`PeakRSS` after the timed ones (the sampling
    thread would disturb the timing).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    with PeakRSS() as mem:
        out = fn()
    return statistics.median(times), mem.increase, out


def csr_walk(x: Tensor, aff: Tensor, valid: Tensor, offsets: list, beta: float, exp_times: int):
    """The same walk as 2^exp_times products with the CSR matrix Tᵀ (the alternative)."""
    c, h, w = x.shape
    t_rows = transition_matrix(aff, valid, offsets, beta).to_sparse_coo().t()
    t_rows = t_rows.coalesce().to_sparse_csr()  # row j: the T[i, j], i.e. (x·T)ᵀ = Tᵀ·xᵀ
    cur = x.reshape(c, h * w).t().contiguous()
    for _ in range(2**exp_times):
        cur = torch.sparse.mm(t_rows, cur)
    return cur.t().reshape(c, h, w)


def dense_check(args: argparse.Namespace) -> dict[str, float]:
    h, w = args.dense_size
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(args.channels, h, w, generator=g)
    x = torch.rand(args.classes, h, w, generator=g)
    offs = neighbour_offsets(args.radius)
    aff, valid = feature_affinities(feats, args.radius)
    kw = {"beta": args.beta, "exp_times": args.exp_times}
    sparse = random_walk(x, aff, valid, offs, **kw)
    t0 = time.perf_counter()
    ref = dense_random_walk(x, aff, valid, offs, **kw)
    dense_s = time.perf_counter() - t0
    irn32 = dense_random_walk(x, aff, valid, offs, **kw, dtype=torch.float32)
    out = {
        "max_abs_diff_sparse_vs_dense64": float((sparse - ref).abs().max()),
        "max_abs_diff_irn_float32_vs_dense64": float((irn32 - ref).abs().max()),
        "max_abs_value": float(ref.abs().max()),
        "dense64_seconds": dense_s,
    }
    print(
        f"\ndense check at {h}×{w}: max |sparse − dense float64| = "
        f"{out['max_abs_diff_sparse_vs_dense64']:.2e}, max |IRN float32 − dense float64| = "
        f"{out['max_abs_diff_irn_float32_vs_dense64']:.2e} (values up to "
        f"{out['max_abs_value']:.3f}); dense float64 walk {dense_s:.2f} s"
    )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, default=448, help="AffinityNet feature channels")
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--radius", type=int, default=5)
    p.add_argument("--beta", type=float, default=10.0)
    p.add_argument("--exp-times", type=int, default=8)
    p.add_argument("--classes", type=int, default=3, help="CAM channels walked")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--walk-threads",
        type=int,
        default=1,
        help="num_threads of feature_affinities / random_walk (0: torch's; default 1)",
    )
    p.add_argument("--dense-check", action="store_true", help="compare with IRN's dense walk")
    p.add_argument("--dense-size", type=int, nargs=2, default=(32, 32), metavar=("H", "W"))
    p.add_argument("--compare-csr", action="store_true", help="also time the CSR spmm walk")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    walk_threads = args.walk_threads or None
    h, w = args.size
    offs = neighbour_offsets(args.radius)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(args.channels, h, w, generator=g)
    x = torch.rand(args.classes, h, w, generator=g)
    print(
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads "
        f"({walk_threads or torch.get_num_threads()} in affinities and walk), torch "
        f"{torch.__version__}; features {args.channels}×{h}×{w}, radius {args.radius} "
        f"({len(offs)} offsets), beta {args.beta:g}, exp_times {args.exp_times} "
        f"({2**args.exp_times} steps), {args.classes} CAM channels; median of {args.reps} "
        f"after {args.warmup} warm-up"
    )
    rss0, maxrss0 = psutil.Process().memory_info().rss, ru_maxrss()
    kw = {"beta": args.beta, "exp_times": args.exp_times, "num_threads": walk_threads}

    def image() -> Tensor:
        a, v = feature_affinities(feats, args.radius, num_threads=walk_threads)
        return random_walk(x, a, v, offs, **kw)

    with PeakRSS() as cold:  # the first image: every buffer is new to the allocator
        t0 = time.perf_counter()
        image()
        cold_s = time.perf_counter() - t0
    aff_s, aff_mem, (aff, valid) = timed(
        lambda: feature_affinities(feats, args.radius, num_threads=walk_threads),
        args.reps,
        args.warmup,
    )
    walk_s, walk_mem, _ = timed(
        lambda: random_walk(x, aff, valid, offs, **kw), args.reps, args.warmup
    )
    total_s, total_mem, _ = timed(image, args.reps, 0)
    rss1, maxrss1 = psutil.Process().memory_info().rss, ru_maxrss()
    rows = [
        ("first image (cold)", cold_s, cold.increase),
        ("affinities", aff_s, aff_mem),
        ("random walk", walk_s, walk_mem),
        ("image (affinities + walk)", total_s, total_mem),
    ]
    if args.compare_csr:
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(walk_threads or torch_threads)
        try:
            csr_s, csr_mem, _ = timed(
                lambda: csr_walk(x, aff, valid, offs, args.beta, args.exp_times), args.reps, 0
            )
        finally:
            torch.set_num_threads(torch_threads)
        rows.append(("random walk, CSR spmm (alt.)", csr_s, csr_mem))
    print(f"\n{'phase':30s} {'s/image':>8s} {'peak MB above start':>20s}")
    for label, sec, mem in rows:
        print(f"{label:30s} {sec:8.3f} {mem / MB:20.1f}")
    print(
        f"\nprocess RSS {rss0 / MB:.0f} MB before, {rss1 / MB:.0f} MB after; ru_maxrss "
        f"{maxrss0 / MB:.0f} MB before, {maxrss1 / MB:.0f} MB after "
        f"(+{(maxrss1 - maxrss0) / MB:.0f} MB); peak per image {cold.peak / MB:.0f} MB "
        f"(the process, torch included)"
    )
    results: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "walk_threads": walk_threads or torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "phases": {label: {"seconds": s, "peak_rss_increase_mb": m / MB} for label, s, m in rows},
        "rss_mb": {"before": rss0 / MB, "after": rss1 / MB, "first_image_peak": cold.peak / MB},
        "ru_maxrss_mb": {"before": maxrss0 / MB, "after": maxrss1 / MB},
    }
    if args.dense_check:
        results["dense_check"] = dense_check(args)
    if args.json:
        from pnoc.io import write_json

        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
