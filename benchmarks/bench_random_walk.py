"""Seconds and memory per image of the sparse AffinityNet/IRN random walk at VOC size, the
current implementation against the previous one side by side.

    PYTHONPATH=src python benchmarks/bench_random_walk.py [--channels 448] [--size 128 128]
        [--radius 5] [--beta 10] [--exp-times 8] [--classes 3] [--reps 5] [--warmup 1]
        [--walk-threads 1] [--dense-check] [--compare-csr] [--json FILE]

Per image: :func:`~pnoc.refine.random_walk.feature_affinities` of random features (C, H, W)
and :func:`~pnoc.refine.random_walk.random_walk` of ``--classes`` random CAM channels (VOC:
448 AffinityNet channels on the 128×128 stride-4 map of a 512 px image, radius 5, exp_times 8,
the background and two classes), timed separately and together, each the median of ``--reps``
after ``--warmup``. ``old`` is the previous implementation (the functions below, prefixed
``old_``: affinities channel-first by ``channel_chunk`` slices, the walk slicing its 69
shifted views of x in Python at each of its 256 steps); ``new`` is the library's. Old and new
run in turn within every round (a shared machine slows both alike), and their outputs are
compared: the walk from the same affinities bit for bit (same float32 operations in the same
order), the affinities (a different summation order over the channels) and the whole image
within float rounding.

Memory, before the timing: the process's resident set size sampled every millisecond by a
thread (psutil) during one run of each (after the cold first images), reported above the RSS
just before it. Meanwhile glibc's malloc serves every block of 128 KiB or more by mmap and
returns it on free (``mallopt``), so each run's peak is its own need, not what an earlier run
left in the heap; the timing then runs with the thresholds glibc would settle on by itself
(32 MiB, trim 64 MiB: large buffers reused, no page fault per fresh page). ``--keep-malloc``
leaves malloc alone (the peaks may then read 0). ``ru_maxrss`` (the process's lifetime peak,
torch included) is printed too.
``--dense-check`` compares the walk with IRN's dense walk (float64, and float32 like IRN) at
``--dense-size``; ``--compare-csr`` also times the same walk as repeated ``torch.sparse.mm``
with the CSR transition matrix (an alternative implementation, slower).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import psutil
import torch
from torch import Tensor

from pnoc.errors import PnocError
from pnoc.refine.random_walk import (
    Offsets,
    _feature_map,
    _inside,
    _overlap,
    _scaled,
    _torch_threads,
    dense_random_walk,
    feature_affinities,
    neighbour_offsets,
    random_walk,
    transition_matrix,
)

MB = 1024**2
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def set_malloc_thresholds(mmap: int, trim: int) -> bool:
    """glibc: serve blocks >= ``mmap`` bytes by mmap (returned to the system on free) and trim
    the heap's free top above ``trim`` bytes; True if applied (False elsewhere).

    Setting them stops glibc's default adjustment (after a large free it raises the mmap
    threshold to that block's size, up to 32 MiB, so that later blocks stay in the heap).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, trim)
        )
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------------------------
# The previous implementation (kept here as the reference the new one is timed against)


def old_feature_affinities(
    features: Tensor, radius: int, *, channel_chunk: int = 64, num_threads: int | None = 1
) -> tuple[Tensor, Tensor]:
    """The previous ``feature_affinities``: channel-first slices, ``channel_chunk`` at a time."""
    f = _feature_map(features)
    c, h, w = f.shape
    offsets = neighbour_offsets(radius)
    half = len(offsets) // 2
    aff = f.new_zeros(len(offsets), h, w)
    valid = torch.zeros(len(offsets), h, w, dtype=torch.bool, device=f.device)
    with _torch_threads(num_threads):
        for p in range(half):
            ov = _overlap(h, w, *offsets[p])
            if ov is None:
                continue
            ys, xs, ys_n, xs_n = ov
            dist = f.new_zeros(ys.stop - ys.start, xs.stop - xs.start)
            for c0 in range(0, c, channel_chunk):
                chunk = slice(c0, c0 + channel_chunk)
                dist += torch.sub(f[chunk, ys, xs], f[chunk, ys_n, xs_n]).abs_().sum(0)
            a = torch.exp(dist.mul_(-1.0 / c))
            aff[p, ys, xs] = a
            aff[p + half, ys_n, xs_n] = a
            valid[p, ys, xs] = True
            valid[p + half, ys_n, xs_n] = True
    return aff, valid


