"""Progress of long work, readable on a terminal and in a log file alike.

One policy for the whole library:

* A tqdm bar is drawn only when progress is enabled (:attr:`Runtime.progress`) **and** stderr is
  a terminal. A log file (``dvc repro > log``, CI) never gets a bar, hence never a carriage
  return.
* Everything a log needs goes through :mod:`logging` at INFO (logger ``pnoc.engine.progress``),
  terminal or not.

Training (:class:`TrainingProgress`, used by :func:`pnoc.engine.fit`) logs a line when it starts
(epochs, steps, images per step, device and precision) and one line per epoch: epoch/epochs,
step/steps of the epoch, the running mean of each value the method's ``train_step`` returns
(its losses and terms; learning rates aside), images/s, elapsed time and ETA. When no bar is
drawn it also logs that line every :data:`LOG_INTERVAL_S` seconds (30 s) inside an epoch, so a
long epoch shows signs of life in a log; on a terminal the bar shows the steps and the
per-epoch line is the only one logged.

An inference loop wraps its images in :func:`track` (or :meth:`Runtime.track`): a bar on a
terminal and, once the loop has run to its end, one summary line (what, how many images,
seconds, images/s), terminal or not.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = [
    "LOG_INTERVAL_S",
    "TrainingProgress",
    "format_duration",
    "show_bar",
    "stderr_is_terminal",
    "track",
]

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 30.0
"""Seconds between two in-epoch training lines when no bar is drawn (the epoch line aside)."""

T = TypeVar("T")


def stderr_is_terminal() -> bool:
    """Whether ``sys.stderr`` (where bars are drawn) is an interactive terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(callable(isatty) and isatty())


def show_bar(enabled: bool) -> bool:
    """Whether to draw a progress bar: ``enabled`` (``Runtime.progress``) and on a terminal."""
    return enabled and stderr_is_terminal()


def format_duration(seconds: float) -> str:
    """A short human duration: ``"42s"``, ``"3m07s"``, ``"2h05m"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def track(
    items: Iterable[T],
    what: str,
    *,
    total: int | None = None,
    enabled: bool = True,
    unit: str = "image",
) -> Iterator[T]:
    """Iterate ``items``, with a bar on a terminal and an INFO summary at the end.

    Args:
        items: the work items (image ids, indices).
        what: what the loop computes, as the bar's label and the summary's subject
            (e.g. ``"cams train"``).
        total: number of items (default: ``len(items)`` when it has one).
        enabled: progress bars wanted (``Runtime.progress``); the summary is logged regardless.
        unit: what one item is, singular (``"image"``).

    The summary, ``"<what>: <n> <unit>s in <s> s (<rate> <unit>s/s)"``, is logged once the loop
    has run to its end, terminal or not; a loop left early (``break``, an error) logs nothing.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    bar = None
    if show_bar(enabled):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=what, unit=unit, dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    count = 0
    try:
        for item in items:
            yield item
            count += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    rate = _rate(count / seconds) if seconds > 0 else "?"
    log.info("%s: %d %ss in %.1f s (%s %ss/s)", what, count, unit, seconds, rate, unit)


class TrainingProgress:
    """What :func:`pnoc.engine.fit` reports while it trains (see the module docstring).

    Args:
        epochs: epochs of the run.
        steps_per_epoch: optimizer steps per epoch.
        images_per_step: samples consumed by one optimizer step (batch × accumulation).
        start_step: global step the run starts from (> 0 when resumed).
        enabled: progress bars wanted (``Runtime.progress``); lines are logged regardless.
        interval_s: seconds between in-epoch lines while no bar is drawn; 0 logs every step,
            None never.
    """

    def __init__(
        self,
        *,
        epochs: int,
        steps_per_epoch: int,
        images_per_step: int,
        start_step: int = 0,
        enabled: bool = True,
        interval_s: float | None = LOG_INTERVAL_S,
    ) -> None:
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = epochs * steps_per_epoch
        self.images_per_step = images_per_step
        self.start_step = start_step
        self.enabled = enabled
        self.interval_s = interval_s
        self.bar: Any = None
        self._t0 = self._last_line = time.perf_counter()

    def start(self, where: str) -> None:
        """Log the run's shape (``where``: device and precision) and open the bar."""
        self._t0 = self._last_line = time.perf_counter()
        log.info(
            "training: %d epoch(s) x %d step(s) of %d image(s) on %s%s",
            self.epochs,
            self.steps_per_epoch,
            self.images_per_step,
            where,
            f"; resuming at step {self.start_step}" if self.start_step else "",
        )
        if show_bar(self.enabled):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.total_steps,
                initial=self.start_step,
                unit="step",
                dynamic_ncols=True,
                leave=False,
                file=sys.stderr,
            )

    def step(self, epoch: int, global_step: int, running: Mapping[str, float]) -> None:
        """After optimizer step ``global_step - 1`` of ``epoch``; ``running``: the epoch's
        running means so far (losses and learning rates; keys ``lr/…`` are not shown)."""
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}", refresh=False)
            self.bar.set_postfix(
                {k: f"{v:.4g}" for k, v in list(_losses(running).items())[:4]}, refresh=False
            )
            self.bar.update(1)
            return
        in_epoch = global_step - epoch * self.steps_per_epoch
        if self.interval_s is None or in_epoch >= self.steps_per_epoch:
            return  # the epoch line follows
        if time.perf_counter() - self._last_line >= self.interval_s:
            self._line(epoch, global_step, running, done=False)

    def end_epoch(self, epoch: int, global_step: int, means: Mapping[str, float]) -> None:
        """Log the line of finished ``epoch`` (``means``: its mean losses)."""
        self._line(epoch, global_step, means, done=True)

    def close(self) -> None:
        """Remove the bar (if any)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _line(
        self, epoch: int, global_step: int, running: Mapping[str, float], *, done: bool
    ) -> None:
        now = time.perf_counter()
        self._last_line = now
        elapsed = now - self._t0
        steps_done = global_step - self.start_step
        if steps_done > 0 and elapsed > 0:
            rate = f"{_rate(steps_done * self.images_per_step / elapsed)} images/s"
            eta = format_duration((self.total_steps - global_step) * elapsed / steps_done)
        else:
            rate, eta = "? images/s", "?"
        in_epoch = global_step - epoch * self.steps_per_epoch
        losses = ", ".join(f"{k} {v:.4g}" for k, v in _losses(running).items()) or "no losses"
        if self.bar is not None:
            self.bar.clear()
        log.info(
            "epoch %d/%d%s step %d/%d | %s | %s | elapsed %s, ETA %s",
            epoch + 1,
            self.epochs,
            " done:" if done else "",
            in_epoch,
            self.steps_per_epoch,
            losses,
            rate,
            format_duration(elapsed),
            eta,
        )
        if self.bar is not None:
            self.bar.refresh()


def _losses(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("lr/")}


def _rate(per_second: float) -> str:
    return f"{per_second:.1f}" if per_second >= 10 else f"{per_second:.2f}"
