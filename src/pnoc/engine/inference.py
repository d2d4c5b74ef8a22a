"""The loop of every inference step (``cams``, ``saliency``, ``pseudo_masks``, ``evaluate``):
this rank's share of a split, decoded in DataLoader workers, in batches of same-size images.

:func:`inference_loop` is to inference what :func:`pnoc.engine.fit` is to training:

* **Sharded.** Under a process group of several workers (:mod:`pnoc.engine.distributed`) each
  rank takes the strided share ``indices[rank::size]`` of the split and writes its own per-image
  files; the step then combines its counts over the ranks (:func:`sum_over_ranks`, exact integer
  sums) and gathers what depends on the order (:func:`gather_in_order`: the images shown in
  the overlay pictures, lists of ids) back into the dataset's order, so every rank ends with
  what one worker computes alone. Without a group (or with one process) no collective runs.
* **Batched.** ``load(index)`` gives one image's item, a dict with at least ``index`` (its
  position in the split) and ``x`` (the normalised 3×H×W tensor); up to ``batch_size`` items
  at a time are grouped by size (:func:`group_by_size`), and each group goes through the network
  as one batch (:func:`per_image`; on the CPU in batches of 2 to 15 network images, see
  :data:`CPU_BATCH`, so that an image's maps do not depend on the images beside it, hence not
  on the number of workers either: the files are byte for byte those of one worker running the
  same number of torch threads; another number of threads runs other CPU kernels, and float16
  CAMs then differ by one rounding step here and there). Per image, a batch computes the maps
  of per-image inference: exactly when the flipped copy doubles the batch (per-image inference
  then forwards two images too, as every step does by default), within float rounding
  otherwise (a lone small image runs other CPU kernels: a few 1e-5 on maps normalised to 1).
  Elementwise functions such as the saliency's sigmoid round the last elements of a tensor
  apart (vectorised tail), so its float maps may differ by 1e-7 with the batch.
* **Decoded in workers.** With ``runtime.num_workers`` > 0 a DataLoader's worker processes run
  ``load`` (files read and decoded, images normalised) while the network runs; 0 decodes in
  this process. An error in ``load`` reaches the step as the exception ``load`` raised (a
  :class:`~pnoc.errors.DatasetError` naming the file), not as a DataLoader ``RuntimeError``.
* **One progress bar.** Rank 0 alone draws a bar (on a terminal) and logs the summary line of
  :meth:`pnoc.engine.Runtime.track`: its total is the whole split, and it counts each of its own
  images once per worker (the shards differ by one image at most), so the bar tracks the whole
  split; the summary, logged once every rank has finished, counts the whole split.
* **All or none.** If the loop raises on one rank, every rank raises before the step's next
  collective (the failing rank its own error, the others a :class:`~pnoc.errors.PnocError`
  saying that another worker failed), instead of waiting for it until the timeout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pnoc.engine.distributed import all_gather_objects, all_sum, any_rank, shard, world
from pnoc.engine.runtime import Runtime
from pnoc.errors import ConfigError, PnocError

__all__ = [
    "CPU_BATCH",
    "DEFAULT_BATCH_SIZE",
    "check_batch_size",
    "gather_in_order",
    "group_by_size",
    "inference_loop",
    "per_image",
    "stack_images",
    "sum_over_ranks",
]

T = TypeVar("T")
Item = dict[str, Any]

#: Network images (flipped copies included) of one forward on the CPU, at least and at most.
#: PyTorch picks a CPU convolution's kernel by the batch: a 1×1 convolution runs oneDNN's from
#: 16 images on (or with several threads) and its own below, and a lone small image runs its own
#: 3×3 kernel as well. The kernels round differently, so an image's maps would depend on which
#: images share its batch (hence on the shards); within these bounds they do not. It is also
#: the fastest on one thread: 7 flipped 96 px images per forward take 91 ms an image for the
#: 4-scale CAMs of EfficientNet-Lite0 (2-core Xeon), 1 image 119 ms, 8 images 109 ms.
CPU_BATCH = (2, 15)

#: Images per forward pass of the inference steps (no params key sets it; the steps take it as
#: a keyword). Per image the multi-scale, flipped CAM inference at VOC size and scale 2 holds
#: about 16 × 1000 × 750 inputs in flight at batch 8; lower it for a large backbone on a small
#: GPU.
DEFAULT_BATCH_SIZE = 8


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` when it is an int >= 1, else a :class:`~pnoc.errors.ConfigError`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"inference batch_size: expected an int >= 1, got {batch_size!r}")
    return batch_size


class _Failed:
    """An exception raised by ``load`` in a DataLoader worker, carried to the main process
    as a value so that it is re-raised there as itself (the DataLoader would wrap it)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _ShardImages(Dataset):
    """``load`` over this rank's indices: item ``k`` is ``load(indices[k])`` (or its error)."""

    def __init__(self, load: Callable[[int], Item], indices: Sequence[int]) -> None:
        self.load = load
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Item | _Failed:
        try:
            return self.load(self.indices[k])
        except Exception as exc:  # noqa: BLE001 (re-raised as itself by the main process)
            return _Failed(exc)


def group_by_size(items: Sequence[Item | _Failed]) -> list[list[Item]] | _Failed:
    """Collate of the inference loader: the items grouped by the size of their ``x``.

    Groups come in the order of their first item, each in the items' order; an item that
    failed to load makes the whole batch that failure.
    """
    groups: dict[tuple[int, ...], list[Item]] = {}
    for item in items:
        if isinstance(item, _Failed):
            return item
        groups.setdefault(tuple(item["x"].shape), []).append(item)
    return list(groups.values())


