"""MLflow side of ``pnoc sweep``: a parent run per sweep, a nested run per trial.

Only the driver writes to MLflow. A Ray Tune callback (:class:`MlflowTrialLogger`) turns the
trial events the driver receives (start, each epoch's result, completion, error) into MLflow
calls, so concurrent trials never open the SQLite store themselves and there is a single
writer. Every call still goes through :func:`with_retries`: another process (``mlflow ui``, a
pipeline stage, a second sweep) may hold the SQLite lock for a moment, and ``database is
locked`` is retried with backoff instead of dropping data.

Runs are found by tags, never remembered in memory: ``pnoc.sweep`` on the parent,
``pnoc.trial_id`` (Ray's trial id) on a trial. A resumed sweep reuses its parent run and the runs
of its finished trials; a trial restarted from scratch gets a fresh run (its partial one is
deleted). At the end :meth:`SweepTracker.sync` makes MLflow agree with Ray's results (a
driver killed mid-sweep may have missed events) and tags the best trial ``pnoc.best=true``.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ray.tune import Callback

log = logging.getLogger("pnoc.sweep")
T = TypeVar("T")

SWEEP_TAG = "pnoc.sweep"
TRIAL_TAG = "pnoc.trial_id"
BEST_TAG = "pnoc.best"
ERROR_TAG = "pnoc.error"
STATUS_TAG = "pnoc.trial_status"
_TAG_LIMIT = 5000  # MLflow caps tag values at 8000 characters; the full trace is an artifact
_LOCK_MESSAGES = ("database is locked", "database table is locked", "database is busy")


def is_lock_error(exc: BaseException) -> bool:
    """True for SQLite's transient lock errors, however wrapped (sqlite3, SQLAlchemy, MLflow)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).lower()
        if any(m in text for m in _LOCK_MESSAGES):
            return True
        if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def with_retries(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 12,
    first_delay: float = 0.05,
    max_delay: float = 5.0,
    **kwargs: Any,
) -> T:
    """Call ``fn``; on a SQLite lock error wait (exponential backoff, jitter) and call again.

    Other errors, and the last lock error after ``attempts`` tries (~25 s), propagate.
    """
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts - 1 or not is_lock_error(exc):
                raise
            delay = min(max_delay, first_delay * 2**attempt) * (1.0 + random.random())
            log.debug("MLflow store locked (%s); retry %d in %.2fs", exc, attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _fmt_param(value: Any) -> str:
    return "null" if value is None else str(value)


def logged_metrics(result: Mapping[str, Any], names: Iterable[str]) -> dict[str, float]:
    """The numbers of one trial result worth logging: the objective's metrics and ``train/*``."""
    wanted = set(names)
    out = {}
    for key, value in result.items():
        if (key in wanted or key.startswith("train/")) and isinstance(value, int | float):
            out[key] = float(value)
    return out


class SweepTracker:
    """MLflow runs of one sweep (see the module docstring). Opened in the driver."""

    def __init__(self, name: str, root: Path | None = None) -> None:
        from mlflow.tracking import MlflowClient

        from pnoc_pipelines import tracking

        self.name = name
        self.experiment_id = with_retries(tracking.configure, root=root)
        self.client = MlflowClient()
        self.parent_id = self._parent(root)
        self._runs: dict[str, str] = {}  # trial id -> run id, for the per-epoch calls

    # -- runs -------------------------------------------------------------------------------

    def _search(self, filter_string: str) -> list[Any]:
        return with_retries(
            self.client.search_runs, [self.experiment_id], filter_string=filter_string
        )

    def _parent(self, root: Path | None) -> str:
        from pnoc_pipelines import tracking

        found = self._search(f"tags.`{SWEEP_TAG}` = '{self.name}' and tags.`pnoc.kind` = 'sweep'")
        if found:
            run_id = found[0].info.run_id
            with_retries(self.client.update_run, run_id, status="RUNNING")
            return run_id
        tags = {SWEEP_TAG: self.name, "pnoc.kind": "sweep", **tracking.lineage_tags()}
        run = with_retries(
            self.client.create_run, self.experiment_id, run_name=f"sweep-{self.name}", tags=tags
        )
        return run.info.run_id

    def log_sweep(self, identity: Mapping[str, Any], num_samples: int) -> None:
        """The sweep's fixed settings as params (the same on every resume), the request as a tag."""
        from mlflow.entities import Param

        params = {
            "kind": identity["kind"],
            "objective": identity["objective"],
            "metric": identity["metric"],
            "mode": identity["mode"],
            "epochs": identity["epochs"],
            "seed": identity["seed"],
            "asha": json.dumps(identity["asha"], sort_keys=True),
            "space": json.dumps(identity["space"]),
        }
        batch = [Param(k, _fmt_param(v)) for k, v in params.items()]
        with_retries(self.client.log_batch, self.parent_id, params=batch)
        with_retries(self.client.set_tag, self.parent_id, "pnoc.num_samples", str(num_samples))

    def trial_run(self, trial_id: str) -> Any | None:
        found = self._search(
            f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{SWEEP_TAG}` = '{self.name}'"
        )
        return found[0] if found else None

    def start_trial(self, trial_id: str, config: Mapping[str, Any], *, fresh: bool = True) -> str:
        """The run of a trial that starts; the run of an earlier, unfinished or failed start of
        the same trial (a resumed sweep reruns those from scratch) is replaced."""
        from mlflow.entities import Param

        run = self.trial_run(trial_id)
        if run is not None:
            if not fresh or run.info.status == "FINISHED":
                self._runs[trial_id] = run.info.run_id
                return run.info.run_id
            with_retries(self.client.delete_run, run.info.run_id)
        tags = {
            "mlflow.parentRunId": self.parent_id,
            "pnoc.kind": "sweep-trial",
            SWEEP_TAG: self.name,
            TRIAL_TAG: trial_id,
        }
        created = with_retries(
            self.client.create_run, self.experiment_id, run_name=f"trial-{trial_id}", tags=tags
        )
        run_id = created.info.run_id
        batch = [Param(k, _fmt_param(v)) for k, v in sorted(config.items())]
        with_retries(self.client.log_batch, run_id, params=batch)
        self._runs[trial_id] = run_id
        return run_id

    def _run_id(self, trial_id: str, config: Mapping[str, Any]) -> str:
        if trial_id in self._runs:
            return self._runs[trial_id]
        run = self.trial_run(trial_id)
        run_id = run.info.run_id if run is not None else self.start_trial(trial_id, config)
        self._runs[trial_id] = run_id
        return run_id

    def log_result(
        self,
        trial_id: str,
        config: Mapping[str, Any],
        result: Mapping[str, Any],
        names: Sequence[str],
    ) -> None:
        """One epoch of a trial: its metrics at step = epoch (timestamp from the result)."""
        self.log_history(self._run_id(trial_id, config), [result], names)

    def log_history(self, run_id: str, results: Sequence[Mapping[str, Any]], names: Sequence[str]):
        from mlflow.entities import Metric

        batch = []
        for r in results:
            step = int(r.get("training_iteration", r.get("epoch", 0)))
            stamp = int(float(r.get("timestamp", time.time())) * 1000)
            batch += [Metric(k, v, stamp, step) for k, v in logged_metrics(r, names).items()]
        for i in range(0, len(batch), 900):  # MLflow takes at most 1000 metrics per batch
            with_retries(self.client.log_batch, run_id, metrics=batch[i : i + 900])

    def finish_trial(
        self,
        trial_id: str,
        config: Mapping[str, Any],
        *,
        status: str,
        metric: str,
        final: Mapping[str, Any] | None,
        error: str | None = None,
    ) -> str:
        """Final objective, status tag and run status (FINISHED, or FAILED with the error text)."""
        run_id = self._run_id(trial_id, config)
        value = (final or {}).get(metric)
        if isinstance(value, int | float):
            with_retries(self.client.log_metric, run_id, "objective", float(value))
        with_retries(self.client.set_tag, run_id, STATUS_TAG, status)
        if error is not None:
            with_retries(self.client.set_tag, run_id, ERROR_TAG, error[-_TAG_LIMIT:])
            with_retries(self.client.log_text, run_id, error, "error.txt")
        run_status = "FAILED" if error is not None else "FINISHED"
        if status == "unfinished":
            run_status = "KILLED"
        with_retries(self.client.set_terminated, run_id, status=run_status)
        return run_id

    # -- end of a sweep -----------------------------------------------------------------------

    def sync(self, records: Sequence[Any], metric: str, names: Sequence[str]) -> None:
        """Make every trial's run agree with Ray's records (``TrialRecord``s of the driver).

        Missing runs are created with their whole history; runs left RUNNING by a killed driver
        are completed. Identical metric rows are deduplicated by MLflow, so re-logging is safe.
        """
        for r in records:
            run = self.trial_run(r.trial_id)
            expected = {"failed": "FAILED", "unfinished": "KILLED"}.get(r.status, "FINISHED")
            if run is not None and run.info.status == expected:
                continue
            run_id = self.start_trial(r.trial_id, r.config, fresh=False)
            self.log_history(run_id, r.history, names)
            self.finish_trial(
                r.trial_id, r.config, status=r.status, metric=metric, final=r.final, error=r.error
            )

    def tag_best(self, records: Sequence[Any], best: Any | None) -> None:
        """``pnoc.best=true`` on the best trial's run only (a resumed sweep may move it)."""
        for r in records:
            run = self.trial_run(r.trial_id)
            if run is None:
                continue
            is_best = best is not None and r.trial_id == best.trial_id
            if is_best:
                with_retries(self.client.set_tag, run.info.run_id, BEST_TAG, "true")
            elif run.data.tags.get(BEST_TAG):
                with_retries(self.client.delete_tag, run.info.run_id, BEST_TAG)

    def finish_sweep(
        self,
        *,
        metrics: Mapping[str, float],
        artifacts: Iterable[Path],
        status: str = "FINISHED",
    ) -> None:
        for key, value in metrics.items():
            with_retries(self.client.log_metric, self.parent_id, key, float(value))
        for path in artifacts:
            if path.is_file():
                folder = "plots" if path.suffix == ".png" else None
                with_retries(self.client.log_artifact, self.parent_id, str(path), folder)
        with_retries(self.client.set_terminated, self.parent_id, status=status)


def trial_error_text(trial: Any) -> str:
    """The error trace Ray saved for a failed trial (or a short note when there is none)."""
    text = None
    try:
        text = trial.get_error()
    except Exception:  # storage not reachable: fall back to the local file
        text = None
    if not text and getattr(trial, "error_file", None) and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text(errors="replace")
    return str(text or "trial failed; Ray recorded no error text")


class MlflowTrialLogger(Callback):
    """Ray Tune callback, run by the driver: trial events -> the sweep's MLflow runs.

    Pickled with the experiment (``Tuner.restore`` brings it back), so it keeps only names; the
    MLflow connection is opened in :meth:`setup`, i.e. again by every run and resume.
    """

    def __init__(
        self, sweep: str, metric: str, names: Sequence[str], root: str, epochs: int
    ) -> None:
        self.sweep = sweep
        self.metric = metric
        self.epochs = epochs
        self.names = list(names)
        self.root = root
        self._tracker: SweepTracker | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_tracker"] = None
        return state

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None:
            self._tracker = SweepTracker(self.sweep, Path(self.root))
        return self._tracker

    def setup(self, **info: Any) -> None:
        self._tracker = SweepTracker(self.sweep, Path(self.root))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.start_trial(trial.trial_id, trial.config)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self.tracker.log_result(trial.trial_id, trial.config, result, self.names)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        final = trial.last_result or {}
        done = int(final.get("training_iteration", 0))
        status = "finished" if done >= self.epochs else "stopped" if done else "unfinished"
        self.tracker.finish_trial(
            trial.trial_id,
            trial.config,
            status=status,
            metric=self.metric,
            final=final,
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.finish_trial(
            trial.trial_id,
            trial.config,
            status="failed",
            metric=self.metric,
            final=trial.last_result,
            error=trial_error_text(trial),
        )