def old_check(
    name: str, aff: Tensor, valid: Tensor, offsets: Offsets, beta: float
) -> tuple[list[tuple[int, int]], int, int]:
    """The previous input validation (masked select, every ± pair checked from both ends)."""
    offs = [(int(dy), int(dx)) for dy, dx in offsets]
    if aff.dim() != 3 or 0 in aff.shape or aff.shape[0] != len(offs):
        raise PnocError(f"{name}: aff must be (P, h, w) with P = len(offsets)")
    if valid.shape != aff.shape or valid.dtype != torch.bool:
        raise PnocError(f"{name}: valid must be a bool tensor of aff's shape")
    index = {o: p for p, o in enumerate(offs)}
    if len(index) != len(offs) or (0, 0) in index or any((-a, -b) not in index for a, b in offs):
        raise PnocError(f"{name}: offsets must be distinct, non-zero and closed under negation")
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 < beta < float("inf"):
        raise PnocError(f"{name}: beta must be a positive finite number, got {beta!r}")
    _, h, w = aff.shape
    if bool((valid & ~_inside(offs, h, w, valid.device)).any()):
        raise PnocError(f"{name}: valid is True for neighbours outside the {h}×{w} map")
    used = aff[valid]
    if not bool(torch.isfinite(used).all()) or bool((used < 0).any()):
        raise PnocError(f"{name}: aff must be finite and >= 0 where valid")
    for p, (dy, dx) in enumerate(offs):
        ov = _overlap(h, w, dy, dx)
        if ov is None:
            continue
        q = index[(-dy, -dx)]
        ys, xs, ys_n, xs_n = ov
        v, v_back = valid[p, ys, xs], valid[q, ys_n, xs_n]
        a, a_back = aff[p, ys, xs], aff[q, ys_n, xs_n]
        if not torch.equal(v, v_back) or not torch.allclose(
            torch.where(v, a, 0), torch.where(v, a_back, 0), rtol=1e-5, atol=1e-6
        ):
            raise PnocError(f"{name}: aff/valid must be symmetric (a_ij = a_ji)")
    return offs, h, w


def old_random_walk(
    x: Tensor,
    aff: Tensor,
    valid: Tensor,
    offsets: Offsets,
    *,
    beta: float = 10,
    exp_times: int = 8,
    num_threads: int | None = 1,
) -> Tensor:
    """The previous ``random_walk``: the same stencil, its views sliced anew at every step."""
    offs, h, w = old_check("random_walk", aff, valid, offsets, beta)
    xs = x.float()
    c = xs.shape[0]
    r = max((max(abs(dy), abs(dx)) for dy, dx in offs), default=0)
    hp, wp = h + 2 * r, w + 2 * r
    scaled = _scaled(aff, valid, beta)
    inv_d = 1.0 / (1.0 + scaled.sum(0))
    weights = aff.new_zeros(len(offs) + 1, h, wp, dtype=torch.float32)
    weights[0, :, r : r + w] = inv_d
    weights[1:, :, r : r + w] = scaled * inv_d
    weights = weights.reshape(len(offs) + 1, h * wp)
    shifts = [dy * wp + dx for dy, dx in offs]
    size = hp * wp + 2 * r
    lo, hi = r + r * wp, r + (r + h) * wp
    cur, nxt = (xs.new_zeros(c, size) for _ in range(2))
    cur[:, r : r + hp * wp].view(c, hp, wp)[:, r : r + h, r : r + w] = xs
    with _torch_threads(num_threads):
        for _ in range(2**exp_times):
            out = nxt[:, lo:hi]
            torch.mul(cur[:, lo:hi], weights[0], out=out)
            for p, s in enumerate(shifts, start=1):
                out.addcmul_(cur[:, lo + s : hi + s], weights[p])
            cur, nxt = nxt, cur
    return cur[:, r : r + hp * wp].view(c, hp, wp)[:, r : r + h, r : r + w].contiguous()


# --------------------------------------------------------------------------------------------
# Measurement


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


