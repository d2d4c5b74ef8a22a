"""Measuring a short run: the time of each optimizer step and the peak memory of a block.

:class:`StepTimer` is an engine callback recording when each step ends; :class:`PeakMemory`
measures, around a block, the process's resident memory on CPU (sampled by a thread) or the
allocator's peak on CUDA. ``pnoc estimate`` runs every stage briefly under both and scales the
figures to the full run.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import threading
import time
from types import TracebackType

import psutil
import torch

from pnoc.engine.context import Callback, TrainContext

__all__ = ["PeakMemory", "StepTimer"]

MIB = 2**20


class StepTimer(Callback):
    """Seconds per optimizer step, from the ends of consecutive steps.

    The first step (lazy initialisation, allocator warm-up, cuDNN autotuning) only starts the
    clock: :meth:`per_step` is the median of the later steps' durations, so a run needs two or
    more steps.
    """

    def __init__(self) -> None:
        self.ends: list[float] = []
        self._device: torch.device | None = None

    def on_step_end(self, ctx: TrainContext, metrics: dict[str, float]) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def per_step(self) -> float:
        if len(self.ends) < 2:
            raise ValueError(f"StepTimer: {len(self.ends)} step(s) timed; two or more are needed")
        return statistics.median(b - a for a, b in zip(self.ends, self.ends[1:], strict=False))


class PeakMemory:
    """Peak memory in MiB while the block runs: ``peak_mib`` and ``start_mib`` (at entry).

    On CPU: the process's resident set size (RSS), sampled every ``interval_s`` by a thread
    (a shorter peak between samples can be missed); memory freed earlier is first handed back
    to the system (``malloc_trim``), so the block's growth is its own. On CUDA (``device`` a
    CUDA device): the caching allocator's peak of allocated memory on that device, which the
    RSS does not see.
    """

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.01) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.start_mib = 0.0
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def _rss(self) -> float:
        return self._process.memory_info().rss / MIB

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mib = self.peak_mib = torch.cuda.memory_allocated(self.device) / MIB
            return self
        _release_freed_memory()
        self.start_mib = self.peak_mib = self._rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / MIB
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mib = max(self.peak_mib, self._rss())


def _release_freed_memory() -> None:
    """Collect garbage and return glibc's free heap pages to the system (Linux; else no-op)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