def stack_images(group: Sequence[Item], device: torch.device | str) -> torch.Tensor:
    """The ``x`` of a group of same-size items as one (B, 3, H, W) batch on ``device``."""
    return torch.stack([item["x"] for item in group]).to(device)


def per_image(
    fn: Callable[[torch.Tensor], Any],
    group: Sequence[Item],
    device: torch.device | str,
    *,
    copies: int = 1,
) -> list[Any]:
    """``fn`` over the images of a same-size ``group``: one output per item, in order.

    ``fn`` maps a (B, 3, H, W) batch on ``device`` to B outputs (a tensor or an array whose
    first axis is the batch); ``copies`` is how many images the network sees per image (2 when
    the mirrored copies join the batch). On the CPU the group goes through ``fn`` in batches of
    2 to 15 network images (:data:`CPU_BATCH`; a lone image without copies is doubled, its
    copy's output dropped), so that every image's maps come from the same kernels whatever
    shares its batch; elsewhere in one batch.
    """
    if not group:
        return []
    lowest, highest = CPU_BATCH
    cpu = torch.device(device).type == "cpu"
    step = max(1, highest // copies) if cpu else len(group)
    out: list[Any] = []
    for k in range(0, len(group), step):
        chunk = group[k : k + step]
        x = stack_images(chunk, device)
        if cpu and len(chunk) * copies < lowest:
            x = x.repeat(-(-lowest // (len(chunk) * copies)), 1, 1, 1)
        out.extend(fn(x)[: len(chunk)])
    return out


class _Ticker:
    """Rank 0's progress over the whole split: :meth:`Runtime.track` over ``total`` ticks,
    advanced by hand, its summary logged by :meth:`finish` only."""

    def __init__(self, runtime: Runtime, what: str, total: int, unit: str) -> None:
        self._ticks = iter(runtime.track(range(total), what, total=total, unit=unit))
        self._left = total
        if total:
            next(self._ticks)  # starts the clock and the bar

    def advance(self, n: int) -> None:
        n = max(0, min(n, self._left - 1))  # the last tick is finish's
        for _ in range(n):
            next(self._ticks)
        self._left -= n

    def finish(self) -> None:
        for _ in self._ticks:  # runs the tracker to its end: it logs the summary line
            pass

    def close(self) -> None:
        close = getattr(self._ticks, "close", None)
        if close is not None:
            close()


@contextlib.contextmanager
def inference_loop(
    runtime: Runtime,
    load: Callable[[int], Item],
    n: int,
    what: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    unit: str = "image",
) -> Iterator[Iterator[list[Item]]]:
    """Yield an iterator over this rank's items ``load(i)``, ``i`` in ``shard(range(n))``, in
    groups of the same size (see the module docstring).

    Args:
        runtime: ``num_workers`` (DataLoader worker processes; 0 loads in this process) and
            ``progress`` (bar on a terminal).
        load: one image's item from its index in the split: a dict with ``index`` and ``x``
            (normalised 3×H×W tensor), and whatever else the step needs (the image, its mask,
            files it reads). It runs in a worker process when ``num_workers`` > 0, so it must
            be picklable (a module-level function, or a ``functools.partial`` of one).
        n: the number of images of the split (every rank passes the same).
        what: names the loop in the bar and in the summary line (``"saliency val"``).
        batch_size: items loaded at a time, hence the largest group.
        unit: what one item is, in the progress line (``"image"``).

    Leaving the block normally is a collective call (every rank must reach it, in the same
    order as the step's other collectives): every rank learns whether another failed, and
    raises if one did.
    """
    check_batch_size(batch_size)
    w = world()
    indices = shard(range(n), w)
    loader = DataLoader(
        _ShardImages(load, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=runtime.num_workers if indices else 0,
        collate_fn=group_by_size,
    )
    ticker = _Ticker(runtime, what, n, unit) if w.is_main else None

    def groups() -> Iterator[list[Item]]:
        for batch in loader:
            if isinstance(batch, _Failed):
                raise batch.exc
            for group in batch:
                yield group
                if ticker is not None:
                    ticker.advance(len(group) * w.size)

    try:
        yield groups()
    except BaseException:
        if ticker is not None:
            ticker.close()
        any_rank(True)
        raise
    if any_rank(False):
        if ticker is not None:
            ticker.close()
        raise PnocError(f"{what}: another worker failed (its error is in its log); stopping too")
    if ticker is not None:
        ticker.finish()


def sum_over_ranks(counts: np.ndarray) -> np.ndarray:
    """Integer ``counts`` (any shape) summed over the ranks, as int64: exact, so the result is
    what one worker counting every image gets (``counts`` itself, as int64, without a group)."""
    t = torch.from_numpy(np.array(counts, dtype=np.int64, copy=True))
    return all_sum(t).numpy()


def gather_in_order(pairs: Sequence[tuple[int, T]]) -> list[T]:
    """Every rank's ``(index in the split, value)`` pairs, merged in the split's order.

    The values of this rank alone without a group (sorted by index all the same).
    """
    merged = [pair for part in all_gather_objects(list(pairs)) for pair in part]
    return [value for _, value in sorted(merged, key=lambda pair: pair[0])]