def round_robin(fns: dict[str, Callable[[], Any]], reps: int, warmup: int) -> dict[str, float]:
    """Median seconds of each function, the functions run in turn within every round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_increase(fn: Callable[[], Any]) -> int:
    """RSS increase in bytes over one run of ``fn`` (see the module docstring)."""
    with PeakRSS() as mem:
        fn()
    return mem.increase


def csr_walk(x: Tensor, aff: Tensor, valid: Tensor, offsets: list, beta: float, exp_times: int):
    """The same walk as 2^exp_times products with the CSR matrix Tᵀ (the alternative)."""
    c, h, w = x.shape
    t_rows = transition_matrix(aff, valid, offsets, beta).to_sparse_coo().t()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
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
    p.add_argument("--reps", type=int, default=5)
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
    p.add_argument(
        "--keep-malloc",
        action="store_true",
        help="leave glibc's mmap threshold dynamic (peaks after the first run may then read 0)",
    )
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Memory is measured first, every large block served by mmap and returned on free, so that
    # a run's peak RSS is its own need; the timing then runs with thresholds like those glibc
    # settles on by itself (large blocks reused from the heap, no page fault per fresh page).
    mmap_fixed = not args.keep_malloc and set_malloc_thresholds(128 * 1024, 128 * 1024)
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
        f"after {args.warmup} warm-up, old and new in turn"
    )
    rss0, maxrss0 = psutil.Process().memory_info().rss, ru_maxrss()
    kw = {"beta": args.beta, "exp_times": args.exp_times, "num_threads": walk_threads}
    impls = {
        "old": (old_feature_affinities, old_random_walk),
        "new": (feature_affinities, random_walk),
    }

    def image(name: str) -> Callable[[], Tensor]:
        affinities, walk = impls[name]

        def run() -> Tensor:
            a, v = affinities(feats, args.radius, num_threads=walk_threads)
            return walk(x, a, v, offs, **kw)

        return run

    # The first image of each (cold: first calls, fresh pages), new first.
    cold = {}
    for name in ("new", "old"):
        t0 = time.perf_counter()
        image(name)()
        cold[name] = time.perf_counter() - t0
    aff_old, valid_old = old_feature_affinities(feats, args.radius, num_threads=walk_threads)
    aff_new, valid_new = feature_affinities(feats, args.radius, num_threads=walk_threads)
    phases: dict[str, dict[str, Callable[[], Any]]] = {
        "affinities": {
            name: (lambda f=impls[name][0]: f(feats, args.radius, num_threads=walk_threads))
            for name in impls
        },
        "random walk": {
            name: (lambda f=impls[name][1]: f(x, aff_old, valid_old, offs, **kw)) for name in impls
        },
        "image (affinities + walk)": {name: image(name) for name in impls},
    }
    if args.compare_csr:

        def csr() -> Tensor:
            with _torch_threads(walk_threads):
                return csr_walk(x, aff_old, valid_old, offs, args.beta, args.exp_times)

        phases["random walk, CSR spmm (alt.)"] = {"new": csr}
    peaks = {
        phase: {name: peak_increase(fn) / MB for name, fn in fns.items()}
        for phase, fns in phases.items()
    }
    if mmap_fixed:
        set_malloc_thresholds(32 * MB, 64 * MB)
    rows: dict[str, dict[str, dict[str, float | None]]] = {}
    for phase, fns in phases.items():
        warmup = 0 if phase.startswith("image") else args.warmup  # the phases warmed it up
        secs = round_robin(fns, args.reps, warmup)
        rows[phase] = {
            name: {"seconds": secs[name], "peak_rss_increase_mb": peaks[phase][name]}
            for name in fns
        }
    rows["first image (cold)"] = {
        name: {"seconds": sec, "peak_rss_increase_mb": None} for name, sec in cold.items()
    }
    walk_old = old_random_walk(x, aff_old, valid_old, offs, **kw)
    walk_new = random_walk(x, aff_old, valid_old, offs, **kw)
    image_new = random_walk(x, aff_new, valid_new, offs, **kw)
    diffs = {
        "walk_same_affinities_max_abs": float((walk_new - walk_old).abs().max()),
        "walk_bitwise_equal": bool(torch.equal(walk_new, walk_old)),
        "valid_equal": bool(torch.equal(valid_new, valid_old)),
        "affinities_max_abs": float((aff_new - aff_old).abs().max()),
        "image_max_abs": float((image_new - walk_old).abs().max()),
        "image_max_value": float(walk_old.abs().max()),
    }
    rss1, maxrss1 = psutil.Process().memory_info().rss, ru_maxrss()

    def cell(figures: dict[str, float | None] | None, key: str, fmt: str, width: int) -> str:
        value = None if figures is None else figures[key]
        return f"{'':{width}s}" if value is None else f"{value:{width}{fmt}}"

    print(
        f"\n{'phase':30s} {'old s':>8s} {'new s':>8s} {'speed-up':>9s} "
        f"{'old peak MB':>12s} {'new peak MB':>12s}"
    )
    for phase, r in rows.items():
        old, new = r.get("old"), r["new"]
        ratio = f"{old['seconds'] / new['seconds']:8.2f}×" if old else f"{'':9s}"
        print(
            f"{phase:30s} {cell(old, 'seconds', '.3f', 8)} {cell(new, 'seconds', '.3f', 8)} "
            f"{ratio} {cell(old, 'peak_rss_increase_mb', '.1f', 12)} "
            f"{cell(new, 'peak_rss_increase_mb', '.1f', 12)}"
        )
    same = (
        "bitwise equal"
        if diffs["walk_bitwise_equal"]
        else f"max |Δ| = {diffs['walk_same_affinities_max_abs']:.2e}"
    )
    print(
        f"\n(peak MB: RSS above that before the run, in a run before the timed ones with every "
        f"block >= 128 KiB mmapped: {mmap_fixed})"
        f"\nnew vs old: walk from the same affinities {same}"
        f"; affinities max |Δ| = {diffs['affinities_max_abs']:.2e} (valid equal: "
        f"{diffs['valid_equal']}); whole image max |Δ| = {diffs['image_max_abs']:.2e} "
        f"(values up to {diffs['image_max_value']:.3f})"
        f"\nprocess RSS {rss0 / MB:.0f} MB before, {rss1 / MB:.0f} MB after; ru_maxrss "
        f"{maxrss0 / MB:.0f} MB before, {maxrss1 / MB:.0f} MB after (the process, torch included)"
    )
    results: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "walk_threads": walk_threads or torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "phases": rows,
        "new_vs_old": diffs,
        "malloc_mmap_threshold_fixed": mmap_fixed,
        "rss_mb": {"before": rss0 / MB, "after": rss1 / MB},
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
