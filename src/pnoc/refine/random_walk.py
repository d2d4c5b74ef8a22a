"""AffinityNet/IRN random walk with a sparse (local) transition matrix.

Pixels i, j of an h×w feature map are neighbours when 0 < |j − i|² < radius² (IRN's PathIndex).
With the pair affinity a_ij = a_ji (1 on the diagonal) the transition matrix is IRN's
column-normalised

    T[i, j] = a_ij^β / d_j,    d_j = Σ_i a_ij^β = 1 + Σ_{i ~ j} a_ij^β,

and the walk maps CAMs x (C, N), N = h·w, to x · T^(2^exp_times), exactly what IRN's
``to_transition_matrix`` (``exp_times`` squarings of the dense N×N matrix) followed by
``x @ trans`` computes. As (x·T)_j = Σ_i a_ij^β x_i / d_j, one step is a local weighted mean over
j's neighbourhood, so :func:`random_walk` applies it 2^exp_times times as shift-and-multiply
stencils instead of squaring T (squaring fills T in until it is dense: 16384² at VOC size).

Both :func:`feature_affinities` and :func:`random_walk` work on a zero-padded copy of the map
flattened with the padded row width w + 2R (R = max |offset|), where every neighbour offset is a
fixed shift of the flat index, so that each shifted map is a contiguous slice (a view, no copy).
At VOC size (448 feature channels, 128×128, radius 5, exp_times 8, 3 CAM channels) the two take
about 0.13 s and 0.19 s on one core of a Xeon (0.18 s and 0.29 s before);
``benchmarks/bench_random_walk.py`` times them against the previous implementation.

Invariants of x ↦ x·T: constants are fixed (1·T = 1), values stay within [min x, max x], and
Σ_j d_j (x·T)_j = Σ_j d_j x_j (T·d = d); the plain sum Σ_j x_j is not conserved.

Affinity tensors are laid out per offset: ``aff[p, y, x]`` is a between pixel (y, x) and
(y + dy_p, x + dx_p) for ``(dy_p, dx_p) = neighbour_offsets(radius)[p]``; ``valid[p, y, x]`` is
False where that neighbour lies outside the map (there ``aff`` is 0 and ignored).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from pnoc.errors import PnocError

Offsets = Sequence[tuple[int, int]]

MAX_DENSE_PIXELS = 4096
BLOCK_BYTES = 512 * 1024  # feature_affinities' difference block on the CPU: within an L2 cache


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` torch threads (None: leave them), then restore them.

    The loops below issue thousands of small ops: a second thread barely helps them (0.34 vs
    0.6 s per walk on an idle 2-core CPU) but makes them 10-30× slower when another process
    holds a core (every op waits for the descheduled thread). The setting is process-wide.
    """
    if num_threads is not None and (
        isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
    ):
        raise ValueError(f"num_threads must be None or an int >= 1, got {num_threads!r}")
    before = torch.get_num_threads()
    if num_threads is None or num_threads == before:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) with 0 < dy² + dx² < radius², both of each ± pair.

    The first half are IRN's search directions (dy = 0 and dx > 0, then dy > 0, row by row);
    the second half are their negations in the same order, so offset p + P/2 is −offset p.
    ``radius`` 5 gives P = 68.
    """
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 2:
        raise PnocError(
            f"neighbour_offsets: radius must be an integer >= 2 (radius 1 has no neighbour "
            f"strictly inside the disc), got {radius!r}"
        )
    half = [(0, dx) for dx in range(1, radius)]
    half += [
        (dy, dx)
        for dy in range(1, radius)
        for dx in range(-radius + 1, radius)
        if dy * dy + dx * dx < radius * radius
    ]
    return half + [(-dy, -dx) for dy, dx in half]


def _feature_map(features: Tensor) -> Tensor:
    if features.dim() == 4 and features.shape[0] == 1:
        features = features[0]
    if features.dim() != 3 or 0 in features.shape:
        raise PnocError(
            f"feature_affinities: features must be (C, h, w) or (1, C, h, w) and non-empty, "
            f"got shape {tuple(features.shape)}"
        )
    return features.float()


def _overlap(h: int, w: int, dy: int, dx: int) -> tuple[slice, slice, slice, slice] | None:
    """(rows, cols) of the pixels i whose neighbour i + (dy, dx) is inside, and those neighbours."""
    y0, y1 = max(0, -dy), h - max(0, dy)
    x0, x1 = max(0, -dx), w - max(0, dx)
    if y1 <= y0 or x1 <= x0:
        return None
    return slice(y0, y1), slice(x0, x1), slice(y0 + dy, y1 + dy), slice(x0 + dx, x1 + dx)


class _Padded:
    """The flat zero-padded layout: pixel (y, x) of an h×w map at index ``lo + y·wp + r + x``.

    The map is padded by ``r`` rows and columns on every side (row width ``wp = w + 2r``) and the
    flat buffer has ``r`` spare elements at both ends, so for every |dy|, |dx| <= r the slice
    ``[lo + s, hi + s)``, s = dy·wp + dx, is in bounds: it holds, at the position of pixel
    (y, x), the value at (y + dy, x + dx) (zero outside the map). Positions ``[lo, hi)`` cover
    the h map rows, each with its 2r padding columns (``x`` from −r to w + r − 1).
    """

    def __init__(self, h: int, w: int, r: int) -> None:
        self.h, self.w, self.r = h, w, r
        self.wp = w + 2 * r
        self.size = (h + 2 * r) * self.wp + 2 * r
        self.lo = r + r * self.wp
        self.hi = self.lo + h * self.wp

    def shift(self, dy: int, dx: int) -> int:
        return dy * self.wp + dx

    def grid(self, buf: Tensor) -> Tensor:
        """(..., h, w) view of the map's pixels in ``buf`` (..., size)."""
        lead = buf.shape[:-1]
        body = buf[..., self.r : self.r + (self.h + 2 * self.r) * self.wp]
        body = body.view(*lead, self.h + 2 * self.r, self.wp)
        return body[..., self.r : self.r + self.h, self.r : self.r + self.w]

    def rows(self, t: Tensor) -> Tensor:
        """(..., h, w) view of the map's pixels in ``t`` (..., h·wp) (the positions [lo, hi))."""
        return t.view(*t.shape[:-1], self.h, self.wp)[..., self.r : self.r + self.w]


def _inside(offsets: Offsets, h: int, w: int, device: torch.device) -> Tensor:
    """(P, h, w) bool: the neighbour at each offset lies inside the map."""
    inside = torch.zeros(len(offsets), h, w, dtype=torch.bool, device=device)
    for p, (dy, dx) in enumerate(offsets):
        ov = _overlap(h, w, dy, dx)
        if ov is not None:
            inside[p, ov[0], ov[1]] = True
    return inside


def feature_affinities(
    features: Tensor, radius: int, *, block_rows: int | None = None, num_threads: int | None = 1
) -> tuple[Tensor, Tensor]:
    """AffinityNet affinities a_ij = exp(−mean_c |f_i − f_j|) to each neighbour within ``radius``.

    features (C, h, w) or (1, C, h, w) -> (aff (P, h, w) float32, valid (P, h, w) bool), P the
    number of :func:`neighbour_offsets`. Each ± pair is computed once, on a channels-last copy
    of the features in the flat padded layout (see :class:`_Padded`), where the neighbour at
    offset (dy, dx) of every pixel is the same contiguous slice shifted by dy·(w + 2R) + dx.
    The map is walked ``block_rows`` rows at a time, all offsets of a block before the next, so
    that the block's features and the (block_rows·(w + 2R), C) difference stay in the CPU's
    cache (None: rows for about :data:`BLOCK_BYTES` on the CPU, the whole map elsewhere).
    Extra memory: C·(h + 2R)(w + 2R) floats for the copy, plus P/2·h·(w + 2R) for the distances.
    ``num_threads``: torch threads meanwhile (see :func:`_torch_threads`; None keeps torch's).
    """
    if block_rows is not None and (
        isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1
    ):
        raise ValueError(
            f"feature_affinities: block_rows must be None or an int >= 1, got {block_rows!r}"
        )
    offsets = neighbour_offsets(radius)
    half = len(offsets) // 2
    with _torch_threads(num_threads):
        f = _feature_map(features)
        c, h, w = f.shape
        grid = _Padded(h, w, radius - 1)
        wp = grid.wp
        if block_rows is None:
            block_rows = max(1, BLOCK_BYTES // (wp * c * 4)) if f.device.type == "cpu" else h
        block_rows = min(block_rows, h)
        shifts = [grid.shift(dy, dx) for dy, dx in offsets[:half]]  # all > 0
        fp = f.new_zeros(grid.size, c)  # channels last: each pixel's C features contiguous
        grid.grid(fp.t()).copy_(f)
        dist = f.new_empty(half, h * wp)
        diff = f.new_empty(block_rows * wp, c)
        for y0 in range(0, h, block_rows):
            y1 = min(h, y0 + block_rows)
            lo, hi = grid.lo + y0 * wp, grid.lo + y1 * wp
            here, t = fp[lo:hi], diff[: hi - lo]
            for p, s in enumerate(shifts):
                torch.sub(here, fp[lo + s : hi + s], out=t)
                torch.sum(t.abs_(), 1, out=dist[p, y0 * wp : y1 * wp])
        a = grid.rows(torch.exp(dist.mul_(-1.0 / c)))  # (half, h, w) view
        aff = f.new_zeros(len(offsets), h, w)
        valid = _inside(offsets, h, w, f.device)
        for p in range(half):
            ov = _overlap(h, w, *offsets[p])
            if ov is None:
                continue
            ys, xs, ys_n, xs_n = ov
            aff[p, ys, xs] = a[p, ys, xs]
            aff[p + half, ys_n, xs_n] = a[p, ys, xs]
    return aff, valid


def _check(
    name: str, aff: Tensor, valid: Tensor, offsets: Offsets, beta: float
) -> tuple[list[tuple[int, int]], int, int]:
    """Validate the affinity inputs; returns (offsets as a list, h, w)."""
    offs = [(int(dy), int(dx)) for dy, dx in offsets]
    if aff.dim() != 3 or 0 in aff.shape or aff.shape[0] != len(offs):
        raise PnocError(
            f"{name}: aff must be (P, h, w) with P = len(offsets) = {len(offs)}, "
            f"got shape {tuple(aff.shape)}"
        )
    if valid.shape != aff.shape or valid.dtype != torch.bool:
        raise PnocError(
            f"{name}: valid must be a bool tensor of aff's shape {tuple(aff.shape)}, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )
    index = {o: p for p, o in enumerate(offs)}
    if len(index) != len(offs) or (0, 0) in index or any((-a, -b) not in index for a, b in offs):
        raise PnocError(
            f"{name}: offsets must be distinct, non-zero and closed under negation "
            f"(see neighbour_offsets), got {offs}"
        )
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 < beta < float("inf"):
        raise PnocError(f"{name}: beta must be a positive finite number, got {beta!r}")
    _, h, w = aff.shape
    if bool((valid & ~_inside(offs, h, w, valid.device)).any()):
        raise PnocError(f"{name}: valid is True for neighbours outside the {h}×{w} map")
    used = torch.where(valid, aff, 0.0)
    if not bool(torch.isfinite(used).all()) or bool((used < 0).any()):
        raise PnocError(f"{name}: aff must be finite and >= 0 where valid")
    for p, (dy, dx) in enumerate(offs):
        q = index[(-dy, -dx)]
        ov = _overlap(h, w, dy, dx)
        if q < p or ov is None:  # each ± pair once (the check is symmetric in p and q)
            continue
        ys, xs, ys_n, xs_n = ov
        v, v_back = valid[p, ys, xs], valid[q, ys_n, xs_n]
        a, a_back = used[p, ys, xs], used[q, ys_n, xs_n]
        if not torch.equal(v, v_back) or not torch.allclose(a, a_back, rtol=1e-5, atol=1e-6):
            raise PnocError(
                f"{name}: aff/valid must be symmetric (a_ij = a_ji), but offset {(dy, dx)} "
                f"differs from {(-dy, -dx)} seen from the neighbour"
            )
    return offs, h, w


def _scaled(aff: Tensor, valid: Tensor, beta: float) -> Tensor:
    """a^β where valid, 0 elsewhere, in float64 (cheap, and keeps the weights exact to float32)."""
    return torch.where(valid, aff.double().pow(beta), 0.0)


def transition_matrix(aff: Tensor, valid: Tensor, offsets: Offsets, beta: float) -> Tensor:
    """IRN's column-normalised transition matrix as a sparse CSR (N, N) float32 tensor.

    T[i, j] = a_ij^β / Σ_i a_ij^β with a_ii = 1, pixels flattened row-major (i = y·w + x).
    """
    offs, h, w = _check("transition_matrix", aff, valid, offsets, beta)
    n = h * w
    scaled = _scaled(aff, valid, beta)
    col_sums = 1.0 + scaled.sum(0).reshape(n)  # d_j = Σ_i a_ij^β, by symmetry
    # Row i holds the columns i + (dy, dx) in increasing (dy, dx) order = increasing column.
    order = sorted(range(len(offs) + 1), key=lambda k: (0, 0) if k == 0 else offs[k - 1])
    all_offs = [(0, 0), *offs]
    pix = torch.arange(n, device=aff.device)
    cols = torch.stack([pix + all_offs[k][0] * w + all_offs[k][1] for k in order], dim=1)
    keep = torch.stack(
        [
            torch.ones(n, dtype=torch.bool, device=aff.device)
            if k == 0
            else valid[k - 1].reshape(n)
            for k in order
        ],
        dim=1,
    )
    num = torch.stack(
        [scaled.new_ones(n) if k == 0 else scaled[k - 1].reshape(n) for k in order], dim=1
    )
    col_index = cols[keep]
    values = (num[keep] / col_sums[col_index]).float()
    crow = torch.zeros(n + 1, dtype=torch.int64, device=aff.device)
    crow[1:] = keep.sum(1).cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col_index, values, size=(n, n), check_invariants=False)


def random_walk(
    x: Tensor,
    aff: Tensor,
    valid: Tensor,
    offsets: Offsets,
    *,
    beta: float = 10,
    exp_times: int = 8,
    num_threads: int | None = 1,
) -> Tensor:
    """x (C, h, w) -> x·T^(2^exp_times) as (C, h, w) float32 (IRN's walk, T as above).

    Each of the 2^exp_times steps computes (x·T)_j = Σ_{i ∈ {j} ∪ nbrs(j)} (a_ij^β / d_j) x_i as
    P + 1 multiply-adds of shifted views of a zero-padded copy of x, flattened with the padded
    row width w + 2R (R = max |offset|) so that every shift is a contiguous slice
    (:class:`_Padded`). The views of both ping-pong buffers are made once, so a step is one
    multiply and one ``torch._foreach_addcmul_`` call (on the CPU; a loop of ``addcmul_``
    elsewhere) with no per-step slicing in Python.
    Cost: 2^exp_times · (P + 1) · C · h · (w + 2R) multiply-adds (≈ 0.9 G for C = 3, 128×128,
    radius 5, exp_times 8: about 0.2 s on one CPU core, memory-bound); memory
    (P + 1 + 2C) · (h + 2R)(w + 2R) floats. A ``(1, C, h, w)`` x gives a ``(1, C, h, w)``
    result. ``num_threads``: torch threads meanwhile (see :func:`_torch_threads`; None keeps
    torch's).
    """
    # The checks and the weights too run under num_threads: on a busy 2-core CPU their few
    # 2-thread ops cost more than the whole walk (each waits for a descheduled thread).
    with _torch_threads(num_threads):
        return _walk(x, aff, valid, offsets, beta, exp_times)


def _walk(
    x: Tensor, aff: Tensor, valid: Tensor, offsets: Offsets, beta: float, exp_times: int
) -> Tensor:
    """:func:`random_walk` under its thread setting."""
    offs, h, w = _check("random_walk", aff, valid, offsets, beta)
    batched = x.dim() == 4 and x.shape[0] == 1
    xs = x[0] if batched else x
    if xs.dim() != 3 or xs.shape[1:] != (h, w):
        raise PnocError(
            f"random_walk: x must be (C, {h}, {w}) to match aff {tuple(aff.shape)}, "
            f"got shape {tuple(x.shape)}"
        )
    if isinstance(exp_times, bool) or not isinstance(exp_times, int) or exp_times < 0:
        raise PnocError(f"random_walk: exp_times must be an integer >= 0, got {exp_times!r}")
    xs = xs.float().to(aff.device)
    if not bool(torch.isfinite(xs).all()):
        raise PnocError("random_walk: x holds NaN or Inf values")
    c = xs.shape[0]
    grid = _Padded(h, w, max((max(abs(dy), abs(dx)) for dy, dx in offs), default=0))
    lo, hi = grid.lo, grid.hi
    # Per-pixel weights of x_j itself and of x_{j + o_p}, zero in the padding columns.
    scaled = _scaled(aff, valid, beta)
    inv_d = 1.0 / (1.0 + scaled.sum(0))
    weights = aff.new_zeros(len(offs) + 1, h * grid.wp, dtype=torch.float32)
    grid.rows(weights[0]).copy_(inv_d)
    grid.rows(weights[1:]).copy_(scaled * inv_d)
    del scaled, inv_d
    shifts = [grid.shift(dy, dx) for dy, dx in offs]
    bufs = [xs.new_zeros(c, grid.size) for _ in range(2)]
    grid.grid(bufs[0]).copy_(xs)
    # (x_j's view, output view, neighbours' views) reading bufs[k] and writing bufs[1 - k].
    plans = [
        (bufs[k][:, lo:hi], bufs[1 - k][:, lo:hi], [bufs[k][:, lo + s : hi + s] for s in shifts])
        for k in (0, 1)
    ]
    w_self, w_nbrs = weights[0], list(weights[1:])
    foreach = xs.device.type == "cpu"  # CPU foreach runs the ops in order (no aliasing issue)
    for step in range(2**exp_times):
        here, out, nbrs = plans[step % 2]
        torch.mul(here, w_self, out=out)
        if foreach:
            torch._foreach_addcmul_([out] * len(nbrs), nbrs, w_nbrs)
        else:
            for v, wt in zip(nbrs, w_nbrs, strict=True):
                out.addcmul_(v, wt)
    result = grid.grid(bufs[2**exp_times % 2]).contiguous()
    return result[None] if batched else result


def dense_affinity(aff: Tensor, valid: Tensor, offsets: Offsets) -> Tensor:
    """The dense (N, N) affinity A[i, i + o_p] = aff[p, i] (valid only), 1 on the diagonal."""
    offs, h, w = _check("dense_affinity", aff, valid, offsets, 1.0)
    n = h * w
    if n > MAX_DENSE_PIXELS:
        raise PnocError(
            f"dense affinity of a {h}×{w} map ({n} pixels) exceeds {MAX_DENSE_PIXELS} pixels: "
            f"the dense walk is a test reference; use random_walk"
        )
    dense = torch.eye(n, dtype=aff.dtype, device=aff.device)
    pix = torch.arange(n, device=aff.device)
    for p, (dy, dx) in enumerate(offs):
        m = valid[p].reshape(n)
        dense[pix[m], pix[m] + dy * w + dx] = aff[p].reshape(n)[m]
    return dense


def dense_random_walk(
    x: Tensor,
    aff: Tensor,
    valid: Tensor,
    offsets: Offsets,
    *,
    beta: float = 10,
    exp_times: int = 8,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Reference walk as IRN computes it, on the dense N×N matrix (N ≤ 4096; tests only).

    ``scaled = A**beta; T = scaled / scaled.sum(0); T = T @ T`` (``exp_times`` times);
    ``x.view(C, N) @ T``; computed in ``dtype`` (float64 by default) and returned in float32.
    """
    if x.dim() != 3 or tuple(x.shape[1:]) != tuple(aff.shape[1:]):
        raise PnocError(
            f"dense_random_walk: x must be (C, h, w) matching aff {tuple(aff.shape)}, "
            f"got shape {tuple(x.shape)}"
        )
    _check("dense_random_walk", aff, valid, offsets, beta)
    c, h, w = x.shape
    dense = dense_affinity(aff, valid, offsets).to(dtype)
    scaled = dense**beta
    trans = scaled / torch.sum(scaled, dim=0, keepdim=True)
    for _ in range(exp_times):
        trans = torch.matmul(trans, trans)
    return (x.reshape(c, h * w).to(dtype) @ trans).reshape(c, h, w).float()
